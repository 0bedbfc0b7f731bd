//! Named points where the fault tests make the worker fail on purpose, as a crash or a bug would.
//!
//! Off unless `MDTI_FAILPOINTS` is set when the process starts: a comma-separated list of
//! `point=action` or `point=action@needle`, where the action is `abort` (the process dies on
//! the spot, as if killed) or `panic`, and a needle limits it to subjects containing that text
//! (a message body, say). Unknown points and actions are ignored with a warning; reading an unset
//! variable costs one atomic load per check.

use std::sync::OnceLock;

/// The points the code checks.
pub mod point {
    /// Right after a message's results are committed, before anything is announced or acked.
    pub const AFTER_RESULTS_COMMIT: &str = "after_results_commit";
    /// At the start of a message's processing (the subject is the message body).
    pub const MESSAGE: &str = "message";
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Abort,
    Panic,
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    point: String,
    action: Action,
    needle: Option<String>,
}

fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        std::env::var("MDTI_FAILPOINTS")
            .map(|text| parse(&text))
            .unwrap_or_default()
    })
}

fn parse(text: &str) -> Vec<Rule> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .filter_map(|part| {
            let rule = parse_rule(part.trim());
            if rule.is_none() {
                tracing::warn!(failpoint = part, "ignoring a failpoint that does not parse");
            }
            rule
        })
        .collect()
}

fn parse_rule(text: &str) -> Option<Rule> {
    let (point, rest) = text.split_once('=')?;
    let (action, needle) = match rest.split_once('@') {
        Some((action, needle)) => (action, Some(needle.to_owned())),
        None => (rest, None),
    };
    let action = match action {
        "abort" => Action::Abort,
        "panic" => Action::Panic,
        _ => return None,
    };
    Some(Rule {
        point: point.to_owned(),
        action,
        needle,
    })
}

/// Fail here if a failpoint names `point` (and, with a needle, `subject` contains it).
pub fn check(point: &str, subject: &[u8]) {
    for rule in rules() {
        if rule.point != point {
            continue;
        }
        if let Some(needle) = &rule.needle {
            let found = subject
                .windows(needle.len().max(1))
                .any(|window| window == needle.as_bytes());
            if !found {
                continue;
            }
        }
        match rule.action {
            Action::Abort => {
                eprintln!("failpoint {point}: aborting");
                std::process::abort();
            }
            Action::Panic => panic!("failpoint {point}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_a_point_an_action_and_maybe_a_needle() {
        assert_eq!(
            parse("message=panic@boom, after_results_commit=abort,bad,x=explode"),
            vec![
                Rule {
                    point: "message".into(),
                    action: Action::Panic,
                    needle: Some("boom".into()),
                },
                Rule {
                    point: "after_results_commit".into(),
                    action: Action::Abort,
                    needle: None,
                },
            ]
        );
    }
}
