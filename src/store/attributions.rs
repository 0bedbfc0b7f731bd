//! Attributions: one `actor_attributions` row per (observable, actor), summing up the pair's
//! hits. The table is the outbox of actor events (see [`crate::outbox`]): the writer that
//! changes a pair decides whether it is owed an event, in the transaction that stored the hits.
//! Also the `host_fanout` cache of how shared hosts are. See
//! `migrations/0009_attribution_confidence.sql`.

use std::collections::BTreeMap;
use std::time::Duration;

use foldhash::HashMap;
use sqlx::{Postgres, Row, Transaction};

use super::pg_text::{pg_text, pg_texts};
use super::{kind_name, Store, StoreError};
use crate::enrich::EnricherKind;
use crate::model::{Fanout, StoredLinks};
use crate::observable::{normalise, NormaliseOptions, ObservableKind};

/// A confidence as stored (`smallint`, checked 0-100 by the table).
pub(super) fn stored_confidence(confidence: i16) -> u8 {
    confidence.clamp(0, 100) as u8
}

/// A pair left owed an event by a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedAttribution {
    /// The `actor_attributions` row.
    pub id: i64,
    pub observable_id: i64,
    pub actor: String,
}

/// [`upsert_pairs`]'s statement: each pair's confidence, seen times and evidence kinds from
/// its hits, its profile and context from the latest of them, and whether it is owed an event.
const UPSERT_PAIRS: &str = "WITH keys AS ( \
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::smallint[]) \
             AS k(observable_id, actor, threshold) \
     ), pairs AS ( \
         SELECT k.observable_id, k.actor, k.threshold, max(h.confidence) AS confidence, \
             count(*) AS artifacts, min(h.first_seen) AS first_seen, \
             max(h.last_seen) AS last_seen \
         FROM keys k \
         JOIN actor_hits h ON h.observable_id = k.observable_id AND h.actor = k.actor \
         GROUP BY k.observable_id, k.actor, k.threshold \
     ) \
     INSERT INTO actor_attributions AS a (observable_id, actor, profile_id, aliases, \
         confidence, band, evidence_kinds, artifacts, first_seen, last_seen, context, owed) \
     SELECT p.observable_id, p.actor, latest.profile_id, latest.aliases, p.confidence, \
         confidence_band(p.confidence), kinds.kinds, p.artifacts, p.first_seen, \
         p.last_seen, latest.context, p.confidence >= p.threshold \
     FROM pairs p \
     CROSS JOIN LATERAL ( \
         SELECT x.profile_id, x.aliases, x.context FROM actor_hits x \
         WHERE x.observable_id = p.observable_id AND x.actor = p.actor \
         ORDER BY (x.profile_id IS NULL), x.updated_at DESC, x.id DESC LIMIT 1 \
     ) latest \
     CROSS JOIN LATERAL ( \
         SELECT ARRAY(SELECT DISTINCT e ->> 'source' \
             FROM actor_hits x, jsonb_array_elements(x.evidence) AS e \
             WHERE x.observable_id = p.observable_id AND x.actor = p.actor \
               AND e ->> 'source' IS NOT NULL ORDER BY 1) AS kinds \
     ) kinds \
     ORDER BY p.observable_id, p.actor \
     ON CONFLICT (observable_id, actor) DO UPDATE SET \
         profile_id = excluded.profile_id, aliases = excluded.aliases, \
         confidence = excluded.confidence, band = excluded.band, \
         evidence_kinds = excluded.evidence_kinds, artifacts = excluded.artifacts, \
         first_seen = excluded.first_seen, last_seen = excluded.last_seen, \
         context = COALESCE(excluded.context, a.context), \
         owed = excluded.owed AND (a.announced_band IS DISTINCT FROM excluded.band \
             OR NOT (excluded.evidence_kinds <@ a.announced_kinds)), \
         updated_at = now() \
     RETURNING a.id, a.observable_id, a.actor, a.owed";

/// Bring the pairs named in `pairs` (observable id, actor → the writer's
/// `--min-event-confidence`) up to date with their stored hits, in key order. A pair is owed an
/// event when it is at or above its threshold and its band or evidence kinds are not what was
/// last announced. Returns the owed ones.
pub(super) async fn upsert_pairs(
    tx: &mut Transaction<'_, Postgres>,
    pairs: &BTreeMap<(i64, String), u8>,
) -> Result<Vec<OwedAttribution>, StoreError> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let mut observable_ids = Vec::with_capacity(pairs.len());
    let mut actors = Vec::with_capacity(pairs.len());
    let mut thresholds = Vec::with_capacity(pairs.len());
    for ((observable_id, actor), threshold) in pairs {
        observable_ids.push(*observable_id);
        actors.push(actor.clone());
        thresholds.push(i16::from(*threshold));
    }
    let rows = sqlx::query(UPSERT_PAIRS)
        .bind(&observable_ids)
        .bind(&actors)
        .bind(&thresholds)
        .fetch_all(&mut **tx)
        .await?;
    let mut owed = Vec::new();
    for row in rows {
        if row.try_get::<bool, _>("owed")? {
            owed.push(OwedAttribution {
                id: row.try_get("id")?,
                observable_id: row.try_get("observable_id")?,
                actor: row.try_get("actor")?,
            });
        }
    }
    Ok(owed)
}

