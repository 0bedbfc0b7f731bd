//! What the benchmark reads about the process and the machine: percentiles, CPU time (process,
//! per thread, and of other processes such as Postgres backends and RabbitMQ), peak RSS, load.
//! Linux only (`/proc`); elsewhere the readings are absent, never wrong.

use std::collections::BTreeMap;
use std::fs;

use serde::Serialize;

/// Clock ticks per second of `/proc/*/stat` times. 100 on every Linux build that matters
/// (x86-64, arm64); reading `sysconf(_SC_CLK_TCK)` would need `libc`.
const CLK_TCK: f64 = 100.0;

/// Nearest-rank percentile (`p` in 0..=100) of an ascending slice; `None` when empty.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let p = if p.is_nan() {
        100.0
    } else {
        p.clamp(0.0, 100.0)
    };
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Count, mean and percentiles of durations given in microseconds, reported in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Spread {
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    pub fn of_micros(mut values: Vec<i64>) -> Spread {
        values.sort_unstable();
        let ms = |p: f64| percentile(&values, p).unwrap_or(0) as f64 / 1000.0;
        let mean = if values.is_empty() {
            0.0
        } else {
            values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64 / 1000.0
        };
        Spread {
            count: values.len(),
            mean_ms: mean,
            p50_ms: ms(50.0),
            p95_ms: ms(95.0),
            p99_ms: ms(99.0),
            max_ms: ms(100.0),
        }
    }
}

/// User and system CPU seconds of this process (all threads, living and exited).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Cpu {
    pub user_s: f64,
    pub system_s: f64,
}

impl Cpu {
    pub fn total(&self) -> f64 {
        self.user_s + self.system_s
    }

    pub fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            user_s: (self.user_s - earlier.user_s).max(0.0),
            system_s: (self.system_s - earlier.system_s).max(0.0),
        }
    }
}

/// utime and stime of a `/proc/.../stat` line, in seconds.
fn stat_times(text: &str) -> Option<Cpu> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Cpu {
        user_s: utime / CLK_TCK,
        system_s: stime / CLK_TCK,
    })
}

pub fn process_cpu() -> Option<Cpu> {
    stat_times(&fs::read_to_string("/proc/self/stat").ok()?)
}

/// CPU seconds of another process (`None` if it is gone or unreadable).
pub fn pid_cpu(pid: u32) -> Option<f64> {
    stat_times(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).map(|c| c.total())
}

/// One thread's readings from `/proc/self/task/<tid>`.
#[derive(Debug, Clone)]
pub struct ThreadTimes {
    pub name: String,
    /// Nanoseconds on a CPU (`schedstat`'s first field).
    pub on_cpu_ns: u64,
    /// Times the thread was put on a CPU (`schedstat`'s third field): a thread that sleeps
    /// between waits runs once per wake, so this counts its wake-ups.
    pub runs: u64,
}

/// Every thread of this process by tid.
pub type Threads = BTreeMap<u32, ThreadTimes>;

pub fn threads() -> Threads {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let name = fs::read_to_string(path.join("comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let sched = fs::read_to_string(path.join("schedstat")).ok();
        if let Some((on_cpu_ns, runs)) = sched.as_deref().and_then(schedstat) {
            out.insert(
                tid,
                ThreadTimes {
                    name,
                    on_cpu_ns,
                    runs,
                },
            );
        }
    }
    out
}

/// On-CPU nanoseconds and runs of a `schedstat` line (`<on cpu ns> <waiting ns> <runs>`).
fn schedstat(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace().map(|f| f.parse::<u64>().ok());
    let on_cpu_ns = fields.next()??;
    let runs = fields.nth(1)??;
    Some((on_cpu_ns, runs))
}

/// How far one thread got between two snapshots; a thread born in between counts from zero.
fn since(before: &Threads, tid: u32, now: &ThreadTimes) -> (f64, u64) {
    let was = before.get(&tid);
    let ns = now.on_cpu_ns.saturating_sub(was.map_or(0, |t| t.on_cpu_ns));
    let runs = now.runs.saturating_sub(was.map_or(0, |t| t.runs));
    (ns as f64 / 1e9, runs)
}

/// CPU seconds per thread name between two snapshots; threads that exited in between are
/// missing (the process total still has them).
pub fn thread_groups(before: &Threads, after: &Threads) -> BTreeMap<String, f64> {
    let mut groups: BTreeMap<String, f64> = BTreeMap::new();
    for (tid, now) in after {
        *groups.entry(now.name.clone()).or_default() += since(before, *tid, now).0;
    }
    groups
}

/// CPU seconds and runs between two snapshots of the threads `keep` accepts (by tid and name).
pub fn threads_since(
    before: &Threads,
    after: &Threads,
    keep: impl Fn(u32, &str) -> bool,
) -> (f64, u64) {
    after
        .iter()
        .filter(|(tid, now)| keep(**tid, &now.name))
        .map(|(tid, now)| since(before, *tid, now))
        .fold((0.0, 0), |(s, r), (ds, dr)| (s + ds, r + dr))
}

/// Processes on this host whose command name is `comm` (e.g. `beam.smp`), with their CPU seconds.
pub fn processes_named(comm: &str) -> BTreeMap<u32, f64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(name) = fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if name.trim() == comm {
            if let Some(cpu) = pid_cpu(pid) {
                out.insert(pid, cpu);
            }
        }
    }
    out
}

