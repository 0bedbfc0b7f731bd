//! STIX 2.1 bundles of export rows.
//!
//! Per observable: its SCO (`domain-name`, `ipv4-addr`, `ipv6-addr`; hosts are domain names),
//! an `observed-data` saying when and how often the worker looked at it, an `indicator` whose
//! pattern matches it (`[domain-name:value = 'evil.example']`), `indicator based-on
//! observed-data`. Per actor: an `intrusion-set`. Per actor hit: `indicator indicates
//! intrusion-set` (one per observable and actor, naming every linking artifact, with the
//! attribution's `confidence`), and when the linking artifact is a counterpart rather than the
//! observable itself, the artifact's SCO and `related-to` from it to the intrusion set.
//!
//! Microsoft's actor names (Forest Blizzard, Storm-0558) name clusters of activity and
//! infrastructure that Microsoft attributes to one operator, not the operator itself (the
//! people, the agency or the company behind it, which STIX models as `threat-actor`). STIX 2.1
//! defines exactly that cluster as an `intrusion-set` ("a grouped set of adversarial behaviors
//! and resources with common properties that is believed to be orchestrated by a single
//! organization"), so that is what an actor hit points at.
//!
//! Ids are deterministic: SCOs by the STIX 2.1 rule (UUIDv5 in the SCO namespace over the
//! canonical JSON of the ID contributing property, `value`), everything else by UUIDv5 in this
//! project's namespace over the type and the natural key (observable, actor, relationship ends).
//! Timestamps come from the rows (first seen, last activity), never from the clock, and
//! objects are ordered by id: the same rows give the same bundle, byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::ExportRow;
use crate::model::Band;
use crate::observable::ObservableKind;

/// STIX 2.1 section 2.9: the namespace of SCO identifiers.
const SCO_NAMESPACE: Uuid = Uuid::from_u128(0x00abedb4_aa42_466c_9c01_fed23315a9b7);
/// This project's namespace for SDO, SRO and bundle identifiers; fixed forever, or re-exports
/// would stop matching earlier ones.
const PROJECT_NAMESPACE: Uuid = Uuid::from_u128(0x6d1e2f4a_93c7_4b0e_8a55_0f3cd2e71b94);

const SPEC_VERSION: &str = "2.1";
const MDTI: &str = "Microsoft Defender Threat Intelligence";

/// The STIX cyber-observable type of an observable kind.
pub fn sco_type(kind: ObservableKind) -> &'static str {
    match kind {
        ObservableKind::Ipv4 => "ipv4-addr",
        ObservableKind::Ipv6 => "ipv6-addr",
        ObservableKind::Domain | ObservableKind::Host => "domain-name",
    }
}

/// The STIX cyber-observable type of a linking artifact (a canonical IP or host name).
fn artifact_sco_type(artifact: &str) -> &'static str {
    match artifact.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => "ipv4-addr",
        Ok(IpAddr::V6(_)) => "ipv6-addr",
        Err(_) => "domain-name",
    }
}

/// The id of the SCO of type `sco_type` with this `value`, by the STIX 2.1 rule.
pub fn sco_id(sco_type: &str, value: &str) -> String {
    // The canonical (RFC 8785) form of a one-member object with a string member is what
    // serde_json writes.
    let name = json!({ "value": value }).to_string();
    format!(
        "{sco_type}--{}",
        Uuid::new_v5(&SCO_NAMESPACE, name.as_bytes())
    )
}

/// The id of an SDO or SRO of `object_type` whose natural key is `key`.
fn object_id(object_type: &str, key: &str) -> String {
    format!(
        "{object_type}--{}",
        Uuid::new_v5(
            &PROJECT_NAMESPACE,
            format!("{object_type}/{key}").as_bytes()
        )
    )
}

/// A STIX pattern matching exactly this value.
pub fn pattern(sco_type: &str, value: &str) -> String {
    let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
    format!("[{sco_type}:value = '{quoted}']")
}

/// STIX timestamps: UTC, `Z`, millisecond precision (required for `created` and `modified`).
fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn sco(sco_type: &str, value: &str) -> Value {
    json!({
        "type": sco_type,
        "spec_version": SPEC_VERSION,
        "id": sco_id(sco_type, value),
        "value": value,
    })
}