impl Store {
    /// The fanouts of `hosts` measured within `ttl`, in one query (shared with other walks
    /// asking meanwhile).
    pub async fn cached_fanouts(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<HashMap<String, Fanout>, StoreError> {
        let (mut found, missing) = self.recent.fanouts(&pg_texts(hosts), ttl);
        let read = self.reads.fanouts.ask_hosts(missing, ttl).await?;
        self.recent.keep_read_fanouts(&read);
        found.extend(super::recent::unaged(read));
        Ok(found)
    }

    /// Save fanouts measured now, in one statement (on the relaxed sessions: a lost row is only
    /// measured again).
    pub async fn save_fanouts(&self, fanouts: &HashMap<String, Fanout>) -> Result<(), StoreError> {
        if fanouts.is_empty() {
            return Ok(());
        }
        let sorted: BTreeMap<String, Fanout> =
            fanouts.iter().map(|(h, f)| (pg_text(h), *f)).collect();
        let hosts: Vec<&String> = sorted.keys().collect();
        let names: Vec<i32> = sorted
            .values()
            .map(|f| i32::try_from(f.names).unwrap_or(i32::MAX))
            .collect();
        let more: Vec<bool> = sorted.values().map(|f| f.more).collect();
        sqlx::query(
            "INSERT INTO host_fanout (host, names, more, fetched_at) \
             SELECT u.host, u.names, u.more, now() \
             FROM UNNEST($1::text[], $2::int[], $3::bool[]) AS u(host, names, more) \
             ON CONFLICT (host) DO UPDATE SET names = excluded.names, more = excluded.more, \
                 fetched_at = excluded.fetched_at",
        )
        .bind(&hosts)
        .bind(&names)
        .bind(&more)
        .execute(&self.relaxed)
        .await?;
        self.recent.forget(sorted.keys());
        Ok(())
    }
}

impl Store {
    /// The stored observables that are one of `artifacts`, or whose passive DNS named one, at
    /// most `limit` of them (by id), each with all its passive DNS counterparts; and whether
    /// there were more. Index lookups only: observables by (kind, value), extracts by
    /// (kind, value), then each observable's extracts by its key.
    pub async fn observables_linked_to(
        &self,
        artifacts: &[String],
        limit: usize,
    ) -> Result<(Vec<StoredLinks>, bool), StoreError> {
        if artifacts.is_empty() || limit == 0 {
            return Ok((Vec::new(), false));
        }
        let kinds: Vec<&str> = ObservableKind::ALL.iter().map(|k| kind_name(*k)).collect();
        let rows = sqlx::query(
            "WITH wanted AS (SELECT DISTINCT v AS value FROM unnest($1::text[]) AS v), \
             linked AS ( \
                 SELECT o.id FROM wanted w CROSS JOIN unnest($2::text[]) AS k(kind) \
                 JOIN observables o ON o.kind = k.kind AND o.value = w.value \
               UNION \
                 SELECT e.observable_id FROM wanted w CROSS JOIN unnest($3::text[]) AS k(kind) \
                 JOIN extracts e ON e.kind = k.kind AND e.value = w.value \
                 WHERE e.enricher = $4 \
             ) \
             SELECT o.kind, o.value, \
                 ARRAY(SELECT DISTINCT x.value FROM extracts x \
                       WHERE x.observable_id = o.id AND x.enricher = $4 \
                         AND x.kind = ANY($3::text[]) ORDER BY 1) AS counterparts \
             FROM linked l JOIN observables o ON o.id = l.id \
             ORDER BY o.id LIMIT $5",
        )
        .bind(pg_texts(artifacts))
        .bind(&kinds)
        .bind(PASSIVE_DNS_HOST_KINDS)
        .bind(EnricherKind::PassiveDns.as_str())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1))
        .fetch_all(self.pool())
        .await?;
        let more = rows.len() > limit;
        let mut linked = Vec::with_capacity(rows.len().min(limit));
        for row in rows.iter().take(limit) {
            let kind: String = row.try_get("kind")?;
            let value: String = row.try_get("value")?;
            let declared = kind.parse::<ObservableKind>().ok();
            let options = NormaliseOptions {
                allow_non_public: true,
            };
            // A row this build cannot read back is left alone, not matched.
            let Ok(normalised) = normalise(&value, declared, &options) else {
                continue;
            };
            linked.push(StoredLinks {
                observable: normalised.into_observable(),
                counterparts: row.try_get("counterparts")?,
            });
        }
        Ok((linked, more))
    }
}

/// The extract kinds of the hosts a passive DNS record names.
const PASSIVE_DNS_HOST_KINDS: &[&str] = &["IPV4", "IPV6", "HOST"];
