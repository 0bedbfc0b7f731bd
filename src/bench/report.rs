//! The benchmark's results: one serialisable [`Report`] and its table.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::measure::{Cpu, Spread};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format: u32,
    pub started_at: String,
    pub git_rev: Option<String>,
    pub config: Config,
    pub machine: Machine,
    /// Every published message was settled before `--max-duration`.
    pub complete: bool,
    pub error: Option<String>,
    pub throughput: Throughput,
    pub graph: Graph,
    pub latency: Latency,
    pub runs: Runs,
    pub worker: BTreeMap<String, u64>,
    pub resources: Resources,
    pub postgres: Postgres,
    pub breakdown: Breakdown,
    /// The lanes mode's figures (`--live-rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lanes: Option<super::lanes::Lanes>,
    pub notes: Vec<String>,
}

/// The bench's default `--cache-ttl`, in seconds.
const DAY_S: f64 = 86_400.0;

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub observables: usize,
    pub distinct_values: usize,
    /// How long a stored answer counted as fresh (`--cache-ttl`); 0 re-enriches every repeat.
    pub cache_ttl_s: f64,
    pub batch_size: usize,
    pub messages: usize,
    pub concurrency: u16,
    pub item_concurrency: usize,
    pub group_commit: usize,
    /// `--bulk-commit-linger`, in seconds.
    pub bulk_commit_linger_s: f64,
    pub enrichers: Vec<String>,
    pub chain: bool,
    pub chain_depth: u32,
    pub graph_rate: f64,
    pub graph_burst: u32,
    pub graph_max_in_flight: usize,
    pub sim: String,
    pub sim_url: String,
    pub sim_rate: Option<f64>,
    pub sim_latency_ms: f64,
    pub sim_threads: usize,
    pub publish_rate: f64,
    pub seed: u64,
    pub db_max_connections: u32,
    pub database: String,
    pub queue_prefix: String,
    pub profile_sync: bool,
    /// Worker processes: 1 = the worker in the bench's own process.
    pub workers: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub loadavg_start: Option<[f64; 3]>,
    pub loadavg_end: Option<[f64; 3]>,
    /// Cores the whole machine kept busy on average during the run (every process).
    pub machine_busy_cores: f64,
    /// Cores this process kept busy on average during the run.
    pub process_cores: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub published_messages: u64,
    /// First message confirmed → last message confirmed.
    pub publish_s: f64,
    pub publish_messages_per_s: f64,
    /// First message confirmed → every message settled.
    pub end_to_end_s: f64,
    pub observables_done: u64,
    pub observables_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    /// Client-side count (`GraphStats::requests`), retries and pages included; with several
    /// worker processes, the simulator's count instead (see `requests_counted_by`).
    pub requests: u64,
    /// `client` or `simulator`.
    pub requests_counted_by: String,
    pub requests_per_observable: f64,
    /// Requests / end-to-end time.
    pub achieved_rate: f64,
    /// 429s the simulator sent (its `throttled` counter).
    pub sim_429: Option<u64>,
    /// Every request the simulator saw under `/v1.0` (its `graph` counter).
    pub sim_requests: Option<u64>,
    /// 429s as a share of the requests the simulator saw.
    pub throttled_share: Option<f64>,
    /// Requests the simulator accepted per second (end to end), as a share of its enforced
    /// rate (`--sim-rate`); `null` without one.
    pub quota_accepted: Option<f64>,
    /// The client's learnt rate at the end of the run, requests/s.
    pub learnt_rate: Option<f64>,
    /// Cuts Graph's 429s made to the learnt rate during the run.
    pub rate_cuts: Option<u64>,
    /// The client-side figures below are `null` (not measured) with several worker processes:
    /// they live in the workers' memory.
    pub client_throttled: Option<u64>,
    pub retries: Option<u64>,
    pub gave_up: Option<u64>,
    pub retry_after_asked_s: Option<f64>,
    /// Summed over requests: time waiting on the client's rate limiter.
    pub limiter_wait_s: Option<f64>,
    /// Timer sleeps on the rate limiter per request sent: below 1 when waiting requests are
    /// admitted in rounds.
    pub limiter_sleeps_per_request: Option<f64>,
    /// Summed over requests: time held back by a 429's Retry-After.
    pub hold_wait_s: Option<f64>,
    /// The simulator's per-endpoint counters during the run.
    pub sim_endpoints: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Publish → result transaction, every observable.
    pub all: Spread,
    pub enriched: Spread,
    pub cached: Spread,
    /// The pipeline's own time per observable (`enrichment_runs.duration_ms`): cache check,
    /// Graph, chaining; not the queue wait, not the result write.
    pub service: Spread,
    pub service_enriched: Spread,
}

