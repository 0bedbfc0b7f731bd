//! Reputation rules and profile indicators → actor hits. Pure functions: no I/O.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};
use serde_json::Value;

use super::confidence::{self, HitContext};
use super::{ArticleRef, Node, ProfileIndex, ProfileInfo};
use crate::enrich::{Reputation, ReputationRule};
use crate::model::{ActorHit, Evidence, Fanout};

/// The rule whose description names the threat actor group(s).
pub const CTI_RULE: &str = "Cyber Threat Intelligence";
/// The rule whose description is an article title and whose URL names the article.
pub const INTEL_ARTICLE_RULE: &str = "Microsoft Defender Threat Intelligence Intel Article";

fn rule_is(rule: &ReputationRule, name: &str) -> bool {
    rule.name
        .as_deref()
        .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
}

/// The group names a `Cyber Threat Intelligence` description holds: one string is one name
/// (never split: a group name may contain anything), a JSON list is several; a string that is
/// itself a JSON list of strings is read as that list. Trimmed, empty ones dropped, each once.
pub fn cti_actor_names(description: &Value) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut push = |name: &str| {
        let name = name.trim();
        if !name.is_empty() && !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.to_owned());
        }
    };
    match description {
        Value::String(text) => {
            let trimmed = text.trim();
            match trimmed
                .starts_with('[')
                .then(|| serde_json::from_str::<Vec<String>>(trimmed).ok())
                .flatten()
            {
                Some(list) => list.iter().for_each(|n| push(n)),
                None => push(trimmed),
            }
        }
        Value::Array(items) => items.iter().filter_map(Value::as_str).for_each(push),
        _ => {}
    }
    names
}

/// The article id of an intel article URL (`https://ti.defender.microsoft.com/article/<id>`):
/// the last path segment after an `article` or `articles` segment; `None` for other URLs.
pub fn article_id(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url.trim()).ok()?;
    let segments: Vec<&str> = parsed.path_segments()?.filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [.., kind, id]
            if kind.eq_ignore_ascii_case("article") || kind.eq_ignore_ascii_case("articles") =>
        {
            Some((*id).to_owned())
        }
        _ => None,
    }
}

fn description_text(description: &Option<Value>) -> Option<String> {
    match description.as_ref()? {
        Value::String(text) => Some(text.trim().to_owned()).filter(|t| !t.is_empty()),
        Value::Array(items) => {
            let parts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        }
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn article_evidence(rule: &ReputationRule) -> Evidence {
    let url = rule
        .related_details_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned);
    Evidence::IntelArticle {
        title: description_text(&rule.description),
        article_id: url.as_deref().and_then(article_id),
        url,
    }
}

/// An actor named on an artifact: the name as found, its profile if one matches, and why.
type Found<'p> = (String, Option<&'p ProfileInfo>, Evidence);

/// Hits and articles for every node that has a reputation or a profile indicator, in walk order.
pub(super) fn attribute(
    order: &[String],
    nodes: &HashMap<String, Node>,
    reputations: &HashMap<String, Option<Reputation>>,
    profiles: &ProfileIndex,
) -> (Vec<ActorHit>, Vec<ArticleRef>) {
    // Keyed by (lowercase actor, artifact): one hit per pair.
    let mut hits: BTreeMap<(String, String), ActorHit> = BTreeMap::new();
    let mut articles = Vec::new();
    for artifact in order {
        let node = &nodes[artifact];
        let mut found = Vec::new();
        let mut article_evidence_here = Vec::new();
        if let Some(Some(reputation)) = reputations.get(artifact) {
            for rule in reputation.rules.iter() {
                if rule_is(rule, CTI_RULE) {
                    found.extend(named_by_rule(rule, reputation, profiles));
                } else if rule_is(rule, INTEL_ARTICLE_RULE) {
                    let evidence = article_evidence(rule);
                    articles.extend(article_ref(artifact, node, &evidence));
                    if !article_evidence_here.contains(&evidence) {
                        article_evidence_here.push(evidence);
                    }
                }
            }
        }
        found.extend(listed_by_profiles(artifact, profiles));
        for found in found {
            merge(&mut hits, artifact, node, found);
        }
        for hit in hits.values_mut().filter(|h| &h.artifact == artifact) {
            for evidence in &article_evidence_here {
                if !hit.evidence.contains(evidence) {
                    hit.evidence.push(evidence.clone());
                }
            }
        }
    }
    (sorted(hits), articles)
}

