//! The dead-letter queue, for people: look at what is in it without taking anything out
//! ([`DeadLetterQueue::list`]), and send chosen messages back to the work queue
//! ([`DeadLetterQueue::replay`]).
//!
//! Both read with `basic.get` without acknowledging. A message got but not acknowledged stays
//! the broker's: it is not handed out again on the same channel, so one pass sees each message
//! once, and closing the channel returns every unacknowledged message to the queue, in its
//! place. `replay` acknowledges a dead-letter copy only after the broker confirmed its
//! republished copy, so a failure at any point leaves the message in one queue or (after a
//! confirm whose ack was lost) in both, never in neither.

use std::collections::BTreeMap;
use std::fmt;

use lapin::options::BasicAckOptions;
use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::publisher::{without_expiration, PublishError, Publisher};
use super::topology::{attempt_of, Topology, ATTEMPT_HEADER, REASON_CODE_HEADER, REASON_HEADER};
use super::truncate_chars;
use crate::lane::Lane;
use crate::service::{Unavailable, FIRST_ANSWER_WITHIN};

/// How many times a message was sent back from the dead-letter queue by [`DeadLetterQueue::replay`].
pub const REPLAYED_HEADER: &str = "x-mdti-replayed";

/// Characters of a body shown by [`DeadLetter::preview`].
pub const PREVIEW_CHARS: usize = 120;

/// Why a dead-letter command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// No connection to the broker to begin with (the whole guide).
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("republishing to the work queue: {0}")]
    Publish(#[from] PublishError),
}

/// One message in the dead-letter queue, as `dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// The publisher's message id, if it set one.
    pub message_id: Option<String>,
    /// [`REASON_CODE_HEADER`]: `invalid_json`, `gave_up`, `invalid_observable`...
    pub reason_code: Option<String>,
    /// [`REASON_HEADER`]: the human reason.
    pub reason: Option<String>,
    /// [`ATTEMPT_HEADER`]: the delivery attempt that was dead-lettered.
    pub attempt: u32,
    /// [`REPLAYED_HEADER`]: how often it was replayed before (0: never).
    pub replayed: u32,
    /// The lane it came from, and goes back to on a replay.
    pub lane: Lane,
    pub content_type: Option<String>,
    pub body_bytes: usize,
    /// The first [`PREVIEW_CHARS`] characters of the body, lossily decoded, control characters
    /// shown as spaces so one message stays one line.
    pub preview: String,
}

impl DeadLetter {
    fn from_delivery(properties: &BasicProperties, body: &[u8]) -> DeadLetter {
        let text = String::from_utf8_lossy(&body[..body.len().min(PREVIEW_CHARS * 4)]);
        let flat: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        DeadLetter {
            message_id: properties.message_id().as_ref().map(|id| id.to_string()),
            reason_code: header_text(properties, REASON_CODE_HEADER),
            reason: header_text(properties, REASON_HEADER),
            attempt: attempt_of(properties),
            replayed: replays_of(properties),
            lane: super::lane_of(properties),
            content_type: properties.content_type().as_ref().map(|t| t.to_string()),
            body_bytes: body.len(),
            preview: truncate_chars(&flat, PREVIEW_CHARS),
        }
    }
}

impl fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}  [{}]  {} lane, attempt {}{}",
            self.message_id.as_deref().unwrap_or("(no message id)"),
            self.reason_code.as_deref().unwrap_or("no code"),
            self.lane,
            self.attempt,
            match self.replayed {
                0 => String::new(),
                n => format!(", replayed {n}x before"),
            }
        )?;
        writeln!(
            f,
            "  reason: {}",
            self.reason.as_deref().unwrap_or("(no reason header)")
        )?;
        write!(
            f,
            "  body ({} bytes{}): {}",
            self.body_bytes,
            self.content_type
                .as_deref()
                .map(|t| format!(", {t}"))
                .unwrap_or_default(),
            self.preview
        )
    }
}

/// Which dead letters `replay` sends back.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    /// Only messages whose [`REASON_CODE_HEADER`] is exactly this (all when `None`).
    pub reason_code: Option<String>,
    /// At most this many (all when `None`).
    pub limit: Option<usize>,
}

