//! Metric primitives, and a scrape written in the Prometheus text exposition format (version
//! 0.0.4) by `prometheus-client`.
//!
//! The counters themselves live where the work happens (the Graph client's [`GraphStats`],
//! the consumer's `WorkerStats`) as plain atomics, read at scrape time; this module adds the one
//! primitive they lack, a lock-free [`Histogram`], and an [`Exposition`] through which a
//! [`Collector`] writes its families. The format itself (escaping, float spelling, cumulative
//! buckets ending in `+Inf`, `_sum` and `_count`) is the library's. It knows nothing of HTTP:
//! `ops` serves what it writes.
//!
//! [`GraphStats`]: crate::graph::GraphStats

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) for request latencies: from a fast local answer to Graph's timeout.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of durations with fixed bucket bounds; lock-free to observe, where
/// `prometheus-client`'s own histogram takes a lock on every observation.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus one for values above the last: not cumulative (the encoder
    /// accumulates), so an observation touches one bucket only.
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
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
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let per_bound: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(bound, count)| (*bound, count.load(Ordering::Relaxed)))
            .collect();
        // The count is the sum of the buckets read here, so `+Inf` and `_count` always agree.
        let above = self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        let count = per_bound.iter().map(|(_, n)| n).sum::<u64>() + above;
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &per_bound, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Label pairs of one sample, in the order they are written.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// Everything `collector` writes, as one scrape in the text format.
pub fn scrape(collector: impl Collector) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The families of one scrape, each with its `# HELP` and `# TYPE` lines once and then its
/// samples. Names are the exposed ones, a counter's with its `_total`.
pub struct Exposition<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl<'a> Exposition<'a> {
    pub fn new(encoder: DescriptorEncoder<'a>) -> Exposition<'a> {
        Exposition { encoder }
    }

    /// A counter family; `name` ends in `_total`, which the encoder writes on its own.
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(Labels<'_>, f64)],
    ) -> fmt::Result {
        let family = name.strip_suffix("_total");
        debug_assert!(family.is_some(), "counter {name} does not end in _total");
        let samples = samples
            .iter()
            .map(|(labels, v)| (*labels, ConstCounter::new(*v)));
        self.family(family.unwrap_or(name), help, MetricType::Counter, samples)
    }

    /// A counter family of one unlabelled sample.
    pub fn counter_value(&mut self, name: &str, help: &str, value: f64) -> fmt::Result {
        self.counter(name, help, &[(&[], value)])
    }

    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) -> fmt::Result {
        let samples = samples
            .iter()
            .map(|(labels, v)| (*labels, ConstGauge::new(*v)));
        self.family(name, help, MetricType::Gauge, samples)
    }

    /// A gauge family of one unlabelled sample.
    pub fn gauge_value(&mut self, name: &str, help: &str, value: f64) -> fmt::Result {
        self.gauge(name, help, &[(&[], value)])
    }

    /// A histogram family of one unlabelled series.
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) -> fmt::Result {
        let encoder = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        histogram.encode(encoder)
    }

    fn family<'s, M: EncodeMetric>(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        samples: impl Iterator<Item = (Labels<'s>, M)>,
    ) -> fmt::Result {
        let mut family = self.encoder.encode_descriptor(name, help, None, kind)?;
        for (labels, metric) in samples {
            metric.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector of fixed families, as a scrape would write them.
    #[derive(Debug)]
    struct Families(fn(&mut Exposition) -> fmt::Result);

    impl Collector for Families {
        fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
            (self.0)(&mut Exposition::new(encoder))
        }
    }

    fn text(families: fn(&mut Exposition) -> fmt::Result) -> String {
        scrape(Families(families)).unwrap()
    }

    #[test]
    fn families_have_help_and_type_lines_then_their_samples() {
        let scraped = text(|out| {
            out.counter(
                "mdti_messages_total",
                "Messages by outcome.",
                &[
                    (&[("outcome", "done")], 3.0),
                    (&[("outcome", "retried")], 0.0),
                ],
            )?;
            out.gauge_value("mdti_graph_in_flight_requests", "Open requests.", 2.0)
        });
        assert_eq!(
            scraped,
            "# HELP mdti_messages_total Messages by outcome.\n\
             # TYPE mdti_messages_total counter\n\
             mdti_messages_total{outcome=\"done\"} 3.0\n\
             mdti_messages_total{outcome=\"retried\"} 0.0\n\
             # HELP mdti_graph_in_flight_requests Open requests.\n\
             # TYPE mdti_graph_in_flight_requests gauge\n\
             mdti_graph_in_flight_requests 2.0\n"
        );
    }

    #[test]
    fn label_values_and_help_text_are_escaped() {
        let scraped = text(|out| {
            out.counter(
                "x_total",
                "A \\ backslash\nand a line feed.",
                &[(&[("a", "quote \" back \\ line\nend"), ("b", "plain")], 1.5)],
            )
        });
        assert_eq!(
            scraped,
            "# HELP x_total A \\\\ backslash\\nand a line feed.\n\
             # TYPE x_total counter\n\
             x_total{a=\"quote \\\" back \\\\ line\\nend\",b=\"plain\"} 1.5\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf_with_sum_and_count() {
        static BOUNDS: &[f64] = &[0.1, 0.5, 1.0];
        static HISTOGRAM: std::sync::LazyLock<Histogram> =
            std::sync::LazyLock::new(|| Histogram::new(BOUNDS));
        for millis in [50, 100, 300, 2000] {
            HISTOGRAM.observe(Duration::from_millis(millis));
        }
        let scraped = text(|out| out.histogram("lat_seconds", "Latency.", &HISTOGRAM));
        assert_eq!(
            scraped,
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
}
