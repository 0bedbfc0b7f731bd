//! Publishing with publisher confirms: nothing counts as sent until the broker confirmed it.
//!
//! One [`Publisher`] owns one channel in confirm mode. It is `Clone` (the channel is shared and
//! lapin's channel is safe to use from several tasks), so the worker's tasks can share one.
//!
//! The broker closes a channel over one bad publish (a `NOT_FOUND` for a deleted exchange, say);
//! everything sent on it afterwards fails. So a publisher that holds its connection opens a new
//! channel, set up as the first one was, before the next publish; only a lost connection ends it
//! ([`PublishError::is_connection_lost`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ErrorKind};
use serde::Serialize;

use super::topology::{Topology, ATTEMPT_HEADER, LANE_HEADER, REASON_CODE_HEADER, REASON_HEADER};
use super::truncate_chars;
use crate::lane::Lane;
use crate::progress::{self, point};
use crate::service::{Unavailable, FIRST_ANSWER_WITHIN};

/// Longest reason (in characters) written into [`REASON_HEADER`].
pub const MAX_REASON_CHARS: usize = 500;
/// Longest reason code (in characters) written into [`REASON_CODE_HEADER`].
pub const MAX_CODE_CHARS: usize = 100;

const PERSISTENT: u8 = 2;

/// Why a publish did not end with a broker confirmation.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No connection to the broker to begin with (printed as the whole guide: the broker, its
    /// URL, the cause and the way forward).
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The channel failed (the broker closed it, a protocol error) while the connection stayed
    /// up: this publish failed; a publisher that holds its connection sends the next one on a
    /// new channel.
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    /// Nothing can be published before the session is rebuilt: the connection is gone, or the
    /// channel is closed and this publisher has no connection to open another on.
    #[error("the broker connection is lost: {reason}")]
    ConnectionLost { reason: String },
    /// The broker refused responsibility for the message (basic.nack).
    #[error("the broker nacked message {message_id:?}")]
    Nacked { message_id: String },
    /// The message was published as mandatory and no queue took it (someone deleted a queue or
    /// a binding while we run).
    #[error("message {message_id:?} to {destination} was returned unroutable: {reply_code} {reply_text}")]
    Unroutable {
        message_id: String,
        destination: String,
        reply_code: u16,
        reply_text: String,
    },
    /// The channel is not in confirm mode: the broker never confirms (a bug, not a broker state).
    #[error("message {message_id:?} was not confirmed: the channel is not in confirm mode")]
    NotConfirmed { message_id: String },
    /// Something we were asked to send cannot be expressed in AMQP (e.g. a routing key or
    /// message id over 255 bytes). Nothing was sent.
    #[error("cannot publish: {field} {reason}")]
    Invalid { field: &'static str, reason: String },
    /// Some messages of a batch were not confirmed; the others were.
    #[error("{} of {} message(s) not confirmed: {}", failed.len(), confirmed + failed.len(), BatchFailures(failed))]
    Batch {
        /// How many messages of the batch the broker confirmed.
        confirmed: usize,
        /// The messages that were not confirmed, in batch order.
        failed: Vec<BatchFailure>,
    },
}

impl PublishError {
    /// True when no publish can succeed until the caller connects again (a new connection and a
    /// new publisher); false when this one publish failed and the next may well succeed (the
    /// broker refused it, nacked it, could not route it).
    pub fn is_connection_lost(&self) -> bool {
        match self {
            PublishError::ConnectionLost { .. } => true,
            PublishError::Batch { failed, .. } => {
                failed.iter().any(|f| f.error.is_connection_lost())
            }
            _ => false,
        }
    }
}

/// One message of a batch that was not confirmed.
#[derive(Debug)]
pub struct BatchFailure {
    /// Position in the batch given to [`Publisher::publish_batch`].
    pub index: usize,
    pub message_id: String,
    pub error: Box<PublishError>,
}

struct BatchFailures<'a>(&'a [BatchFailure]);

