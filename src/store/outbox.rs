//! The actor-event outbox: an `actor_attributions` row with `owed` set is an event still owed
//! to the events exchange. The writer that changed the pair sets it in the transaction of the
//! message that found the hits, so the promise of an event is exactly as durable as the hits;
//! [`crate::outbox`] keeps it.

use foldhash::{HashMap, HashMapExt};
use sqlx::{Postgres, Row, Transaction};

use super::attributions::stored_confidence;
use super::{Store, StoreError};
use crate::model::{Attribution, AttributionLink, Band, EVENT_ARTIFACTS};

/// One owed event.
#[derive(Debug, Clone, PartialEq)]
pub struct OwedEvent {
    /// The `actor_attributions` row.
    pub attribution_id: i64,
    /// Which announcement of the pair this is (1 for the first): with the row id, it names the
    /// event, so a repeat of the same announcement carries the same message id.
    pub announcement: i32,
    pub attribution: Attribution,
}

impl OwedEvent {
    /// The event's message id: the same for every send of this announcement.
    pub fn message_id(&self) -> String {
        format!(
            "actor-attribution-{}-{}",
            self.attribution_id, self.announcement
        )
    }
}

/// Owed events claimed by one relay: their rows stay locked (other relays skip them, writers
/// wait) until [`ClaimedEvents::mark_announced`] commits or the claim is dropped, which gives
/// them back.
pub struct ClaimedEvents {
    tx: Transaction<'static, Postgres>,
    pub events: Vec<OwedEvent>,
}

/// How far the outbox is behind, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxBacklog {
    pub pending: i64,
    /// Seconds since the oldest owed event's pair changed; 0 when none is owed.
    pub oldest_age_seconds: f64,
}

fn decode_band(text: &str) -> Result<Band, StoreError> {
    Band::named(text).ok_or_else(|| StoreError::Decode {
        what: "attribution band",
        detail: format!("unknown band {text:?}"),
    })
}

impl Store {
    /// Whether any event is owed (held by another relay or not): one autocommitted read of the
    /// partial index, cheaper than a claim's transaction when the answer is mostly no. Not
    /// [`Store::outbox_backlog`]: that counts every owed row, thousands while the broker is
    /// away, and this stops at the first.
    pub async fn any_owed_events(&self) -> Result<bool, StoreError> {
        let sql = "SELECT EXISTS (SELECT 1 FROM actor_attributions WHERE owed)";
        Ok(sqlx::query_scalar(sql).fetch_one(self.pool()).await?)
    }

    /// Claim up to `limit` owed events, oldest first, skipping rows another relay holds.
    pub async fn claim_owed_events(&self, limit: i64) -> Result<ClaimedEvents, StoreError> {
        // A mark lost in a crash only means the event is sent again: no need to wait for the
        // WAL flush when the marks commit. Said with the BEGIN, in its round trip.
        let mut tx = self
            .pool()
            .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
            .await?;
        let rows = sqlx::query(
            "SELECT a.id, a.observable_id, o.kind, o.value, a.actor, a.profile_id, a.aliases, \
                 a.confidence, a.band, a.announced_band, a.announcements, a.evidence_kinds, \
                 a.artifacts, a.first_seen, a.last_seen, a.context \
             FROM actor_attributions a JOIN observables o ON o.id = a.observable_id \
             WHERE a.owed \
             ORDER BY a.id LIMIT $1 \
             FOR UPDATE OF a SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut events = Vec::with_capacity(rows.len());
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            let confidence: i16 = row.try_get("confidence")?;
            let artifacts: i32 = row.try_get("artifacts")?;
            let announcements: i32 = row.try_get("announcements")?;
            let previous: Option<String> = row.try_get("announced_band")?;
            keys.push((
                row.try_get::<i64, _>("id")?,
                row.try_get::<i64, _>("observable_id")?,
                row.try_get::<String, _>("actor")?,
            ));
            events.push(OwedEvent {
                attribution_id: row.try_get("id")?,
                announcement: announcements + 1,
                attribution: Attribution {
                    kind: row.try_get("kind")?,
                    value: row.try_get("value")?,
                    actor: row.try_get("actor")?,
                    profile_id: row.try_get("profile_id")?,
                    aliases: row.try_get("aliases")?,
                    confidence: stored_confidence(confidence),
                    band: decode_band(&row.try_get::<String, _>("band")?)?,
                    previous_band: previous.as_deref().map(decode_band).transpose()?,
                    evidence_kinds: row.try_get("evidence_kinds")?,
                    links: Vec::new(),
                    artifact_count: artifacts.max(0) as u32,
                    first_seen: row.try_get("first_seen")?,
                    last_seen: row.try_get("last_seen")?,
                    context: row.try_get("context")?,
                },
            });
        }
        let mut links = strongest_links(&mut tx, &keys).await?;
        for event in &mut events {
            event.attribution.links = links.remove(&event.attribution_id).unwrap_or_default();
        }
        Ok(ClaimedEvents { tx, events })
    }

