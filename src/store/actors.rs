//! Actor attribution rows: the hits of chaining walks (`actor_hits`) and the local copy of the
//! actor intelligence profiles (`intel_profiles`, `intel_profile_indicators`). See
//! `migrations/0002_actor_hits.sql` and [`crate::chain`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt};
use serde_json::Value;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::attributions::{stored_confidence, upsert_pairs, OwedAttribution};
use super::pg_text::{jsonb, pg_text, pg_texts, Jsonb};
use super::{kind_name, Store, StoreError};
use crate::model::{
    ActorHit, Evidence, Factor, IntelProfileRecord, ProfileIndicatorRecord, ProfileRows, WalkHits,
};
use crate::observable::Observable;

/// `ARRAY(...)` of a JSON array of texts, order kept.
const JSON_TO_TEXT_ARRAY: &str = "ARRAY(SELECT x.v FROM jsonb_array_elements_text({}) \
                                  WITH ORDINALITY AS x(v, n) ORDER BY x.n)";

fn text_array(column: &str) -> String {
    JSON_TO_TEXT_ARRAY.replace("{}", column)
}

impl Store {
    /// The stored hits of `observable`, by actor and artifact.
    pub async fn actor_hits_for(
        &self,
        observable: &Observable,
    ) -> Result<Vec<ActorHit>, StoreError> {
        let rows = sqlx::query(
            "SELECT h.actor, h.profile_id, h.aliases, h.artifact, h.path, h.evidence, \
                 h.first_seen, h.last_seen, h.confidence, h.confidence_factors \
             FROM actor_hits h JOIN observables o ON o.id = h.observable_id \
             WHERE o.kind = $1 AND o.value = $2 ORDER BY h.actor, h.artifact",
        )
        .bind(kind_name(observable.kind()))
        .bind(observable.value())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(hit_from_row).collect()
    }