#[derive(Debug, Clone, Serialize)]
pub struct Runs {
    pub enriched: u64,
    pub cached: u64,
    pub skipped: u64,
    /// Sum of `enrichment_runs.graph_requests`.
    pub graph_requests: u64,
    pub attribution: Attribution,
}

/// What the run attributed, and what that cost a subscriber of the events exchange.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Attribution {
    /// Actor hits (observable, actor, linking artifact).
    pub hits: u64,
    /// Distinct (observable, actor) pairs.
    pub attributions: u64,
    /// By band: `low`, `medium`, `high`.
    pub hits_by_band: BTreeMap<String, u64>,
    pub attributions_by_band: BTreeMap<String, u64>,
    /// Events announced: at most one per attribution and band change or new kind of evidence,
    /// only at or above --min-event-confidence.
    pub events: u64,
    /// Attributions still owed an event when the run ended.
    pub events_owed: u64,
}

impl Attribution {
    /// "high 1, medium 2, low 3".
    fn bands(by_band: &BTreeMap<String, u64>) -> String {
        ["high", "medium", "low"]
            .iter()
            .map(|band| format!("{band} {}", by_band.get(*band).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    pub peak_rss_mib: Option<f64>,
    pub end_rss_mib: Option<f64>,
    /// Whether the peak was reset at the start of the measured window.
    pub peak_rss_window_only: bool,
    /// The peak includes the simulator's memory (it ran in this process).
    pub rss_includes_simulator: bool,
    pub process_cpu: Cpu,
    /// CPU seconds per thread name during the run.
    pub cpu_by_thread: BTreeMap<String, f64>,
    pub simulator_cpu_s: f64,
    pub publisher_cpu_s: f64,
    /// Process CPU minus the simulator's, the publisher's and the bench's own main thread.
    pub worker_cpu_s: f64,
    pub worker_cpu_s_per_1000: f64,
    /// Times the in-process worker's threads were put on a CPU (`schedstat`): a worker that
    /// waits between requests pays for each wake-up, so this is what waiting costs, counted.
    pub worker_thread_runs: Option<u64>,
    /// The same per Graph request sent.
    pub worker_thread_runs_per_request: Option<f64>,
    /// Backends serving the bench database.
    pub postgres_backends_cpu_s: f64,
    /// The same, per 1,000 observables done (the worker's CPU's companion figure).
    pub postgres_backends_cpu_s_per_1000: f64,
    /// Every `postgres` process on the host (WAL writer, checkpointer, other databases...).
    pub postgres_all_cpu_s: f64,
    pub rabbitmq_cpu_s: f64,
    /// With several worker processes: each one's peak RSS and CPU, read just before it was
    /// stopped (empty with the in-process worker).
    pub worker_processes: Vec<WorkerProcess>,
    /// Sum of the worker processes' peak RSS.
    pub worker_processes_peak_rss_mib: Option<f64>,
}

/// One worker process of a multi-process run.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerProcess {
    pub pid: u32,
    /// `VmHWM`: the peak since the process started.
    pub peak_rss_mib: Option<f64>,
    /// utime + stime since the process started (start-up included).
    pub cpu_s: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Postgres {
    pub commits: i64,
    pub rollbacks: i64,
    pub rows_inserted: i64,
    pub rows_updated: i64,
    pub rows_fetched: i64,
    pub blocks_hit: i64,
    pub blocks_read: i64,
    /// Server-side time executing statements for the bench database (`active_time`).
    pub active_s: f64,
    /// Commits (`xact_commit`: every autocommitted statement is one) per published message.
    pub transactions_per_message: f64,
    /// Rows inserted, and updated, per observable the worker enriched.
    pub rows_inserted_per_enriched: f64,
    pub rows_updated_per_enriched: f64,
}

impl Postgres {
    /// These counters with their ratios to `messages` published and `enriched` observables.
    pub fn per(self, messages: f64, enriched: f64) -> Postgres {
        let ratio = |value: i64, over: f64| {
            if over > 0.0 {
                value as f64 / over
            } else {
                0.0
            }
        };
        Postgres {
            transactions_per_message: ratio(self.commits, messages),
            rows_inserted_per_enriched: ratio(self.rows_inserted, enriched),
            rows_updated_per_enriched: ratio(self.rows_updated, enriched),
            ..self
        }
    }
}

/// Where the time went, in task-seconds (summed over whatever ran at once).
#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    /// Message slots available: concurrency × end-to-end time.
    pub slot_capacity_s: f64,
    /// Sum of the pipeline's service times (`duration_ms`).
    pub service_s: f64,
    pub limiter_wait_s: Option<f64>,
    pub hold_wait_s: Option<f64>,
    /// Requests × the simulator's configured latency (in-process simulator only).
    pub sim_latency_s: Option<f64>,
    pub postgres_active_s: f64,
    /// Mean publish→commit latency minus mean service time: queue wait and result write.
    pub mean_queue_and_write_ms: f64,
}

fn line(out: &mut String, label: &str, text: impl AsRef<str>) {
    let _ = writeln!(out, "  {label:<22}{}", text.as_ref());
}

fn spread_row(out: &mut String, label: &str, s: &Spread) {
    let _ = writeln!(
        out,
        "  {label:<22}{:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        s.count, s.mean_ms, s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms
    );
}

fn mib(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.1} MiB"))
}

/// A figure, or "not measured" where this kind of run cannot know it.
fn measured<T>(v: Option<T>, show: impl Fn(T) -> String) -> String {
    v.map_or("not measured".into(), show)
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = String::new();
        self.write_config(&mut out);
        self.write_machine(&mut out);
        self.write_throughput(&mut out);
        self.write_graph(&mut out);
        self.write_runs(&mut out);
        self.write_latency(&mut out);
        self.write_resources(&mut out);
        self.write_breakdown(&mut out);
        self.write_lanes_and_notes(&mut out);
        out
    }