impl fmt::Display for BatchFailures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 5;
        for (n, failure) in self.0.iter().take(SHOWN).enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            match *failure.error {
                // These name the message themselves.
                PublishError::Nacked { .. }
                | PublishError::Unroutable { .. }
                | PublishError::NotConfirmed { .. } => {
                    write!(f, "#{}: {}", failure.index, failure.error)?
                }
                _ => write!(
                    f,
                    "#{} ({}): {}",
                    failure.index, failure.message_id, failure.error
                )?,
            }
        }
        if self.0.len() > SHOWN {
            write!(f, "; and {} more", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// What [`Publisher::on_connection`] publishes over: an `Arc<Connection>`, which the publisher
/// keeps to open a new channel when the broker closed its own, or a borrowed [`Connection`],
/// which it cannot keep: once that channel is closed, every publish fails with
/// [`PublishError::ConnectionLost`].
pub trait PublisherConnection {
    fn connection(&self) -> &Connection;
    /// A handle the publisher may keep, if there is one.
    fn shared(&self) -> Option<Arc<Connection>>;
}

impl PublisherConnection for Connection {
    fn connection(&self) -> &Connection {
        self
    }

    fn shared(&self) -> Option<Arc<Connection>> {
        None
    }
}

impl PublisherConnection for Arc<Connection> {
    fn connection(&self) -> &Connection {
        self
    }

    fn shared(&self) -> Option<Arc<Connection>> {
        Some(Arc::clone(self))
    }
}

/// A channel in confirm mode plus the topology it publishes into.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
    topology: Topology,
}

/// What the clones of one publisher share.
struct Shared {
    /// The channel publishes go out on; replaced once the broker closed it.
    channel: Mutex<Channel>,
    /// Held while a replacement is opened, so that the publishes waiting for it open one
    /// channel between them, not one each.
    reopening: tokio::sync::Mutex<()>,
    /// Where a replacement channel comes from; `None` when none can be opened.
    connection: Option<Arc<Connection>>,
    /// [`Publisher::connect`] opened the connection, so [`Publisher::close`] closes it.
    owns_connection: bool,
    /// Messages handed to this publisher that the broker did not confirm.
    failed_publishes: AtomicU64,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("channel", &self.channel().id())
            .field("topology", &self.topology)
            .finish()
    }
}

impl Publisher {
    /// Connect to `amqp_url`, open a channel, declare the topology and enable confirms. A
    /// broker that does not take the connection within [`FIRST_ANSWER_WITHIN`] is
    /// [`PublishError::Unavailable`].
    pub async fn connect(amqp_url: &str, topology: Topology) -> Result<Publisher, PublishError> {
        let connection = Arc::new(super::connect_within(amqp_url, FIRST_ANSWER_WITHIN).await?);
        let channel = open_channel(&connection, &topology).await?;
        Ok(Publisher::new(channel, topology, Some(connection), true))
    }

    /// Open a new channel on an existing connection (e.g. the worker's), declare the topology
    /// and enable confirms. The connection stays the caller's. Given an `Arc<Connection>`, the
    /// publisher replaces a channel the broker closed; given a `&Connection`, it cannot (see
    /// [`PublisherConnection`]).
    pub async fn on_connection<C: PublisherConnection>(
        connection: &C,
        topology: Topology,
    ) -> Result<Publisher, lapin::Error> {
        let channel = open_channel(connection.connection(), &topology).await?;
        Ok(Publisher::new(
            channel,
            topology,
            connection.shared(),
            false,
        ))
    }

