//! Metric primitives and the Prometheus text exposition format (version 0.0.4).
//!
//! The counters themselves live where the work happens (the Graph client's [`GraphStats`],
//! the consumer's `WorkerStats`) as plain atomics; this module adds the one primitive they lack,
//! a [`Histogram`], and an [`Exposition`] writer that renders samples as text. It knows nothing of
//! HTTP: `ops` serves what it writes. Rendering by hand keeps the dependency list short; the
//! format rules it follows (escaping, cumulative buckets ending in `+Inf`, `_sum` and `_count`)
//! are pinned by the tests below.
//!
//! [`GraphStats`]: crate::graph::GraphStats

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) for request latencies: from a fast local answer to Graph's timeout.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of durations with fixed bucket bounds; lock-free to observe.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus one for values above the last: not cumulative (the exposition
    /// accumulates), so an observation touches one bucket only.
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

/// A histogram read at one moment: cumulative counts per bound, the sum and the count.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations <= bound)`, bounds ascending; `+Inf` is `count`.
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    /// `bounds` must ascend; values above the last one count in `+Inf` only.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let at = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.buckets[at].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(&self.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        // The count is the sum of the buckets read here, so `+Inf` and `_count` always agree.
        let count = cumulative + self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count,
        }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

/// Label pairs of one sample, in the order they are written.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// Writes metric families in the text exposition format; each family gets its `# HELP` and
/// `# TYPE` lines once, followed by its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// A counter family; `name` should end in `_total`.
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        self.family(name, help, "counter", samples);
    }

    /// A counter family of one unlabelled sample.
    pub fn counter_value(&mut self, name: &str, help: &str, value: f64) {
        self.counter(name, help, &[(&[], value)]);
    }

    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        self.family(name, help, "gauge", samples);
    }

    /// A histogram family of one unlabelled series.
    pub fn histogram(&mut self, name: &str, help: &str, snapshot: &HistogramSnapshot) {
        self.header(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        for (bound, count) in &snapshot.buckets {
            let le = number(*bound);
            self.sample(&bucket, &[("le", &le)], *count as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], snapshot.count as f64);
        self.sample(&format!("{name}_sum"), &[], snapshot.sum_seconds);
        self.sample(&format!("{name}_count"), &[], snapshot.count as f64);
    }

    pub fn finish(self) -> String {
        self.out
    }

    fn family(&mut self, name: &str, help: &str, kind: &str, samples: &[(Labels<'_>, f64)]) {
        self.header(name, help, kind);
        for (labels, value) in samples {
            self.sample(name, labels, *value);
        }
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: Labels<'_>, value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_label(value));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&number(value));
        self.out.push('\n');
    }
}

/// Label values escape backslash, double quote and line feed, as the format requires.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Go's float syntax as Prometheus reads it: `+Inf`, `-Inf`, `NaN`, else Rust's shortest form
/// (`1`, `0.25`, `1e-7`), which Prometheus parses alike.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_and_type_lines_then_their_samples() {
        let mut text = Exposition::new();
        text.counter(
            "mdti_messages_total",
            "Messages by outcome.",
            &[
                (&[("outcome", "done")], 3.0),
                (&[("outcome", "retried")], 0.0),
            ],
        );
        text.gauge(
            "mdti_graph_in_flight_requests",
            "Open requests.",
            &[(&[], 2.0)],
        );
        assert_eq!(
            text.finish(),
            "# HELP mdti_messages_total Messages by outcome.\n\
             # TYPE mdti_messages_total counter\n\
             mdti_messages_total{outcome=\"done\"} 3\n\
             mdti_messages_total{outcome=\"retried\"} 0\n\
             # HELP mdti_graph_in_flight_requests Open requests.\n\
             # TYPE mdti_graph_in_flight_requests gauge\n\
             mdti_graph_in_flight_requests 2\n"
        );
    }

    #[test]
    fn label_values_and_help_text_are_escaped() {
        let mut text = Exposition::new();
        text.counter(
            "x_total",
            "A \\ backslash\nand a line feed.",
            &[(&[("a", "quote \" back \\ line\nend"), ("b", "plain")], 1.5)],
        );
        assert_eq!(
            text.finish(),
            "# HELP x_total A \\\\ backslash\\nand a line feed.\n\
             # TYPE x_total counter\n\
             x_total{a=\"quote \\\" back \\\\ line\\nend\",b=\"plain\"} 1.5\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf_with_sum_and_count() {
        static BOUNDS: &[f64] = &[0.1, 0.5, 1.0];
        let histogram = Histogram::new(BOUNDS);
        for millis in [50, 100, 300, 2000] {
            histogram.observe(Duration::from_millis(millis));
        }
        let mut text = Exposition::new();
        text.histogram("lat_seconds", "Latency.", &histogram.snapshot());
        assert_eq!(
            text.finish(),
            "# HELP lat_seconds Latency.\n\
             # TYPE lat_seconds histogram\n\
             lat_seconds_bucket{le=\"0.1\"} 2\n\
             lat_seconds_bucket{le=\"0.5\"} 3\n\
             lat_seconds_bucket{le=\"1\"} 3\n\
             lat_seconds_bucket{le=\"+Inf\"} 4\n\
             lat_seconds_sum 2.45\n\
             lat_seconds_count 4\n"
        );
    }

    #[test]
    fn special_floats_use_the_format_spelling() {
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(42.0), "42");
        assert_eq!(number(0.005), "0.005");
    }
}
