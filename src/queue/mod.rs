//! The broker side: the RabbitMQ topology ([`topology`]), a publisher with publisher confirms
//! ([`publisher`]) and the dead-letter tools ([`dlq`]). The message contract they carry is
//! [`crate::message`], re-exported here as [`message`]; the consumer loop, which runs the
//! pipeline on what these deliver, is [`crate::consumer`], above the pipeline.
//!
//! Flow: feeds and the `publish` command send observables to the input exchange; the work queue
//! receives everything; a failed delivery that may pass later goes to the retry queue, whose
//! per-queue TTL dead-letters it back to the work queue; a permanent failure goes to the dead
//! letter queue. The consumer acknowledges a delivery only after the broker confirmed its
//! retry / dead-letter copy, so nothing is lost between the two.

pub mod dlq;
pub mod publisher;
pub mod topology;

pub use crate::message;
pub(crate) use crate::message::truncate_chars;
pub use crate::message::{
    decode, ChainRequest, DecodeError, DecodeLimits, Item, ObservableRequest, DEFAULT_ROUTING_KEY,
};
pub use publisher::{lane_of, BatchFailure, PublishError, Publisher, PublisherConnection};
pub use topology::{
    attempt_of, Topology, ATTEMPT_HEADER, LANE_HEADER, REASON_CODE_HEADER, REASON_HEADER,
};

/// Connect to the broker at `amqp_url`, with lapin's default connection properties.
///
/// Unlike [`lapin::Connection::connect`], the error never quotes the URL: lapin's error for a
/// URL it cannot use (`amqp:user:password@host`, without `//`) repeats it whole, password
/// included, into whatever logs it.
pub async fn connect(amqp_url: &str) -> Result<lapin::Connection, lapin::Error> {
    match amqp_url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => lapin::Connection::connect_uri(uri, Default::default()).await,
        Err(reason) => {
            let shown = crate::secret::redact_url(amqp_url);
            let reason = reason.replace(amqp_url, &shown);
            let message = format!("unusable AMQP URL {shown}: {reason}");
            Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, message).into())
        }
    }
}

/// What the broker says of `queue` now (messages ready, consumers), without declaring it: a
/// passive declare, which fails (and closes the channel) when the queue does not exist.
pub async fn inspect(channel: &lapin::Channel, queue: &str) -> Result<lapin::Queue, lapin::Error> {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..lapin::options::QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
        .await
}