    /// A new channel on `connection` in confirm mode that declares nothing: a publish to an
    /// exchange someone deleted then fails instead of going to a fresh exchange nobody is
    /// bound to yet.
    pub async fn on_connection_undeclared(
        connection: &Connection,
        topology: Topology,
    ) -> Result<Publisher, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Not replaced once closed either: the caller makes a new one, declaring nothing.
        Ok(Publisher::new(channel, topology, None, false))
    }

    /// Use `channel` (which then must not be used for unconfirmed publishes elsewhere): declare
    /// the topology and enable confirms. Once the broker closes that channel, every publish
    /// fails with [`PublishError::ConnectionLost`]: there is no connection to open another on.
    pub async fn on_channel(
        channel: Channel,
        topology: Topology,
    ) -> Result<Publisher, lapin::Error> {
        set_up(&channel, &topology).await?;
        Ok(Publisher::new(channel, topology, None, false))
    }

    fn new(
        channel: Channel,
        topology: Topology,
        connection: Option<Arc<Connection>>,
        owns_connection: bool,
    ) -> Publisher {
        let shared = Shared {
            channel: Mutex::new(channel),
            reopening: tokio::sync::Mutex::new(()),
            connection,
            owns_connection,
            failed_publishes: AtomicU64::new(0),
        };
        Publisher {
            shared: Arc::new(shared),
            topology,
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The confirm-mode channel in use now (for declarations, `basic_get` in tests, and so
    /// on). A handle, not a borrow: the publisher replaces its channel when the broker closes
    /// it, and the handle then still names the closed one.
    pub fn channel(&self) -> Channel {
        self.shared
            .channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many messages handed to this publisher (and its clones) the broker did not confirm:
    /// refused, nacked, returned unroutable, or lost with the channel or the connection.
    pub fn failed_publishes(&self) -> u64 {
        self.shared.failed_publishes.load(Ordering::Relaxed)
    }

    /// Close the channel, and the connection when [`Publisher::connect`] opened it (closing a
    /// clone closes them for all clones). Pending confirms should have been awaited before.
    pub async fn close(self) -> Result<(), lapin::Error> {
        let channel = self.channel();
        // A channel the broker closed is closed already; closing it again is an error.
        let closed = if channel.status().connected() {
            channel.close(200, "bye".into()).await
        } else {
            Ok(())
        };
        if let (true, Some(connection)) = (self.shared.owns_connection, &self.shared.connection) {
            connection.close(200, "bye".into()).await?;
        }
        closed
    }

    /// Publish one message of observables to the bulk lane's input exchange (see
    /// [`Publisher::publish_observables_to`]).
    pub async fn publish_observables(
        &self,
        routing_key: &str,
        body: &[u8],
        content_type: &str,
        message_id: &str,
    ) -> Result<(), PublishError> {
        self.publish_observables_to(Lane::Bulk, routing_key, body, content_type, message_id)
            .await
    }

    /// Publish one message of observables to `lane`'s input exchange: persistent, with
    /// `message_id`, and wait for the broker's confirm. A nack or an unroutable return is an
    /// error.
    pub async fn publish_observables_to(
        &self,
        lane: Lane,
        routing_key: &str,
        body: &[u8],
        content_type: &str,
        message_id: &str,
    ) -> Result<(), PublishError> {
        let props = observable_properties(content_type, message_id).map_err(|e| self.failed(e))?;
        self.publish_confirmed(
            &self.topology.lane_exchange(lane),
            routing_key,
            true,
            body,
            props,
        )
        .await
    }

    /// Publish every `(routing_key, body, content_type, message_id)` to the input exchange, then
    /// await all the confirms (pipelined: one wait, not one round trip per message). All are
    /// handed to the connection before any is waited for ([`Publisher::publish_raw`]).
    ///
    /// Returns how many were confirmed (all of them) or [`PublishError::Batch`] naming each
    /// message that was not confirmed, with the count of those that were. A message that could
    /// not be expressed in AMQP (see [`PublishError::Invalid`]) fails alone; a channel error
    /// fails everything that was not confirmed yet.
    pub async fn publish_batch(
        &self,
        items: Vec<(String, Vec<u8>, String, String)>,
    ) -> Result<usize, PublishError> {
        self.publish_batch_to(Lane::Bulk, items).await
    }

    /// [`Publisher::publish_batch`] to `lane`'s input exchange.
    pub async fn publish_batch_to(
        &self,
        lane: Lane,
        items: Vec<(String, Vec<u8>, String, String)>,
    ) -> Result<usize, PublishError> {
        let exchange: &str = &self.topology.lane_exchange(lane);
        let sent = join_all(items.into_iter().enumerate().map(
            |(index, (routing_key, body, content_type, message_id))| async move {
                let sent = match observable_properties(&content_type, &message_id) {
                    Ok(props) => {
                        self.publish_raw(exchange, &routing_key, true, &body, props)
                            .await
                    }
                    Err(error) => Err(error),
                };
                (index, message_id, sent)
            },
        ))
        .await;
        let mut pending = Vec::with_capacity(sent.len());
        let mut failed = Vec::new();
        for (index, message_id, sent) in sent {
            match sent {
                Ok(confirm) => pending.push((index, message_id, confirm)),
                Err(error) => failed.push(BatchFailure {
                    index,
                    message_id,
                    error: Box::new(self.failed(error)),
                }),
            }
        }

        let mut confirmed = 0;
        let results = join_all(pending.into_iter().map(
            |(index, message_id, confirm)| async move {
                let result = check(
                    progress::wait_at(point::CONFIRM, confirm).await,
                    &message_id,
                    exchange,
                );
                (index, message_id, result)
            },
        ))
        .await;
        for (index, message_id, result) in results {
            match result {
                Ok(()) => confirmed += 1,
                Err(error) => failed.push(BatchFailure {
                    index,
                    message_id,
                    error: Box::new(self.failed(error)),
                }),
            }
        }
        if failed.is_empty() {
            Ok(confirmed)
        } else {
            failed.sort_by_key(|f| f.index);
            Err(PublishError::Batch { confirmed, failed })
        }
    }

    /// Republish a delivery to `lane`'s retry queue (default exchange, routing key = retry queue),
    /// keeping its properties and headers, with [`ATTEMPT_HEADER`] = `attempt`,
    /// [`REASON_CODE_HEADER`] = `code` and [`REASON_HEADER`] = `reason` (truncated). Returns
    /// once the broker confirmed: only then may the caller ack the original delivery.
    pub async fn send_to_retry(
        &self,
        lane: Lane,
        delivery_body: &[u8],
        props: &BasicProperties,
        attempt: u32,
        code: &str,
        reason: &str,
    ) -> Result<(), PublishError> {
        let props = annotated(props, attempt, Some(code), reason);
        let queue = self.topology.lane_retry_queue(lane);
        self.publish_confirmed("", &queue, true, delivery_body, props)
            .await
    }

    /// Republish a delivery to the dead letter queue, like [`Publisher::send_to_retry`], with
    /// [`LANE_HEADER`] = `lane`, so that a replay returns it to its lane. Confirmed before it
    /// returns.
    pub async fn send_to_dead_letter(
        &self,
        lane: Lane,
        delivery_body: &[u8],
        props: &BasicProperties,
        attempt: u32,
        code: &str,
        reason: &str,
    ) -> Result<(), PublishError> {
        let props = with_lane(annotated(props, attempt, Some(code), reason), lane);
        let queue = self.topology.dead_letter_queue();
        self.publish_confirmed("", &queue, true, delivery_body, props)
            .await
    }

    /// Publish a message straight to `lane`'s work queue (default exchange), persistent, with
    /// the properties given, and wait for the broker's confirm. Used to replay dead letters.
    pub async fn send_to_work_queue(
        &self,
        lane: Lane,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let props = props.with_delivery_mode(PERSISTENT);
        let queue = self.topology.lane_queue(lane);
        self.publish_confirmed("", &queue, true, body, props).await
    }

    /// Publish a JSON event to the events exchange: persistent, `application/json`, a fresh
    /// UUID as message id, confirmed. Not mandatory: an event nobody subscribed to yet is not an
    /// error.
    pub async fn publish_event(
        &self,
        routing_key: &str,
        body: &serde_json::Value,
    ) -> Result<(), PublishError> {
        self.publish_events(&[(routing_key, body)]).await
    }

    /// [`Publisher::publish_event`] for each `(routing_key, body)`, pipelined: every event is
    /// handed to the connection at once ([`Publisher::publish_raw`]), then all the confirms are
    /// awaited (one wait, not one round trip per event). Fails with the first event that was
    /// not sent or not confirmed.
    pub async fn publish_events(
        &self,
        events: &[(&str, &serde_json::Value)],
    ) -> Result<(), PublishError> {
        let ids: Vec<String> = events
            .iter()
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        let identified: Vec<(&str, &str, &serde_json::Value)> = ids
            .iter()
            .zip(events)
            .map(|(id, &(routing_key, body))| (id.as_str(), routing_key, body))
            .collect();
        self.publish_identified_events(&identified).await
    }

    /// [`Publisher::publish_events`] for `(message_id, routing_key, body)`: each event carries
    /// the id given, the same every time that event is sent, so a subscriber can drop repeats.
    pub async fn publish_identified_events<B: Serialize>(
        &self,
        events: &[(&str, &str, B)],
    ) -> Result<(), PublishError> {
        let exchange: &str = &self.topology.events_exchange();
        let sent = join_all(events.iter().map(|(message_id, routing_key, body)| {
            self.send_event(exchange, message_id, routing_key, body)
        }))
        .await;
        let mut pending = Vec::with_capacity(sent.len());
        let mut unsent = None;
        for sent in sent {
            match sent {
                Ok(sent) => pending.push(sent),
                Err(error) => {
                    unsent.get_or_insert(error);
                }
            }
        }
        let results = join_all(pending.into_iter().map(|(message_id, confirm)| async move {
            check(
                progress::wait_at(point::CONFIRM, confirm).await,
                &message_id,
                exchange,
            )
        }))
        .await;
        let confirmed = results.iter().filter(|result| result.is_ok()).count();
        self.count_failed(events.len() - confirmed);
        match results.into_iter().find_map(Result::err).or(unsent) {
            Some(error) => Err(self.named(error)),
            None => Ok(()),
        }
    }

    /// Send one event without waiting for its confirm; returns its message id and the confirm.
    async fn send_event(
        &self,
        exchange: &str,
        message_id: &str,
        routing_key: &str,
        body: &impl Serialize,
    ) -> Result<(String, lapin::PublisherConfirm), PublishError> {
        let payload = serde_json::to_vec(body).map_err(|e| PublishError::Invalid {
            field: "event body",
            reason: e.to_string(),
        })?;
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(message_id.into())
            .with_timestamp(now_secs());
        let confirm = self
            .publish_raw(exchange, routing_key, false, &payload, props)
            .await?;
        Ok((message_id.to_owned(), confirm))
    }

    /// Publish one message and wait for the broker's confirm.
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let message_id = props
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let destination = if exchange.is_empty() {
            routing_key
        } else {
            exchange
        };
        let confirm = self
            .publish_raw(exchange, routing_key, mandatory, body, props)
            .await
            .map_err(|e| self.failed(e))?;
        check(
            progress::wait_at(point::CONFIRM, confirm).await,
            &message_id,
            destination,
        )
        .map_err(|e| self.failed(e))
    }

    /// Hand one message to the connection; returns once lapin's I/O thread has written it,
    /// with its confirm to wait for. Each such return is a wake-up of that thread and then of
    /// this task's: publishes awaited one after another cost two wake-ups each, so a batch
    /// polls all of its publishes together and the thread writes them in one go.
    async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<lapin::PublisherConfirm, PublishError> {
        let routing_key = short("routing key", routing_key)?;
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let channel = self.live_channel().await?;
        Ok(channel
            .basic_publish(exchange.into(), routing_key, options, body, props)
            .await?)
    }

    /// The channel to publish on: the current one while it is open, else a new one on the
    /// same connection.
    async fn live_channel(&self) -> Result<Channel, PublishError> {
        let current = self.channel();
        if current.status().connected() {
            return Ok(current);
        }
        let _one_at_a_time = self.shared.reopening.lock().await;
        let current = self.channel();
        if current.status().connected() {
            // Another publish replaced it while this one waited.
            return Ok(current);
        }
        let fresh = self.reopen(&current).await?;
        *self
            .shared
            .channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        Ok(fresh)
    }

    /// A new channel set up as the first one was: the topology declared again (which also
    /// puts back an exchange or queue deleted meanwhile) and confirms on.
    async fn reopen(&self, closed: &Channel) -> Result<Channel, PublishError> {
        let Some(connection) = &self.shared.connection else {
            return Err(PublishError::ConnectionLost {
                reason: format!(
                    "channel {} was closed and this publisher has no connection to open another on",
                    closed.id()
                ),
            });
        };
        if !connection.status().connected() {
            return Err(PublishError::ConnectionLost {
                reason: "the connection is closed".into(),
            });
        }
        tracing::warn!(
            channel = closed.id(),
            "the publisher's channel was closed; opening another"
        );
        open_channel(connection, &self.topology)
            .await
            .map_err(|e| self.named(e.into()))
    }

    /// Count one message the broker did not confirm; the error as the caller should see it.
    fn failed(&self, error: PublishError) -> PublishError {
        self.count_failed(1);
        self.named(error)
    }

    fn count_failed(&self, messages: usize) {
        let messages = u64::try_from(messages).unwrap_or(u64::MAX);
        self.shared
            .failed_publishes
            .fetch_add(messages, Ordering::Relaxed);
    }

    /// An AMQP error that came with the loss of the connection is named as such: the caller
    /// must connect again rather than try the next message.
    fn named(&self, error: PublishError) -> PublishError {
        match error {
            PublishError::Amqp(error) if self.connection_gone(&error) => {
                PublishError::ConnectionLost {
                    reason: error.to_string(),
                }
            }
            other => other,
        }
    }

    fn connection_gone(&self, error: &lapin::Error) -> bool {
        let closed = (self.shared.connection.as_ref())
            .is_some_and(|connection| !connection.status().connected());
        closed
            || error.is_io_error()
            || error.is_amqp_hard_error()
            || matches!(
                error.kind(),
                ErrorKind::InvalidConnectionState(_) | ErrorKind::MissingHeartbeatError
            )
    }
}

/// Open a channel on `connection` and set it up for publishing.
async fn open_channel(
    connection: &Connection,
    topology: &Topology,
) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    set_up(&channel, topology).await?;
    Ok(channel)
}

/// Declare the topology and enable confirms.
async fn set_up(channel: &Channel, topology: &Topology) -> Result<(), lapin::Error> {
    topology.declare(channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
}

/// Turn the outcome of a publisher confirm into ours.
fn check(
    confirmation: Result<Confirmation, lapin::Error>,
    message_id: &str,
    destination: &str,
) -> Result<(), PublishError> {
    match confirmation? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(PublishError::Unroutable {
                message_id: message_id.to_string(),
                destination: destination.to_string(),
                reply_code: returned.reply_code,
                reply_text: returned.reply_text.to_string(),
            })
        }
        Confirmation::Nack(None) => Err(PublishError::Nacked {
            message_id: message_id.to_string(),
        }),
        Confirmation::NotRequested => Err(PublishError::NotConfirmed {
            message_id: message_id.to_string(),
        }),
    }
}