/// CPU seconds the processes of `after` spent since `before` (new ones count from zero).
pub fn processes_delta(before: &BTreeMap<u32, f64>, after: &BTreeMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, cpu)| (cpu - before.get(pid).copied().unwrap_or(0.0)).max(0.0))
        .sum()
}

/// `VmHWM` (peak) and `VmRSS` (now) of this process, in KiB.
pub fn rss_kib() -> (Option<u64>, Option<u64>) {
    status_rss_kib("/proc/self/status")
}

/// `VmHWM` (peak since it started) of another process, in KiB (`None` if it is gone).
pub fn pid_peak_rss_kib(pid: u32) -> Option<u64> {
    status_rss_kib(&format!("/proc/{pid}/status")).0
}

fn status_rss_kib(path: &str) -> (Option<u64>, Option<u64>) {
    let Ok(status) = fs::read_to_string(path) else {
        return (None, None);
    };
    let field = |name: &str| {
        status.lines().find_map(|line| {
            line.strip_prefix(name)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Reset `VmHWM` to the current RSS (Linux 4.0+), so the peak covers the measured window only.
pub fn reset_peak_rss() -> bool {
    fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Busy jiffies of the whole machine (`/proc/stat`, all CPUs).
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    busy: u64,
}

pub fn machine_cpu() -> Option<MachineCpu> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user already).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some(MachineCpu {
        busy: total.saturating_sub(idle),
    })
}

/// CPU seconds the whole machine was busy between two readings (every process, ours included).
pub fn machine_busy_s(before: &MachineCpu, after: &MachineCpu) -> f64 {
    after.busy.saturating_sub(before.busy) as f64 / CLK_TCK
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_runs_are_the_third_schedstat_field() {
        assert_eq!(schedstat("1500000 20000 42\n"), Some((1_500_000, 42)));
        assert_eq!(schedstat("1500000 20000"), None);
        assert_eq!(schedstat("x 1 2"), None);
    }

    #[test]
    fn runs_and_cpu_since_count_threads_born_in_between_from_zero() {
        let at = |name: &str, ns: u64, runs: u64| ThreadTimes {
            name: name.into(),
            on_cpu_ns: ns,
            runs,
        };
        let before: Threads = [(1, at("main", 10, 1)), (2, at("rt", 1_000_000_000, 100))].into();
        let after: Threads = [
            (1, at("main", 20, 2)),
            (2, at("rt", 3_000_000_000, 160)),
            (3, at("rt", 500_000_000, 5)),
        ]
        .into();
        let (cpu, runs) = threads_since(&before, &after, |tid, _| tid != 1);
        assert_eq!((cpu, runs), (2.5, 65));
        assert_eq!(thread_groups(&before, &after)["rt"], 2.5);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 95.0), Some(95));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        // Small samples round up: the p95 of 10 values is the 10th, the p50 the 5th.
        let ten: Vec<i64> = (1..=10).map(|x| x * 10).collect();
        assert_eq!(percentile(&ten, 95.0), Some(100));
        assert_eq!(percentile(&ten, 50.0), Some(50));
        assert_eq!(percentile(&ten, 51.0), Some(60));
        assert_eq!(percentile(&ten, f64::NAN), Some(100));
    }

    #[test]
    fn spreads_are_in_milliseconds() {
        let s = Spread::of_micros(vec![3000, 1000, 2000, 4000]);
        assert_eq!(s.count, 4);
        assert_eq!(s.p50_ms, 2.0);
        assert_eq!(s.max_ms, 4.0);
        assert_eq!(s.mean_ms, 2.5);
        assert_eq!(Spread::of_micros(Vec::new()), Spread::default());
    }

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1 1 1";
        let cpu = stat_times(line).unwrap();
        assert_eq!(cpu.user_s, 2.5);
        assert_eq!(cpu.system_s, 0.5);
    }
}