impl ReplayFilter {
    fn matches(&self, letter: &DeadLetter) -> bool {
        match &self.reason_code {
            None => true,
            Some(code) => letter.reason_code.as_deref() == Some(code.as_str()),
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplaySummary {
    /// Dead letters looked at.
    pub examined: usize,
    /// Sent back to the work queue (confirmed) and removed from the dead-letter queue.
    pub replayed: usize,
    /// Left in the dead-letter queue (not matching, or beyond the limit).
    pub kept: usize,
}

impl fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "examined {}, replayed {} to the work queue, kept {} in the dead-letter queue",
            self.examined, self.replayed, self.kept
        )
    }
}

/// A connection to the broker for dead-letter work, with the topology declared.
pub struct DeadLetterQueue {
    connection: Connection,
    topology: Topology,
}

impl DeadLetterQueue {
    /// Connect and declare the topology (idempotent, as the worker and `publish` do), so the
    /// queues exist even on a broker no worker has used yet.
    pub async fn connect(amqp_url: &str, topology: Topology) -> Result<DeadLetterQueue, DlqError> {
        let connection = super::connect_within(amqp_url, FIRST_ANSWER_WITHIN).await?;
        let channel = connection.create_channel().await?;
        topology.declare(&channel).await?;
        channel.close(200, "declared".into()).await?;
        Ok(DeadLetterQueue {
            connection,
            topology,
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Up to `limit` dead letters (all when `None`), oldest first, none consumed.
    pub async fn list(&self, limit: Option<usize>) -> Result<Vec<DeadLetter>, DlqError> {
        let channel = self.connection.create_channel().await?;
        let result = self.list_on(&channel, limit).await;
        // Closing hands every message we got back to the queue, in its place.
        channel.close(200, "listed".into()).await?;
        result
    }

    async fn list_on(
        &self,
        channel: &Channel,
        limit: Option<usize>,
    ) -> Result<Vec<DeadLetter>, DlqError> {
        let bound = self.bound(channel, limit).await?;
        let mut letters = Vec::new();
        while letters.len() < bound {
            let Some(message) = self.get(channel).await? else {
                break;
            };
            let delivery = message.delivery;
            letters.push(DeadLetter::from_delivery(
                &delivery.properties,
                &delivery.data,
            ));
        }
        Ok(letters)
    }

    /// Send the dead letters `filter` selects back to the work queue of the lane they came from, each with a fresh attempt
    /// count, confirmed by the broker before its dead-letter copy is acknowledged. The others
    /// stay where they were.
    ///
    /// They go to the work queue through the default exchange rather than to the input
    /// exchange: the worker's queue is where they failed, and anything else bound to the input
    /// exchange saw them the first time.
    pub async fn replay(&self, filter: &ReplayFilter) -> Result<ReplaySummary, DlqError> {
        let publisher = Publisher::on_connection(&self.connection, self.topology.clone()).await?;
        let channel = self.connection.create_channel().await?;
        let result = self.replay_on(&channel, &publisher, filter).await;
        // Returns every message not acknowledged (the kept ones) to the dead-letter queue.
        channel.close(200, "replayed".into()).await?;
        publisher.close().await?;
        result
    }

    async fn replay_on(
        &self,
        channel: &Channel,
        publisher: &Publisher,
        filter: &ReplayFilter,
    ) -> Result<ReplaySummary, DlqError> {
        let bound = self.bound(channel, None).await?;
        let mut summary = ReplaySummary::default();
        while summary.examined < bound {
            let Some(message) = self.get(channel).await? else {
                break;
            };
            summary.examined += 1;
            let delivery = message.delivery;
            let letter = DeadLetter::from_delivery(&delivery.properties, &delivery.data);
            let wanted = filter.matches(&letter)
                && filter.limit.is_none_or(|limit| summary.replayed < limit);
            if !wanted {
                summary.kept += 1;
                continue;
            }
            let lane = super::lane_of(&delivery.properties);
            publisher
                .send_to_work_queue(lane, &delivery.data, replayed(&delivery.properties))
                .await?;
            delivery.ack(BasicAckOptions::default()).await?;
            summary.replayed += 1;
        }
        Ok(summary)
    }

    /// How many gets one pass makes at most: the messages in the queue when it starts (within
    /// `limit`). Messages dead-lettered meanwhile wait for the next pass, so a pass ends even
    /// while a worker keeps dead-lettering.
    async fn bound(&self, channel: &Channel, limit: Option<usize>) -> Result<usize, DlqError> {
        let state = super::inspect(channel, &self.topology.dead_letter_queue()).await?;
        let count = state.message_count() as usize;
        Ok(limit.map_or(count, |limit| limit.min(count)))
    }

    async fn get(
        &self,
        channel: &Channel,
    ) -> Result<Option<lapin::message::BasicGetMessage>, DlqError> {
        Ok(channel
            .basic_get(
                self.topology.dead_letter_queue().as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?)
    }

    pub async fn close(self) -> Result<(), DlqError> {
        self.connection.close(200, "bye".into()).await?;
        Ok(())
    }
}

/// The properties of a dead letter as sent back: attempt 1 (it gets every delivery again),
/// reason and code removed (the worker sets them anew if it fails again), the replay counted,
/// no `expiration` (a producer's TTL would let the replayed copy vanish unprocessed);
/// everything else (message id, content type, the publisher's headers) kept, so the worker
/// records its results under the same message id.
fn replayed(properties: &BasicProperties) -> BasicProperties {
    let mut headers: BTreeMap<ShortString, AMQPValue> = properties
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    headers.remove(REASON_HEADER);
    headers.remove(REASON_CODE_HEADER);
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(1));
    headers.insert(
        REPLAYED_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(replays_of(properties)) + 1),
    );
    without_expiration(properties).with_headers(FieldTable::from(headers))
}

fn replays_of(properties: &BasicProperties) -> u32 {
    header_text(properties, REPLAYED_HEADER)
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

/// A header as text, whatever AMQP type carries it.
fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter_properties() -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(5));
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString("gave up".into()),
        );
        headers.insert(
            REASON_CODE_HEADER.into(),
            AMQPValue::LongString("gave_up".into()),
        );
        headers.insert("x-feed".into(), AMQPValue::LongString("feed-a".into()));
        BasicProperties::default()
            .with_message_id("m-1".into())
            .with_content_type("text/plain".into())
            .with_headers(headers)
    }

    #[test]
    fn a_dead_letter_reads_its_headers_and_previews_one_line() {
        let body = format!("evil.example\n{}", "x".repeat(500));
        let letter = DeadLetter::from_delivery(&dead_letter_properties(), body.as_bytes());
        assert_eq!(letter.message_id.as_deref(), Some("m-1"));
        assert_eq!(letter.reason_code.as_deref(), Some("gave_up"));
        assert_eq!(letter.reason.as_deref(), Some("gave up"));
        assert_eq!(letter.attempt, 5);
        assert_eq!(letter.replayed, 0);
        assert_eq!(letter.body_bytes, body.len());
        assert!(letter.preview.starts_with("evil.example x"));
        assert_eq!(letter.preview.chars().count(), PREVIEW_CHARS + 1);
        assert!(!letter.to_string().contains('\u{0}'));
    }

    #[test]
    fn a_replayed_copy_starts_again_at_attempt_one_and_counts_the_replay() {
        let once = replayed(&dead_letter_properties());
        assert_eq!(attempt_of(&once), 1);
        assert_eq!(replays_of(&once), 1);
        assert_eq!(header_text(&once, REASON_HEADER), None);
        assert_eq!(header_text(&once, REASON_CODE_HEADER), None);
        assert_eq!(header_text(&once, "x-feed").as_deref(), Some("feed-a"));
        assert_eq!(once.message_id().as_ref().unwrap().as_str(), "m-1");
        assert_eq!(replays_of(&replayed(&once)), 2);
        let expiring = dead_letter_properties().with_expiration("60000".into());
        assert_eq!(replayed(&expiring).expiration(), &None);
    }

    #[test]
    fn the_filter_matches_the_reason_code_exactly() {
        let letter = DeadLetter::from_delivery(&dead_letter_properties(), b"x");
        let all = ReplayFilter::default();
        let gave_up = ReplayFilter {
            reason_code: Some("gave_up".into()),
            limit: None,
        };
        let other = ReplayFilter {
            reason_code: Some("gave".into()),
            limit: None,
        };
        assert!(all.matches(&letter));
        assert!(gave_up.matches(&letter));
        assert!(!other.matches(&letter));
    }
}
