//! How much an actor hit is worth: a confidence from 0 to 100, and the factors that made it.
//! Pure functions: the walk gathers the inputs ([`HitContext`]), [`score`] weighs them.
//!
//! Points add up from a base set by how far the linking artifact is from the IOC, and are
//! clamped to 0..=100. Every factor is kept with the hit (`confidence_factors`), so a reader
//! can see why a hit scored what it did. The weights, and why:
//!
//! | factor | points | why |
//! |---|---|---|
//! | link: the IOC itself | 60 | the intelligence names the IOC: direct evidence |
//! | link: one hop | 40 | the IOC resolved to (or from) attributed infrastructure |
//! | link: two or more hops | 25 | each hop multiplies the chance of an unrelated link |
//! | agreement | +15 per further kind | a CTI rule, a profile indicator and an intel article are separate analyses |
//! | corroboration | +5 per further artifact, at most +15 | several artifacts linking the same actor are unlikely by chance |
//! | sharing | 0 / −15 / −30 | a host behind hundreds or thousands of names links unrelated ones (CDN edges, parking, resolvers) |
//! | time | +10 / −10 | the resolution window overlaps the indicator's active window, or misses it |
//! | reputation | +10 malicious, +5 suspicious, −10 benign or neutral; +5 at score ≥ 90 | MDTI's own verdict on the linking artifact |
//!
//! Sharing counts the distinct names (or addresses) in the passive DNS of either end of the
//! link's last hop, the wider of the two: up to [`DEDICATED_MAX`] is dedicated, up to
//! [`SHARED_MAX`] shared, more is widely shared. The IOC's side is what the walk read anyway;
//! the artifact's side is one extra page of its passive DNS (see `Chainer::measure_sharing`).

use chrono::{DateTime, Utc};

use crate::enrich::Reputation;
use crate::model::{Evidence, Factor, Fanout};

/// At most this many names: dedicated infrastructure, no discount.
pub const DEDICATED_MAX: u32 = 50;
/// At most this many names: shared. More: widely shared.
pub const SHARED_MAX: u32 = 500;

/// What the walk knows about one hit beyond its evidence.
#[derive(Debug, Clone, Copy)]
pub struct HitContext<'a> {
    /// Passive DNS hops from the IOC to the artifact (0: the IOC itself).
    pub hops: usize,
    pub evidence: &'a [Evidence],
    /// Distinct artifacts linking the same IOC to the same actor in this walk (this one
    /// included).
    pub artifacts_for_actor: usize,
    /// How shared the link's last hop is; `None` when not measured (the IOC itself, or no
    /// budget left).
    pub sharing: Option<Fanout>,
    /// When the IOC's path resolved to the artifact (passive DNS first/last seen).
    pub window: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    /// The artifact's reputation, if asked.
    pub reputation: Option<&'a Reputation>,
}

/// The confidence of one hit and the factors that made it.
pub fn score(hit: &HitContext<'_>) -> (u8, Vec<Factor>) {
    let mut factors = vec![link(hit.hops)];
    factors.extend(agreement(hit.evidence));
    factors.extend(corroboration(hit.artifacts_for_actor));
    if hit.hops > 0 {
        factors.extend(sharing(hit.sharing));
        factors.extend(time(hit.window, hit.evidence));
    }
    factors.extend(reputation(hit.reputation));
    let total: i32 = factors.iter().map(|f| f.points).sum();
    (total.clamp(0, 100) as u8, factors)
}

fn factor(name: &str, detail: impl Into<String>, points: i32) -> Factor {
    Factor {
        factor: name.to_owned(),
        detail: detail.into(),
        points,
    }
}

fn link(hops: usize) -> Factor {
    match hops {
        0 => factor("link", "the IOC itself", 60),
        1 => factor("link", "one hop", 40),
        n => factor("link", format!("{n} hops"), 25),
    }
}

/// The evidence kinds of a hit, sorted: `intel_article`, `profile_indicator`,
/// `reputation_rule`.
pub fn evidence_kinds(evidence: &[Evidence]) -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> = evidence.iter().map(Evidence::kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
}

fn agreement(evidence: &[Evidence]) -> Option<Factor> {
    let kinds = evidence_kinds(evidence);
    (kinds.len() > 1).then(|| {
        factor(
            "agreement",
            kinds.join(" + "),
            15 * (kinds.len() as i32 - 1),
        )
    })
}

fn corroboration(artifacts: usize) -> Option<Factor> {
    (artifacts > 1).then(|| {
        factor(
            "corroboration",
            format!("{artifacts} artifacts link this actor"),
            5 * (artifacts as i32 - 1).min(3),
        )
    })
}

