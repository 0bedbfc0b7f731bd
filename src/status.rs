//! What waits in each lane, how fast each lane is done, and when it will be through, from the
//! broker (queue depths) and from Postgres (what the worker did, and the ledger of what
//! `publish` sent): what the `status` command prints. `publish` ends with the same estimate for
//! the lane it published to ([`estimate_line`]).
//!
//! The two parts are gathered independently: with the broker unreachable the Postgres part is
//! still shown (and the other way round), and the part that is missing says why.
//!
//! How the figures are made:
//!
//! - *ready*: messages ready in a lane's work queue and retry queue (a passive declare, which
//!   does not count messages a worker holds unacknowledged). The dead-letter queue is one queue
//!   for both lanes.
//! - *done*: runs (one per observable, whatever its outcome); *rejected*: items the worker could
//!   not use; *dead-lettered*: whole messages given up on. Each all-time and within the window.
//! - *rate*: observables done in the window / the window, and Graph requests their runs cost in
//!   the window / the window.
//! - *waiting observables*: ready messages × the observables per message measured in that lane
//!   over the window (runs per distinct message), or 1 when none was measured.
//! - *ETA*: waiting observables / rate; none without a rate.
//! - A source's *waiting* comes from the `publications` ledger: what its publications to the
//!   lane sent since the earliest one not yet settled, less what of that was settled (items of
//!   the source done or rejected in the lane, matched to publications oldest first: [`settle`]).
//!   An estimate: items of the source sent some other way blur it.
//!
//! Items without a source are counted under `publish`, the name `publish` records its
//! publications under when run without `--source` (see `src/store/status.rs`).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::lane::Lane;
use crate::queue::Topology;
use crate::secret::{redact_url, Secret};
use crate::store::{MessageSizes, Publication, SourceActivity, Store};

/// How long each part waits for its service to answer before it is reported missing.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the Postgres queries may take once connected: the all-time counts read every run.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// The window `publish` measures its estimate over (`status` takes `--window`).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

/// What `status --json` prints. Fields are only ever added, never renamed or removed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// When this was gathered (this host's clock; the windows end at the database's `now()`).
    pub generated_at: DateTime<Utc>,
    /// The window rates and recent counts are measured over, in seconds.
    pub window_seconds: f64,
    /// Why the broker part is missing, or `null`: without it every queue count,
    /// `ready_messages`, `waiting_observables` and lane ETA is `null`.
    pub broker_error: Option<String>,
    /// Why the Postgres part is missing, or `null`: without it every `activity`,
    /// `observables_per_message`, `waiting_observables` and ETA is `null`, and `sources` empty.
    pub database_error: Option<String>,
    /// The dead-letter queue: one queue for both lanes.
    pub dead_letter_queue: QueueDepth,
    /// Live, then bulk.
    pub lanes: Vec<LaneStatus>,
}

/// Messages ready in one queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueDepth {
    pub queue: String,
    /// `null` when the broker part is missing, or when the queue does not exist (nothing has
    /// declared it with this prefix and retry delay yet).
    pub ready: Option<u64>,
}

/// One lane.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LaneStatus {
    pub lane: Lane,
    pub work_queue: QueueDepth,
    pub retry_queue: QueueDepth,
    /// Ready in the work and retry queues together (`null` if either count is).
    pub ready_messages: Option<u64>,
    /// Runs per distinct message in the window, 1 when none was measured.
    pub observables_per_message: Option<f64>,
    /// `ready_messages` × `observables_per_message`, rounded.
    pub waiting_observables: Option<u64>,
    /// The lane's sources together.
    pub activity: Option<Activity>,
    /// Seconds until the waiting observables are done at the current rate; `null` without a
    /// rate (nothing done in the window) or without either part.
    pub eta_seconds: Option<u64>,
    /// Every source with a run, a rejection or a publication in this lane, by name.
    pub sources: Vec<SourceStatus>,
}

/// What was done, all-time and within the window, and how fast.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Activity {
    /// Runs: observables enriched, answered from the cache, or skipped.
    pub done: Counts,
    /// Items rejected (invalid observables and the like).
    pub rejected: Counts,
    /// Whole messages dead-lettered (undecodable, or given up on after retries).
    pub dead_lettered: Counts,
    pub rate: Rate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub all_time: u64,
    pub window: u64,
}

