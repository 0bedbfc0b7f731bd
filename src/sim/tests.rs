//! End-to-end tests of the simulator over HTTP (reqwest against `spawn`). No test asserts timings.

use std::collections::HashSet;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::*;

/// Path-segment encoding for host keys, like a client must do (IPv6 has ':').
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'-').remove(b'_');

struct Env {
    sim: SimHandle,
    http: reqwest::Client,
    token: String,
}

async fn fetch_token(sim: &SimHandle, http: &reqwest::Client) -> String {
    let resp = http
        .post(format!(
            "{}/tenant-1/oauth2/v2.0/token",
            sim.login_base_url()
        ))
        .form(&[
            ("client_id", "sim-client"),
            ("client_secret", "sim-secret"),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    body["access_token"].as_str().unwrap().to_string()
}

async fn env_with(config: SimConfig) -> Env {
    let sim = spawn(config).await.unwrap();
    let http = reqwest::Client::new();
    let token = fetch_token(&sim, &http).await;
    Env { sim, http, token }
}

async fn env() -> Env {
    env_with(SimConfig::default()).await
}

impl Env {
    fn host_url(&self, host: &str, sub: &str) -> String {
        let id = utf8_percent_encode(host, SEGMENT);
        let sub = if sub.is_empty() {
            String::new()
        } else {
            format!("/{sub}")
        };
        format!(
            "{}/security/threatIntelligence/hosts/{id}{sub}",
            self.sim.graph_base_url()
        )
    }

    fn ti_url(&self, rel: &str) -> String {
        format!(
            "{}/security/threatIntelligence/{rel}",
            self.sim.graph_base_url()
        )
    }

    async fn get(&self, url: &str) -> reqwest::Response {
        self.http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    async fn get_json(&self, url: &str) -> (u16, Value) {
        let resp = self.get(url).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// Follows `@odata.nextLink` to the end; returns all items and the number of pages.
    async fn walk(&self, url: &str) -> (Vec<Value>, usize) {
        let mut items = Vec::new();
        let mut next = Some(url.to_string());
        let mut pages = 0;
        while let Some(url) = next {
            let (status, body) = self.get_json(&url).await;
            assert_eq!(status, 200, "{body}");
            items.extend(body["value"].as_array().unwrap().iter().cloned());
            next = body["@odata.nextLink"].as_str().map(str::to_string);
            pages += 1;
            assert!(pages < 1000, "nextLink loop");
        }
        (items, pages)
    }
}

fn assert_graph_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string());
    assert!(body["error"]["innerError"]["request-id"].is_string());
    assert!(body["error"]["innerError"]["date"].is_string());
}

/// Removes what legitimately differs between two servers (their port).
fn strip_links(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.remove("@odata.context");
        m.remove("@odata.nextLink");
    }
    v
}

#[tokio::test]
async fn token_is_required_and_checked() {
    let e = env().await;
    let url = e.host_url("contoso.com", "");

    let resp = e.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    assert_graph_error(&resp.json().await.unwrap(), "InvalidAuthenticationToken");

    let resp = e.http.get(&url).bearer_auth("forged").send().await.unwrap();
    assert_eq!(resp.status(), 401);

    let (status, body) = e.get_json(&url).await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], "contoso.com");

    // Revoked tokens fail until a new one is fetched.
    e.sim.control().expire_tokens();
    let (status, body) = e.get_json(&url).await;
    assert_eq!(status, 401);
    assert_graph_error(&body, "InvalidAuthenticationToken");
    let fresh = fetch_token(&e.sim, &e.http).await;
    let resp = e.http.get(&url).bearer_auth(fresh).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    assert_eq!(e.sim.count("unauthorized"), 3);
    assert_eq!(e.sim.count("token"), 2);
}