fn short(field: &'static str, value: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(value).map_err(|_| PublishError::Invalid {
        field,
        reason: format!(
            "is {} bytes long, AMQP allows 255: {:?}",
            value.len(),
            truncate_chars(value, 60)
        ),
    })
}

fn observable_properties(
    content_type: &str,
    message_id: &str,
) -> Result<BasicProperties, PublishError> {
    Ok(BasicProperties::default()
        .with_content_type(short("content type", content_type)?)
        .with_message_id(short("message id", message_id)?)
        .with_delivery_mode(PERSISTENT)
        .with_headers(attempt_headers(FieldTable::default(), 1))
        .with_timestamp(now_secs()))
}

fn attempt_headers(mut headers: FieldTable, attempt: u32) -> FieldTable {
    headers.insert(
        ATTEMPT_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    headers
}

/// The properties of a delivery, made persistent, with our attempt and reason headers set
/// (everything else kept, including `x-death` added by the broker, but `expiration`: see
/// [`without_expiration`]).
fn annotated(
    props: &BasicProperties,
    attempt: u32,
    code: Option<&str>,
    reason: &str,
) -> BasicProperties {
    let mut headers = attempt_headers(props.headers().clone().unwrap_or_default(), attempt);
    headers.insert(
        REASON_HEADER.into(),
        AMQPValue::LongString(truncate_chars(reason, MAX_REASON_CHARS).into()),
    );
    if let Some(code) = code {
        headers.insert(
            REASON_CODE_HEADER.into(),
            AMQPValue::LongString(truncate_chars(code, MAX_CODE_CHARS).into()),
        );
    }
    without_expiration(props)
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers)
}