/// Over the window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    pub observables_per_second: f64,
    pub graph_requests_per_second: f64,
}

/// One source within a lane.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceStatus {
    pub source: String,
    pub activity: Activity,
    /// What is left of the source's publications, when `publish` recorded any for this lane.
    pub ledger: Option<Ledger>,
    /// Seconds until `ledger.waiting` is done at the source's rate; `null` without both.
    pub eta_seconds: Option<u64>,
}

/// What is left of a source's publications to one lane ([`settle`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ledger {
    /// When the earliest publication not yet settled was made; `null` when all are settled.
    pub since: Option<DateTime<Utc>>,
    /// Publications since then (that one included), and the observables they sent.
    pub publications: u64,
    pub published: u64,
    /// Of `published`, what settled items (done or rejected) of the source in the lane were
    /// matched to.
    pub settled: u64,
    /// `published - settled`.
    pub waiting: u64,
}

/// What is left of one source's publications, from the observables each sent (oldest first)
/// and the items settled from each publication's time until the next one's (the last: until
/// now).
///
/// Nothing says which publication a run belongs to, so settlements are matched to publications
/// oldest first, each only to publications made before it; settlements beyond what was
/// published then (items sent some other way) are not carried over, so they cannot hide later
/// publications. The earliest publication with something unmatched is the earliest not yet
/// settled; waiting is what was published since it less what of that was matched (items
/// settled after it may have finished an older publication: they are not counted twice).
/// Dead-lettered messages are not settlements (a replay brings them back): their observables
/// wait until replayed.
pub fn settle(published: &[(DateTime<Utc>, u64)], settled: &[u64]) -> Ledger {
    let mut open: VecDeque<(usize, u64)> = VecDeque::new();
    for (index, (_, observables)) in published.iter().enumerate() {
        open.push_back((index, *observables));
        let mut left = settled.get(index).copied().unwrap_or(0);
        while let Some(front) = open.front_mut() {
            let taken = front.1.min(left);
            front.1 -= taken;
            left -= taken;
            if front.1 > 0 {
                break;
            }
            open.pop_front();
        }
    }
    let Some(&(first, _)) = open.front() else {
        return Ledger {
            since: None,
            publications: 0,
            published: 0,
            settled: 0,
            waiting: 0,
        };
    };
    let published_since: u64 = published[first..].iter().map(|(_, n)| n).sum();
    let waiting: u64 = open.iter().map(|(_, left)| left).sum();
    Ledger {
        since: Some(published[first].0),
        publications: (published.len() - first) as u64,
        published: published_since,
        settled: published_since - waiting,
        waiting,
    }
}

/// The broker's counts: (work, retry) per lane asked for, and the dead-letter queue.
#[derive(Debug, Clone, Default)]
struct BrokerCounts {
    lanes: Vec<(Lane, Option<u64>, Option<u64>)>,
    dead: Option<u64>,
}

/// Messages ready in `queue`, `None` if it does not exist. A channel of its own: the broker
/// closes the channel a passive declare of a missing queue was made on.
async fn ready_in(connection: &lapin::Connection, queue: &str) -> Result<Option<u64>, String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    match crate::queue::inspect(&channel, queue).await {
        Ok(state) => {
            let _ = channel.close(200, "counted".into()).await;
            Ok(Some(u64::from(state.message_count())))
        }
        Err(error) if is_not_found(&error) => Ok(None),
        Err(error) => Err(format!("counting {queue}: {error}")),
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 404)
}