    /// The header: what was run, with which limits, against which simulator.
    fn write_config(&self, out: &mut String) {
        let c = &self.config;
        let _ = writeln!(
            out,
            "mdti-worker bench: {} observables ({} distinct) in {} messages of {}, concurrency {}, item concurrency {}, group commit {}{}",
            c.observables, c.distinct_values, c.messages, c.batch_size, c.concurrency, c.item_concurrency, c.group_commit,
            if c.workers > 1 {
                format!(", in each of {} worker processes", c.workers)
            } else {
                String::new()
            }
        );
        // Only a short TTL is worth a line: it turns repeats into re-enrichments.
        if c.cache_ttl_s < DAY_S {
            let _ = writeln!(
                out,
                "  answers fresh for {} s: repeats are enriched again",
                c.cache_ttl_s
            );
        }
        let _ = writeln!(
            out,
            "  enrichers {}; chain {}; {} {} req/s (burst {}, {} in flight)",
            c.enrichers.join(","),
            if c.chain {
                format!("depth {}", c.chain_depth)
            } else {
                "off".into()
            },
            if c.workers > 1 {
                "tenant quota (shared by the workers)"
            } else {
                "client limit"
            },
            c.graph_rate,
            c.graph_burst,
            c.graph_max_in_flight
        );
        let _ = writeln!(
            out,
            "  Graph: {} simulator {} (rate limit {}, latency {} ms{})",
            c.sim,
            c.sim_url,
            c.sim_rate.map_or("none".into(), |q| format!("{q} req/s")),
            c.sim_latency_ms,
            if c.sim == "in-process" {
                format!(", {} thread(s)", c.sim_threads)
            } else {
                String::new()
            }
        );
    }