/// The actors a `Cyber Threat Intelligence` rule names, each with the rule as evidence.
fn named_by_rule<'p>(
    rule: &ReputationRule,
    reputation: &Reputation,
    profiles: &'p ProfileIndex,
) -> Vec<Found<'p>> {
    let evidence = Evidence::ReputationRule {
        rule: rule.name.as_deref().unwrap_or(CTI_RULE).trim().to_owned(),
        severity: rule.severity.clone(),
        score: reputation.score,
        classification: reputation.classification.clone(),
    };
    let names = rule
        .description
        .as_ref()
        .map(cti_actor_names)
        .unwrap_or_default();
    names
        .into_iter()
        .map(|name| {
            let profile = profiles.profile_named(&name);
            (name, profile, evidence.clone())
        })
        .collect()
}

/// The intel article `evidence` is, as found on `artifact`.
fn article_ref(artifact: &str, node: &Node, evidence: &Evidence) -> Option<ArticleRef> {
    let Evidence::IntelArticle {
        title,
        article_id,
        url,
    } = evidence
    else {
        return None;
    };
    Some(ArticleRef {
        artifact: artifact.to_owned(),
        path: node.path.clone(),
        title: title.clone(),
        article_id: article_id.clone(),
        url: url.clone(),
    })
}

/// The actors whose profiles list `artifact` as an indicator.
fn listed_by_profiles<'p>(artifact: &str, profiles: &'p ProfileIndex) -> Vec<Found<'p>> {
    profiles
        .lookup(artifact)
        .into_iter()
        .map(|(profile, indicator)| {
            (
                profile.title.clone(),
                Some(profile),
                Evidence::ProfileIndicator {
                    profile_id: profile.id.clone(),
                    source: indicator.source.clone(),
                    first_seen: indicator.first_seen,
                    last_seen: indicator.last_seen,
                },
            )
        })
        .collect()
}

/// Add what was found on `artifact` to the hit of its actor there, made if it is the first.
fn merge(
    hits: &mut BTreeMap<(String, String), ActorHit>,
    artifact: &str,
    node: &Node,
    (name, profile, evidence): Found<'_>,
) {
    let actor = profile.map_or(name, |p| p.title.clone());
    let hit = hits
        .entry((actor.to_lowercase(), artifact.to_owned()))
        .or_insert_with(|| ActorHit {
            actor,
            profile_id: profile.map(|p| p.id.clone()),
            aliases: profile.map(|p| p.aliases.clone()).unwrap_or_default(),
            artifact: artifact.to_owned(),
            path: node.path.clone(),
            evidence: Vec::new(),
            first_seen: node.first_seen,
            last_seen: node.last_seen,
            confidence: 0,
            factors: Vec::new(),
        });
    if hit.profile_id.is_none() {
        if let Some(p) = profile {
            hit.profile_id = Some(p.id.clone());
            hit.aliases = p.aliases.clone();
        }
    }
    if !hit.evidence.contains(&evidence) {
        hit.evidence.push(evidence);
    }
}

/// Hits by actor (case-insensitively), then by path length, then by artifact.
fn sorted(hits: BTreeMap<(String, String), ActorHit>) -> Vec<ActorHit> {
    let mut hits: Vec<ActorHit> = hits.into_values().collect();
    hits.sort_by(|a, b| {
        (a.actor.to_lowercase(), a.path.len(), &a.artifact).cmp(&(
            b.actor.to_lowercase(),
            b.path.len(),
            &b.artifact,
        ))
    });
    hits
}