async fn broker_counts(
    topology: &Topology,
    amqp_url: &str,
    lanes: &[Lane],
) -> Result<BrokerCounts, String> {
    let shown = redact_url(amqp_url);
    let connection = crate::queue::connect_within(amqp_url, CONNECT_TIMEOUT)
        .await
        .map_err(|unavailable| unavailable.to_string())?;
    let count = async {
        let mut counts = BrokerCounts::default();
        for lane in lanes {
            let work = ready_in(&connection, &topology.lane_queue(*lane)).await?;
            let retry = ready_in(&connection, &topology.lane_retry_queue(*lane)).await?;
            counts.lanes.push((*lane, work, retry));
        }
        counts.dead = ready_in(&connection, &topology.dead_letter_queue()).await?;
        Ok::<_, String>(counts)
    };
    let counts = tokio::time::timeout(QUERY_TIMEOUT, count)
        .await
        .unwrap_or_else(|_| Err(format!("broker {shown} stopped answering")));
    let _ = connection.close(200, "status".into()).await;
    counts
}

/// A store for reading, or why there is none (PostgreSQL, its URL, the cause and the way
/// forward): a first connection within [`CONNECT_TIMEOUT`] (the pool's own wait is longer).
pub async fn connect_store(database_url: &Secret) -> Result<Store, String> {
    Store::open(database_url.expose(), 1, CONNECT_TIMEOUT)
        .await
        .map_err(|unavailable| unavailable.to_string())
}

/// What Postgres says about the lanes asked for.
#[derive(Debug, Clone, Default)]
struct DatabaseFacts {
    activity: Vec<SourceActivity>,
    sizes: Vec<MessageSizes>,
    /// (lane, source, ledger) for each source with publications.
    ledgers: Vec<(Lane, String, Ledger)>,
}

async fn database_facts(
    store: &Store,
    lanes: &[Lane],
    window: Duration,
) -> Result<DatabaseFacts, String> {
    let read = async {
        let activity = store.source_activity(lanes, window).await?;
        let sizes = store.message_sizes(lanes, window).await?;
        let publications = store.publications(lanes).await?;
        let mut ledgers = Vec::new();
        for group in publications.chunk_by(|a, b| (a.lane, &a.source) == (b.lane, &b.source)) {
            ledgers.push(ledger_of(store, group).await?);
        }
        Ok::<_, crate::store::StoreError>(DatabaseFacts {
            activity,
            sizes,
            ledgers,
        })
    };
    match tokio::time::timeout(QUERY_TIMEOUT, read).await {
        Ok(Ok(facts)) => Ok(facts),
        Ok(Err(error)) => Err(format!("reading Postgres: {error}")),
        Err(_) => Err("reading Postgres took longer than a minute".into()),
    }
}

/// The ledger of one lane and source, from its publications (oldest first, not empty).
async fn ledger_of(
    store: &Store,
    group: &[Publication],
) -> Result<(Lane, String, Ledger), crate::store::StoreError> {
    let (lane, source) = (group[0].lane, group[0].source.clone());
    let times: Vec<DateTime<Utc>> = group.iter().map(|p| p.published_at).collect();
    let settled = store.settled_between(lane, &source, &times).await?;
    let published: Vec<(DateTime<Utc>, u64)> = group
        .iter()
        .map(|p| (p.published_at, u64::try_from(p.observables).unwrap_or(0)))
        .collect();
    let settled: Vec<u64> = settled
        .into_iter()
        .map(|n| u64::try_from(n).unwrap_or(0))
        .collect();
    Ok((lane, source, settle(&published, &settled)))
}