/// Sharing points and their detail: the wider end of the link counts.
fn sharing_points(fanout: Fanout) -> (i32, String) {
    let at_least = if fanout.more { "at least " } else { "" };
    let names = format!("{at_least}{} names", fanout.names);
    if fanout.more || fanout.names > SHARED_MAX {
        (-30, format!("widely shared ({names})"))
    } else if fanout.names > DEDICATED_MAX {
        (-15, format!("shared ({names})"))
    } else {
        (0, format!("dedicated ({names})"))
    }
}

fn sharing(fanout: Option<Fanout>) -> Option<Factor> {
    let (points, detail) = sharing_points(fanout?);
    Some(factor("sharing", detail, points))
}

/// +10 when the resolution window overlaps a profile indicator's active window, −10 when it
/// misses all of them; nothing when either is unknown. An indicator without a last-seen time
/// is still active.
fn time(
    window: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    evidence: &[Evidence],
) -> Option<Factor> {
    let (Some(first), Some(last)) = window else {
        return None;
    };
    let indicators: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> = evidence
        .iter()
        .filter_map(|e| match e {
            Evidence::ProfileIndicator {
                first_seen: Some(from),
                last_seen,
                ..
            } => Some((*from, *last_seen)),
            _ => None,
        })
        .collect();
    if indicators.is_empty() {
        return None;
    }
    let overlaps = indicators
        .iter()
        .any(|(from, until)| *from <= last && until.is_none_or(|until| first <= until));
    // A date's own Display is `%Y-%m-%d`, without reading a format string for every hit.
    let (first, last) = (first.date_naive(), last.date_naive());
    Some(if overlaps {
        factor(
            "time",
            format!("resolved {first}..{last} while the indicator was active"),
            10,
        )
    } else {
        factor(
            "time",
            format!("resolved {first}..{last} outside the indicator's active window"),
            -10,
        )
    })
}