    /// The machine's load, and whether the run finished.
    fn write_machine(&self, out: &mut String) {
        let m = &self.machine;
        let load = |l: Option<[f64; 3]>| {
            l.map_or("n/a".into(), |l| {
                format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
            })
        };
        let _ = writeln!(
            out,
            "  machine: {} CPUs, load {} at start, {} at end; busy {:.2} cores on average (this process {:.2})",
            m.cpus,
            load(m.loadavg_start),
            load(m.loadavg_end),
            m.machine_busy_cores,
            m.process_cores
        );
        if !self.complete {
            let _ = writeln!(
                out,
                "  INCOMPLETE: {}",
                self.error
                    .as_deref()
                    .unwrap_or("the queues were not drained in time")
            );
        }
    }

    fn write_throughput(&self, out: &mut String) {
        let t = &self.throughput;
        out.push_str("\nThroughput\n");
        line(
            out,
            "publish",
            format!(
                "{} messages in {:.2} s ({:.0} msg/s)",
                t.published_messages, t.publish_s, t.publish_messages_per_s
            ),
        );
        line(
            out,
            "end to end",
            format!(
                "{} observables in {:.2} s: {:.1} observables/s",
                t.observables_done, t.end_to_end_s, t.observables_per_s
            ),
        );
    }

    /// Requests, 429s and waits, as the client and the simulator counted them.
    fn write_graph(&self, out: &mut String) {
        let g = &self.graph;
        out.push_str("\nGraph\n");
        line(
            out,
            "requests",
            format!(
                "{} counted by the {} ({:.2} per observable), {:.1} req/s achieved{}",
                g.requests,
                g.requests_counted_by,
                g.requests_per_observable,
                g.achieved_rate,
                self.config
                    .sim_rate
                    .map(|q| format!(" (simulator allows {q})"))
                    .unwrap_or_default()
            ),
        );
        let client_side = match (
            g.client_throttled,
            g.retries,
            g.gave_up,
            g.retry_after_asked_s,
        ) {
            (Some(throttled), Some(retries), Some(gave_up), Some(asked)) => format!(
                "client saw {throttled} throttled, {retries} retries, {gave_up} gave up; Retry-After asked {asked:.1} s"
            ),
            _ => "client side not measured (it is in the worker processes)".into(),
        };
        line(
            out,
            "429s",
            format!(
                "{} sent by the simulator; {client_side}",
                g.sim_429.map_or("n/a".into(), |v| v.to_string()),
            ),
        );
        line(out, "quota", self.quota_line());
        line(
            out,
            "waits (summed)",
            format!(
                "limiter {}{}, 429 hold {}",
                measured(g.limiter_wait_s, |v| format!("{v:.1} s")),
                g.limiter_sleeps_per_request
                    .map(|v| format!(" ({v:.2} timer sleeps per request)"))
                    .unwrap_or_default(),
                measured(g.hold_wait_s, |v| format!("{v:.1} s"))
            ),
        );
        let endpoints: Vec<String> = g
            .sim_endpoints
            .iter()
            .filter(|(k, v)| **v > 0 && !matches!(k.as_str(), "graph" | "throttled"))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        line(out, "by endpoint", endpoints.join(", "));
    }

    /// What share of the requests Graph refused, what share of its quota it accepted, and the
    /// rate the client learnt from that.
    fn quota_line(&self) -> String {
        let g = &self.graph;
        let share = g
            .throttled_share
            .map_or("429 share not measured".into(), |v| {
                format!("{:.2} % of requests were 429s", v * 100.0)
            });
        let accepted = g
            .quota_accepted
            .map(|q| format!("; {q:.2} of the simulator's rate accepted"))
            .unwrap_or_default();
        let learnt = match (g.learnt_rate, g.rate_cuts) {
            (Some(rate), Some(cuts)) => {
                format!("; learnt rate {rate:.1} req/s at the end, {cuts} cuts")
            }
            _ => "; learnt rate not measured (it is in the worker processes)".into(),
        };
        format!("{share}{accepted}{learnt}")
    }

