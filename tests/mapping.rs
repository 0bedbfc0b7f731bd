//! The enricher mapping, pinned on payloads in the documented Graph shapes and on the odd ones
//! Graph is known to send.

use mdti_worker::enrich::extract::ExtractKind;
use mdti_worker::enrich::mapping;
use mdti_worker::graph::model::{
    HostPair, HostReputation, PassiveDnsRecord, Subdomain, WhoisRecord,
};
use serde_json::json;

fn values(extracts: &[mdti_worker::enrich::Extract], kind: ExtractKind) -> Vec<(String, String)> {
    extracts
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| (e.value.clone(), e.field.clone()))
        .collect()
}

fn documented_whois() -> WhoisRecord {
    serde_json::from_value(json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#security/threatIntelligence/hosts('contoso.com')/whois/$entity",
        "@odata.type": "#microsoft.graph.security.whoisRecord",
        "id": "Y29udG9zby5jb20kJDY5NjQ3ODEyMDc3NDY1NzI0MzM=",
        "expirationDateTime": "2023-08-31T00:00:00Z",
        "registrationDateTime": "1995-09-01T00:00:00Z",
        "firstSeenDateTime": "2009-09-02T03:29:10.000Z",
        "lastSeenDateTime": "2022-04-18T10:31:12Z",
        "lastUpdateDateTime": "2021-12-07T00:00:00Z",
        "whoisServer": "whois.markmonitor.com",
        "domainStatus": "clientUpdateProhibited,clientTransferProhibited,clientDeleteProhibited",
        "rawWhoisText": "Domain Name: contoso.com\nRegistry Domain ID: 2335563_DOMAIN_COM-VRSN",
        "abuse": {
            "email": "abusecomplaints@markmonitor.com", "name": null, "organization": null,
            "telephone": "+1.2083895740", "fax": null, "address": null
        },
        "admin": {
            "email": "admin@domains.contoso.com", "name": "Domain Administrator",
            "organization": "Contoso Corporation", "telephone": "+1.4258828080", "fax": "+1.4259367329",
            "address": {"city": "Redmond", "countryOrRegion": "US", "postalCode": "98052",
                        "state": "WA", "street": "One Contoso Way"}
        },
        "billing": {"email": "billing@contoso.com", "name": null, "organization": null,
                    "telephone": null, "fax": null, "address": null},
        "noc": null,
        "registrant": {
            "email": "domains@contoso.com", "name": "Domain Administrator",
            "organization": "Contoso Corporation", "telephone": "+1.4258828080", "fax": null,
            "address": {"city": "Redmond", "countryOrRegion": "united states", "postalCode": null,
                        "state": "WA", "street": null}
        },
        "registrar": {
            "email": "abusecomplaints@markmonitor.com", "name": null, "organization": "MarkMonitor Inc.",
            "telephone": "+1.2083895740", "fax": null, "address": null
        },
        "technical": null,
        "zone": null,
        "nameservers": [
            {"firstSeenDateTime": "2009-09-02T03:29:10Z", "lastSeenDateTime": "2022-04-18T10:31:12Z",
             "host": {"id": "ns1-39.azure-dns.com"}},
            {"firstSeenDateTime": null, "lastSeenDateTime": null, "host": {"id": "NS2-39.AZURE-DNS.NET."}}
        ],
        "host": {"@odata.type": "#microsoft.graph.security.hostname", "id": "contoso.com"}
    }))
    .expect("the documented whois record parses")
}

#[test]
fn whois_indicator_id_matches_pythons_uuid5_over_the_record_id() {
    // uuid.uuid5(uuid.NAMESPACE_X500, "Y29udG9zby5jb20kJDY5NjQ3ODEyMDc3NDY1NzI0MzM=")
    assert_eq!(
        mapping::indicator_id("Y29udG9zby5jb20kJDY5NjQ3ODEyMDc3NDY1NzI0MzM="),
        "{https://graph.microsoft.com}Indicator-1b388964-c198-50c8-99bd-e8279ea50959"
    );
    // uuid.uuid5(uuid.NAMESPACE_X500, "ünïcode"): the name is hashed as UTF-8, as Python does.
    assert_eq!(
        mapping::indicator_id("ünïcode"),
        "{https://graph.microsoft.com}Indicator-430299dd-4b25-5f30-b0cb-3e6faff0bfe1"
    );
}

