//! A message's fate, decided in one place.
//!
//! The pipeline sums up what happened to a message as an [`Outcome`]; [`decide`] turns it,
//! with the delivery's attempt, into the one [`Disposition`] the consumer carries out: ack,
//! retry later, dead-letter, or hand back uncounted. How a failure counts is each error's own
//! classification (`is_transient` of Graph's, the chaining's and the store's errors), read by
//! the [`Failure`] constructors.

use crate::graph::GraphError;
use crate::observable::Observable;
use crate::store::{RejectedInput, StoreError};

/// What happened to a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Everything the message carried is settled in Postgres. Items that were bad input are in
    /// `rejected` (and in the `rejected_inputs` table); they go to the dead-letter queue.
    Done {
        enriched: usize,
        cached: usize,
        skipped: usize,
        rejected: Vec<RejectedInput>,
        /// Reputations the chaining read from the Postgres cache instead of Graph.
        reputation_cache_hits: u64,
    },
    /// Something outside the message failed (Graph after its retries, Postgres) while the
    /// service itself answers: try later, and count the attempt.
    Retry { code: &'static str, reason: String },
    /// A service every message needs is down for everybody (its probe failed too): hand the
    /// message back without counting an attempt, and stop taking messages until the service
    /// answers again ([`super::Pipeline::probe`]).
    Suspend {
        dependency: Dependency,
        reason: String,
    },
    /// The message as a whole is unusable, and recorded as such in `rejected_inputs`:
    /// dead-letter it at once.
    Reject { code: String, reason: String },
}

/// What the consumer does with a delivery, all of it: nothing else is decided after this.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Nothing goes anywhere else: ack.
    Ack,
    /// Publish a copy to the retry queue with the next attempt's number, then ack.
    Retry {
        code: &'static str,
        reason: String,
        next_attempt: u32,
    },
    /// Publish `letter` to the dead-letter queue, then ack.
    DeadLetter {
        letter: Letter,
        code: String,
        reason: String,
        /// Write the message's `rejected_inputs` row first (best effort: the dead-letter copy
        /// holds the message either way). False when the pipeline already wrote the rows.
        record: bool,
    },
    /// Hand the delivery back uncounted and pause consumption until `dependency` answers.
    Suspend {
        dependency: Dependency,
        reason: String,
    },
}

/// What a dead letter carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Letter {
    /// The delivery as it came.
    Message,
    /// Only the bad items of a message otherwise done: a JSON array, `items` long.
    Items { body: Vec<u8>, items: usize },
}

/// A service every message needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Postgres,
    Graph,
}

impl Dependency {
    pub const ALL: [Dependency; 2] = [Dependency::Postgres, Dependency::Graph];

    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Postgres => "postgres",
            Dependency::Graph => "graph",
        }
    }

    /// The reason code of a retry this service's failure caused.
    pub(super) fn retry_code(self) -> &'static str {
        match self {
            Dependency::Postgres => "postgres_unavailable",
            Dependency::Graph => "graph_unavailable",
        }
    }

    /// The reason code of a message this service refused for good.
    pub(super) fn refused_code(self) -> &'static str {
        match self {
            Dependency::Postgres => POSTGRES_REFUSED,
            Dependency::Graph => GRAPH_REFUSED,
        }
    }
}

/// The code of a retry caused by a bug (a panicking message task), in the retry copy's headers.
pub const INTERNAL_ERROR: &str = "internal_error";

/// The code of a message dead-lettered after its last attempt failed.
pub const GAVE_UP: &str = "gave_up";

/// The code of a message Graph refused for good (400, 403, wrong credentials).
pub const GRAPH_REFUSED: &str = "graph_refused";

/// The code of a message Postgres refused for good (a constraint, a value it cannot store, a
/// stored row this build cannot read).
pub const POSTGRES_REFUSED: &str = "postgres_refused";