/// Gather the status of `lanes`: the broker part from `amqp_url`, the Postgres part from
/// `database` (or why there is none), each independently of the other.
pub async fn gather(
    topology: &Topology,
    amqp_url: &str,
    database: Result<&Store, String>,
    lanes: &[Lane],
    window: Duration,
) -> Status {
    let facts = async {
        match database {
            Ok(store) => database_facts(store, lanes, window).await,
            Err(error) => Err(error),
        }
    };
    let (broker, facts) = tokio::join!(broker_counts(topology, amqp_url, lanes), facts);
    let lane_statuses = lanes
        .iter()
        .map(|lane| lane_status(*lane, topology, &broker, &facts, window))
        .collect();
    Status {
        generated_at: Utc::now(),
        window_seconds: window.as_secs_f64(),
        broker_error: broker.as_ref().err().cloned(),
        database_error: facts.as_ref().err().cloned(),
        dead_letter_queue: QueueDepth {
            queue: topology.dead_letter_queue(),
            ready: broker.as_ref().ok().and_then(|counts| counts.dead),
        },
        lanes: lane_statuses,
    }
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Activity from summed counts: (done, done in window, requests in window, rejected, rejected
/// in window, dead-lettered, dead-lettered in window).
fn activity(rows: &[&SourceActivity], window: Duration) -> Activity {
    let sum = |field: fn(&SourceActivity) -> i64| to_u64(rows.iter().map(|r| field(r)).sum());
    let seconds = window.as_secs_f64();
    Activity {
        done: Counts {
            all_time: sum(|r| r.done),
            window: sum(|r| r.done_in_window),
        },
        rejected: Counts {
            all_time: sum(|r| r.rejected),
            window: sum(|r| r.rejected_in_window),
        },
        dead_lettered: Counts {
            all_time: sum(|r| r.dead_lettered),
            window: sum(|r| r.dead_lettered_in_window),
        },
        rate: Rate {
            observables_per_second: sum(|r| r.done_in_window) as f64 / seconds,
            graph_requests_per_second: sum(|r| r.graph_requests_in_window) as f64 / seconds,
        },
    }
}

/// Seconds to do `waiting` observables at `rate`, if there is a rate.
fn eta(waiting: Option<u64>, rate: Option<&Activity>) -> Option<u64> {
    let (waiting, per_second) = (waiting?, rate?.rate.observables_per_second);
    (per_second > 0.0).then(|| (waiting as f64 / per_second).round() as u64)
}

fn lane_status(
    lane: Lane,
    topology: &Topology,
    broker: &Result<BrokerCounts, String>,
    facts: &Result<DatabaseFacts, String>,
    window: Duration,
) -> LaneStatus {
    let (work, retry) = broker
        .as_ref()
        .ok()
        .and_then(|counts| counts.lanes.iter().find(|(l, _, _)| *l == lane))
        .map_or((None, None), |(_, work, retry)| (*work, *retry));
    let ready_messages = work.zip(retry).map(|(work, retry)| work + retry);
    let facts = facts.as_ref().ok();
    let observables_per_message =
        facts.map(|facts| match facts.sizes.iter().find(|s| s.lane == lane) {
            Some(sizes) if sizes.messages > 0 => sizes.runs as f64 / sizes.messages as f64,
            _ => 1.0,
        });
    let waiting_observables = ready_messages
        .zip(observables_per_message)
        .map(|(ready, per_message)| (ready as f64 * per_message).round() as u64);
    let activity = facts.map(|facts| {
        let rows: Vec<&SourceActivity> = facts.activity.iter().filter(|r| r.lane == lane).collect();
        activity(&rows, window)
    });
    LaneStatus {
        lane,
        work_queue: QueueDepth {
            queue: topology.lane_queue(lane),
            ready: work,
        },
        retry_queue: QueueDepth {
            queue: topology.lane_retry_queue(lane),
            ready: retry,
        },
        ready_messages,
        observables_per_message,
        waiting_observables,
        eta_seconds: eta(waiting_observables, activity.as_ref()),
        activity,
        sources: facts.map_or_else(Vec::new, |facts| sources(lane, facts, window)),
    }
}

/// Every source of `lane` with a run, a rejection or a publication, by name.
fn sources(lane: Lane, facts: &DatabaseFacts, window: Duration) -> Vec<SourceStatus> {
    let mut names: Vec<&str> = facts
        .activity
        .iter()
        .filter(|r| r.lane == lane)
        .map(|r| r.source.as_str())
        .chain(
            facts
                .ledgers
                .iter()
                .filter(|(l, _, _)| *l == lane)
                .map(|(_, source, _)| source.as_str()),
        )
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let rows: Vec<&SourceActivity> = facts
                .activity
                .iter()
                .filter(|r| r.lane == lane && r.source == name)
                .collect();
            let activity = activity(&rows, window);
            let ledger = facts
                .ledgers
                .iter()
                .find(|(l, source, _)| *l == lane && source == name)
                .map(|(_, _, ledger)| ledger.clone());
            SourceStatus {
                source: name.to_owned(),
                eta_seconds: eta(ledger.as_ref().map(|l| l.waiting), Some(&activity)),
                activity,
                ledger,
            }
        })
        .collect()
}