#[test]
fn whois_record_maps_to_one_indicator_with_the_specified_fields() {
    let (indicator, _) = mapping::whois(&documented_whois());
    let indicator = indicator.expect("a record with an id gives an indicator");
    assert_eq!(
        indicator.title,
        "Y29udG9zby5jb20kJDY5NjQ3ODEyMDc3NDY1NzI0MzM="
    );
    assert_eq!(
        indicator.threat_end_time.unwrap().to_rfc3339(),
        "2023-08-31T00:00:00+00:00"
    );
    assert_eq!(
        indicator.threat_start_time.unwrap().to_rfc3339(),
        "2009-09-02T03:29:10+00:00"
    );
    assert_eq!(
        indicator.observed_time.unwrap().to_rfc3339(),
        "2022-04-18T10:31:12+00:00"
    );
    assert_eq!(
        indicator.timestamp.unwrap().to_rfc3339(),
        "2021-12-07T00:00:00+00:00"
    );
    assert!(indicator
        .description
        .unwrap()
        .starts_with("Domain Name: contoso.com"));
    assert_eq!(
        indicator.labels,
        vec![
            "registrationDateTime: 1995-09-01T00:00:00Z",
            "whoisServer: whois.markmonitor.com",
            "domainStatus: clientUpdateProhibited,clientTransferProhibited,clientDeleteProhibited",
            "state:WA",
        ]
    );
}

#[test]
fn whois_contacts_become_extracts_that_name_their_field() {
    let (_, extracts) = mapping::whois(&documented_whois());
    let emails = values(&extracts, ExtractKind::Email);
    assert!(emails.contains(&(
        "abusecomplaints@markmonitor.com".into(),
        "abuse.email".into()
    )));
    assert!(emails.contains(&(
        "abusecomplaints@markmonitor.com".into(),
        "registrar.email".into()
    )));
    assert!(emails.contains(&("domains@contoso.com".into(), "registrant.email".into())));
    assert!(
        !emails.iter().any(|(v, _)| v == "billing@contoso.com"),
        "billing is not a mapped contact"
    );
    assert!(values(&extracts, ExtractKind::Organization).contains(&(
        "Contoso Corporation".into(),
        "registrant.organization".into()
    )));
    assert!(values(&extracts, ExtractKind::Telephone)
        .contains(&("+1.4258828080".into(), "admin.telephone".into())));
    assert_eq!(
        values(&extracts, ExtractKind::City),
        vec![
            ("Redmond".into(), "admin.address.city".into()),
            ("Redmond".into(), "registrant.address.city".into())
        ]
    );
    assert_eq!(
        values(&extracts, ExtractKind::Postcode),
        vec![("98052".into(), "admin.address.postalCode".into())]
    );
    assert_eq!(
        values(&extracts, ExtractKind::Street),
        vec![("One Contoso Way".into(), "admin.address.street".into())]
    );
}

#[test]
fn free_text_countries_keep_their_text_and_gain_the_same_iso_code() {
    let (_, extracts) = mapping::whois(&documented_whois());
    let countries: Vec<_> = extracts
        .iter()
        .filter(|e| e.kind == ExtractKind::Country)
        .map(|e| (e.value.as_str(), e.country_code.as_deref()))
        .collect();
    assert_eq!(
        countries,
        vec![("US", Some("US")), ("united states", Some("US"))]
    );
}

#[test]
fn whois_nameservers_and_host_become_host_extracts() {
    let (_, extracts) = mapping::whois(&documented_whois());
    assert_eq!(
        values(&extracts, ExtractKind::Host),
        vec![
            ("ns1-39.azure-dns.com".into(), "nameservers.host.id".into()),
            ("ns2-39.azure-dns.net".into(), "nameservers.host.id".into()),
            ("contoso.com".into(), "host.id".into()),
        ]
    );
}

