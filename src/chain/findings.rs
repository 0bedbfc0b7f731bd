//! Reading a walk's [`ChainFindings`]: the seed's answer (actor → linking artifacts), a terminal
//! view, and the outbound event of one hit.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};

use super::{ActorHit, Band, ChainFindings, Evidence, Factor};

impl ChainFindings {
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

impl fmt::Display for ChainFindings {
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
        // The strongest attribution first, and within an actor the strongest hit first: what a
        // reader acts on is at the top. Ties keep the walk's order (by name, then path).
        let mut actors: Vec<(String, Vec<&ActorHit>)> = by_actor.into_iter().collect();
        for (_, hits) in &mut actors {
            hits.sort_by_key(|hit| std::cmp::Reverse(hit.confidence));
        }
        actors.sort_by_key(|(_, hits)| std::cmp::Reverse(hits[0].confidence));
        for (actor, hits) in actors {
            write_attribution(f, &actor, &hits)?;
        }
        self.write_loose_articles(f)?;
        for reason in &self.truncated {
            writeln!(f, "  truncated: {reason}")?;
        }
        Ok(())
    }
}

impl ChainFindings {
    /// The intel articles found on artifacts no actor was attributed through.
    fn write_loose_articles(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        Ok(())
    }
}

/// One actor's attribution, then its hits, the strongest first.
fn write_attribution(f: &mut fmt::Formatter<'_>, actor: &str, hits: &[&ActorHit]) -> fmt::Result {
    write!(f, "  {actor}")?;
    let first = hits[0];
    if let Some(id) = first
        .profile_id
        .as_ref()
        .or_else(|| hits.iter().find_map(|h| h.profile_id.as_ref()))
    {
        write!(f, " [profile {id}]")?;
    }
    if let Some(aliases) = hits.iter().map(|h| &h.aliases).find(|a| !a.is_empty()) {
        write!(f, " aka {}", aliases.join(", "))?;
    }
    // The attribution (this IOC and actor) is as strong as its best hit.
    writeln!(
        f,
        ": confidence {} ({}), best of {} hit(s)",
        first.confidence,
        Band::of(first.confidence),
        hits.len()
    )?;
    for hit in hits {
        write_hit(f, hit)?;
    }
    Ok(())
}

/// One hit: its artifact, confidence, path and seen times, why it scored so, its evidence.
fn write_hit(f: &mut fmt::Formatter<'_>, hit: &ActorHit) -> fmt::Result {
    write!(
        f,
        "    {}  {} ({})  via {}",
        hit.artifact,
        hit.confidence,
        Band::of(hit.confidence),
        hit.path.join(" -> ")
    )?;
    if hit.first_seen.is_some() || hit.last_seen.is_some() {
        write!(
            f,
            "  seen {} .. {}",
            day(hit.first_seen),
            day(hit.last_seen)
        )?;
    }
    writeln!(f)?;
    if !hit.factors.is_empty() {
        writeln!(f, "      why: {}", factors(&hit.factors))?;
    }
    for evidence in &hit.evidence {
        writeln!(f, "      - {evidence}")?;
    }
    Ok(())
}

/// A hit's factors on one line: `link +40 (one hop), reputation +15 (malicious, score 90)`.
fn factors(factors: &[Factor]) -> String {
    factors
        .iter()
        .map(|f| format!("{} {:+} ({})", f.factor, f.points, f.detail))
        .collect::<Vec<_>>()
        .join(", ")
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

    fn hit(actor: &str, artifact: &str, confidence: u8, profile: Option<&str>) -> ActorHit {
        ActorHit {
            actor: actor.into(),
            profile_id: profile.map(str::to_owned),
            aliases: Vec::new(),
            artifact: artifact.into(),
            path: vec!["evil.example".into(), artifact.into()],
            evidence: vec![Evidence::ReputationRule {
                rule: "Cyber Threat Intelligence".into(),
                severity: None,
                score: Some(90),
                classification: Some("malicious".into()),
            }],
            first_seen: None,
            last_seen: None,
            confidence,
            factors: vec![
                Factor {
                    factor: "link".into(),
                    detail: "one hop".into(),
                    points: 40,
                },
                Factor {
                    factor: "sharing".into(),
                    detail: "shared (80 names)".into(),
                    points: -15,
                },
            ],
        }
    }

    #[test]
    fn actors_show_their_best_confidence_and_artifacts_their_own() {
        // Skipped (a special-use name) or not, it is an observable to print.
        let ioc = crate::observable::normalise("evil.example", None, &Default::default())
            .unwrap()
            .into_observable();
        let report = ChainFindings {
            ioc,
            // In the walk's order: by actor, then path.
            hits: vec![
                hit("Aqua Blizzard", "198.51.100.1", 25, None),
                hit("Aqua Blizzard", "198.51.100.2", 75, Some("p-aqua")),
                hit("Volt Typhoon", "198.51.100.3", 50, None),
            ],
            articles: Vec::new(),
            counterparts: 3,
            pages: 1,
            sharing_pages: 0,
            graph_requests: 4,
            reputation_cache_hits: 0,
            truncated: Vec::new(),
        };
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1..],
            [
                "  Aqua Blizzard [profile p-aqua]: confidence 75 (high), best of 2 hit(s)",
                "    198.51.100.2  75 (high)  via evil.example -> 198.51.100.2",
                "      why: link +40 (one hop), sharing -15 (shared (80 names))",
                "      - reputation rule \"Cyber Threat Intelligence\": malicious, score 90, severity -",
                "    198.51.100.1  25 (low)  via evil.example -> 198.51.100.1",
                "      why: link +40 (one hop), sharing -15 (shared (80 names))",
                "      - reputation rule \"Cyber Threat Intelligence\": malicious, score 90, severity -",
                "  Volt Typhoon: confidence 50 (medium), best of 1 hit(s)",
                "    198.51.100.3  50 (medium)  via evil.example -> 198.51.100.3",
                "      why: link +40 (one hop), sharing -15 (shared (80 names))",
                "      - reputation rule \"Cyber Threat Intelligence\": malicious, score 90, severity -",
            ],
            "{text}"
        );

        // A stronger actor goes first whatever its name.
        let mut stronger = report.clone();
        stronger.hits[2].confidence = 90;
        let text = stronger.to_string();
        let actors: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .collect();
        assert_eq!(
            actors,
            [
                "  Volt Typhoon: confidence 90 (high), best of 1 hit(s)",
                "  Aqua Blizzard [profile p-aqua]: confidence 75 (high), best of 2 hit(s)",
            ]
        );
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