/// Give every hit of a walk its confidence (see [`confidence`]): `reputations` are the walk's,
/// `sharing` says how shared the last hop to a hit's artifact is.
pub(super) fn score(
    hits: &mut [ActorHit],
    reputations: &HashMap<String, Option<Reputation>>,
    sharing: impl Fn(&ActorHit) -> Option<Fanout>,
) {
    let mut per_actor: HashMap<String, usize> = HashMap::new();
    for hit in hits.iter() {
        *per_actor.entry(hit.actor.to_lowercase()).or_default() += 1;
    }
    for hit in hits.iter_mut() {
        let (confidence, factors) = confidence::score(&HitContext {
            hops: hit.path.len().saturating_sub(1),
            evidence: &hit.evidence,
            artifacts_for_actor: per_actor[&hit.actor.to_lowercase()],
            sharing: sharing(hit),
            window: (hit.first_seen, hit.last_seen),
            reputation: reputations.get(&hit.artifact).and_then(Option::as_ref),
        });
        hit.confidence = confidence;
        hit.factors = factors;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IntelProfileRecord, ProfileIndicatorRecord};
    use serde_json::json;

    #[test]
    fn a_description_names_one_group_or_a_list() {
        assert_eq!(
            cti_actor_names(&json!(" Aqua Blizzard ")),
            ["Aqua Blizzard"]
        );
        assert_eq!(
            cti_actor_names(&json!("Storm-0558, the one; really")),
            ["Storm-0558, the one; really"]
        );
        assert_eq!(
            cti_actor_names(&json!([
                "Volt Typhoon",
                " ",
                "volt typhoon",
                "Lace Tempest"
            ])),
            ["Volt Typhoon", "Lace Tempest"]
        );
        assert_eq!(
            cti_actor_names(&json!("[\"Mint Sandstorm\"]")),
            ["Mint Sandstorm"]
        );
        assert!(cti_actor_names(&json!(42)).is_empty());
        assert!(cti_actor_names(&json!("")).is_empty());
    }

    #[test]
    fn article_ids_come_from_article_urls_only() {
        assert_eq!(
            article_id("https://ti.defender.microsoft.com/article/831b70a4"),
            Some("831b70a4".into())
        );
        assert_eq!(
            article_id("https://ti.defender.microsoft.com/articles/abc/"),
            Some("abc".into())
        );
        assert_eq!(
            article_id("https://ti.defender.microsoft.com/intel-profiles/abc"),
            None
        );
        assert_eq!(article_id("not a url"), None);
    }

    fn rule(name: &str, description: Value, url: Option<&str>) -> ReputationRule {
        ReputationRule {
            name: Some(name.into()),
            description: Some(description),
            severity: Some("high".into()),
            related_details_url: url.map(str::to_owned),
        }
    }

    #[test]
    fn rules_and_indicators_merge_into_one_hit_per_actor_and_artifact() {
        let profiles = ProfileIndex::from_records(
            vec![IntelProfileRecord {
                id: "p1".into(),
                title: "Forest Blizzard".into(),
                aliases: vec!["APT28".into(), "STRONTIUM".into()],
                first_active: None,
            }],
            vec![(
                "p1".into(),
                ProfileIndicatorRecord {
                    artifact: "20.0.0.2".into(),
                    artifact_type: Some("ipaddress".into()),
                    source: Some("microsoft".into()),
                    first_seen: None,
                    last_seen: None,
                },
            )],
        );
        let order: Vec<String> = vec!["ioc.example".into(), "20.0.0.2".into()];
        let nodes = HashMap::from_iter([
            (
                "ioc.example".to_owned(),
                Node {
                    path: vec!["ioc.example".into()],
                    first_seen: None,
                    last_seen: None,
                },
            ),
            (
                "20.0.0.2".to_owned(),
                Node {
                    path: vec!["ioc.example".into(), "20.0.0.2".into()],
                    first_seen: None,
                    last_seen: None,
                },
            ),
        ]);
        let reputation = Reputation {
            classification: Some("malicious".into()),
            score: Some(90),
            rules: vec![
                rule(
                    " cyber threat intelligence ",
                    json!(["apt28", "Unknown Group"]),
                    None,
                ),
                rule(
                    INTEL_ARTICLE_RULE,
                    json!("An article"),
                    Some("https://ti.defender.microsoft.com/article/a1"),
                ),
            ]
            .into(),
        };
        let reputations = HashMap::from_iter([
            ("ioc.example".to_owned(), None),
            ("20.0.0.2".to_owned(), Some(reputation)),
        ]);
        let (hits, articles) = attribute(&order, &nodes, &reputations, &profiles);
        assert_eq!(articles.len(), 1);
        assert_eq!(articles[0].article_id.as_deref(), Some("a1"));
        assert_eq!(hits.len(), 2, "{hits:#?}");
        let forest = &hits[0];
        assert_eq!(forest.actor, "Forest Blizzard");
        assert_eq!(forest.profile_id.as_deref(), Some("p1"));
        assert_eq!(forest.evidence.len(), 3, "{:#?}", forest.evidence);
        let unknown = &hits[1];
        assert_eq!(unknown.actor, "Unknown Group");
        assert_eq!(unknown.profile_id, None);
        assert_eq!(unknown.evidence.len(), 2);
    }
}
