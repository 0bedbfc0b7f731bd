//! The RabbitMQ topology: names, arguments and the one idempotent `declare` that the worker and
//! every publisher call before doing anything else.
//!
//! ```text
//! bulk:  publishers ──► {prefix}.observables (topic) ──"#"──► {prefix}.work ──► worker
//!                                                                ▲      │ transient failure
//!                        x-message-ttl, dead-letter to work ─────┘      ▼
//!                                                       {prefix}.retry.{delay}
//! live:  publishers ──► {prefix}.observables.live ──"#"──► {prefix}.work.live ──► worker
//!                                         (and {prefix}.retry.live.{delay}, the same way)
//!                                                    permanent failure ──► {prefix}.dead
//! worker ──► {prefix}.events (topic)
//! ```
//!
//! The bulk lane's objects are the ones every deployment had before lanes: an upgrade declares
//! the live lane's objects beside them and changes no existing queue's arguments (RabbitMQ
//! refuses that), and publishers that know nothing of lanes keep publishing bulk work.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

use crate::lane::Lane;

/// Delivery attempt count. 1 on the first publish; a message without it is on its first attempt.
pub const ATTEMPT_HEADER: &str = "x-mdti-attempt";
/// Why a message was dead-lettered or sent to retry (truncated to about 500 characters).
pub const REASON_HEADER: &str = "x-mdti-reason";
/// A short machine-readable code for the dead-letter reason.
pub const REASON_CODE_HEADER: &str = "x-mdti-reason-code";
/// The lane a dead letter came from, so that a replay returns it to the same lane.
pub const LANE_HEADER: &str = "x-mdti-lane";

/// Names and settings of the broker objects. All names derive from `prefix`, so several
/// deployments (or test runs) can share one broker.
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    /// How long a message waits in the retry queue before it returns to the work queue.
    pub retry_delay: Duration,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            prefix: "mdti".to_string(),
            retry_delay: Duration::from_secs(30),
        }
    }
}

impl Topology {
    /// A topology with the given prefix and the default retry delay.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Topology {
            prefix: prefix.into(),
            ..Topology::default()
        }
    }

    /// Topic exchange, durable: publishers send here with any routing key (the source name).
    pub fn input_exchange(&self) -> String {
        format!("{}.observables", self.prefix)
    }

    /// Durable work queue, bound to the input exchange with `#`.
    pub fn work_queue(&self) -> String {
        format!("{}.work", self.prefix)
    }

    /// Durable retry queue: `x-message-ttl` = retry delay, dead-lettered through the default
    /// exchange to the work queue. The delay is part of the name (`{prefix}.retry.30s`, or
    /// `{prefix}.retry.1500ms` when it is not a whole number of seconds) because RabbitMQ
    /// refuses to redeclare a queue with other arguments: a changed setting gets a new queue
    /// instead of a `PRECONDITION_FAILED` at start.
    pub fn retry_queue(&self) -> String {
        format!("{}.retry.{}", self.prefix, self.retry_delay_name())
    }

    /// The retry delay as queue names carry it: `30s`, or `1500ms`.
    fn retry_delay_name(&self) -> String {
        let ms = self.retry_delay.as_millis();
        if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        }
    }

    /// The exchange publishers send a lane's messages to: the bulk lane's is
    /// [`Topology::input_exchange`], the one publishers used before lanes.
    pub fn lane_exchange(&self, lane: Lane) -> String {
        match lane {
            Lane::Bulk => self.input_exchange(),
            Lane::Live => format!("{}.observables.live", self.prefix),
        }
    }

    /// The queue a lane's consumer reads: the bulk lane's is [`Topology::work_queue`].
    pub fn lane_queue(&self, lane: Lane) -> String {
        match lane {
            Lane::Bulk => self.work_queue(),
            Lane::Live => format!("{}.work.live", self.prefix),
        }
    }

    /// The retry queue that returns a lane's messages to that lane's queue: the bulk lane's is
    /// [`Topology::retry_queue`].
    pub fn lane_retry_queue(&self, lane: Lane) -> String {
        match lane {
            Lane::Bulk => self.retry_queue(),
            Lane::Live => format!("{}.retry.live.{}", self.prefix, self.retry_delay_name()),
        }
    }

    /// The lane whose work or retry queue is named `queue`, if any.
    pub fn lane_of_queue(&self, queue: &str) -> Option<Lane> {
        Lane::ALL
            .into_iter()
            .find(|lane| queue == self.lane_queue(*lane) || queue == self.lane_retry_queue(*lane))
    }

    /// Durable dead letter queue, read by people (or a replay tool), not by the worker.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Topic exchange, durable, for events such as actor hits.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Every queue [`Topology::declare`] declares: each lane's work and retry queues, and the
    /// dead letter queue.
    pub fn queues(&self) -> Vec<String> {
        Lane::ALL
            .into_iter()
            .flat_map(|lane| [self.lane_queue(lane), self.lane_retry_queue(lane)])
            .chain([self.dead_letter_queue()])
            .collect()
    }

    /// Every exchange [`Topology::declare`] declares: each lane's and the events exchange.
    pub fn exchanges(&self) -> Vec<String> {
        Lane::ALL
            .into_iter()
            .map(|lane| self.lane_exchange(lane))
            .chain([self.events_exchange()])
            .collect()
    }

    /// The retry delay in milliseconds, as RabbitMQ wants it for `x-message-ttl`.
    fn retry_ttl_ms(&self) -> i64 {
        i64::try_from(self.retry_delay.as_millis()).unwrap_or(i64::MAX)
    }

    /// Declare the exchanges, queues and bindings of both lanes. Idempotent: both the worker
    /// and the publishers call it at start, in any order, as often as they like.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        declare_topic(channel, &self.events_exchange()).await?;
        for lane in Lane::ALL {
            self.declare_lane(channel, lane).await?;
        }
        channel
            .queue_declare(
                self.dead_letter_queue().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// A lane's exchange, its work queue bound with `#`, and its retry queue dead-lettering
    /// back to the work queue.
    async fn declare_lane(&self, channel: &Channel, lane: Lane) -> Result<(), lapin::Error> {
        let (exchange, queue) = (self.lane_exchange(lane), self.lane_queue(lane));
        declare_topic(channel, &exchange).await?;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let mut retry_args = FieldTable::default();
        retry_args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(self.retry_ttl_ms()),
        );
        retry_args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        retry_args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(queue.into()),
        );
        channel
            .queue_declare(
                self.lane_retry_queue(lane).into(),
                QueueDeclareOptions::durable(),
                retry_args,
            )
            .await?;
        Ok(())
    }
}