/// `props` with [`LANE_HEADER`] = `lane`, whatever the producer put there.
fn with_lane(props: BasicProperties, lane: Lane) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        LANE_HEADER.into(),
        AMQPValue::LongString(lane.as_str().into()),
    );
    props.with_headers(headers)
}

/// The lane a dead letter came from ([`LANE_HEADER`]); bulk when it does not say (dead letters
/// from before lanes were all bulk work).
pub fn lane_of(props: &BasicProperties) -> Lane {
    props
        .headers()
        .as_ref()
        .and_then(|headers| match headers.inner().get(LANE_HEADER) {
            Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
            _ => None,
        })
        .unwrap_or(Lane::Bulk)
}

/// `props` without `expiration`. A producer's per-message TTL is about the message it sent;
/// on our copy it would let the broker drop a confirmed dead letter, or end a retry delay early
/// (the retry queue's own TTL sets the delay). AMQP properties cannot be unset, so every other
/// one is copied over.
pub(crate) fn without_expiration(props: &BasicProperties) -> BasicProperties {
    macro_rules! copy {
        ($out:ident; $($get:ident => $set:ident),*) => {
            $(if let Some(value) = props.$get() {
                $out = $out.$set(value.clone());
            })*
        };
    }
    let mut out = BasicProperties::default();
    copy!(out;
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        user_id => with_user_id,
        app_id => with_app_id,
        cluster_id => with_cluster_id
    );
    out
}

