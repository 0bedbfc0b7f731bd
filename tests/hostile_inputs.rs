//! The hostile message corpus (`tests/data/hostile_inputs.tsv`) end to end: every row is
//! published as its own message to a worker running against the Graph simulator, and each
//! message's outcome is read back where an operator would look for it: `observables` and
//! `enrichment_runs` for what was enriched or skipped, `rejected_inputs` and the dead-letter
//! queue (with its reason headers) for what was refused. Every failing row is reported at once.

use std::collections::HashMap;
use std::time::Duration;

use mdti_worker::consumer::WorkerStats;
use mdti_worker::observable::is_safe_canonical;

mod support;
use support::decode_escapes;
use support::harness::{eventually, spawn_app, DeadLetter, Options};

const CORPUS: &str = include_str!("data/hostile_inputs.tsv");

/// Deeper than serde_json's recursion limit (128).
const NESTING: usize = 200;

struct Row {
    line: usize,
    body: Vec<u8>,
    content_type: String,
    expected: String,
}

impl Row {
    fn message_id(&self) -> String {
        format!("hostile-{}", self.line)
    }

    /// The body as the failure report shows it: long ones cut.
    fn shown(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        if text.chars().count() <= 100 {
            format!("{text:?}")
        } else {
            let cut: String = text.chars().take(100).collect();
            format!("{cut:?}... ({} bytes)", self.body.len())
        }
    }
}

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for (index, line) in CORPUS.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cells: Vec<&str> = line.split('\t').collect();
        let [body, content_type, expected] = cells[..] else {
            panic!(
                "line {}: expected 3 TAB-separated columns, found {}",
                index + 1,
                cells.len()
            );
        };
        let body = if body == "@NEST" {
            format!("{}{}", "[".repeat(NESTING), "]".repeat(NESTING)).into_bytes()
        } else {
            decode_escapes(body).unwrap_or_else(|e| panic!("line {}: {e}", index + 1))
        };
        rows.push(Row {
            line: index + 1,
            body,
            content_type: if content_type == "-" {
                String::new()
            } else {
                content_type.to_owned()
            },
            expected: expected.to_owned(),
        });
    }
    rows
}

/// A run of a message: (kind, value, status, detail).
type Run = (String, String, String, Option<String>);
/// A rejection of a message: (item index, code, reason).
type Rejection = (i32, String, String);

/// What happened to one message, in the corpus notation, or why it is not one clean outcome.
fn outcome(
    row: &Row,
    runs: &[Run],
    rejections: &[Rejection],
    dead: &[&DeadLetter],
) -> Result<String, String> {
    match (runs, rejections, dead) {
        ([(kind, value, status, detail)], [], []) => match status.as_str() {
            "enriched" | "cached" => Ok(format!("ready:{kind}:{value}")),
            "skipped" => Ok(format!(
                "skipped:{kind}:{value}|{}",
                detail.as_deref().unwrap_or("(no detail)")
            )),
            other => Err(format!("run with status {other}")),
        },
        ([], [(index, code, reason)], [letter]) => {
            if letter.code != *code {
                return Err(format!(
                    "rejected_inputs says {code}, the dead letter's reason code {}",
                    letter.code
                ));
            }
            if reason.trim().is_empty() || letter.reason.trim().is_empty() {
                return Err(format!("{code} without a reason"));
            }
            // The reason header is cut at 500 characters; its start must be the recorded reason.
            let head: String = reason.chars().take(200).collect();
            if !letter.reason.contains(&head) {
                return Err(format!(
                    "the dead letter's reason {:?} does not carry the recorded reason {reason:?}",
                    letter.reason
                ));
            }
            if *index == -1 && letter.body != row.body {
                return Err("the dead-lettered message is not the message as sent".into());
            }
            if *index >= 0 {
                // One bad item: the header names it once, then says what was wrong with it; the
                // row has the index in a column of its own.
                if reason.starts_with(&format!("item {index}:")) {
                    return Err(format!("the recorded reason names the item: {reason:?}"));
                }
                let named: String = format!("item {index}: {reason}")
                    .chars()
                    .take(500)
                    .collect();
                if letter.reason != named {
                    return Err(format!(
                        "the dead letter's reason is {:?}, not {named:?}",
                        letter.reason
                    ));
                }
                let items: serde_json::Value = serde_json::from_slice(&letter.body)
                    .map_err(|e| format!("the dead-lettered items are not JSON: {e}"))?;
                if items.as_array().map(Vec::len) != Some(1) || items[0]["code"] != *code {
                    return Err(format!("the dead-lettered items are {items}"));
                }
            }
            Ok(format!("rejected:{code}"))
        }
        _ => Err(format!(
            "{} runs {runs:?}, {} rejections {rejections:?}, {} dead letters",
            runs.len(),
            rejections.len(),
            dead.len()
        )),
    }
}