/// A span of time over several rows.
#[derive(Debug, Clone, Copy)]
struct Span {
    created: DateTime<Utc>,
    modified: DateTime<Utc>,
}

impl Span {
    fn new(created: DateTime<Utc>, modified: DateTime<Utc>) -> Span {
        Span {
            created,
            modified: modified.max(created),
        }
    }

    fn widen(&mut self, other: Span) {
        self.created = self.created.min(other.created);
        self.modified = self.modified.max(other.modified).max(self.created);
    }
}

fn widen(spans: &mut BTreeMap<String, Span>, key: &str, span: Span) {
    spans
        .entry(key.to_owned())
        .and_modify(|s| s.widen(span))
        .or_insert(span);
}

struct Actor {
    name: String,
    profile_id: Option<String>,
    aliases: BTreeSet<String>,
    span: Span,
}

/// One `indicates` relationship being gathered: the linking artifacts and the articles.
#[derive(Default)]
struct Indicates {
    /// The attribution's confidence (see where it is set).
    confidence: Option<u8>,
    artifacts: BTreeSet<String>,
    sources: BTreeSet<String>,
    /// (url, article id, title), deduplicated.
    articles: BTreeSet<(Option<String>, Option<String>, Option<String>)>,
    span: Option<Span>,
}

/// A relationship object.
fn relationship(
    relationship_type: &str,
    source: &str,
    target: &str,
    span: Span,
    description: Option<String>,
) -> Value {
    let mut object = json!({
        "type": "relationship",
        "spec_version": SPEC_VERSION,
        "id": object_id("relationship", &format!("{relationship_type}/{source}/{target}")),
        "created": timestamp(span.created),
        "modified": timestamp(span.modified),
        "relationship_type": relationship_type,
        "source_ref": source,
        "target_ref": target,
    });
    if let Some(description) = description {
        object["description"] = Value::String(description);
    }
    object
}

/// The key an actor's intrusion set is identified by: its profile when known (so renames keep
/// the id), else its name, case-insensitively.
fn actor_key(actor: &str, profile_id: Option<&str>) -> String {
    match profile_id {
        Some(profile) => format!("profile/{profile}"),
        None => format!("name/{}", actor.to_lowercase()),
    }
}

/// What the rows say, gathered by id before the objects that need every row are written.
#[derive(Default)]
struct Gathered {
    objects: BTreeMap<String, Value>,
    actors: BTreeMap<String, Actor>,
    indicates: BTreeMap<(String, String), Indicates>,
    /// (artifact SCO id, actor key) → span and the observables it links.
    related: BTreeMap<(String, String), (Span, BTreeSet<String>)>,
    observable_spans: BTreeMap<String, Span>,
}

impl Gathered {
    /// The row's SCO now; its span, and its hit's actor, relationship and artifact, for later.
    fn row(&mut self, row: &ExportRow) {
        let sco_type = sco_type(row.kind);
        let key = format!("{}/{}", row.kind.as_str(), row.value);
        let indicator_id = object_id("indicator", &key);
        let row_span = Span::new(row.first_seen_at, row.last_activity);
        widen(&mut self.observable_spans, &key, row_span);
        self.objects
            .insert(sco_id(sco_type, &row.value), sco(sco_type, &row.value));

        let Some(hit) = &row.hit else { return };
        let actor = actor_key(&hit.actor, hit.profile_id.as_deref());
        let hit_span = Span::new(hit.created_at, row.last_activity);
        self.actor(&actor, hit, hit_span);
        self.indicates
            .entry((indicator_id, actor.clone()))
            .or_default()
            .add(hit, hit_span);
        if hit.artifact != row.value {
            self.artifact(row, hit, actor, hit_span);
        }
    }

    fn actor(&mut self, actor: &str, hit: &super::ExportHit, hit_span: Span) {
        let entry = self
            .actors
            .entry(actor.to_owned())
            .or_insert_with(|| Actor {
                name: hit.actor.clone(),
                profile_id: hit.profile_id.clone(),
                aliases: BTreeSet::new(),
                span: hit_span,
            });
        entry.span.widen(hit_span);
        entry.aliases.extend(
            hit.aliases
                .iter()
                .filter(|a| !a.eq_ignore_ascii_case(&hit.actor))
                .cloned(),
        );
    }