#[test]
fn whois_with_null_contacts_null_address_and_a_placeholder_date_still_maps() {
    let record: WhoisRecord = serde_json::from_value(json!({
        "id": "abc",
        "expirationDateTime": "String (timestamp)",
        "registrationDateTime": null,
        "abuse": null, "admin": {"email": null, "address": null},
        "registrant": {"address": {"city": null, "countryOrRegion": null, "state": null}},
        "nameservers": null,
        "host": {"@odata.type": "#microsoft.graph.security.ipAddress", "id": "20.1.2.3"}
    }))
    .unwrap();
    let (indicator, extracts) = mapping::whois(&record);
    let indicator = indicator.unwrap();
    assert_eq!(indicator.threat_end_time, None);
    assert!(indicator.labels.is_empty());
    assert_eq!(
        values(&extracts, ExtractKind::Ipv4),
        vec![("20.1.2.3".into(), "host.id".into())]
    );
    assert_eq!(extracts.len(), 1);
}

#[test]
fn whois_without_an_id_gives_no_indicator_but_keeps_extracts() {
    let record: WhoisRecord = serde_json::from_value(json!({
        "abuse": {"email": "abuse@example.net"}
    }))
    .unwrap();
    let (indicator, extracts) = mapping::whois(&record);
    assert!(indicator.is_none());
    assert_eq!(extracts.len(), 1);
}

#[test]
fn passive_dns_artifacts_map_by_their_type_and_case_does_not_matter() {
    let records: Vec<PassiveDnsRecord> = serde_json::from_value(json!([
        {"id": "1", "recordType": "A", "parentHost": {"id": "contoso.com"},
         "artifact": {"@odata.type": "#microsoft.graph.security.ipAddress", "id": "20.53.203.50"}},
        {"id": "2", "recordType": "AAAA", "parentHost": {"id": "contoso.com"},
         "artifact": {"@odata.type": "#microsoft.graph.security.ipAddress", "id": "2603:1030:0:0::5"}},
        {"id": "3", "recordType": "CNAME", "parentHost": {"id": "contoso.com"},
         "artifact": {"@odata.type": "#microsoft.graph.security.hostName", "id": "edge.contoso.net"}},
        {"id": "4", "recordType": "A",
         "artifact": {"@odata.type": "#microsoft.graph.security.ipAddress", "id": "20.53.203.50"}},
        {"id": "5", "artifact": null}
    ]))
    .unwrap();
    let extracts = mapping::passive_dns(&records);
    let kinds: Vec<_> = extracts
        .iter()
        .map(|e| (e.kind, e.value.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ExtractKind::Ipv4, "20.53.203.50"),
            (ExtractKind::Ipv6, "2603:1030::5"),
            (ExtractKind::Host, "edge.contoso.net"),
        ]
    );
}