async fn declare_topic(channel: &Channel, name: &str) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
}

/// The delivery attempt of a message: [`ATTEMPT_HEADER`] in any integer AMQP type (or a decimal
/// string), at least 1. Absent, unreadable or non-positive means 1.
pub fn attempt_of(props: &BasicProperties) -> u32 {
    props
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(ATTEMPT_HEADER))
        .and_then(amqp_integer)
        .map(|n| n.clamp(1, i128::from(u32::MAX)) as u32)
        .unwrap_or(1)
}

fn amqp_integer(value: &AMQPValue) -> Option<i128> {
    Some(match value {
        AMQPValue::ShortShortInt(n) => i128::from(*n),
        AMQPValue::ShortShortUInt(n) => i128::from(*n),
        AMQPValue::ShortInt(n) => i128::from(*n),
        AMQPValue::ShortUInt(n) => i128::from(*n),
        AMQPValue::LongInt(n) => i128::from(*n),
        AMQPValue::LongUInt(n) => i128::from(*n),
        AMQPValue::LongLongInt(n) => i128::from(*n),
        AMQPValue::Timestamp(n) => i128::from(*n),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok()?,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_attempt(value: AMQPValue) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPT_HEADER.into(), value);
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn names() {
        let t = Topology::default();
        assert_eq!(t.input_exchange(), "mdti.observables");
        assert_eq!(t.work_queue(), "mdti.work");
        assert_eq!(t.retry_queue(), "mdti.retry.30s");
        assert_eq!(t.dead_letter_queue(), "mdti.dead");
        assert_eq!(t.events_exchange(), "mdti.events");
        let odd = Topology {
            prefix: "x".into(),
            retry_delay: Duration::from_millis(1500),
        };
        assert_eq!(odd.retry_queue(), "x.retry.1500ms");
        assert_eq!(t.lane_exchange(Lane::Bulk), "mdti.observables");
        assert_eq!(t.lane_exchange(Lane::Live), "mdti.observables.live");
        assert_eq!(t.lane_queue(Lane::Bulk), "mdti.work");
        assert_eq!(t.lane_queue(Lane::Live), "mdti.work.live");
        assert_eq!(t.lane_retry_queue(Lane::Live), "mdti.retry.live.30s");
        assert_eq!(odd.lane_retry_queue(Lane::Live), "x.retry.live.1500ms");
        assert_eq!(t.lane_of_queue("mdti.retry.live.30s"), Some(Lane::Live));
        assert_eq!(t.lane_of_queue("mdti.work"), Some(Lane::Bulk));
        assert_eq!(t.lane_of_queue("mdti.dead"), None);
    }

    #[test]
    fn attempts() {
        assert_eq!(attempt_of(&BasicProperties::default()), 1);
        assert_eq!(attempt_of(&with_attempt(AMQPValue::LongLongInt(4))), 4);
        assert_eq!(attempt_of(&with_attempt(AMQPValue::ShortShortUInt(2))), 2);
        assert_eq!(attempt_of(&with_attempt(AMQPValue::LongUInt(7))), 7);
        assert_eq!(attempt_of(&with_attempt(AMQPValue::LongInt(-3))), 1);
        assert_eq!(
            attempt_of(&with_attempt(AMQPValue::LongString("5".into()))),
            5
        );
        assert_eq!(attempt_of(&with_attempt(AMQPValue::Boolean(true))), 1);
        assert_eq!(
            attempt_of(&with_attempt(AMQPValue::LongLongInt(i64::MAX))),
            u32::MAX
        );
    }
}