    /// A linking artifact other than the observable: its SCO, and the observables it links to
    /// the actor.
    fn artifact(&mut self, row: &ExportRow, hit: &super::ExportHit, actor: String, hit_span: Span) {
        let artifact_type = artifact_sco_type(&hit.artifact);
        let artifact_id = sco_id(artifact_type, &hit.artifact);
        self.objects
            .insert(artifact_id.clone(), sco(artifact_type, &hit.artifact));
        self.related
            .entry((artifact_id, actor))
            .and_modify(|(span, linked)| {
                span.widen(hit_span);
                linked.insert(row.value.clone());
            })
            .or_insert_with(|| (hit_span, BTreeSet::from([row.value.clone()])));
    }
}

impl Indicates {
    fn add(&mut self, hit: &super::ExportHit, hit_span: Span) {
        // `indicates` says the observable points at the actor: the claim of the attribution (the
        // observable and actor pair), not of one linking artifact, so it carries the pair's
        // confidence, the best of all its hits (as events and `dash_attributions` do), even
        // when a filter left some of those hits out of the rows. Every row of a pair carries
        // the same value; the maximum only guards against rows read at different moments.
        self.confidence = self.confidence.max(Some(hit.attribution_confidence));
        self.artifacts.insert(hit.artifact.clone());
        match &mut self.span {
            Some(span) => span.widen(hit_span),
            None => self.span = Some(hit_span),
        }
        for evidence in hit.evidence.as_array().into_iter().flatten() {
            self.add_evidence(evidence);
        }
    }