#[tokio::test]
async fn token_endpoint_errors() {
    let e = env().await;
    let url = format!("{}/t/oauth2/v2.0/token", e.sim.login_base_url());
    let post = |form: Vec<(&'static str, &'static str)>| {
        let req = e.http.post(&url).form(&form);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = post(vec![
        ("client_id", "sim-client"),
        ("client_secret", "wrong"),
        ("scope", "https://graph.microsoft.com/.default"),
        ("grant_type", "client_credentials"),
    ])
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"], json!([7000215]));
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS7000215"));
    for field in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
        assert!(body[field].is_string(), "{field}");
    }

    let (status, body) = post(vec![
        ("client_id", "sim-client"),
        ("client_secret", "sim-secret"),
        ("scope", "https://graph.microsoft.com/.default"),
        ("grant_type", "password"),
    ])
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "unsupported_grant_type");

    let (status, body) = post(vec![("client_id", "sim-client")]).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn same_host_same_answer() {
    let a = env().await;
    let b = env_with(SimConfig {
        seed: 99,
        ..SimConfig::default()
    })
    .await;
    for sub in [
        "",
        "whois",
        "passiveDns",
        "passiveDnsReverse",
        "hostPairs",
        "subdomains",
        "reputation",
    ] {
        for host in ["contoso.com", "20.1.2.3", "evil.fabrikam.net"] {
            let (_, first) = a.get_json(&a.host_url(host, sub)).await;
            let (_, again) = a.get_json(&a.host_url(host, sub)).await;
            assert_eq!(first, again, "{host} {sub}");
            let (_, other) = b.get_json(&b.host_url(host, sub)).await;
            assert_eq!(strip_links(first), strip_links(other), "{host} {sub}");
        }
    }
}

#[tokio::test]
async fn paging_covers_a_popular_host() {
    let e = env().await;
    let base = e.host_url("popular.contoso.com", "passiveDns");

    // Default page size, and a nextLink carrying both $top and $skip.
    let (_, first) = e.get_json(&base).await;
    assert_eq!(first["value"].as_array().unwrap().len(), 50);
    let next = first["@odata.nextLink"].as_str().unwrap();
    assert!(next.starts_with(&e.sim.graph_base_url()), "{next}");
    assert!(
        next.contains("$top=50") && next.contains("$skip=50"),
        "{next}"
    );
    assert!(first.get("@odata.count").is_none());

    let (_, counted) = e.get_json(&format!("{base}?$count=true&$top=1")).await;
    let total = counted["@odata.count"].as_u64().unwrap() as usize;
    assert!(total >= 250, "{total}");

    let (items, pages) = e.walk(&format!("{base}?$top=100&$count=true")).await;
    assert_eq!(items.len(), total);
    assert_eq!(pages, total.div_ceil(100));
    let ids: HashSet<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), total);
    for item in &items {
        assert_eq!(item["parentHost"]["id"], "popular.contoso.com");
        assert!(item["artifact"]["@odata.type"].is_string());
        assert!(item["recordType"].is_string());
        assert!(item["collectedDateTime"].is_string());
    }

    // $top is capped by max_page_size.
    let (_, capped) = e.get_json(&format!("{base}?$top=100000")).await;
    assert_eq!(capped["value"].as_array().unwrap().len(), total.min(1000));
}