fn now_secs() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letters_lane_is_its_header_and_anything_else_is_bulk() {
        let with = |value: AMQPValue| {
            let mut headers = FieldTable::default();
            headers.insert(LANE_HEADER.into(), value);
            BasicProperties::default().with_headers(headers)
        };
        let stamped = with_lane(with(AMQPValue::LongString("bulk".into())), Lane::Live);
        assert_eq!(lane_of(&stamped), Lane::Live);
        assert_eq!(lane_of(&BasicProperties::default()), Lane::Bulk);
        for hostile in [
            AMQPValue::LongString("express".into()),
            AMQPValue::LongString(vec![0xff, 0xfe].into()),
            AMQPValue::Boolean(true),
            AMQPValue::LongString("live".repeat(10_000).into()),
        ] {
            assert_eq!(lane_of(&with(hostile)), Lane::Bulk);
        }
    }

    #[test]
    fn annotated_keeps_properties_and_headers() {
        let mut headers = FieldTable::default();
        headers.insert("x-custom".into(), AMQPValue::LongString("kept".into()));
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(1));
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_message_id("m-1".into())
            .with_headers(headers);
        let long_reason = "é".repeat(2000);
        let out = annotated(&props, 3, Some("bad_value"), &long_reason);
        assert_eq!(out.content_type().as_ref().unwrap().as_str(), "text/plain");
        assert_eq!(out.message_id().as_ref().unwrap().as_str(), "m-1");
        assert_eq!(*out.delivery_mode(), Some(2));
        let headers = out.headers().as_ref().unwrap().inner();
        assert_eq!(
            headers.get("x-custom"),
            Some(&AMQPValue::LongString("kept".into()))
        );
        assert_eq!(crate::queue::attempt_of(&out), 3);
        let Some(AMQPValue::LongString(reason)) = headers.get(REASON_HEADER) else {
            panic!("no reason header");
        };
        let reason = std::str::from_utf8(reason.as_bytes()).unwrap();
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS + 1);
        assert!(reason.ends_with('…'));
        assert_eq!(
            headers.get(REASON_CODE_HEADER),
            Some(&AMQPValue::LongString("bad_value".into()))
        );
    }

    #[test]
    fn without_expiration_drops_that_property_alone() {
        let mut headers = FieldTable::default();
        headers.insert("x-custom".into(), AMQPValue::LongString("kept".into()));
        let all_but_expiration = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_content_encoding("gzip".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("c-1".into())
            .with_reply_to("replies".into())
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("observables".into())
            .with_user_id("guest".into())
            .with_app_id("feed".into())
            .with_cluster_id("cluster".into());
        let expiring = all_but_expiration.clone().with_expiration("60000".into());
        assert_eq!(without_expiration(&expiring), all_but_expiration);
        let copy = annotated(&expiring, 2, Some("code"), "reason");
        assert_eq!(copy.expiration(), &None);
    }

    #[test]
    fn long_routing_key_is_an_error_not_a_panic() {
        let err = short("routing key", &"k".repeat(300)).unwrap_err();
        assert!(err.to_string().contains("300 bytes"), "{err}");
    }
}