    /// How the observables were answered, and what they were attributed to.
    fn write_runs(&self, out: &mut String) {
        let runs = &self.runs;
        line(
            out,
            "runs",
            format!(
                "{} enriched, {} cached, {} skipped",
                runs.enriched, runs.cached, runs.skipped
            ),
        );
        let a = &runs.attribution;
        line(
            out,
            "actor hits",
            format!("{} ({})", a.hits, Attribution::bands(&a.hits_by_band)),
        );
        line(
            out,
            "attributions",
            format!(
                "{} observable-actor pairs ({}); {} events announced, {} owed",
                a.attributions,
                Attribution::bands(&a.attributions_by_band),
                a.events,
                a.events_owed
            ),
        );
    }

    fn write_latency(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nLatency (ms)            count      mean       p50       p95       p99       max"
        );
        let l = &self.latency;
        spread_row(out, "publish→commit, all", &l.all);
        spread_row(out, "  enriched", &l.enriched);
        spread_row(out, "  cached", &l.cached);
        spread_row(out, "service, all", &l.service);
        spread_row(out, "  enriched", &l.service_enriched);
    }

    fn write_resources(&self, out: &mut String) {
        out.push_str("\nResources\n");
        self.write_memory(out);
        self.write_cpu(out);
        self.write_postgres(out);
    }

    /// The bench process's RSS and what it holds, then each worker process's.
    fn write_memory(&self, out: &mut String) {
        let r = &self.resources;
        let multi_process = !r.worker_processes.is_empty();
        line(
            out,
            if multi_process {
                "bench process RSS"
            } else {
                "peak RSS"
            },
            format!(
                "{} (end {}){}{}",
                mib(r.peak_rss_mib),
                mib(r.end_rss_mib),
                if r.peak_rss_window_only {
                    ", peak of the measured window"
                } else {
                    ", peak since start"
                },
                match (multi_process, r.rss_includes_simulator) {
                    (true, true) => "; the simulator and publisher, no worker",
                    (true, false) => "; the publisher, no worker",
                    (false, true) => "; includes the in-process simulator and publisher",
                    (false, false) => "; includes the publisher, not the simulator",
                }
            ),
        );
        for (index, w) in r.worker_processes.iter().enumerate() {
            line(
                out,
                &format!("worker process {}", index + 1),
                format!(
                    "pid {}: peak RSS {}, CPU {}",
                    w.pid,
                    mib(w.peak_rss_mib),
                    measured(w.cpu_s, |v| format!("{v:.2} s"))
                ),
            );
        }
        if multi_process {
            line(
                out,
                "worker processes",
                format!(
                    "peak RSS {} summed, CPU {:.2} s summed (since each started)",
                    mib(r.worker_processes_peak_rss_mib),
                    r.worker_cpu_s
                ),
            );
        }
    }

    /// CPU seconds: the worker's, this process's by thread, Postgres's and RabbitMQ's.
    fn write_cpu(&self, out: &mut String) {
        let r = &self.resources;
        line(
            out,
            "worker CPU",
            format!(
                "{:.2} s = {:.3} s per 1,000 observables",
                r.worker_cpu_s, r.worker_cpu_s_per_1000
            ),
        );
        line(
            out,
            "process CPU",
            format!(
                "{:.2} s (user {:.2}, system {:.2}); simulator {:.2} s, publisher {:.2} s",
                r.process_cpu.total(),
                r.process_cpu.user_s,
                r.process_cpu.system_s,
                r.simulator_cpu_s,
                r.publisher_cpu_s
            ),
        );
        let threads: Vec<String> = r
            .cpu_by_thread
            .iter()
            .filter(|(_, s)| **s >= 0.005)
            .map(|(k, s)| format!("{k} {s:.2}"))
            .collect();
        line(out, "CPU by thread (s)", threads.join(", "));
        if let (Some(runs), Some(per_request)) =
            (r.worker_thread_runs, r.worker_thread_runs_per_request)
        {
            line(
                out,
                "worker wake-ups",
                format!("{runs} runs of its threads on a CPU, {per_request:.2} per Graph request"),
            );
        }
        line(
            out,
            "Postgres CPU",
            format!(
                "{:.2} s in the bench database's backends = {:.3} s per 1,000 observables ({:.2} s all postgres processes)",
                r.postgres_backends_cpu_s, r.postgres_backends_cpu_s_per_1000, r.postgres_all_cpu_s
            ),
        );
        line(out, "RabbitMQ CPU", format!("{:.2} s", r.rabbitmq_cpu_s));
    }

    /// Postgres's own counters, and how many results each transaction carried.
    fn write_postgres(&self, out: &mut String) {
        let p = &self.postgres;
        line(
            out,
            "Postgres",
            format!(
                "{} commits, {} rollbacks, {} rows inserted, {} updated, {} fetched; active {:.2} s",
                p.commits, p.rollbacks, p.rows_inserted, p.rows_updated, p.rows_fetched, p.active_s
            ),
        );
        line(
            out,
            "Postgres per unit",
            format!(
                "{:.2} transactions per message; {:.1} rows inserted, {:.1} updated per enriched observable",
                p.transactions_per_message, p.rows_inserted_per_enriched, p.rows_updated_per_enriched
            ),
        );
        if let (Some(messages), Some(transactions)) = (
            self.worker.get("results_committed"),
            self.worker.get("result_transactions"),
        ) {
            line(
                out,
                "group commit",
                format!(
                    "{messages} messages' results in {transactions} transactions ({:.1} per transaction)",
                    *messages as f64 / (*transactions).max(1) as f64
                ),
            );
        }
    }

    fn write_breakdown(&self, out: &mut String) {
        let b = &self.breakdown;
        out.push_str("\nWhere the time went (task-seconds, summed over concurrent work)\n");
        line(
            out,
            "message slots",
            format!("{:.1} s (concurrency × end to end)", b.slot_capacity_s),
        );
        line(
            out,
            "pipeline service",
            format!(
                "{:.1} s (cache check, Graph, chaining per observable)",
                b.service_s
            ),
        );
        let inside_service = |wait: Option<f64>| {
            format!(
                "{} (inside service, per request)",
                measured(wait, |v| format!("{v:.1} s"))
            )
        };
        line(out, "  limiter wait", inside_service(b.limiter_wait_s));
        line(out, "  429 hold wait", inside_service(b.hold_wait_s));
        if let Some(s) = b.sim_latency_s {
            line(
                out,
                "  simulator latency",
                format!("{s:.1} s (requests × configured latency)"),
            );
        }
        line(
            out,
            "Postgres active",
            format!("{:.1} s (server side, all statements)", b.postgres_active_s),
        );
        line(
            out,
            "queue wait + write",
            format!(
                "{:.1} ms per observable (mean latency − mean service)",
                b.mean_queue_and_write_ms
            ),
        );
    }

    fn write_lanes_and_notes(&self, out: &mut String) {
        if let Some(lanes) = &self.lanes {
            out.push_str("\nLanes\n");
            for text in lanes.lines() {
                let _ = writeln!(out, "  {text}");
            }
        }
        if !self.notes.is_empty() {
            out.push_str("\nNotes\n");
            for note in &self.notes {
                let _ = writeln!(out, "  - {note}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(count: usize, base: f64) -> Spread {
        Spread {
            count,
            mean_ms: base,
            p50_ms: base * 0.9,
            p95_ms: base * 2.0,
            p99_ms: base * 3.0,
            max_ms: base * 4.0,
        }
    }

    fn config() -> Config {
        Config {
            observables: 1000,
            distinct_values: 400,
            cache_ttl_s: 86400.0,
            batch_size: 10,
            messages: 100,
            concurrency: 8,
            item_concurrency: 4,
            group_commit: 16,
            bulk_commit_linger_s: 1.0,
            enrichers: vec!["reputation".into(), "whois".into()],
            chain: true,
            chain_depth: 2,
            graph_rate: 50.0,
            graph_burst: 10,
            graph_max_in_flight: 8,
            sim: "in-process".into(),
            sim_url: "http://127.0.0.1:1".into(),
            sim_rate: Some(40.0),
            sim_latency_ms: 5.0,
            sim_threads: 2,
            publish_rate: 0.0,
            seed: 7,
            db_max_connections: 10,
            database: "bench".into(),
            queue_prefix: "bench".into(),
            profile_sync: false,
            workers: 1,
        }
    }

    fn graph() -> Graph {
        Graph {
            requests: 1200,
            requests_counted_by: "client".into(),
            requests_per_observable: 1.2,
            achieved_rate: 59.3,
            sim_429: Some(12),
            sim_requests: Some(1212),
            throttled_share: Some(12.0 / 1212.0),
            quota_accepted: Some(0.98),
            learnt_rate: Some(57.5),
            rate_cuts: Some(3),
            client_throttled: Some(12),
            retries: Some(11),
            gave_up: Some(1),
            retry_after_asked_s: Some(3.5),
            limiter_wait_s: Some(9.25),
            limiter_sleeps_per_request: Some(0.25),
            hold_wait_s: None,
            sim_endpoints: [
                ("graph", 1212),
                ("throttled", 12),
                ("whois", 300),
                ("dns", 0),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        }
    }

    fn resources() -> Resources {
        Resources {
            peak_rss_mib: Some(80.5),
            end_rss_mib: None,
            peak_rss_window_only: true,
            rss_includes_simulator: true,
            process_cpu: Cpu {
                user_s: 3.0,
                system_s: 1.0,
            },
            cpu_by_thread: [("tokio".to_string(), 2.5), ("idle".to_string(), 0.001)].into(),
            simulator_cpu_s: 0.5,
            publisher_cpu_s: 0.25,
            worker_cpu_s: 3.0,
            worker_cpu_s_per_1000: 3.03,
            worker_thread_runs: Some(5_000),
            worker_thread_runs_per_request: Some(2.5),
            postgres_backends_cpu_s: 1.25,
            postgres_backends_cpu_s_per_1000: 1.263,
            postgres_all_cpu_s: 1.5,
            rabbitmq_cpu_s: 0.75,
            worker_processes: Vec::new(),
            worker_processes_peak_rss_mib: None,
        }
    }

    fn lanes() -> super::super::lanes::Lanes {
        super::super::lanes::Lanes {
            live_rate: 2.0,
            live_reserve: 0.2,
            quota: 40.0,
            live_published: 40,
            bulk_drain_s: 20.0,
            live_latency: spread(40, 30.0),
            bulk_latency: spread(950, 300.0),
            live_requests: 40,
            bulk_requests: 1160,
            live_requests_per_s: 2.0,
            bulk_requests_per_s: 58.0,
            bulk_share_of_what_live_left: 0.95,
        }
    }

    fn latency() -> Latency {
        Latency {
            all: spread(990, 100.0),
            enriched: spread(600, 150.0),
            cached: spread(390, 20.0),
            service: spread(990, 50.0),
            service_enriched: spread(600, 70.0),
        }
    }

    fn runs() -> Runs {
        Runs {
            enriched: 600,
            cached: 390,
            skipped: 10,
            graph_requests: 1200,
            attribution: Attribution {
                hits: 5,
                attributions: 3,
                hits_by_band: [("high".to_string(), 2), ("low".to_string(), 3)].into(),
                attributions_by_band: [("medium".to_string(), 3)].into(),
                events: 2,
                events_owed: 1,
            },
        }
    }

    fn breakdown() -> Breakdown {
        Breakdown {
            slot_capacity_s: 162.0,
            service_s: 49.5,
            limiter_wait_s: Some(9.25),
            hold_wait_s: None,
            sim_latency_s: Some(6.0),
            postgres_active_s: 2.5,
            mean_queue_and_write_ms: 50.0,
        }
    }

    /// A run of the in-process worker with every optional figure measured.
    fn in_process() -> Report {
        Report {
            format: 3,
            started_at: "2026-01-01T00:00:00Z".into(),
            git_rev: Some("abc".into()),
            config: config(),
            machine: Machine {
                cpus: 2,
                loadavg_start: Some([0.5, 0.25, 0.125]),
                loadavg_end: None,
                machine_busy_cores: 1.5,
                process_cores: 0.75,
            },
            complete: false,
            error: None,
            throughput: Throughput {
                published_messages: 100,
                publish_s: 1.5,
                publish_messages_per_s: 66.7,
                end_to_end_s: 20.25,
                observables_done: 990,
                observables_per_s: 48.9,
            },
            graph: graph(),
            latency: latency(),
            runs: runs(),
            worker: [
                ("results_committed".to_string(), 100),
                ("result_transactions".to_string(), 30),
            ]
            .into(),
            resources: resources(),
            postgres: Postgres {
                commits: 40,
                rollbacks: 1,
                rows_inserted: 2000,
                rows_updated: 300,
                rows_fetched: 5000,
                blocks_hit: 0,
                blocks_read: 0,
                active_s: 2.5,
                transactions_per_message: 0.4,
                rows_inserted_per_enriched: 3.33,
                rows_updated_per_enriched: 0.5,
            },
            breakdown: breakdown(),
            lanes: Some(lanes()),
            notes: vec!["first note".into(), "second note".into()],
        }
    }

    /// A run of two worker processes against an external simulator, client side unmeasured.
    fn worker_processes() -> Report {
        let mut report = in_process();
        report.config.workers = 2;
        report.config.chain = false;
        report.config.sim = "external".into();
        report.config.sim_rate = None;
        report.machine.loadavg_start = None;
        report.complete = false;
        report.error = Some("the worker process 2 exited".into());
        report.graph.requests_counted_by = "simulator".into();
        report.graph.client_throttled = None;
        report.graph.sim_429 = None;
        report.graph.throttled_share = None;
        report.graph.quota_accepted = None;
        report.graph.limiter_wait_s = None;
        report.graph.limiter_sleeps_per_request = None;
        report.graph.learnt_rate = None;
        report.graph.rate_cuts = None;
        report.resources.rss_includes_simulator = false;
        report.resources.peak_rss_window_only = false;
        report.resources.worker_thread_runs = None;
        report.resources.worker_thread_runs_per_request = None;
        report.resources.worker_processes = vec![
            WorkerProcess {
                pid: 11,
                peak_rss_mib: Some(40.0),
                cpu_s: Some(1.5),
            },
            WorkerProcess {
                pid: 12,
                peak_rss_mib: None,
                cpu_s: None,
            },
        ];
        report.resources.worker_processes_peak_rss_mib = Some(40.0);
        report.worker.clear();
        report.breakdown.sim_latency_s = None;
        report.lanes = None;
        report.notes.clear();
        report
    }

    // The table is read by people comparing runs: its text must not move under them.
    #[test]
    fn the_table_reads_as_pinned() {
        assert_eq!(in_process().table(), include_str!("tables/in_process.txt"));
        assert_eq!(
            worker_processes().table(),
            include_str!("tables/worker_processes.txt")
        );
        let mut done = in_process();
        done.complete = true;
        done.resources.rss_includes_simulator = false;
        assert_eq!(done.table(), include_str!("tables/in_process_complete.txt"));
        let mut done = worker_processes();
        done.complete = true;
        done.error = None;
        done.resources.rss_includes_simulator = true;
        assert_eq!(
            done.table(),
            include_str!("tables/worker_processes_complete.txt")
        );
    }
}