#[tokio::test]
async fn unknown_hosts_are_404_everywhere() {
    let e = env().await;
    for host in ["unknown.contoso.com", "a.nxdomain.example", "not a host"] {
        for sub in [
            "",
            "whois",
            "passiveDns",
            "passiveDnsReverse",
            "hostPairs",
            "parentHostPairs",
            "childHostPairs",
            "subdomains",
            "reputation",
        ] {
            let (status, body) = e.get_json(&e.host_url(host, sub)).await;
            assert_eq!(status, 404, "{host} {sub}");
            assert_graph_error(&body, "NotFound");
        }
    }
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    fn parses(format: RetryAfterFormat, value: &str) -> bool {
        match format {
            RetryAfterFormat::Seconds => value.parse::<f64>().is_ok_and(|v| v > 0.0),
            RetryAfterFormat::HttpDate => httpdate::parse_http_date(value).is_ok(),
        }
    }
    for format in [RetryAfterFormat::Seconds, RetryAfterFormat::HttpDate] {
        let e = env_with(SimConfig {
            rate_limit: Some(0.5),
            retry_after_format: format,
            ..SimConfig::default()
        })
        .await;
        let url = e.host_url("contoso.com", "reputation");
        let mut throttled = 0;
        for _ in 0..10 {
            let resp = e.get(&url).await;
            if resp.status() == 429 {
                throttled += 1;
                let after = resp.headers()["retry-after"].to_str().unwrap().to_string();
                assert!(parses(format, &after), "{after}");
                assert_graph_error(&resp.json().await.unwrap(), "TooManyRequests");
            }
        }
        assert!(throttled > 0);
        assert_eq!(e.sim.count("throttled"), throttled);
        assert_eq!(e.sim.count("graph"), 10);
        assert_eq!(e.sim.count("reputation"), 10);

        e.sim.control().set_rate_limit(None);
        assert_eq!(e.get(&url).await.status(), 200);
    }
}

#[tokio::test]
async fn injected_429_and_fail_all() {
    let e = env().await;
    let url = e.host_url("contoso.com", "");
    e.sim.control().inject_429(2, Duration::from_millis(1500));
    for _ in 0..2 {
        let resp = e.get(&url).await;
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "1.500");
    }
    assert_eq!(e.get(&url).await.status(), 200);

    e.sim.control().set_fail_all(Some(503));
    let resp = e.get(&url).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_graph_error(&resp.json().await.unwrap(), "serviceNotAvailable");
    e.sim.control().set_fail_all(Some(403));
    let (status, body) = e.get_json(&url).await;
    assert_eq!(status, 403);
    assert_graph_error(&body, "Forbidden");
    e.sim.control().set_fail_all(None);
    assert_eq!(e.get(&url).await.status(), 200);

    assert_eq!(e.sim.count("throttled"), 2);
    assert_eq!(e.sim.count("errors"), 2);
    assert_eq!(e.sim.count("host"), 6);
}

#[tokio::test]
async fn error_ratio_and_truncation() {
    let e = env_with(SimConfig {
        error_ratio: 1.0,
        ..SimConfig::default()
    })
    .await;
    let url = e.host_url("contoso.com", "whois");
    for _ in 0..5 {
        let resp = e.get(&url).await;
        assert!(
            [500, 502, 503, 504].contains(&resp.status().as_u16()),
            "{}",
            resp.status()
        );
        assert!(resp.json::<Value>().await.unwrap()["error"]["code"].is_string());
    }
    assert_eq!(e.sim.count("errors"), 5);

    e.sim.control().set_error_ratio(0.0);
    e.sim.control().set_truncate_ratio(1.0);
    let resp = e.get(&url).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err());
    assert_eq!(e.sim.count("truncated"), 1);
}

#[tokio::test]
async fn slow_answers_are_counted() {
    let e = env_with(SimConfig {
        slow_ratio: 1.0,
        slow_latency: Duration::from_millis(1),
        ..SimConfig::default()
    })
    .await;
    let url = e.host_url("contoso.com", "whois");
    for _ in 0..3 {
        assert_eq!(e.get(&url).await.status(), 200);
    }
    assert_eq!(e.sim.count("slow"), 3);
    e.sim.control().set_slow(0.0, Duration::from_secs(30));
    assert_eq!(e.get(&url).await.status(), 200);
    assert_eq!(
        e.sim.count("slow"),
        3,
        "a normal answer is not counted as slow"
    );
    assert_eq!(e.sim.count("truncated"), 0);
}