/// The fate of a message delivered for the `attempt`th time, of at most `max_deliveries`.
pub fn decide(outcome: Outcome, attempt: u32, max_deliveries: u32) -> Disposition {
    match outcome {
        Outcome::Done { rejected, .. } if rejected.is_empty() => Disposition::Ack,
        Outcome::Done { rejected, .. } => bad_items(&rejected),
        Outcome::Retry { code, reason } if attempt < max_deliveries => Disposition::Retry {
            code,
            reason,
            next_attempt: attempt + 1,
        },
        // The last attempt failed too: the message is not retried forever. Nothing recorded it
        // yet, so the dead letter comes with its row.
        Outcome::Retry { reason, .. } => Disposition::DeadLetter {
            letter: Letter::Message,
            code: GAVE_UP.to_owned(),
            reason: format!("gave up after {attempt} deliveries: {reason}"),
            record: true,
        },
        Outcome::Reject { code, reason } => Disposition::DeadLetter {
            letter: Letter::Message,
            code,
            reason,
            record: false,
        },
        Outcome::Suspend { dependency, reason } => Disposition::Suspend { dependency, reason },
    }
}

/// The dead letter of the bad items of a message that was otherwise done: the items, the code
/// they share (`mixed` if they differ) and the first one's reason.
fn bad_items(rejected: &[RejectedInput]) -> Disposition {
    let items: Vec<serde_json::Value> = rejected
        .iter()
        .map(|r| {
            serde_json::json!({
                "index": r.item_index,
                "value": r.input,
                "code": r.code,
                "reason": r.reason,
                "source": r.source,
                "context": r.context,
            })
        })
        .collect();
    let first = &rejected[0];
    let reason = if rejected.len() == 1 {
        format!("item {}: {}", first.item_index, first.reason)
    } else {
        format!(
            "{} items rejected; item {}: {}",
            rejected.len(),
            first.item_index,
            first.reason
        )
    };
    let code = if rejected.iter().all(|r| r.code == first.code) {
        first.code.clone()
    } else {
        "mixed".into()
    };
    Disposition::DeadLetter {
        letter: Letter::Items {
            body: serde_json::to_vec(&items).unwrap_or_default(),
            items: rejected.len(),
        },
        code,
        reason,
        record: false,
    }
}

/// Why an item could not be answered; it decides the whole message.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    /// Trying later may succeed; otherwise the message is refused for good. A transient
    /// failure may also be the service's rather than the item's: worth a probe.
    pub retryable: bool,
    /// The service the failure came from.
    pub service: Dependency,
    pub reason: String,
}

impl Failure {
    /// Graph's own classification decides: a transient failure (throttling, 5xx, network, after
    /// the client's retries) is retried later; a permanent one (Graph refused the request, the
    /// credentials are wrong) will not improve by waiting and is dead-lettered with the reason,
    /// ready for a replay once the cause is fixed.
    pub fn graph(observable: &Observable, error: &GraphError) -> Self {
        Failure::graph_side(
            error.is_transient(),
            format!("Graph, for {observable}: {error}"),
        )
    }

    /// A failure on Graph's side (a request, or a chaining walk), as its error classified it.
    pub fn graph_side(transient: bool, reason: String) -> Self {
        Failure {
            retryable: transient,
            service: Dependency::Graph,
            reason,
        }
    }