    /// The evidence's source, and the article it cites if it is one.
    fn add_evidence(&mut self, evidence: &Value) {
        let text = |field: &str| {
            evidence
                .get(field)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        if let Some(source) = text("source") {
            if source == "intel_article" {
                let article = (text("url"), text("article_id"), text("title"));
                if article != (None, None, None) {
                    self.articles.insert(article);
                }
            }
            self.sources.insert(source);
        }
    }
}

/// The bundle of `rows` (see the module documentation).
pub fn bundle(rows: &[ExportRow]) -> Value {
    let mut gathered = Gathered::default();
    for row in rows {
        gathered.row(row);
    }
    let Gathered {
        mut objects,
        actors,
        indicates,
        related,
        observable_spans,
    } = gathered;
    insert_observables(&mut objects, rows, &observable_spans);
    for (key, actor) in &actors {
        objects.insert(object_id("intrusion-set", key), intrusion_set(key, actor));
    }
    for ((indicator_id, actor), gathered) in &indicates {
        let Some(span) = gathered.span else { continue };
        insert(
            &mut objects,
            indicates_relationship(indicator_id, actor, gathered, span),
        );
    }
    for ((artifact_id, actor), (span, linked)) in &related {
        let target = object_id("intrusion-set", actor);
        let linked: Vec<&str> = linked.iter().map(String::as_str).collect();
        let description = format!("Linking artifact of {}.", linked.join(", "));
        let object = relationship("related-to", artifact_id, &target, *span, Some(description));
        insert(&mut objects, object);
    }
    wrap(objects)
}

/// Per observable, once: observed-data, indicator, based-on.
fn insert_observables(
    objects: &mut BTreeMap<String, Value>,
    rows: &[ExportRow],
    observable_spans: &BTreeMap<String, Span>,
) {
    let mut seen_observables = BTreeSet::new();
    for row in rows {
        let key = format!("{}/{}", row.kind.as_str(), row.value);
        if !seen_observables.insert(key.clone()) {
            continue;
        }
        let span = observable_spans[&key];
        let observed_id = object_id("observed-data", &key);
        objects.insert(observed_id.clone(), observed_data(row, &observed_id, span));
        let indicator_id = object_id("indicator", &key);
        objects.insert(
            indicator_id.clone(),
            indicator(row, rows, &indicator_id, span),
        );
        let based_on = relationship("based-on", &indicator_id, &observed_id, span, None);
        insert(objects, based_on);
    }
}

/// When and how often the worker looked at the row's observable.
fn observed_data(row: &ExportRow, id: &str, span: Span) -> Value {
    let first_observed = row.first_run_at.unwrap_or(row.first_seen_at);
    let last_observed = row
        .last_run_at
        .unwrap_or(first_observed)
        .max(first_observed);
    json!({
        "type": "observed-data",
        "spec_version": SPEC_VERSION,
        "id": id,
        "created": timestamp(span.created),
        "modified": timestamp(span.modified),
        "first_observed": timestamp(first_observed),
        "last_observed": timestamp(last_observed),
        "number_observed": row.runs.clamp(1, 999_999_999),
        "object_refs": [sco_id(sco_type(row.kind), &row.value)],
    })
}

/// The indicator of the row's observable, malicious when any row of it hit an actor.
fn indicator(row: &ExportRow, rows: &[ExportRow], id: &str, span: Span) -> Value {
    let hits: Vec<&str> = rows
        .iter()
        .filter(|r| r.kind == row.kind && r.value == row.value)
        .filter_map(|r| r.hit.as_ref().map(|h| h.actor.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let malicious = !hits.is_empty() || row.classification.as_deref() == Some("malicious");
    let sco_type = sco_type(row.kind);
    let mut indicator = json!({
        "type": "indicator",
        "spec_version": SPEC_VERSION,
        "id": id,
        "created": timestamp(span.created),
        "modified": timestamp(span.modified),
        "name": row.value,
        "indicator_types": [if malicious { "malicious-activity" } else { "anomalous-activity" }],
        "pattern": pattern(sco_type, &row.value),
        "pattern_type": "stix",
        "pattern_version": SPEC_VERSION,
        "valid_from": timestamp(row.first_seen_at),
    });
    let description = indicator_description(row, &hits);
    if !description.is_empty() {
        indicator["description"] = Value::String(description);
    }
    indicator
}

/// The reputation, then the actors the observable is linked to; empty when neither is known.
fn indicator_description(row: &ExportRow, hits: &[&str]) -> String {
    let mut description = match (&row.classification, row.score) {
        (Some(classification), Some(score)) => {
            format!("{MDTI} reputation: {classification} (score {score}).")
        }
        (Some(classification), None) => format!("{MDTI} reputation: {classification}."),
        _ => String::new(),
    };
    if !hits.is_empty() {
        if !description.is_empty() {
            description.push(' ');
        }
        description.push_str(&format!("Linked to {}.", hits.join(", ")));
    }
    description
}

fn intrusion_set(key: &str, actor: &Actor) -> Value {
    let mut object = json!({
        "type": "intrusion-set",
        "spec_version": SPEC_VERSION,
        "id": object_id("intrusion-set", key),
        "created": timestamp(actor.span.created),
        "modified": timestamp(actor.span.modified),
        "name": actor.name,
    });
    if !actor.aliases.is_empty() {
        object["aliases"] = json!(actor.aliases);
    }
    if let Some(profile) = &actor.profile_id {
        object["external_references"] = json!([{
            "source_name": MDTI,
            "description": "intel profile",
            "external_id": profile,
        }]);
    }
    object
}

/// `indicator indicates intrusion-set`, naming the linking artifacts, the evidence and the
/// attribution's confidence, with the articles as references.
fn indicates_relationship(
    indicator_id: &str,
    actor: &str,
    gathered: &Indicates,
    span: Span,
) -> Value {
    let target = object_id("intrusion-set", actor);
    let artifacts: Vec<&str> = gathered.artifacts.iter().map(String::as_str).collect();
    let sources: Vec<&str> = gathered.sources.iter().map(String::as_str).collect();
    let mut description = format!("Linking artifact(s): {}.", artifacts.join(", "));
    if !sources.is_empty() {
        description.push_str(&format!(" Evidence: {}.", sources.join(", ")));
    }
    if let Some(confidence) = gathered.confidence {
        description.push_str(&format!(
            " Confidence {confidence} ({}).",
            Band::of(confidence)
        ));
    }
    let mut object = relationship("indicates", indicator_id, &target, span, Some(description));
    if let Some(confidence) = gathered.confidence {
        // STIX 2.1's `confidence` common property is an integer 0-100, the scale the worker
        // scores on, so the value goes through as it is. A consumer reading it on the
        // specification's None/Low/Med/High scale (its appendix A) gets High from 70, as
        // Band::HIGH; its Med starts at 30 where the worker's medium starts at 40, hence the
        // band in the description too.
        object["confidence"] = json!(confidence);
    }
    if !gathered.articles.is_empty() {
        object["external_references"] = article_references(&gathered.articles);
    }
    object
}

/// External references to intel articles, each with what is known of it.
fn article_references(
    articles: &BTreeSet<(Option<String>, Option<String>, Option<String>)>,
) -> Value {
    let references: Vec<Value> = articles
        .iter()
        .map(|(url, article_id, title)| {
            let mut reference = Map::new();
            reference.insert("source_name".into(), json!(format!("{MDTI} intel article")));
            if let Some(url) = url {
                reference.insert("url".into(), json!(url));
            }
            if let Some(article_id) = article_id {
                reference.insert("external_id".into(), json!(article_id));
            }
            if let Some(title) = title {
                reference.insert("description".into(), json!(title));
            }
            Value::Object(reference)
        })
        .collect();
    Value::Array(references)
}

/// The bundle of `objects`, named after their ids.
fn wrap(objects: BTreeMap<String, Value>) -> Value {
    let ids: Vec<&str> = objects.keys().map(String::as_str).collect();
    let mut bundle = json!({
        "type": "bundle",
        "id": object_id("bundle", &ids.join("\n")),
    });
    if !objects.is_empty() {
        bundle["objects"] = Value::Array(objects.into_values().collect());
    }
    bundle
}

fn insert(objects: &mut BTreeMap<String, Value>, object: Value) {
    if let Some(id) = object["id"].as_str() {
        objects.insert(id.to_owned(), object);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::ExportHit;
    use chrono::TimeZone;

    fn at(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, day, 12, 0, 0).unwrap()
    }

    fn flagged(kind: ObservableKind, value: &str) -> ExportRow {
        ExportRow {
            kind,
            value: value.into(),
            first_seen_at: at(1),
            last_enriched_at: Some(at(2)),
            runs: 2,
            first_run_at: Some(at(1)),
            last_run_at: Some(at(2)),
            classification: Some("suspicious".into()),
            score: Some(60),
            hit: None,
            last_activity: at(2),
        }
    }

    fn hit(value: &str, actor: &str, artifact: &str) -> ExportRow {
        ExportRow {
            classification: Some("malicious".into()),
            hit: Some(ExportHit {
                actor: actor.into(),
                profile_id: Some(format!("profile-{}", actor.to_lowercase())),
                aliases: vec!["APT28".into()],
                artifact: artifact.into(),
                path: vec![value.into(), artifact.into()],
                evidence: json!([{"source": "reputation_rule", "rule": "Cyber Threat Intelligence"},
                                 {"source": "intel_article", "title": "A campaign", "url": "https://example.test/a"}]),
                first_seen: Some(at(1)),
                last_seen: Some(at(3)),
                created_at: at(2),
                confidence: 55,
                attribution_confidence: 85,
            }),
            last_activity: at(3),
            ..flagged(ObservableKind::Domain, value)
        }
    }

    fn of_type<'a>(bundle: &'a Value, kind: &str) -> Vec<&'a Value> {
        bundle["objects"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["type"] == kind)
            .collect()
    }

    #[test]
    fn sco_ids_follow_the_stix_rule() {
        // The STIX 2.1 rule: UUIDv5(SCO namespace, canonical JSON of the contributing
        // properties). The expected value was computed with Python's uuid module:
        // uuid.uuid5(uuid.UUID('00abedb4-aa42-466c-9c01-fed23315a9b7'), '{"value":"example.com"}')
        assert_eq!(
            sco_id("domain-name", "example.com"),
            "domain-name--bedb4899-d24b-5401-bc86-8f6b4cc18ec7"
        );
        assert_ne!(
            sco_id("ipv4-addr", "1.2.3.4"),
            sco_id("domain-name", "1.2.3.4")
        );
    }

    #[test]
    fn patterns_match_the_value_and_quote_it() {
        assert_eq!(
            pattern("domain-name", "evil.example"),
            "[domain-name:value = 'evil.example']"
        );
        assert_eq!(
            pattern("ipv6-addr", "2001:db8::1"),
            "[ipv6-addr:value = '2001:db8::1']"
        );
        assert_eq!(
            pattern("domain-name", "a'b\\c"),
            "[domain-name:value = 'a\\'b\\\\c']"
        );
    }

    #[test]
    fn a_flagged_observable_without_hits_is_an_anomalous_indicator() {
        let bundle = bundle(&[flagged(ObservableKind::Ipv4, "203.0.113.9")]);
        let indicators = of_type(&bundle, "indicator");
        assert_eq!(indicators.len(), 1);
        assert_eq!(
            indicators[0]["pattern"],
            "[ipv4-addr:value = '203.0.113.9']"
        );
        assert_eq!(
            indicators[0]["indicator_types"],
            json!(["anomalous-activity"])
        );
        assert_eq!(of_type(&bundle, "ipv4-addr").len(), 1);
        assert_eq!(of_type(&bundle, "observed-data")[0]["number_observed"], 2);
        assert!(of_type(&bundle, "intrusion-set").is_empty());
        let relationships = of_type(&bundle, "relationship");
        assert_eq!(relationships.len(), 1);
        assert_eq!(relationships[0]["relationship_type"], "based-on");
    }

    #[test]
    fn actor_hits_become_intrusion_sets_with_indicates_and_related_to() {
        let rows = [
            hit("evil.example", "Forest Blizzard", "198.51.100.7"),
            hit("evil.example", "Forest Blizzard", "evil.example"),
            hit("worse.example", "Forest Blizzard", "198.51.100.7"),
        ];
        let bundle = bundle(&rows);
        let sets = of_type(&bundle, "intrusion-set");
        assert_eq!(sets.len(), 1, "one intrusion set per actor");
        assert_eq!(sets[0]["name"], "Forest Blizzard");
        assert_eq!(sets[0]["aliases"], json!(["APT28"]));
        assert_eq!(sets[0]["created"], "2024-05-02T12:00:00.000Z");
        let relationships = of_type(&bundle, "relationship");
        let count = |kind: &str| {
            relationships
                .iter()
                .filter(|r| r["relationship_type"] == kind)
                .count()
        };
        assert_eq!(count("indicates"), 2, "one per observable and actor");
        assert_eq!(count("based-on"), 2);
        assert_eq!(count("related-to"), 1, "one per counterpart and actor");
        let related = relationships
            .iter()
            .find(|r| r["relationship_type"] == "related-to")
            .unwrap();
        assert_eq!(related["source_ref"], sco_id("ipv4-addr", "198.51.100.7"));
        assert_eq!(related["target_ref"], sets[0]["id"]);
        let indicates = relationships
            .iter()
            .find(|r| r["relationship_type"] == "indicates")
            .unwrap();
        assert_eq!(
            indicates["external_references"][0]["url"],
            "https://example.test/a"
        );
        assert_eq!(
            indicates["confidence"], 85,
            "the attribution's confidence, not the hit's"
        );
        let description = indicates["description"].as_str().unwrap();
        assert!(
            description.ends_with("Confidence 85 (high)."),
            "{description}"
        );
        assert!(
            related.get("confidence").is_none(),
            "related-to makes no claim of its own"
        );
        assert_eq!(
            of_type(&bundle, "indicator")[0]["indicator_types"],
            json!(["malicious-activity"])
        );
    }

    #[test]
    fn the_same_rows_give_the_same_bundle() {
        let rows = [
            hit("evil.example", "Forest Blizzard", "198.51.100.7"),
            flagged(ObservableKind::Ipv6, "2001:db8::7"),
        ];
        assert_eq!(bundle(&rows).to_string(), bundle(&rows).to_string(),);
        let mut other = rows.clone();
        other[1].value = "2001:db8::8".into();
        assert_ne!(bundle(&rows)["id"], bundle(&other)["id"]);
    }

    #[test]
    fn no_rows_give_an_empty_bundle() {
        let bundle = bundle(&[]);
        assert_eq!(bundle["type"], "bundle");
        assert!(bundle.get("objects").is_none());
    }
}