#[tokio::test]
async fn overrides_are_served_and_paged() {
    let e = env().await;
    let items: Vec<Value> = (0..120)
        .map(|i| {
            json!({
                "id": format!("rec-{i}"),
                "recordType": "A",
                "parentHost": {"id": "evil.example"},
                "artifact": {"@odata.type": "#microsoft.graph.security.ipAddress", "id": format!("20.0.0.{i}")},
            })
        })
        .collect();
    e.sim
        .control()
        .set_override("hosts/evil.example/passiveDns", Value::Array(items.clone()));
    let (got, pages) = e
        .walk(&format!(
            "{}?$top=50",
            e.host_url("evil.example", "passiveDns")
        ))
        .await;
    assert_eq!(got, items);
    assert_eq!(pages, 3);

    let rep = json!({"id": "1.2.3.4", "classification": "malicious", "score": 100, "rules": []});
    e.sim
        .control()
        .set_override("hosts/1.2.3.4/reputation", rep.clone());
    let (status, body) = e.get_json(&e.host_url("1.2.3.4", "reputation")).await;
    assert_eq!(status, 200);
    assert_eq!(body, rep);

    // Null means 404, even for a host the synthetic data knows.
    e.sim
        .control()
        .set_override("hosts/contoso.com/whois", Value::Null);
    let (status, body) = e.get_json(&e.host_url("contoso.com", "whois")).await;
    assert_eq!(status, 404);
    assert_graph_error(&body, "NotFound");
    e.sim.control().remove_override("hosts/contoso.com/whois");
    assert_eq!(
        e.get(&e.host_url("contoso.com", "whois")).await.status(),
        200
    );

    // IPv6 keys: the override path is written decoded.
    e.sim
        .control()
        .set_override("hosts/2603:1030::1/passiveDns", json!([]));
    let (status, body) = e.get_json(&e.host_url("2603:1030::1", "passiveDns")).await;
    assert_eq!(status, 200);
    assert_eq!(body["value"], json!([]));
    assert!(body.get("@odata.nextLink").is_none());
}

#[tokio::test]
async fn counters_count_and_reset() {
    let e = env().await;
    for sub in ["", "whois", "passiveDns", "passiveDns", "reputation"] {
        e.get(&e.host_url("contoso.com", sub)).await;
    }
    e.get(&e.ti_url("intelProfiles")).await;
    let c = e.sim.counters();
    assert_eq!(c["host"], 1);
    assert_eq!(c["whois"], 1);
    assert_eq!(c["passiveDns"], 2);
    assert_eq!(c["reputation"], 1);
    assert_eq!(c["intelProfiles"], 1);
    assert_eq!(c["graph"], 6);
    assert_eq!(c["token"], 1);
    assert_eq!(c["hostPairs"], 0);

    let url = format!("{}/_sim/counters", e.sim.login_base_url());
    let remote: Value = e.http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(remote["passiveDns"], 2);
    assert_eq!(remote["graph"], 6);

    e.sim.control().reset_counters();
    assert!(e.sim.counters().values().all(|v| *v == 0));
    e.http
        .get(e.host_url("contoso.com", ""))
        .send()
        .await
        .unwrap();
    e.http.delete(&url).send().await.unwrap();
    assert_eq!(e.sim.count("graph"), 0);
}