    /// How many events are owed, and since when.
    pub async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        let row = sqlx::query(
            "SELECT count(*) AS pending, \
                 COALESCE(EXTRACT(EPOCH FROM now() - min(updated_at)), 0)::float8 AS age \
             FROM actor_attributions WHERE owed",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(OutboxBacklog {
            pending: row.try_get("pending")?,
            oldest_age_seconds: row.try_get("age")?,
        })
    }
}

/// The [`EVENT_ARTIFACTS`] strongest links of each pair (attribution id, observable id, actor),
/// by confidence, then artifact.
async fn strongest_links(
    tx: &mut Transaction<'static, Postgres>,
    keys: &[(i64, i64, String)],
) -> Result<HashMap<i64, Vec<AttributionLink>>, StoreError> {
    let mut links: HashMap<i64, Vec<AttributionLink>> = HashMap::new();
    if keys.is_empty() {
        return Ok(links);
    }
    let ids: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let observables: Vec<i64> = keys.iter().map(|k| k.1).collect();
    let actors: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
    let rows = sqlx::query(
        "SELECT k.id, h.artifact, h.path, h.confidence, h.first_seen, h.last_seen, \
             ARRAY(SELECT DISTINCT e ->> 'source' FROM jsonb_array_elements(h.evidence) AS e \
                   WHERE e ->> 'source' IS NOT NULL ORDER BY 1) AS kinds \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::text[]) AS k(id, observable_id, actor) \
         CROSS JOIN LATERAL ( \
             SELECT x.artifact, x.path, x.confidence, x.first_seen, x.last_seen, x.evidence \
             FROM actor_hits x \
             WHERE x.observable_id = k.observable_id AND x.actor = k.actor \
             ORDER BY x.confidence DESC, x.artifact LIMIT $4 \
         ) h \
         ORDER BY k.id, h.confidence DESC, h.artifact",
    )
    .bind(&ids)
    .bind(&observables)
    .bind(&actors)
    .bind(EVENT_ARTIFACTS as i64)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let confidence: i16 = row.try_get("confidence")?;
        links
            .entry(row.try_get("id")?)
            .or_default()
            .push(AttributionLink {
                artifact: row.try_get("artifact")?,
                path: row.try_get("path")?,
                confidence: stored_confidence(confidence),
                evidence_kinds: row.try_get("kinds")?,
                first_seen: row.try_get("first_seen")?,
                last_seen: row.try_get("last_seen")?,
            });
    }
    Ok(links)
}

impl ClaimedEvents {
    /// The broker confirmed every claimed event: mark them announced as they stand (the rows
    /// are locked, so nobody changed them since the claim) and release the claim.
    pub async fn mark_announced(mut self) -> Result<(), StoreError> {
        let ids: Vec<i64> = self.events.iter().map(|e| e.attribution_id).collect();
        sqlx::query(
            "UPDATE actor_attributions SET owed = false, announced_band = band, \
                 announced_kinds = evidence_kinds, announcements = announcements + 1, \
                 notified_at = now() \
             WHERE id = ANY($1)",
        )
        .bind(&ids)
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(())
    }
}