/// `1942` as `1,942`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A duration as people say it, its two largest units: `45 s`, `1 min 15 s`, `3 h 24 min`,
/// `2 d 3 h` (a zero second unit left out).
pub fn human_duration(seconds: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "min"), (1, "s")];
    let Some(first) = UNITS.iter().position(|(size, _)| seconds >= *size) else {
        return "0 s".into();
    };
    let (size, name) = UNITS[first];
    let mut text = format!("{} {name}", seconds / size);
    if let Some((minor, minor_name)) = UNITS.get(first + 1) {
        let rest = seconds % size / minor;
        if rest > 0 {
            let _ = write!(text, " {rest} {minor_name}");
        }
    }
    text
}

/// A rate with as many decimals as make it readable: `120`, `9.8`, `0.04`, `0.007`.
fn rate_text(per_second: f64) -> String {
    if per_second == 0.0 {
        "0".into()
    } else if per_second >= 100.0 {
        format!("{per_second:.0}")
    } else if per_second >= 1.0 {
        format!("{per_second:.1}")
    } else if per_second >= 0.01 {
        format!("{per_second:.2}")
    } else {
        format!("{per_second:.3}")
    }
}

/// One line saying what waits in a lane and when it will be through, e.g. `bulk lane: 1,942
/// messages waiting (about 9,710 observables); at 9.8 observables/s measured over the last 5 min,
/// about 17 min`. `publish` ends with it; `status` prints it under its table.
pub fn estimate_line(lane: &LaneStatus, window: Duration) -> String {
    let mut line = format!("{} lane: ", lane.lane);
    let Some(ready) = lane.ready_messages else {
        line.push_str("messages waiting unknown (no count from the broker)");
        return line;
    };
    let plural = if ready == 1 { "" } else { "s" };
    let _ = write!(line, "{} message{plural} waiting", grouped(ready));
    match lane.waiting_observables {
        Some(observables) if observables != ready => {
            let _ = write!(line, " (about {} observables)", grouped(observables));
        }
        _ => {}
    }
    match (&lane.activity, lane.eta_seconds) {
        (None, _) => line.push_str("; no rate (Postgres is missing)"),
        (Some(_), None) => line.push_str("; no rate measured yet"),
        (Some(activity), Some(eta)) => {
            let _ = write!(
                line,
                "; at {} observables/s measured over the last {}, about {}",
                rate_text(activity.rate.observables_per_second),
                human_duration(window.as_secs()),
                human_duration(eta)
            );
        }
    }
    line
}