    /// Upsert one actor profile and its indicators in one transaction. When `complete` (the
    /// indicator listing was read to its end), the profile's indicators not in `indicators` are
    /// deleted. Returns the artifacts the profile did not list before.
    pub async fn save_intel_profile(
        &self,
        profile: &IntelProfileRecord,
        indicators: &[ProfileIndicatorRecord],
        complete: bool,
    ) -> Result<Vec<String>, StoreError> {
        let columns = IndicatorColumns::of(indicators);
        let id = pg_text(&profile.id);
        let mut tx = self.pool().begin().await?;
        upsert_profile(&mut tx, &id, profile).await?;
        let added = upsert_indicators(&mut tx, &id, &columns).await?;
        if complete {
            sqlx::query(
                "DELETE FROM intel_profile_indicators \
                 WHERE profile_id = $1 AND NOT (artifact = ANY($2::text[]))",
            )
            .bind(&id)
            .bind(&columns.artifacts)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Record that a profile sync ran to its end: the stored profiles are a whole index.
    pub async fn mark_profile_sync_completed(&self) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO intel_profile_syncs (id, completed_at) VALUES (true, now()) \
             ON CONFLICT (id) DO UPDATE SET completed_at = excluded.completed_at",
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// When a profile sync last ran to its end, if one ever did.
    pub async fn profile_sync_completed(
        &self,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT completed_at FROM intel_profile_syncs")
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Delete the profiles (and their indicators) whose id is not in `keep`; returns how many.
    pub async fn prune_intel_profiles(&self, keep: &[String]) -> Result<u64, StoreError> {
        let keep = pg_texts(keep);
        let done = sqlx::query("DELETE FROM intel_profiles WHERE NOT (id = ANY($1::text[]))")
            .bind(&keep)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Every stored profile, and every indicator with its profile id.
    pub async fn intel_profile_rows(&self) -> Result<ProfileRows, StoreError> {
        let profiles =
            sqlx::query("SELECT id, title, aliases, first_active FROM intel_profiles ORDER BY id")
                .fetch_all(self.pool())
                .await?
                .iter()
                .map(|row| {
                    Ok(IntelProfileRecord {
                        id: row.try_get("id")?,
                        title: row.try_get("title")?,
                        aliases: row.try_get("aliases")?,
                        first_active: row.try_get("first_active")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
        let indicators = sqlx::query(
            "SELECT profile_id, artifact, artifact_type, source, first_seen, last_seen \
             FROM intel_profile_indicators ORDER BY profile_id, artifact",
        )
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get("profile_id")?,
                ProfileIndicatorRecord {
                    artifact: row.try_get("artifact")?,
                    artifact_type: row.try_get("artifact_type")?,
                    source: row.try_get("source")?,
                    first_seen: row.try_get("first_seen")?,
                    last_seen: row.try_get("last_seen")?,
                },
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((profiles, indicators))
    }
}

/// An [`ActorHit`] from a row with the `actor_hits` columns of the same names.
pub(super) fn hit_from_row(row: &sqlx::postgres::PgRow) -> Result<ActorHit, StoreError> {
    let evidence: Value = row.try_get("evidence")?;
    let evidence: Vec<Evidence> =
        serde_json::from_value(evidence).map_err(|error| StoreError::Decode {
            what: "actor hit evidence",
            detail: error.to_string(),
        })?;
    let factors: Value = row.try_get("confidence_factors")?;
    let factors: Vec<Factor> =
        serde_json::from_value(factors).map_err(|error| StoreError::Decode {
            what: "actor hit confidence factors",
            detail: error.to_string(),
        })?;
    let confidence: i16 = row.try_get("confidence")?;
    Ok(ActorHit {
        actor: row.try_get("actor")?,
        profile_id: row.try_get("profile_id")?,
        aliases: row.try_get("aliases")?,
        artifact: row.try_get("artifact")?,
        path: row.try_get("path")?,
        evidence,
        first_seen: row.try_get("first_seen")?,
        last_seen: row.try_get("last_seen")?,
        confidence: stored_confidence(confidence),
        factors,
    })
}

/// The id of `observable`'s row, inserted if missing.
pub(super) async fn observable_id(
    tx: &mut Transaction<'_, Postgres>,
    observable: &Observable,
) -> Result<i64, StoreError> {
    // DO UPDATE (a no-op) so that RETURNING yields the id of an existing row too.
    Ok(sqlx::query_scalar(
        "INSERT INTO observables AS o (kind, value) VALUES ($1, $2) \
         ON CONFLICT (kind, value) DO UPDATE SET value = o.value \
         RETURNING o.id",
    )
    .bind(kind_name(observable.kind()))
    .bind(pg_text(observable.value()))
    .fetch_one(&mut **tx)
    .await?)
}

/// The columns of [`upsert_indicators`]'s statement: one row per artifact, in artifact order.
struct IndicatorColumns {
    artifacts: Vec<String>,
    types: Vec<Option<String>>,
    sources: Vec<Option<String>>,
    firsts: Vec<Option<DateTime<Utc>>>,
    lasts: Vec<Option<DateTime<Utc>>>,
}

impl IndicatorColumns {
    fn of(indicators: &[ProfileIndicatorRecord]) -> IndicatorColumns {
        let rows: BTreeMap<String, &ProfileIndicatorRecord> = indicators
            .iter()
            .map(|i| (pg_text(&i.artifact), i))
            .collect();
        let n = rows.len();
        let mut columns = IndicatorColumns {
            artifacts: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            sources: Vec::with_capacity(n),
            firsts: Vec::with_capacity(n),
            lasts: Vec::with_capacity(n),
        };
        for (artifact, row) in rows {
            columns.artifacts.push(artifact);
            columns
                .types
                .push(row.artifact_type.as_deref().map(pg_text));
            columns.sources.push(row.source.as_deref().map(pg_text));
            columns.firsts.push(row.first_seen);
            columns.lasts.push(row.last_seen);
        }
        columns
    }
}

/// Upsert the profile's own row, `id` being its id as stored.
async fn upsert_profile(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    profile: &IntelProfileRecord,
) -> Result<(), StoreError> {
    let aliases: Vec<String> = profile.aliases.iter().map(|a| pg_text(a)).collect();
    sqlx::query(
        "INSERT INTO intel_profiles (id, title, aliases, first_active, synced_at) \
         VALUES ($1, $2, $3, $4, now()) \
         ON CONFLICT (id) DO UPDATE SET title = excluded.title, aliases = excluded.aliases, \
             first_active = excluded.first_active, synced_at = excluded.synced_at",
    )
    .bind(id)
    .bind(pg_text(&profile.title))
    .bind(&aliases)
    .bind(profile.first_active)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Upsert the profile's indicators in one statement; returns the artifacts it did not list
/// before.
async fn upsert_indicators(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    columns: &IndicatorColumns,
) -> Result<Vec<String>, StoreError> {
    if columns.artifacts.is_empty() {
        return Ok(Vec::new());
    }
    let upserted = sqlx::query_as::<_, (String, bool)>(
        "INSERT INTO intel_profile_indicators (profile_id, artifact, artifact_type, \
             source, first_seen, last_seen, synced_at) \
         SELECT $1, u.artifact, u.artifact_type, u.source, u.first_seen, u.last_seen, \
             now() \
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::timestamptz[], \
             $6::timestamptz[]) AS u(artifact, artifact_type, source, first_seen, last_seen) \
         ON CONFLICT (profile_id, artifact) DO UPDATE SET \
             artifact_type = excluded.artifact_type, source = excluded.source, \
             first_seen = excluded.first_seen, last_seen = excluded.last_seen, \
             synced_at = excluded.synced_at \
         RETURNING artifact, (xmax = 0) AS inserted",
    )
    .bind(id)
    .bind(&columns.artifacts)
    .bind(&columns.types)
    .bind(&columns.sources)
    .bind(&columns.firsts)
    .bind(&columns.lasts)
    .fetch_all(&mut **tx)
    .await?;
    Ok(upserted
        .into_iter()
        .filter_map(|(artifact, inserted)| inserted.then_some(artifact))
        .collect())
}

/// Upsert the hits of these walks, each with the id of its observable, in one statement, then
/// their attributions (see [`upsert_pairs`]). Returns, per walk, the attributions of its
/// observable and actors left owed an event: the caller wakes the relay when there are any.
/// An existing hit gets the new evidence, confidence, path, profile and aliases, its seen times
/// widened, and the run and context when given.
///
/// Two walks of one observable (two messages of one batch) may find the same hit: the row is
/// written once, from the later walk.
pub(super) async fn upsert_walks(
    tx: &mut Transaction<'_, Postgres>,
    walks: &[(i64, &WalkHits)],
) -> Result<Vec<Vec<OwedAttribution>>, StoreError> {
    let rows = hit_rows(walks);
    if rows.is_empty() {
        return Ok(vec![Vec::new(); walks.len()]);
    }
    insert_hits(tx, &HitColumns::of(&rows, walks)).await?;
    owe_pairs(tx, walks, &rows).await
}

/// The hits of `walks` by (observable id, actor, artifact), with the walk each is from.
type HitRows<'w> = BTreeMap<(i64, String, String), (usize, &'w ActorHit)>;

/// One row per key (Postgres refuses to update a row twice in one statement), in key order so
/// concurrent writers lock rows in the same order. The last hit of a key wins.
fn hit_rows<'w>(walks: &[(i64, &'w WalkHits)]) -> HitRows<'w> {
    walks
        .iter()
        .enumerate()
        .flat_map(|(w, (observable_id, walk))| {
            walk.hits.iter().map(move |hit| {
                (
                    (*observable_id, pg_text(&hit.actor), pg_text(&hit.artifact)),
                    (w, hit),
                )
            })
        })
        .collect()
}

impl HitColumns {
    fn of(rows: &HitRows<'_>, walks: &[(i64, &WalkHits)]) -> HitColumns {
        let mut columns = HitColumns::with_capacity(rows.len());
        // A walk's context goes with each of its hits: serialised once.
        let contexts: Vec<Option<Jsonb>> = walks
            .iter()
            .map(|(_, walk)| walk.context.as_ref().map(jsonb))
            .collect();
        for ((observable_id, actor, artifact), (w, hit)) in rows {
            let walk = walks[*w].1;
            columns.observable_ids.push(*observable_id);
            columns.run_ids.push(walk.run_id);
            columns.contexts.push(contexts[*w].clone());
            columns.actors.push(actor.clone());
            columns.artifacts.push(artifact.clone());
            columns
                .profile_ids
                .push(hit.profile_id.as_deref().map(pg_text));
            // Lists of texts as JSON arrays: UNNEST would flatten a two-dimensional text array.
            columns.aliases.push(jsonb(&hit.aliases));
            columns.paths.push(jsonb(&hit.path));
            columns.evidence.push(jsonb(&hit.evidence));
            columns.first_seen.push(hit.first_seen);
            columns.last_seen.push(hit.last_seen);
            columns.confidences.push(i16::from(hit.confidence));
            columns.factors.push(jsonb(&hit.factors));
        }
        columns
    }
}

/// Upsert the hits' rows in one statement.
async fn insert_hits(
    tx: &mut Transaction<'_, Postgres>,
    columns: &HitColumns,
) -> Result<(), StoreError> {
    let statement = format!(
        "INSERT INTO actor_hits AS h (observable_id, actor, profile_id, aliases, artifact, \
             path, evidence, first_seen, last_seen, run_id, context, confidence, \
             confidence_factors) \
         SELECT u.observable_id, u.actor, u.profile_id, {aliases}, u.artifact, {path}, \
             u.evidence, u.first_seen, u.last_seen, u.run_id, u.context, u.confidence, \
             u.factors \
         FROM UNNEST($1::bigint[], $2::uuid[], $3::jsonb[], $4::text[], $5::text[], \
             $6::jsonb[], $7::text[], $8::jsonb[], $9::jsonb[], $10::timestamptz[], \
             $11::timestamptz[], $12::smallint[], $13::jsonb[]) \
             AS u(observable_id, run_id, context, actor, profile_id, aliases, artifact, path, \
                 evidence, first_seen, last_seen, confidence, factors) \
         ON CONFLICT (observable_id, actor, artifact) DO UPDATE SET \
             profile_id = COALESCE(excluded.profile_id, h.profile_id), \
             aliases = excluded.aliases, path = excluded.path, \
             evidence = excluded.evidence, confidence = excluded.confidence, \
             confidence_factors = excluded.confidence_factors, \
             first_seen = LEAST(h.first_seen, excluded.first_seen), \
             last_seen = GREATEST(h.last_seen, excluded.last_seen), \
             run_id = COALESCE(excluded.run_id, h.run_id), \
             context = COALESCE(excluded.context, h.context), \
             updated_at = now() \
",
        aliases = text_array("u.aliases"),
        path = text_array("u.path"),
    );
    sqlx::query(&statement)
        .bind(&columns.observable_ids)
        .bind(&columns.run_ids)
        .bind(&columns.contexts)
        .bind(&columns.actors)
        .bind(&columns.profile_ids)
        .bind(&columns.aliases)
        .bind(&columns.artifacts)
        .bind(&columns.paths)
        .bind(&columns.evidence)
        .bind(&columns.first_seen)
        .bind(&columns.last_seen)
        .bind(&columns.confidences)
        .bind(&columns.factors)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Upsert the pairs the hits of `rows` belong to; returns, per walk, the attributions of its
/// observable and actors left owed an event.
async fn owe_pairs(
    tx: &mut Transaction<'_, Postgres>,
    walks: &[(i64, &WalkHits)],
    rows: &HitRows<'_>,
) -> Result<Vec<Vec<OwedAttribution>>, StoreError> {
    let mut owed_by_walk = vec![Vec::new(); walks.len()];
    // The pairs these hits belong to, each with the threshold of the walk that wrote it last.
    let pairs: BTreeMap<(i64, String), u8> = rows
        .iter()
        .map(|((observable_id, actor, _), (w, _))| {
            (
                (*observable_id, actor.clone()),
                walks[*w].1.min_event_confidence,
            )
        })
        .collect();
    let mut walks_of: HashMap<(i64, String), Vec<usize>> = HashMap::new();
    for (w, (observable_id, walk)) in walks.iter().enumerate() {
        for hit in &walk.hits {
            let of = walks_of
                .entry((*observable_id, pg_text(&hit.actor)))
                .or_default();
            if of.last() != Some(&w) {
                of.push(w);
            }
        }
    }
    for owed in upsert_pairs(tx, &pairs).await? {
        let key = (owed.observable_id, owed.actor.clone());
        for &w in walks_of.get(&key).into_iter().flatten() {
            owed_by_walk[w].push(owed.clone());
        }
    }
    Ok(owed_by_walk)
}

/// The columns of [`upsert_walks`]'s statement.
struct HitColumns {
    observable_ids: Vec<i64>,
    run_ids: Vec<Option<Uuid>>,
    contexts: Vec<Option<Jsonb>>,
    actors: Vec<String>,
    profile_ids: Vec<Option<String>>,
    aliases: Vec<Jsonb>,
    artifacts: Vec<String>,
    paths: Vec<Jsonb>,
    evidence: Vec<Jsonb>,
    first_seen: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    last_seen: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    confidences: Vec<i16>,
    factors: Vec<Jsonb>,
}

impl HitColumns {
    fn with_capacity(n: usize) -> Self {
        HitColumns {
            observable_ids: Vec::with_capacity(n),
            run_ids: Vec::with_capacity(n),
            contexts: Vec::with_capacity(n),
            actors: Vec::with_capacity(n),
            profile_ids: Vec::with_capacity(n),
            aliases: Vec::with_capacity(n),
            artifacts: Vec::with_capacity(n),
            paths: Vec::with_capacity(n),
            evidence: Vec::with_capacity(n),
            first_seen: Vec::with_capacity(n),
            last_seen: Vec::with_capacity(n),
            confidences: Vec::with_capacity(n),
            factors: Vec::with_capacity(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_texts_lose_their_nuls() {
        assert_eq!(jsonb(&["x\u{0}", "y"]).0.get(), r#"["x","y"]"#);
        assert!(text_array("u.path").contains("jsonb_array_elements_text(u.path)"));
    }
}