    /// The store's own classification decides too: a failure of the database or the connection
    /// (which may be Postgres down for everybody) is retried; one about the data (a constraint,
    /// a value Postgres cannot store, a stored row this build cannot read) would fail the same
    /// way every time, and is dead-lettered with the reason. Either way nothing was committed.
    pub fn store(error: StoreError) -> Self {
        let transient = error.is_transient();
        Failure {
            retryable: transient,
            service: Dependency::Postgres,
            reason: format!("Postgres: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lane::Lane;

    const MAX: u32 = 3;

    fn item(index: i32, code: &str) -> RejectedInput {
        RejectedInput::new(
            "m",
            index,
            "bad",
            code,
            format!("bad {index}"),
            1,
            Lane::Bulk,
        )
    }

    fn done(rejected: Vec<RejectedInput>) -> Outcome {
        Outcome::Done {
            enriched: 1,
            cached: 0,
            skipped: 0,
            rejected,
            reputation_cache_hits: 0,
        }
    }

    fn retry() -> Outcome {
        Outcome::Retry {
            code: "graph_unavailable",
            reason: "HTTP 503".into(),
        }
    }

    fn reject() -> Outcome {
        Outcome::Reject {
            code: "invalid_json".into(),
            reason: "not JSON".into(),
        }
    }

    fn suspend() -> Outcome {
        Outcome::Suspend {
            dependency: Dependency::Postgres,
            reason: "refused".into(),
        }
    }

    fn dead(code: &str, reason: &str, record: bool) -> Disposition {
        Disposition::DeadLetter {
            letter: Letter::Message,
            code: code.into(),
            reason: reason.into(),
            record,
        }
    }

    fn items_letter(rejected: &[RejectedInput], code: &str, reason: &str) -> Disposition {
        let Disposition::DeadLetter {
            letter: Letter::Items { body, .. },
            ..
        } = bad_items(rejected)
        else {
            unreachable!("bad items go to the dead-letter queue")
        };
        Disposition::DeadLetter {
            letter: Letter::Items {
                body,
                items: rejected.len(),
            },
            code: code.into(),
            reason: reason.into(),
            record: false,
        }
    }

    /// Each row: an outcome, the attempt it came from, and its one disposition.
    fn check(table: Vec<(Outcome, u32, Disposition)>) {
        for (outcome, attempt, expected) in table {
            let shown = format!("{outcome:?} at attempt {attempt} of {MAX}");
            assert_eq!(decide(outcome, attempt, MAX), expected, "{shown}");
        }
    }

    #[test]
    fn a_done_message_is_acked_and_its_bad_items_dead_lettered_at_any_attempt() {
        let one = vec![item(2, "unknown_kind")];
        let mixed = vec![item(0, "unknown_kind"), item(3, "invalid_value")];
        let one_letter = || items_letter(&one, "unknown_kind", "item 2: bad 2");
        check(vec![
            (done(vec![]), 1, Disposition::Ack),
            (done(vec![]), MAX, Disposition::Ack),
            (done(one.clone()), 1, one_letter()),
            (done(one.clone()), MAX, one_letter()),
            (
                done(mixed.clone()),
                MAX,
                items_letter(&mixed, "mixed", "2 items rejected; item 0: bad 0"),
            ),
        ]);
    }

    #[test]
    fn a_retry_spends_an_attempt_until_the_last_which_gives_up_with_a_row() {
        let again = |next_attempt| Disposition::Retry {
            code: "graph_unavailable",
            reason: "HTTP 503".into(),
            next_attempt,
        };
        check(vec![
            (retry(), 1, again(2)),
            (retry(), MAX - 1, again(MAX)),
            (
                retry(),
                MAX,
                dead(GAVE_UP, "gave up after 3 deliveries: HTTP 503", true),
            ),
            (
                retry(),
                MAX + 1,
                dead(GAVE_UP, "gave up after 4 deliveries: HTTP 503", true),
            ),
        ]);
    }

    #[test]
    fn a_rejection_is_dead_lettered_and_a_suspension_handed_back_at_any_attempt() {
        let handed_back = || Disposition::Suspend {
            dependency: Dependency::Postgres,
            reason: "refused".into(),
        };
        // The pipeline recorded the rejection's row already.
        let rejected = || dead("invalid_json", "not JSON", false);
        check(vec![
            (reject(), 1, rejected()),
            (reject(), MAX, rejected()),
            (suspend(), 1, handed_back()),
            (suspend(), MAX, handed_back()),
            (suspend(), MAX + 1, handed_back()),
        ]);
    }

    #[test]
    fn the_bad_items_letter_lists_each_item() {
        let rejected = vec![item(0, "unknown_kind"), item(3, "invalid_value")];
        let Disposition::DeadLetter {
            letter: Letter::Items { body, items },
            ..
        } = bad_items(&rejected)
        else {
            panic!("not a letter of items");
        };
        assert_eq!(items, 2);
        let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(listed[1]["index"], 3);
        assert_eq!(listed[1]["code"], "invalid_value");
        assert_eq!(listed[0]["value"], "bad");
    }

    #[test]
    fn postgres_failures_are_retried_only_when_transient() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let down = Failure::store(StoreError::from(sqlx::Error::Io(refused)));
        assert!(down.retryable);
        let data = Failure::store(StoreError::Decode {
            what: "extract",
            detail: "unknown kind".into(),
        });
        assert!(!data.retryable);
        assert_eq!(data.service.refused_code(), POSTGRES_REFUSED);
    }
}
