//! Reading a [`ChainReport`]: the seed's answer (actor → linking artifacts), a terminal view, and
//! the outbound event of one hit.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};

use super::{ActorHit, ChainReport, Evidence};

impl ChainReport {
    /// Actor → the domains and IPs linking the IOC to it (sorted, each once): what the seed
    /// returns.
    pub fn actors(&self) -> BTreeMap<String, Vec<String>> {
        let mut actors: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for hit in &self.hits {
            let artifacts = actors.entry(hit.actor.clone()).or_default();
            if !artifacts.contains(&hit.artifact) {
                artifacts.push(hit.artifact.clone());
            }
        }
        for artifacts in actors.values_mut() {
            artifacts.sort();
        }
        actors
    }
}

fn day(time: Option<DateTime<Utc>>) -> String {
    time.map_or_else(|| "?".to_owned(), |t| t.format("%Y-%m-%d").to_string())
}

fn opt(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("-")
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::ReputationRule {
                rule,
                severity,
                score,
                classification,
            } => {
                write!(
                    f,
                    "reputation rule {rule:?}: {}, score {}, severity {}",
                    opt(classification),
                    score.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                    opt(severity)
                )
            }
            Evidence::IntelArticle {
                title,
                article_id,
                url,
            } => write!(
                f,
                "intel article {:?} (id {}) {}",
                opt(title),
                opt(article_id),
                opt(url)
            ),
            Evidence::ProfileIndicator {
                profile_id, source, ..
            } => write!(
                f,
                "indicator of intel profile {profile_id} (source {})",
                opt(source)
            ),
        }
    }
}

impl fmt::Display for ChainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} counterpart(s), {} passive DNS page(s), {} Graph request(s), {} cached reputation(s)",
            self.ioc,
            self.counterparts,
            self.pages,
            self.graph_requests,
            self.reputation_cache_hits
        )?;
        if self.hits.is_empty() {
            writeln!(f, "  no actor group found")?;
        }
        let mut by_actor: BTreeMap<String, Vec<&ActorHit>> = BTreeMap::new();
        for hit in &self.hits {
            by_actor.entry(hit.actor.clone()).or_default().push(hit);
        }
        for (actor, hits) in by_actor {
            write!(f, "  {actor}")?;
            let first = hits[0];
            if let Some(id) = &first.profile_id {
                write!(f, " [profile {id}]")?;
            }
            if !first.aliases.is_empty() {
                write!(f, " aka {}", first.aliases.join(", "))?;
            }
            writeln!(f)?;
            for hit in hits {
                write!(f, "    {}  via {}", hit.artifact, hit.path.join(" -> "))?;
                if hit.first_seen.is_some() || hit.last_seen.is_some() {
                    write!(
                        f,
                        "  seen {} .. {}",
                        day(hit.first_seen),
                        day(hit.last_seen)
                    )?;
                }
                writeln!(f)?;
                for evidence in &hit.evidence {
                    writeln!(f, "      - {evidence}")?;
                }
            }
        }
        let attributed: Vec<&str> = self.hits.iter().map(|h| h.artifact.as_str()).collect();
        let loose: Vec<_> = self
            .articles
            .iter()
            .filter(|a| !attributed.contains(&a.artifact.as_str()))
            .collect();
        if !loose.is_empty() {
            writeln!(f, "  intel articles without a named actor:")?;
            for article in loose {
                writeln!(
                    f,
                    "    {}: {:?} (id {})",
                    article.artifact,
                    opt(&article.title),
                    opt(&article.article_id)
                )?;
            }
        }
        for reason in &self.truncated {
            writeln!(f, "  truncated: {reason}")?;
        }
        Ok(())
    }
}

/// The routing key of an actor hit event: the actor's name lowercased, each run of whitespace
/// replaced by `-` (`Aqua Blizzard` → `aqua-blizzard`).
pub fn event_routing_key(actor: &str) -> String {
    actor
        .split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_are_lowercase_and_dashed() {
        assert_eq!(event_routing_key("Aqua Blizzard"), "aqua-blizzard");
        assert_eq!(event_routing_key("  Storm-0558 "), "storm-0558");
        assert_eq!(event_routing_key("Lace\tTempest  X"), "lace-tempest-x");
    }

    #[test]
    fn evidence_is_tagged_by_source() {
        let evidence = Evidence::IntelArticle {
            title: Some("t".into()),
            article_id: Some("a1".into()),
            url: None,
        };
        let value = serde_json::to_value(&evidence).unwrap();
        assert_eq!(value["source"], "intel_article");
        assert_eq!(value["article_id"], "a1");
        let back: Evidence = serde_json::from_value(value).unwrap();
        assert_eq!(back, evidence);
        let rule = serde_json::to_value(Evidence::ReputationRule {
            rule: "Cyber Threat Intelligence".into(),
            severity: None,
            score: Some(90),
            classification: None,
        })
        .unwrap();
        assert_eq!(rule["source"], "reputation_rule");
    }
}