/// Columns padded to their widest cell, the first left-aligned, the others right-aligned.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::from("  ");
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(line, "{cell:<width$}");
            } else {
                let _ = write!(line, "  {cell:>width$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `recent / all`, e.g. `12 / 4,500`.
fn counts_text(counts: &Counts) -> String {
    format!("{} / {}", grouped(counts.window), grouped(counts.all_time))
}

fn optional(value: Option<u64>, missing: &str) -> String {
    value.map_or_else(|| missing.to_owned(), grouped)
}

/// The cells shared by the lane and source tables: done, rejected, dead-lettered, rates.
fn activity_cells(activity: Option<&Activity>) -> Vec<String> {
    match activity {
        Some(a) => vec![
            counts_text(&a.done),
            counts_text(&a.rejected),
            counts_text(&a.dead_lettered),
            rate_text(a.rate.observables_per_second),
            rate_text(a.rate.graph_requests_per_second),
        ],
        None => vec!["?".into(); 5],
    }
}

fn activity_headers(window: &str) -> [String; 5] {
    [
        format!("done {window} / all"),
        format!("rejected {window} / all"),
        format!("dead-lettered {window} / all"),
        "obs/s".into(),
        "req/s".into(),
    ]
}

impl Status {
    fn window(&self) -> Duration {
        Duration::from_secs_f64(self.window_seconds)
    }

    fn lane_table(&self, window: &str) -> String {
        let mut headers = vec!["lane", "ready", "retry", "waiting obs"];
        let activity = activity_headers(window);
        headers.extend(activity.iter().map(String::as_str));
        headers.push("ETA");
        let rows: Vec<Vec<String>> = self
            .lanes
            .iter()
            .map(|lane| {
                let mut row = vec![
                    lane.lane.to_string(),
                    optional(lane.work_queue.ready, "?"),
                    optional(lane.retry_queue.ready, "?"),
                    optional(lane.waiting_observables, "?"),
                ];
                row.extend(activity_cells(lane.activity.as_ref()));
                row.push(lane.eta_seconds.map_or("-".into(), human_duration));
                row
            })
            .collect();
        table(&headers, &rows)
    }

    fn source_table(lane: &LaneStatus, window: &str) -> String {
        let mut headers = vec!["source"];
        let activity = activity_headers(window);
        headers.extend(activity.iter().map(String::as_str));
        headers.extend(["waiting", "ETA"]);
        let rows: Vec<Vec<String>> = lane
            .sources
            .iter()
            .map(|source| {
                let mut row = vec![source.source.clone()];
                row.extend(activity_cells(Some(&source.activity)));
                row.push(optional(source.ledger.as_ref().map(|l| l.waiting), "-"));
                row.push(source.eta_seconds.map_or("-".into(), human_duration));
                row
            })
            .collect();
        table(&headers, &rows)
    }

    /// What is missing and why, and queues that do not exist.
    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(error) = &self.broker_error {
            notes.push(format!(
                "broker part missing (queue counts, waiting, ETAs): {error}"
            ));
        }
        if let Some(error) = &self.database_error {
            notes.push(format!(
                "Postgres part missing (done, rates, sources): {error}"
            ));
        }
        if self.broker_error.is_none() {
            for lane in &self.lanes {
                for queue in [&lane.work_queue, &lane.retry_queue] {
                    if queue.ready.is_none() {
                        notes.push(format!(
                            "queue {} does not exist (not declared with this prefix and retry delay)",
                            queue.queue
                        ));
                    }
                }
            }
        }
        notes
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let window = human_duration(self.window().as_secs());
        writeln!(
            f,
            "Status at {}; recent = the last {window}",
            self.generated_at.format("%Y-%m-%d %H:%M:%S UTC")
        )?;
        for note in self.notes() {
            writeln!(f, "note: {note}")?;
        }
        writeln!(f)?;
        f.write_str(&self.lane_table(&window))?;
        let dead = match self.dead_letter_queue.ready {
            Some(n) => format!("{} message(s)", grouped(n)),
            None => "count missing".into(),
        };
        writeln!(
            f,
            "\n  dead-letter queue {}: {dead} (one queue for both lanes; `dlq list` shows them)",
            self.dead_letter_queue.queue
        )?;
        for lane in &self.lanes {
            writeln!(f, "  {}", estimate_line(lane, self.window()))?;
        }
        for lane in self.lanes.iter().filter(|lane| !lane.sources.is_empty()) {
            writeln!(
                f,
                "\n{} lane by source (waiting: from the publish ledger)",
                lane.lane
            )?;
            f.write_str(&Self::source_table(lane, &window))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, 12, minute, 0).unwrap()
    }

    #[test]
    fn a_ledger_settles_its_publications_oldest_first() {
        // 100 at 12:00, all settled before 12:10; 50 at 12:10, 20 of them settled since.
        let ledger = settle(&[(at(0), 100), (at(10), 50)], &[100, 20]);
        assert_eq!(ledger.since, Some(at(10)));
        assert_eq!(
            (ledger.publications, ledger.published, ledger.settled),
            (1, 50, 20)
        );
        assert_eq!(ledger.waiting, 30);

        // The first one still had 10 open at 12:10, finished by the first 10 settled after
        // it: the second one has 40 left, not 30.
        let ledger = settle(&[(at(0), 100), (at(10), 50)], &[90, 20]);
        assert_eq!(ledger.since, Some(at(10)));
        assert_eq!(
            (ledger.published, ledger.settled, ledger.waiting),
            (50, 10, 40)
        );

        // Not even the first one is through.
        let ledger = settle(&[(at(0), 100), (at(10), 50)], &[30, 20]);
        assert_eq!(ledger.since, Some(at(0)));
        assert_eq!(
            (ledger.published, ledger.settled, ledger.waiting),
            (150, 50, 100)
        );

        let done = settle(&[(at(0), 100), (at(10), 50)], &[90, 60]);
        assert_eq!(done.since, None);
        assert_eq!(done.waiting, 0);
        assert_eq!(settle(&[], &[]).waiting, 0);
    }

    #[test]
    fn settlements_beyond_what_was_published_do_not_hide_later_publications() {
        // 40 items of the source came some other way before the second publication: they must
        // not count against the 50 published at 12:10.
        let ledger = settle(&[(at(0), 100), (at(10), 50)], &[140, 0]);
        assert_eq!(ledger.since, Some(at(10)));
        assert_eq!(ledger.waiting, 50);
    }

    #[test]
    fn durations_and_numbers_read_like_people_write_them() {
        assert_eq!(human_duration(0), "0 s");
        assert_eq!(human_duration(45), "45 s");
        assert_eq!(human_duration(75), "1 min 15 s");
        assert_eq!(human_duration(300), "5 min");
        assert_eq!(human_duration(3 * 3600 + 24 * 60 + 9), "3 h 24 min");
        assert_eq!(human_duration(2 * 86_400 + 3 * 3600), "2 d 3 h");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1942), "1,942");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(rate_text(9.8), "9.8");
        assert_eq!(rate_text(0.04), "0.04");
        assert_eq!(rate_text(250.4), "250");
        assert_eq!(rate_text(2.0 / 300.0), "0.007");
        assert_eq!(rate_text(0.0), "0");
    }

    fn lane(ready: Option<u64>, per_second: Option<f64>) -> LaneStatus {
        let activity = per_second.map(|per_second| Activity {
            done: Counts {
                all_time: 0,
                window: 0,
            },
            rejected: Counts {
                all_time: 0,
                window: 0,
            },
            dead_lettered: Counts {
                all_time: 0,
                window: 0,
            },
            rate: Rate {
                observables_per_second: per_second,
                graph_requests_per_second: 0.0,
            },
        });
        let waiting = ready.zip(per_second).map(|(ready, _)| ready * 61);
        LaneStatus {
            lane: Lane::Bulk,
            work_queue: QueueDepth {
                queue: "mdti.work".into(),
                ready,
            },
            retry_queue: QueueDepth {
                queue: "mdti.retry.30s".into(),
                ready: ready.map(|_| 0),
            },
            ready_messages: ready,
            observables_per_message: per_second.map(|_| 61.0),
            waiting_observables: waiting,
            eta_seconds: eta(waiting, activity.as_ref()),
            activity,
            sources: Vec::new(),
        }
    }

    #[test]
    fn the_estimate_says_what_waits_and_when_it_is_through() {
        let window = DEFAULT_WINDOW;
        assert_eq!(
            estimate_line(&lane(Some(1942), Some(9.8)), window),
            "bulk lane: 1,942 messages waiting (about 118,462 observables); \
             at 9.8 observables/s measured over the last 5 min, about 3 h 21 min"
        );
        assert_eq!(
            estimate_line(&lane(Some(1942), Some(0.0)), window),
            "bulk lane: 1,942 messages waiting (about 118,462 observables); no rate measured yet"
        );
        assert_eq!(
            estimate_line(&lane(Some(3), None), window),
            "bulk lane: 3 messages waiting; no rate (Postgres is missing)"
        );
        assert_eq!(
            estimate_line(&lane(Some(1), Some(0.0)), window),
            "bulk lane: 1 message waiting (about 61 observables); no rate measured yet"
        );
        assert!(estimate_line(&lane(None, Some(1.0)), window).contains("unknown"));
    }

    #[test]
    fn tables_pad_every_column_to_its_widest_cell() {
        let text = table(
            &["lane", "ready"],
            &[
                vec!["live".into(), "3".into()],
                vec!["bulk".into(), "1,942".into()],
            ],
        );
        assert_eq!(text, "  lane  ready\n  live      3\n  bulk  1,942\n");
    }
}