fn reputation(reputation: Option<&Reputation>) -> Option<Factor> {
    let reputation = reputation?;
    let class = reputation
        .classification
        .as_deref()?
        .trim()
        .to_ascii_lowercase();
    let mut points = match class.as_str() {
        "malicious" => 10,
        "suspicious" => 5,
        "benign" | "neutral" => -10,
        _ => 0,
    };
    let score = reputation.score;
    if points > 0 && score.is_some_and(|s| s >= 90) {
        points += 5;
    }
    let detail = match score {
        Some(score) => format!("{class}, score {score}"),
        None => class,
    };
    (points != 0).then(|| factor("reputation", detail, points))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Evidence {
        Evidence::ReputationRule {
            rule: "Cyber Threat Intelligence".into(),
            severity: Some("high".into()),
            score: Some(80),
            classification: Some("malicious".into()),
        }
    }

    fn indicator(from: &str, until: Option<&str>) -> Evidence {
        Evidence::ProfileIndicator {
            profile_id: "p1".into(),
            source: Some("microsoft".into()),
            first_seen: Some(from.parse().unwrap()),
            last_seen: until.map(|u| u.parse().unwrap()),
        }
    }

    fn article() -> Evidence {
        Evidence::IntelArticle {
            title: Some("t".into()),
            article_id: Some("a".into()),
            url: None,
        }
    }

    fn malicious(score: i32) -> Reputation {
        Reputation {
            classification: Some("malicious".into()),
            score: Some(score),
            rules: Default::default(),
        }
    }

    fn hop(evidence: &[Evidence], sharing: Option<Fanout>) -> HitContext<'_> {
        HitContext {
            hops: 1,
            evidence,
            artifacts_for_actor: 1,
            sharing,
            window: (None, None),
            reputation: None,
        }
    }

    fn points(hit: &HitContext<'_>) -> u8 {
        score(hit).0
    }

    fn names(names: u32, more: bool) -> Option<Fanout> {
        Some(Fanout { names, more })
    }

    #[test]
    fn the_ioc_named_scores_above_one_hop_which_scores_above_two() {
        let evidence = [rule()];
        let mut hit = hop(&evidence, names(3, false));
        let one = points(&hit);
        hit.hops = 0;
        let direct = points(&hit);
        hit.hops = 2;
        let two = points(&hit);
        assert_eq!((direct, one, two), (60, 40, 25));
    }

    #[test]
    fn a_dedicated_counterpart_scores_above_a_shared_one_and_a_widely_shared_one_lowest() {
        let evidence = [rule()];
        let dedicated = points(&hop(&evidence, names(DEDICATED_MAX, false)));
        let shared = points(&hop(&evidence, names(DEDICATED_MAX + 1, false)));
        let wide = points(&hop(&evidence, names(SHARED_MAX + 1, false)));
        let cut = points(&hop(&evidence, names(120, true)));
        assert_eq!((dedicated, shared, wide, cut), (40, 25, 10, 10));
        assert_eq!(points(&hop(&evidence, None)), 40, "unmeasured: no discount");
    }

    #[test]
    fn sharing_never_discounts_the_ioc_itself() {
        let evidence = [rule()];
        let mut hit = hop(&evidence, names(5000, true));
        hit.hops = 0;
        assert_eq!(points(&hit), 60);
    }

    #[test]
    fn each_further_kind_of_evidence_adds_fifteen() {
        let one = [rule()];
        let two = [rule(), indicator("2020-01-01T00:00:00Z", None)];
        let three = [rule(), indicator("2020-01-01T00:00:00Z", None), article()];
        let repeated = [rule(), rule()];
        assert_eq!(points(&hop(&one, None)), 40);
        assert_eq!(points(&hop(&two, None)), 55);
        assert_eq!(points(&hop(&three, None)), 70);
        assert_eq!(
            points(&hop(&repeated, None)),
            40,
            "one kind twice is one kind"
        );
    }

    #[test]
    fn further_artifacts_for_the_same_actor_add_five_each_up_to_fifteen() {
        let evidence = [rule()];
        let mut hit = hop(&evidence, None);
        let by = |n: usize, hit: &mut HitContext<'_>| {
            hit.artifacts_for_actor = n;
            points(hit)
        };
        assert_eq!([1, 2, 4, 9].map(|n| by(n, &mut hit)), [40, 45, 55, 55]);
    }

    #[test]
    fn a_resolution_inside_the_indicators_window_adds_ten_and_outside_takes_ten() {
        let evidence = [indicator(
            "2022-01-01T00:00:00Z",
            Some("2022-12-31T00:00:00Z"),
        )];
        let mut hit = hop(&evidence, None);
        hit.window = (
            Some("2022-06-01T00:00:00Z".parse().unwrap()),
            Some("2023-06-01T00:00:00Z".parse().unwrap()),
        );
        assert_eq!(points(&hit), 50);
        hit.window.0 = Some("2023-01-01T00:00:00Z".parse().unwrap());
        assert_eq!(points(&hit), 30);
        hit.window = (None, hit.window.1);
        assert_eq!(points(&hit), 40, "unknown window: no factor");
        let open = [indicator("2023-05-01T00:00:00Z", None)];
        let mut hit = hop(&open, None);
        hit.window = (
            Some("2023-01-01T00:00:00Z".parse().unwrap()),
            Some("2024-01-01T00:00:00Z".parse().unwrap()),
        );
        assert_eq!(
            points(&hit),
            50,
            "an indicator without an end is still active"
        );
    }

    #[test]
    fn the_time_factor_names_the_resolution_window_by_its_days() {
        let evidence = [indicator("2022-01-01T00:00:00Z", None)];
        let mut hit = hop(&evidence, None);
        for (first, last, detail) in [
            (
                "2022-06-01T23:59:59Z",
                "2023-06-01T00:00:00Z",
                "resolved 2022-06-01..2023-06-01 while the indicator was active",
            ),
            (
                "0900-01-05T00:00:00Z",
                "0999-12-31T12:00:00Z",
                "resolved 0900-01-05..0999-12-31 outside the indicator's active window",
            ),
        ] {
            hit.window = (Some(first.parse().unwrap()), Some(last.parse().unwrap()));
            let (_, factors) = score(&hit);
            let time = factors.iter().find(|f| f.factor == "time").unwrap();
            assert_eq!(time.detail, detail);
        }
    }

    #[test]
    fn the_artifacts_own_reputation_counts() {
        let evidence = [rule()];
        let with = |classification: &str, score: i32| {
            let reputation = Reputation {
                classification: Some(classification.into()),
                score: Some(score),
                rules: Default::default(),
            };
            let mut hit = hop(&evidence, None);
            hit.reputation = Some(&reputation);
            points(&hit)
        };
        assert_eq!(with("malicious", 80), 50);
        assert_eq!(with("malicious", 95), 55);
        assert_eq!(with("Suspicious", 95), 50);
        assert_eq!(with("benign", 95), 30);
        assert_eq!(with("neutral", 10), 30);
        assert_eq!(with("unknown", 95), 40);
    }

    #[test]
    fn scores_stay_within_zero_and_a_hundred_and_keep_their_factors() {
        let evidence = [rule(), indicator("2020-01-01T00:00:00Z", None), article()];
        let reputation = malicious(99);
        let hit = HitContext {
            hops: 0,
            evidence: &evidence,
            artifacts_for_actor: 9,
            sharing: None,
            window: (None, None),
            reputation: Some(&reputation),
        };
        let (confidence, factors) = score(&hit);
        assert_eq!(confidence, 100);
        let sum: i32 = factors.iter().map(|f| f.points).sum();
        assert_eq!(sum, 60 + 30 + 15 + 15);
        let weak = [rule()];
        let benign = Reputation {
            classification: Some("benign".into()),
            score: Some(0),
            rules: Default::default(),
        };
        let mut hit = hop(&weak, names(9000, true));
        hit.hops = 3;
        hit.reputation = Some(&benign);
        assert_eq!(score(&hit).0, 0);
    }
}