#[tokio::test]
async fn every_hostile_message_ends_enriched_skipped_or_rejected_with_its_reason() {
    let rows = rows();
    assert!(
        rows.len() >= 60,
        "the corpus should have at least 60 rows, has {}",
        rows.len()
    );
    let app = spawn_app(Options::default()).await;
    for row in &rows {
        app.publish_raw(&row.message_id(), &row.body, &row.content_type)
            .await;
    }
    let expected_dead = rows
        .iter()
        .filter(|r| r.expected.starts_with("rejected:"))
        .count();
    eventually(
        Duration::from_secs(180),
        "every message settled and its bad ones dead-lettered",
        || async {
            let depths = app.queue_depths().await;
            // Settled, not merely delivered: a queue counts only what waits, and a message
            // in progress has left it.
            WorkerStats::get(&app.stats.settled) >= rows.len() as u64
                && depths.work == 0
                && depths.retry == 0
                && depths.dead_letter as usize >= expected_dead
        },
    )
    .await;
    assert_eq!(
        WorkerStats::get(&app.stats.retried),
        0,
        "no hostile input is a transient failure"
    );

    let mut dead: HashMap<String, Vec<DeadLetter>> = HashMap::new();
    for letter in app.drain_dead_letters().await {
        dead.entry(letter.message_id.clone())
            .or_default()
            .push(letter);
    }
    let pool = app.db.store.pool();
    let mut failures = Vec::new();
    for row in &rows {
        let id = row.message_id();
        let runs: Vec<Run> = sqlx::query_as(
            "SELECT o.kind, o.value, r.status, r.detail FROM enrichment_runs r \
             JOIN observables o ON o.id = r.observable_id WHERE r.message_id = $1",
        )
        .bind(&id)
        .fetch_all(pool)
        .await
        .unwrap();
        let rejections: Vec<Rejection> = sqlx::query_as(
            "SELECT item_index, code, reason FROM rejected_inputs WHERE message_id = $1",
        )
        .bind(&id)
        .fetch_all(pool)
        .await
        .unwrap();
        let letters: Vec<&DeadLetter> = dead.get(&id).into_iter().flatten().collect();
        let got = outcome(row, &runs, &rejections, &letters);
        if got.as_deref() != Ok(row.expected.as_str()) {
            let got = got.unwrap_or_else(|problem| format!("no clean outcome: {problem}"));
            let reasons: Vec<&str> = rejections.iter().map(|(_, _, r)| r.as_str()).collect();
            failures.push(format!(
                "line {}: body {} content type {:?}\n    expected {}\n    got      {got} {reasons:?}",
                row.line,
                row.shown(),
                row.content_type,
                row.expected,
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile messages went wrong:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );

    let values: Vec<String> = sqlx::query_scalar("SELECT value FROM observables")
        .fetch_all(pool)
        .await
        .unwrap();
    let unsafe_values: Vec<&String> = values.iter().filter(|v| !is_safe_canonical(v)).collect();
    assert!(
        unsafe_values.is_empty(),
        "values that could reach Graph as more than one path segment: {unsafe_values:?}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM (SELECT message_id, item_index FROM enrichment_runs GROUP BY 1, 2 HAVING count(*) > 1) d").await,
        0,
        "one run per message item"
    );
    app.teardown().await;
}