#[tokio::test]
async fn bad_input_gets_400_with_graph_body() {
    let e = env().await;
    let base = e.host_url("contoso.com", "passiveDns");
    for query in [
        "$top=abc",
        "$top=-1",
        "$skip=x",
        "$count=maybe",
        "$filter=linkKind gt 1",
    ] {
        let (status, body) = e.get_json(&format!("{base}?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert_graph_error(&body, "BadRequest");
    }
    let bad = format!(
        "{}/security/threatIntelligence/hosts/%FF%FE/whois",
        e.sim.graph_base_url()
    );
    let (status, body) = e.get_json(&bad).await;
    assert_eq!(status, 400);
    assert_graph_error(&body, "BadRequest");
    let (status, _) = e.get_json(&e.ti_url("hosts/contoso.com/cookiez")).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn host_entities_have_the_documented_shape() {
    let e = env().await;
    let (_, ip) = e.get_json(&e.host_url("2603:1030:20e:3::23c", "")).await;
    assert_eq!(ip["id"], "2603:1030:20e:3::23c");
    assert_eq!(ip["@odata.type"], "#microsoft.graph.security.ipAddress");
    assert!(ip["autonomousSystem"]["number"].is_u64());
    assert!(ip["netblock"].as_str().unwrap().ends_with("/32"));

    let (_, v4) = e.get_json(&e.host_url("20.12.34.56", "")).await;
    assert_eq!(v4["netblock"], "20.12.0.0/16");
    assert_eq!(v4["countryOrRegion"], "US");

    let (_, name) = e.get_json(&e.host_url("contoso.com", "")).await;
    assert!(name["@odata.type"]
        .as_str()
        .unwrap()
        .eq_ignore_ascii_case("#microsoft.graph.security.hostname"));
    assert!(name.get("registrar").is_some() && name.get("registrant").is_some());
    assert!(name["firstSeenDateTime"].is_string());

    let (_, whois) = e.get_json(&e.host_url("contoso.com", "whois")).await;
    for f in [
        "id",
        "whoisServer",
        "domainStatus",
        "rawWhoisText",
        "nameservers",
        "host",
        "registrationDateTime",
        "expirationDateTime",
        "lastUpdateDateTime",
        "abuse",
        "admin",
        "billing",
        "noc",
        "registrant",
        "registrar",
        "technical",
        "zone",
    ] {
        assert!(whois.get(f).is_some(), "{f}");
    }
    assert_eq!(whois["host"]["id"], "contoso.com");

    let (_, odd) = e
        .get_json(&e.host_url("placeholder.contoso.com", "whois"))
        .await;
    assert!(odd.to_string().contains("String (timestamp)"));

    let (_, sel) = e
        .get_json(&format!(
            "{}?$select=whoisServer",
            e.host_url("contoso.com", "whois")
        ))
        .await;
    assert!(sel.get("whoisServer").is_some() && sel.get("rawWhoisText").is_none());
}

#[tokio::test]
async fn host_pairs_have_duplicates_and_filter() {
    let e = env().await;
    let (pairs, _) = e
        .walk(&format!(
            "{}?$top=500",
            e.host_url("popular.contoso.com", "hostPairs")
        ))
        .await;
    let mut seen = HashSet::new();
    let dup = pairs.iter().any(|p| {
        !seen.insert((
            p["parentHost"]["id"].to_string(),
            p["childHost"]["id"].to_string(),
        ))
    });
    assert!(dup, "expected a pair listed twice with different linkKind");

    let url = format!(
        "{}?$filter=linkKind eq 'redirect'&$top=500",
        e.host_url("popular.contoso.com", "hostPairs")
    );
    let (_, body) = e.get_json(&url).await;
    let value = body["value"].as_array().unwrap();
    assert!(!value.is_empty());
    assert!(value.iter().all(|p| p["linkKind"] == "redirect"));

    let (children, _) = e
        .walk(&e.host_url("popular.contoso.com", "childHostPairs"))
        .await;
    assert!(children
        .iter()
        .all(|p| p["parentHost"]["id"] == "popular.contoso.com"));
}

#[tokio::test]
async fn chaining_from_an_evil_host_finds_actor_indicators() {
    let e = env().await;
    let (_, own) = e
        .get_json(&e.host_url("evil.contoso.com", "reputation"))
        .await;
    assert_eq!(own["classification"], "malicious");

    let (records, _) = e.walk(&e.host_url("evil.contoso.com", "passiveDns")).await;
    let (profiles, _) = e.walk(&e.ti_url("intelProfiles")).await;
    assert_eq!(profiles.len(), 7);
    let shared: Vec<String> = shared_hosts().into_iter().map(|(h, _)| h).collect();
    let mut matched = 0;
    for r in &records {
        let artifact = r["artifact"]["id"].as_str().unwrap();
        // A shared host names an actor too, but no profile lists it (see the shared-host tests).
        if shared.iter().any(|h| h == artifact) {
            continue;
        }
        let (_, rep) = e.get_json(&e.host_url(artifact, "reputation")).await;
        if rep["classification"] != "malicious" {
            continue;
        }
        let cti = rep["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|rule| rule["name"] == "Cyber Threat Intelligence")
            .expect("malicious hosts carry a CTI rule");
        let actor = match &cti["description"] {
            Value::String(s) => s.clone(),
            Value::Array(a) => a[0].as_str().unwrap().to_string(),
            other => panic!("{other}"),
        };
        let profile = profiles
            .iter()
            .find(|p| p["title"] == actor.as_str())
            .expect("the actor has a profile");
        assert_eq!(profile["kind"], "actor");
        let id = profile["id"].as_str().unwrap();
        let (indicators, _) = e
            .walk(&e.ti_url(&format!("intelProfiles/{id}/indicators")))
            .await;
        assert!(
            indicators.iter().any(|i| i["artifact"]["id"] == artifact),
            "{artifact} not among {actor}'s indicators"
        );
        matched += 1;
    }
    assert!(matched >= 3, "{matched}");
    assert!(e.sim.count("intelProfileIndicators") >= matched);
}

/// The actor a reputation's `Cyber Threat Intelligence` rule names, if it has one.
fn cti_actor(rep: &Value) -> Option<String> {
    let rule = rep["rules"]
        .as_array()?
        .iter()
        .find(|rule| rule["name"] == "Cyber Threat Intelligence")?;
    match &rule["description"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => a.first()?.as_str().map(str::to_string),
        _ => None,
    }
}

#[tokio::test]
async fn shared_hosts_list_thousands_of_names_over_pages() {
    let e = env().await;
    let opts = crate::observable::NormaliseOptions::default();
    for (host, _) in shared_hosts() {
        let want = shared_host_names(&host).unwrap();
        assert!((1500..=4000).contains(&want), "{host} {want}");
        // A public value the worker accepts, like every name listed behind it.
        assert!(
            matches!(
                crate::observable::normalise(&host, None, &opts),
                Ok(crate::observable::Normalised::Ready(_))
            ),
            "{host}"
        );
        for sub in ["passiveDns", "passiveDnsReverse"] {
            let url = format!("{}?$top=1000", e.host_url(&host, sub));
            let (_, first) = e.get_json(&url).await;
            assert_eq!(first["value"].as_array().unwrap().len(), 1000);
            assert!(first["@odata.nextLink"].is_string(), "{host} {sub}");
            let (items, pages) = e.walk(&url).await;
            assert_eq!(items.len(), want, "{host} {sub}");
            assert_eq!(pages, want.div_ceil(1000));
            let names: HashSet<&str> = items
                .iter()
                .map(|i| i["artifact"]["id"].as_str().unwrap())
                .collect();
            assert_eq!(names.len(), want, "{host} {sub}: names are distinct");
            let ids: HashSet<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
            assert_eq!(ids.len(), want);
            for item in &items {
                assert_eq!(item["parentHost"]["id"], host.as_str());
                assert!(item["artifact"]["@odata.type"]
                    .as_str()
                    .unwrap()
                    .eq_ignore_ascii_case("#microsoft.graph.security.hostname"));
                assert!(item["lastSeenDateTime"].is_string());
            }
            // Every name behind a shared host resolves to it, and is public.
            for name in names.iter().step_by(97) {
                assert_eq!(
                    shared_host_for(name).as_deref(),
                    Some(host.as_str()),
                    "{name}"
                );
                assert!(
                    matches!(
                        crate::observable::normalise(name, None, &opts),
                        Ok(crate::observable::Normalised::Ready(_))
                    ),
                    "{name}"
                );
            }
            // Built page by page, the records are the ones a query over all of them sees.
            let rt = if host.parse::<std::net::IpAddr>().is_ok() {
                "A"
            } else {
                "CNAME"
            };
            let (filtered, _) = e
                .walk(&format!(
                    "{}?$top=1000&$filter=recordType eq '{rt}'",
                    e.host_url(&host, sub)
                ))
                .await;
            assert_eq!(filtered, items, "{host} {sub}");
        }
        // Past the end: an empty last page, no link.
        let (_, past) = e
            .get_json(&format!(
                "{}?$top=1000&$skip=9000",
                e.host_url(&host, "passiveDns")
            ))
            .await;
        assert_eq!(past["value"], json!([]));
        assert!(past.get("@odata.nextLink").is_none());
    }
    assert_eq!(shared_host_names("contoso.com"), None);
}

#[tokio::test]
async fn about_a_quarter_of_names_resolve_to_a_shared_host() {
    let names: Vec<String> = (0..4000).map(|i| format!("host{i}.fabrikam.com")).collect();
    let resolving: Vec<(String, String)> = names
        .iter()
        .filter_map(|n| shared_host_for(n).map(|h| (n.clone(), h)))
        .collect();
    let share = resolving.len() as f64 / names.len() as f64;
    assert!((0.2..=0.3).contains(&share), "{share}");
    // Every shared host gets some of them.
    let shared = shared_hosts();
    for (host, _) in &shared {
        let n = resolving.iter().filter(|(_, h)| h == host).count();
        assert!(n > 100, "{host} {n}");
    }
    for never in [
        "unknown.fabrikam.com",
        "a.nxdomain.fabrikam.com",
        "20.1.2.3",
        "2603:1030::1",
        "8.8.8.8",
        "edge.sharedcdn-sim.net",
        "not a host",
    ] {
        assert_eq!(shared_host_for(never), None, "{never}");
    }

    // Over HTTP: the extra record is the last one, to the host `shared_host_for` says.
    let e = env().await;
    for (name, host) in resolving.iter().take(12) {
        let (records, _) = e.walk(&e.host_url(name, "passiveDns")).await;
        let last = records.last().unwrap();
        assert_eq!(last["artifact"]["id"], host.as_str(), "{name}");
        let rt = if host.parse::<std::net::IpAddr>().is_ok() {
            "A"
        } else {
            "CNAME"
        };
        assert_eq!(last["recordType"], rt);
        let to_shared = records
            .iter()
            .filter(|r| {
                shared
                    .iter()
                    .any(|(h, _)| r["artifact"]["id"] == h.as_str())
            })
            .count();
        assert_eq!(to_shared, 1, "{name}");
    }
    for name in names
        .iter()
        .filter(|n| shared_host_for(n).is_none())
        .take(12)
    {
        let (records, _) = e.walk(&e.host_url(name, "passiveDns")).await;
        assert!(records.iter().all(|r| !shared
            .iter()
            .any(|(h, _)| r["artifact"]["id"] == h.as_str())));
    }
}

#[tokio::test]
async fn shared_hosts_name_actors_no_profile_lists() {
    let e = env().await;
    let (profiles, _) = e.walk(&e.ti_url("intelProfiles")).await;
    let mut listed: HashSet<String> = HashSet::new();
    for p in &profiles {
        let id = p["id"].as_str().unwrap();
        let (indicators, _) = e
            .walk(&e.ti_url(&format!("intelProfiles/{id}/indicators")))
            .await;
        listed.extend(
            indicators
                .iter()
                .map(|i| i["artifact"]["id"].as_str().unwrap().to_string()),
        );
    }
    let shared = shared_hosts();
    assert!(shared.iter().filter(|(_, actor)| actor.is_some()).count() >= 2);
    for (host, actor) in &shared {
        assert!(!listed.contains(host), "{host} is a profile indicator");
        let (_, rep) = e.get_json(&e.host_url(host, "reputation")).await;
        assert_eq!(cti_actor(&rep).as_deref(), *actor, "{host}: {rep}");
        let Some(actor) = actor else {
            continue;
        };
        assert!(
            ["malicious", "suspicious"].contains(&rep["classification"].as_str().unwrap()),
            "{rep}"
        );
        let rule = &rep["rules"][0];
        assert_eq!(rule["severity"], "high");
        assert!(rule["relatedDetailsUrl"]
            .as_str()
            .unwrap()
            .contains(&data::profile_id(actor)));
        // A dedicated counterpart naming the same actor, in the same rule, that the profile
        // does list: the pair a confidence test compares.
        let dedicated = data::pool()
            .malicious
            .iter()
            .find(|h| data::actor_of(h) == *actor)
            .unwrap();
        assert!(listed.contains(dedicated.as_str()), "{dedicated}");
        let (_, rep) = e.get_json(&e.host_url(dedicated, "reputation")).await;
        assert_eq!(cti_actor(&rep).as_deref(), Some(*actor));
        // And a name that resolves to the shared host.
        let name = (0..)
            .map(|i| format!("ioc{i}.woodgrove-test.com"))
            .find(|n| shared_host_for(n).as_deref() == Some(host.as_str()))
            .unwrap();
        let (records, _) = e.walk(&e.host_url(&name, "passiveDns")).await;
        assert!(records.iter().any(|r| r["artifact"]["id"] == host.as_str()));
    }
    let (_, entity) = e.get_json(&e.host_url("8.8.8.8", "")).await;
    assert_eq!(entity["autonomousSystem"]["number"], 15169);
}

#[tokio::test]
async fn added_indicators_are_listed_until_cleared() {
    let e = env().await;
    let ids = data::profile_ids();
    let volt = &ids["Volt Typhoon"];
    let url = e.ti_url(&format!("intelProfiles/{volt}/indicators"));
    let (before, _) = e.walk(&url).await;

    let c = e.sim.control();
    assert_eq!(
        c.add_profile_indicator("volt typhoon", "104.18.32.7")
            .as_deref(),
        Some(volt.as_str())
    );
    assert_eq!(
        c.add_profile_indicator(volt, "New-Infra.Woodgrove-Test.com.")
            .as_deref(),
        Some(volt.as_str())
    );
    // Twice is once.
    c.add_profile_indicator("Volt Typhoon", "104.18.32.7");
    assert_eq!(c.add_profile_indicator("Nobody Blizzard", "1.2.3.4"), None);

    let (after, _) = e.walk(&url).await;
    assert_eq!(after.len(), before.len() + 2);
    assert_eq!(after[..before.len()], before[..]);
    let ip = &after[before.len()];
    assert_eq!(ip["artifact"]["id"], "104.18.32.7");
    assert_eq!(
        ip["artifact"]["@odata.type"],
        "#microsoft.graph.security.ipAddress"
    );
    let name = &after[before.len() + 1];
    assert_eq!(name["artifact"]["id"], "new-infra.woodgrove-test.com");
    assert!(name["artifact"]["@odata.type"]
        .as_str()
        .unwrap()
        .eq_ignore_ascii_case("#microsoft.graph.security.hostname"));
    for added in [ip, name] {
        for field in ["id", "source", "firstSeenDateTime", "lastSeenDateTime"] {
            assert!(added[field].is_string(), "{field}: {added}");
        }
    }
    // Only that profile has them.
    let aqua = &ids["Aqua Blizzard"];
    let (others, _) = e
        .walk(&e.ti_url(&format!("intelProfiles/{aqua}/indicators")))
        .await;
    assert!(others.iter().all(|i| i["artifact"]["id"] != "104.18.32.7"));

    c.clear_added_indicators();
    let (cleared, _) = e.walk(&url).await;
    assert_eq!(cleared, before);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let e = env().await;
    let addr = e.sim.addr();
    e.sim.shutdown();
    // Bounded wait for the listener to close; no assertion on how long it takes.
    let mut closed = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed);
}

#[tokio::test]
async fn serve_runs_until_its_shutdown_future() {
    // Find a free port, then let `serve` bind it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(SimConfig::default(), addr, None, async {
        let _ = stopped.await;
    }));
    let url = format!("http://{addr}/_sim/counters");
    let mut body = None;
    for _ in 0..500 {
        if let Ok(resp) = reqwest::get(&url).await {
            body = Some(resp.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(body.unwrap()["graph"], 0);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