#[test]
fn host_maps_country_netblock_asn_registrar_and_organizations() {
    let ip: mdti_worker::graph::model::Host = serde_json::from_value(json!({
        "@odata.type": "#microsoft.graph.security.ipAddress",
        "id": "20.53.203.50",
        "firstSeenDateTime": "2022-04-18T10:31:12Z",
        "autonomousSystem": {"name": "MICROSOFT-CORP", "number": 8075, "organization": "Microsoft", "value": "AS8075"},
        "countryOrRegion": "united states",
        "hostingProvider": "Microsoft Azure",
        "netblock": "20.48.0.0/12"
    }))
    .unwrap();
    let extracts = mapping::host(&ip);
    let pairs: Vec<_> = extracts
        .iter()
        .map(|e| (e.kind, e.value.as_str(), e.field.as_str()))
        .collect();
    assert_eq!(
        pairs,
        vec![
            (ExtractKind::Ipv4, "20.53.203.50", "id"),
            (ExtractKind::Country, "united states", "countryOrRegion"),
            (ExtractKind::Ipv4Cidr, "20.48.0.0/12", "netblock"),
            (ExtractKind::Asn, "AS8075", "autonomousSystem.number"),
            (
                ExtractKind::Organization,
                "Microsoft Azure",
                "hostingProvider"
            ),
        ]
    );

    let name: mdti_worker::graph::model::Host = serde_json::from_value(json!({
        "@odata.type": "#microsoft.graph.security.hostname",
        "id": "contoso.com", "registrar": "MarkMonitor Inc.", "registrant": "Contoso Corporation",
        "netblock": "2603:1030::/32"
    }))
    .unwrap();
    let extracts = mapping::host(&name);
    let pairs: Vec<_> = extracts
        .iter()
        .map(|e| (e.kind, e.value.as_str()))
        .collect();
    assert_eq!(
        pairs,
        vec![
            (ExtractKind::Host, "contoso.com"),
            (ExtractKind::Ipv6Cidr, "2603:1030::/32"),
            (ExtractKind::Registrar, "MarkMonitor Inc."),
            (ExtractKind::Organization, "Contoso Corporation"),
        ]
    );
}

#[test]
fn host_pairs_give_each_host_once() {
    let pairs: Vec<HostPair> = serde_json::from_value(json!([
        {"id": "a", "linkKind": "redirect", "parentHost": {"id": "contoso.com"}, "childHost": {"id": "www.contoso.com"}},
        {"id": "b", "linkKind": "finalRedirect", "parentHost": {"id": "contoso.com"}, "childHost": {"id": "www.contoso.com"}},
        {"id": "c", "linkKind": "iframe", "parentHost": {"id": "www.contoso.com"}, "childHost": {"id": "20.1.2.3"}},
        {"id": "d", "parentHost": null, "childHost": {"id": null}}
    ]))
    .unwrap();
    let extracts = mapping::host_pairs(&pairs);
    let got: Vec<_> = extracts
        .iter()
        .map(|e| (e.kind, e.value.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (ExtractKind::Host, "contoso.com"),
            (ExtractKind::Host, "www.contoso.com"),
            (ExtractKind::Ipv4, "20.1.2.3"),
        ]
    );
}

#[test]
fn subdomains_map_their_host() {
    let items: Vec<Subdomain> = serde_json::from_value(json!([
        {"id": "d3d3LmNvbnRvc28uY29t", "firstSeenDateTime": "2022-04-18T10:31:12Z", "host": {"id": "www.contoso.com"}},
        {"id": "x", "host": null}
    ]))
    .unwrap();
    let extracts = mapping::subdomains(&items);
    assert_eq!(
        values(&extracts, ExtractKind::Host),
        vec![("www.contoso.com".into(), "host.id".into())]
    );
}

#[test]
fn reputation_is_kept_whole_including_list_descriptions() {
    let record: HostReputation = serde_json::from_value(json!({
        "id": "contoso.com",
        "classification": "malicious",
        "score": 100,
        "rules": [
            {"name": "Cyber Threat Intelligence", "description": ["Aqua Blizzard", "Storm-0558"],
             "severity": "high", "relatedDetailsUrl": null},
            {"name": "Microsoft Defender Threat Intelligence Intel Article",
             "description": "Aqua Blizzard targets Ukraine", "severity": "high",
             "relatedDetailsUrl": "https://ti.defender.microsoft.com/article/831b70a4"}
        ]
    }))
    .unwrap();
    let reputation = mapping::reputation(&record);
    assert_eq!(reputation.classification.as_deref(), Some("malicious"));
    assert_eq!(reputation.score, Some(100));
    assert_eq!(reputation.rules.len(), 2);
    assert_eq!(
        reputation.rules[0].description,
        Some(json!(["Aqua Blizzard", "Storm-0558"]))
    );
    assert_eq!(
        reputation.rules[1].related_details_url.as_deref(),
        Some("https://ti.defender.microsoft.com/article/831b70a4")
    );
}
