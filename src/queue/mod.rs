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

use std::time::Duration;

use crate::service::{causes, Problem, Service, Unavailable, FIRST_ANSWER_WITHIN};

pub use crate::message;
pub(crate) use crate::message::truncate_chars;
pub use crate::message::{
    decode, ChainRequest, DecodeError, DecodeLimits, Item, ObservableRequest, DEFAULT_ROUTING_KEY,
};
pub use publisher::{lane_of, BatchFailure, PublishError, Publisher, PublisherConnection};
pub use topology::{
    attempt_of, Topology, ATTEMPT_HEADER, LANE_HEADER, REASON_CODE_HEADER, REASON_HEADER,
};

/// The largest frame this client proposes, unless the URL says otherwise (`?frame_max=`).
/// lapin keeps a send and a receive buffer of 32 frames for each connection, zeroed at once:
/// at RabbitMQ's default of 128 KiB that is 8 MiB a connection, most of a worker's memory
/// beyond its messages in flight. A message larger than a frame travels in several, so 16 KiB
/// frames cost a 500-observable batch one frame more and nothing else.
pub const FRAME_MAX: u32 = 16 * 1024;

/// Connect to the broker at `amqp_url`, with lapin's default connection properties; a failure
/// is an [`Unavailable`] naming RabbitMQ, its URL (password hidden) and the cause, said once.
///
/// Unlike [`lapin::Connection::connect`], the error never quotes the URL: lapin's error for a
/// URL it cannot use (`amqp:user:password@host`, without `//`) repeats it whole, password
/// included, into whatever logs it.
pub async fn connect(amqp_url: &str) -> Result<lapin::Connection, Unavailable> {
    let shown = || crate::secret::redact_url(amqp_url);
    let mut uri = amqp_url.parse::<lapin::uri::AMQPUri>().map_err(|reason| {
        let reason = crate::secret::scrub_url(&reason, amqp_url);
        Unavailable::new(Service::RabbitMq, shown(), Problem::BadUrl, &reason)
    })?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    lapin::Connection::connect_uri(uri, Default::default())
        .await
        .map_err(|error| {
            let cause = crate::secret::scrub_url(&causes(&error), amqp_url);
            Unavailable::new(Service::RabbitMq, shown(), problem_of(&error), &cause)
        })
}

/// [`connect`], given up after `limit` without an answer: a command's first connection, which
/// must say at once when the broker is not there rather than wait on a host that drops packets.
pub async fn connect_within(
    amqp_url: &str,
    limit: Duration,
) -> Result<lapin::Connection, Unavailable> {
    match tokio::time::timeout(limit, connect(amqp_url)).await {
        Ok(connected) => connected,
        Err(_) => {
            let shown = crate::secret::redact_url(amqp_url);
            Err(Unavailable::no_answer(Service::RabbitMq, shown, limit))
        }
    }
}

/// Whether the broker at `amqp_url` takes a connection now (within
/// [`FIRST_ANSWER_WITHIN`]): for a command that connects later, after other work, to fail
/// before that work.
pub async fn reach(amqp_url: &str) -> Result<(), Unavailable> {
    let connection = connect_within(amqp_url, FIRST_ANSWER_WITHIN).await?;
    let _ = connection.close(200, "reachable".into()).await;
    Ok(())
}

/// The broker answered and refused (credentials, virtual host, protocol), or nothing answered.
fn problem_of(error: &lapin::Error) -> Problem {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(_)
        | lapin::ErrorKind::AuthProviderError(_)
        | lapin::ErrorKind::InvalidProtocolVersion(_) => Problem::Refused,
        _ => Problem::Unreachable,
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
