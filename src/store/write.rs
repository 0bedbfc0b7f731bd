//! [`record_batch`]: the rows of one message, or of several written together (see
//! [`super::group_commit`]), in one transaction and a fixed number of statements.
//!
//! Rows are gathered into columns (one `Vec` per column) and each table is written by a single
//! `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT DO UPDATE`. Before that they are deduplicated
//! on the conflict key (Postgres refuses an `ON CONFLICT DO UPDATE` that touches a row twice)
//! and sorted by it, so concurrent messages lock shared rows in the same order and do not
//! deadlock. Observables and extracts take two statements each: the observables nobody stored
//! are inserted first, which tells them apart, and their extracts (most of the rows) are then
//! inserted without the upsert's conflict check, which nothing can hit.
//!
//! Text is made storable on the way in: Postgres text and jsonb cannot hold NUL characters, and
//! an extract value longer than a btree index entry allows would fail the whole message, so NULs
//! are dropped and extract values are cut at [`EXTRACT_MAX_BYTES`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use foldhash::{HashMap, HashSet};
use sqlx::{PgExecutor, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use super::actors;
use super::answers::{self, ResultKey};
use super::attributions::OwedAttribution;
use super::pg_text::{jsonb, pg_str, pg_text, Jsonb};
use super::REJECTED_INPUT_MAX_CHARS;
use super::{kind_name, run_id, RejectedInput, RunRecord, RunStatus, Store, StoreError};
use crate::enrich::{EnricherKind, Indicator, Reputation};
use crate::model::WalkHits;
use crate::observable::Observable;

impl Store {
    /// Upsert the hits of one walk (and the observable row if missing) and their attributions,
    /// in one transaction; returns the attributions left owed an event (see `upsert_walks`). A
    /// message's hits are normally written with its results by [`Store::commit_results`].
    pub async fn record_actor_hits(
        &self,
        walk: WalkHits,
    ) -> Result<Vec<OwedAttribution>, StoreError> {
        let mut owed = self.record_walks(std::slice::from_ref(&walk)).await?;
        Ok(owed.pop().unwrap_or_default())
    }

    /// [`Store::record_actor_hits`] for several walks, in one transaction; per walk.
    pub async fn record_walks(
        &self,
        walks: &[WalkHits],
    ) -> Result<Vec<Vec<OwedAttribution>>, StoreError> {
        let part = Part {
            runs: &[],
            rejected: &[],
            walks,
        };
        let mut owed = record_batch(self.pool(), &[part]).await?;
        Ok(owed.pop().unwrap_or_default())
    }
}

/// Extract values and fields are cut to this many bytes (at a character boundary): the unique
/// and pivot indexes hold them, and a btree entry is limited to about 2,700 bytes.
pub const EXTRACT_MAX_BYTES: usize = 1_000;

/// What one message produced, as [`record_batch`] reads it.
#[derive(Clone, Copy)]
pub(super) struct Part<'a> {
    pub runs: &'a [RunRecord],
    pub rejected: &'a [RejectedInput],
    pub walks: &'a [WalkHits],
}

impl Part<'_> {
    fn is_empty(&self) -> bool {
        self.runs.is_empty()
            && self.rejected.is_empty()
            && self.walks.iter().all(|w| w.hits.is_empty())
    }
}

/// Write the rows of every part in one transaction (one statement per table, whatever the
/// number of parts). Returns, per part and per walk, the attributions left owed an event.
pub(super) async fn record_batch(
    pool: &PgPool,
    parts: &[Part<'_>],
) -> Result<Vec<Vec<Vec<OwedAttribution>>>, StoreError> {
    let mut pending: Vec<Vec<Vec<OwedAttribution>>> = parts
        .iter()
        .map(|part| vec![Vec::new(); part.walks.len()])
        .collect();
    if parts.iter().all(Part::is_empty) {
        return Ok(pending);
    }
    // Last one wins when the same item is named twice (within a message, or by two deliveries
    // of one message in the same batch).
    let runs: BTreeMap<(&str, i32), &RunRecord> = parts
        .iter()
        .flat_map(|part| part.runs)
        .map(|run| ((run.message_id.as_str(), run.item_index), run))
        .collect();
    let rejected: Vec<&RejectedInput> = parts.iter().flat_map(|part| part.rejected).collect();
    // (part, walk) of every walk that found something.
    let walks: Vec<(usize, usize, &WalkHits)> = parts
        .iter()
        .enumerate()
        .flat_map(|(p, part)| {
            part.walks
                .iter()
                .enumerate()
                .filter(|(_, walk)| !walk.hits.is_empty())
                .map(move |(w, walk)| (p, w, walk))
        })
        .collect();

    let mut tx = pool.begin().await?;
    let mut observables = ObservableIds::default();
    if !runs.is_empty() {
        observables = upsert_observables(&mut tx, runs.values().copied()).await?;
        write_runs(&mut tx, &runs, &observables).await?;
    }
    if !rejected.is_empty() {
        upsert_rejected(&mut tx, &rejected).await?;
    }
    if !walks.is_empty() {
        let mut owners = Vec::with_capacity(walks.len());
        for (_, _, walk) in &walks {
            let id = match observables.ids.get(&key_of(&walk.observable)) {
                Some(&id) => id,
                None => actors::observable_id(&mut tx, &walk.observable).await?,
            };
            owners.push((id, *walk));
        }
        let found = actors::upsert_walks(&mut tx, &owners).await?;
        for ((p, w, _), hits) in walks.iter().zip(found) {
            pending[*p][*w] = hits;
        }
    }
    tx.commit().await?;
    Ok(pending)
}

type ObservableKey = (String, String);

fn observable_key(run: &RunRecord) -> ObservableKey {
    key_of(&run.observable)
}

fn key_of(observable: &Observable) -> ObservableKey {
    (
        kind_name(observable.kind()).to_owned(),
        pg_text(observable.value()),
    )
}

fn was_enriched(run: &RunRecord) -> bool {
    run.status == RunStatus::Enriched || run.enrichment.is_some()
}

/// Every observable's id, and which of them this transaction inserted.
#[derive(Default)]
struct ObservableIds {
    ids: HashMap<ObservableKey, i64>,
    /// Inserted by this transaction: no other transaction can have stored rows that name them
    /// (their ids are not visible to any before this one commits), so their extracts are
    /// inserted without an upsert's conflict check.
    new: HashSet<i64>,
}

/// Insert the observables not seen before, stamp `last_enriched_at` on those Graph was called
/// for, and return every one's id. Two statements, each in key order (so concurrent batches
/// lock the same rows in the same order): the insert of those nobody stored, which tells the new
/// ones apart, then the upsert of the rest as before.
async fn upsert_observables<'r>(
    tx: &mut Transaction<'_, Postgres>,
    runs: impl Iterator<Item = &'r RunRecord>,
) -> Result<ObservableIds, StoreError> {
    let mut wanted: BTreeMap<ObservableKey, bool> = BTreeMap::new();
    for run in runs {
        *wanted.entry(observable_key(run)).or_default() |= was_enriched(run);
    }
    let mut found = ObservableIds::default();
    let inserted = observable_rows(tx, INSERT_NEW_OBSERVABLES, &wanted).await?;
    for (key, id) in inserted {
        wanted.remove(&key);
        found.new.insert(id);
        found.ids.insert(key, id);
    }
    if !wanted.is_empty() {
        found
            .ids
            .extend(observable_rows(tx, UPSERT_OBSERVABLES, &wanted).await?);
    }
    Ok(found)
}

/// Only the rows it inserts are returned (a conflict returns nothing).
const INSERT_NEW_OBSERVABLES: &str =
    "INSERT INTO observables AS o (kind, value, last_enriched_at) \
     SELECT u.kind, u.value, CASE WHEN u.enriched THEN now() END \
     FROM UNNEST($1::text[], $2::text[], $3::bool[]) AS u(kind, value, enriched) \
     ON CONFLICT (kind, value) DO NOTHING \
     RETURNING o.id, o.kind, o.value";

/// DO UPDATE (even when nothing changes) so RETURNING yields the ids of existing rows too.
const UPSERT_OBSERVABLES: &str = "INSERT INTO observables AS o (kind, value, last_enriched_at) \
     SELECT u.kind, u.value, CASE WHEN u.enriched THEN now() END \
     FROM UNNEST($1::text[], $2::text[], $3::bool[]) AS u(kind, value, enriched) \
     ON CONFLICT (kind, value) DO UPDATE \
     SET last_enriched_at = COALESCE(excluded.last_enriched_at, o.last_enriched_at) \
     RETURNING o.id, o.kind, o.value";

/// `sql` (one of the two above) over `wanted`, in key order; the ids it returned.
async fn observable_rows(
    tx: &mut Transaction<'_, Postgres>,
    sql: &'static str,
    wanted: &BTreeMap<ObservableKey, bool>,
) -> Result<Vec<(ObservableKey, i64)>, StoreError> {
    let mut kinds = Vec::with_capacity(wanted.len());
    let mut values = Vec::with_capacity(wanted.len());
    let mut enriched = Vec::with_capacity(wanted.len());
    for ((kind, value), was) in wanted {
        kinds.push(kind.as_str());
        values.push(value.as_str());
        enriched.push(*was);
    }
    let rows = sqlx::query(sql)
        .bind(&kinds)
        .bind(&values)
        .bind(&enriched)
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                (row.try_get("kind")?, row.try_get("value")?),
                row.try_get("id")?,
            ))
        })
        .collect()
}

/// The runs, and for those with an enrichment everything it found.
async fn write_runs(
    tx: &mut Transaction<'_, Postgres>,
    runs: &BTreeMap<(&str, i32), &RunRecord>,
    observables: &ObservableIds,
) -> Result<(), StoreError> {
    let mut rows = RunRows::default();
    let mut results = ResultRows::default();
    let mut indicators = IndicatorRows::default();
    let mut reputations = ReputationRows::default();
    let mut extracts = ExtractRows::default();
    for run in runs.values() {
        let observable_id = *observables
            .ids
            .get(&observable_key(run))
            .expect("every run's observable was upserted");
        let id = run_id(&run.message_id, run.item_index);
        rows.push(id, observable_id, run);
        let Some(enrichment) = &run.enrichment else {
            continue;
        };
        for result in &enrichment.results {
            results.push(
                observable_id,
                result.enricher,
                result.found,
                result.truncated,
                id,
            );
            if let Some(indicator) = &result.indicator {
                indicators.push(observable_id, indicator, id);
            }
            if let Some(reputation) = &result.reputation {
                reputations.push(run.observable.value(), reputation);
            }
            for extract in &result.extracts {
                extracts.push(
                    (
                        observable_id,
                        result.enricher.as_str(),
                        extract.kind.as_str(),
                        cut(pg_str(&extract.value), EXTRACT_MAX_BYTES),
                        cut(pg_str(&extract.field), EXTRACT_MAX_BYTES),
                    ),
                    (extract.country_code.as_deref().map(pg_str), id),
                );
            }
        }
    }
    let digests = extracts.digests(results.0.keys().copied());
    let stored_before: HashMap<ResultKey, Uuid> = digests
        .iter()
        .filter(|((observable_id, _), _)| !observables.new.contains(observable_id))
        .map(|(&key, &digest)| (key, digest))
        .collect();
    // Read before the results' upsert below replaces the stored digests.
    let unchanged = answers::unchanged(tx, &stored_before).await?;
    extracts
        .0
        .retain(|key, _| !unchanged.contains(&(key.0, key.1)));
    rows.execute(&mut **tx).await?;
    results.execute(&mut **tx, &digests).await?;
    indicators.execute(&mut **tx).await?;
    reputations.execute(&mut **tx).await?;
    extracts.execute(tx, &observables.new).await?;
    Ok(())
}

#[derive(Default)]
struct RunRows {
    ids: Vec<Uuid>,
    message_ids: Vec<String>,
    item_indexes: Vec<i32>,
    observable_ids: Vec<i64>,
    sources: Vec<Option<String>>,
    contexts: Vec<Option<Jsonb>>,
    statuses: Vec<&'static str>,
    details: Vec<Option<String>>,
    /// Comma-joined: UNNEST would flatten a two-dimensional array.
    enrichers: Vec<String>,
    graph_requests: Vec<i32>,
    durations_ms: Vec<i32>,
    lanes: Vec<&'static str>,
}

impl RunRows {
    fn push(&mut self, id: Uuid, observable_id: i64, run: &RunRecord) {
        let mut enrichers: Vec<&str> = Vec::with_capacity(run.enrichers.len());
        for enricher in &run.enrichers {
            if !enrichers.contains(&enricher.as_str()) {
                enrichers.push(enricher.as_str());
            }
        }
        self.ids.push(id);
        self.message_ids.push(pg_text(&run.message_id));
        self.item_indexes.push(run.item_index);
        self.observable_ids.push(observable_id);
        self.sources.push(run.source.as_deref().map(pg_text));
        self.contexts.push(run.context.as_ref().map(jsonb));
        self.statuses.push(run.status.as_str());
        self.details.push(run.detail.as_deref().map(pg_text));
        self.enrichers.push(enrichers.join(","));
        self.graph_requests
            .push(i32::try_from(run.graph_requests).unwrap_or(i32::MAX));
        self.durations_ms.push(millis(run.duration));
        self.lanes.push(run.lane.as_str());
    }

    /// Upsert the runs and delete the rejections they supersede. An enriched run is not
    /// overwritten by a redelivery that found the item cached or skipped.
    async fn execute(&self, executor: impl PgExecutor<'_>) -> Result<(), StoreError> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "WITH superseded AS ( \
                 DELETE FROM rejected_inputs r \
                 USING UNNEST($2::text[], $3::int[]) AS k(message_id, item_index) \
                 WHERE r.message_id = k.message_id AND r.item_index = k.item_index \
             ) \
             INSERT INTO enrichment_runs AS r (id, message_id, item_index, observable_id, source, \
                 context, status, detail, enrichers, graph_requests, duration_ms, lane) \
             SELECT u.id, u.message_id, u.item_index, u.observable_id, u.source, u.context, \
                 u.status, u.detail, string_to_array(u.enrichers, ','), u.graph_requests, \
                 u.duration_ms, u.lane \
             FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::bigint[], $5::text[], \
                 $6::jsonb[], $7::text[], $8::text[], $9::text[], $10::int[], $11::int[], \
                 $12::text[]) \
                 AS u(id, message_id, item_index, observable_id, source, context, status, \
                     detail, enrichers, graph_requests, duration_ms, lane) \
             ON CONFLICT (message_id, item_index) DO UPDATE SET \
                 observable_id = excluded.observable_id, source = excluded.source, \
                 context = excluded.context, status = excluded.status, \
                 detail = excluded.detail, enrichers = excluded.enrichers, \
                 graph_requests = excluded.graph_requests, duration_ms = excluded.duration_ms, \
                 lane = excluded.lane \
             WHERE r.status <> 'enriched' OR excluded.status = 'enriched'",
        )
        .bind(&self.ids)
        .bind(&self.message_ids)
        .bind(&self.item_indexes)
        .bind(&self.observable_ids)
        .bind(&self.sources)
        .bind(&self.contexts)
        .bind(&self.statuses)
        .bind(&self.details)
        .bind(&self.enrichers)
        .bind(&self.graph_requests)
        .bind(&self.durations_ms)
        .bind(&self.lanes)
        .execute(executor)
        .await?;
        Ok(())
    }
}

/// Enricher results, keyed (observable id, enricher).
#[derive(Default)]
struct ResultRows(BTreeMap<ResultKey, (bool, bool, Uuid)>);

impl ResultRows {
    fn push(
        &mut self,
        observable_id: i64,
        enricher: EnricherKind,
        found: bool,
        truncated: bool,
        run_id: Uuid,
    ) {
        self.0.insert(
            (observable_id, enricher.as_str()),
            (found, truncated, run_id),
        );
    }

    /// Upsert the results with their answers' `digests`; `unchanged_since` moves only when the
    /// digest does (a stored null digest counts as changed).
    async fn execute(
        &self,
        executor: impl PgExecutor<'_>,
        digests: &HashMap<ResultKey, Uuid>,
    ) -> Result<(), StoreError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut columns = (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (key, &(found, truncated, run_id)) in &self.0 {
            columns.0.push(key.0);
            columns.1.push(key.1);
            columns.2.push(found);
            columns.3.push(truncated);
            columns.4.push(run_id);
            columns.5.push(digests.get(key).copied());
        }
        sqlx::query(
            "INSERT INTO enricher_results AS r (observable_id, enricher, found, truncated, \
                 fetched_at, run_id, answer_digest, unchanged_since) \
             SELECT u.observable_id, u.enricher, u.found, u.truncated, now(), u.run_id, \
                 u.digest, now() \
             FROM UNNEST($1::bigint[], $2::text[], $3::bool[], $4::bool[], $5::uuid[], \
                 $6::uuid[]) AS u(observable_id, enricher, found, truncated, run_id, digest) \
             ON CONFLICT (observable_id, enricher) DO UPDATE SET \
                 found = excluded.found, truncated = excluded.truncated, \
                 fetched_at = excluded.fetched_at, run_id = excluded.run_id, \
                 answer_digest = excluded.answer_digest, \
                 unchanged_since = CASE WHEN r.answer_digest = excluded.answer_digest \
                     THEN r.unchanged_since ELSE excluded.unchanged_since END",
        )
        .bind(&columns.0)
        .bind(&columns.1)
        .bind(&columns.2)
        .bind(&columns.3)
        .bind(&columns.4)
        .bind(&columns.5)
        .execute(executor)
        .await?;
        Ok(())
    }
}

/// Whois indicators, keyed by their Graph id.
#[derive(Default)]
struct IndicatorRows<'a>(BTreeMap<String, (i64, &'a Indicator, Uuid)>);

/// [`IndicatorRows::execute`]'s statement: labels come as JSON arrays, order kept.
const UPSERT_INDICATORS: &str =
    "INSERT INTO indicators AS i (id, observable_id, title, description, \
         threat_start_time, threat_end_time, observed_time, \"timestamp\", labels, run_id) \
     SELECT u.id, u.observable_id, u.title, u.description, u.threat_start_time, \
         u.threat_end_time, u.observed_time, u.ts, \
         ARRAY(SELECT l.label FROM jsonb_array_elements_text(u.labels) \
             WITH ORDINALITY AS l(label, n) ORDER BY l.n), \
         u.run_id \
     FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[], \
         $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::jsonb[], $10::uuid[]) \
         AS u(id, observable_id, title, description, threat_start_time, threat_end_time, \
             observed_time, ts, labels, run_id) \
     ON CONFLICT (id) DO UPDATE SET \
         observable_id = excluded.observable_id, title = excluded.title, \
         description = excluded.description, \
         threat_start_time = excluded.threat_start_time, \
         threat_end_time = excluded.threat_end_time, \
         observed_time = excluded.observed_time, \"timestamp\" = excluded.\"timestamp\", \
         labels = excluded.labels, updated_at = now(), run_id = excluded.run_id";

impl<'a> IndicatorRows<'a> {
    fn push(&mut self, observable_id: i64, indicator: &'a Indicator, run_id: Uuid) {
        self.0
            .insert(pg_text(&indicator.id), (observable_id, indicator, run_id));
    }

    async fn execute(&self, executor: impl PgExecutor<'_>) -> Result<(), StoreError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let n = self.0.len();
        let mut ids = Vec::with_capacity(n);
        let mut observable_ids = Vec::with_capacity(n);
        let mut titles = Vec::with_capacity(n);
        let mut descriptions = Vec::with_capacity(n);
        let mut starts = Vec::with_capacity(n);
        let mut ends = Vec::with_capacity(n);
        let mut observed = Vec::with_capacity(n);
        let mut timestamps = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        let mut run_ids = Vec::with_capacity(n);
        for (id, &(observable_id, indicator, run_id)) in &self.0 {
            ids.push(id.as_str());
            observable_ids.push(observable_id);
            titles.push(pg_text(&indicator.title));
            descriptions.push(indicator.description.as_deref().map(pg_text));
            starts.push(indicator.threat_start_time);
            ends.push(indicator.threat_end_time);
            observed.push(indicator.observed_time);
            timestamps.push(indicator.timestamp);
            // As a JSON array: UNNEST would flatten a text[][].
            labels.push(jsonb(&indicator.labels));
            run_ids.push(run_id);
        }
        sqlx::query(UPSERT_INDICATORS)
            .bind(&ids)
            .bind(&observable_ids)
            .bind(&titles)
            .bind(&descriptions)
            .bind(&starts)
            .bind(&ends)
            .bind(&observed)
            .bind(&timestamps)
            .bind(&labels)
            .bind(&run_ids)
            .execute(executor)
            .await?;
        Ok(())
    }
}

/// Reputations, keyed by host value.
#[derive(Default)]
pub(super) struct ReputationRows(BTreeMap<String, (Option<String>, Option<i32>, Jsonb)>);

impl ReputationRows {
    pub(super) fn push(&mut self, host: &str, reputation: &Reputation) {
        self.0.insert(
            pg_text(host),
            (
                reputation.classification.as_deref().map(pg_text),
                reputation.score,
                jsonb(&reputation.rules),
            ),
        );
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The hosts, as stored.
    pub(super) fn hosts(&self) -> impl Iterator<Item = &String> {
        self.0.keys()
    }

    pub(super) async fn execute(&self, executor: impl PgExecutor<'_>) -> Result<(), StoreError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let (mut hosts, mut classifications, mut scores, mut rules) =
            (vec![], vec![], vec![], vec![]);
        for (host, (classification, score, rule)) in &self.0 {
            hosts.push(host.as_str());
            classifications.push(classification.as_deref());
            scores.push(*score);
            rules.push(rule);
        }
        sqlx::query(
            "INSERT INTO reputations (host, classification, score, rules, fetched_at) \
             SELECT u.host, u.classification, u.score, u.rules, now() \
             FROM UNNEST($1::text[], $2::text[], $3::int[], $4::jsonb[]) \
                 AS u(host, classification, score, rules) \
             ON CONFLICT (host) DO UPDATE SET \
                 classification = excluded.classification, score = excluded.score, \
                 rules = excluded.rules, fetched_at = excluded.fetched_at",
        )
        .bind(&hosts)
        .bind(&classifications)
        .bind(&scores)
        .bind(&rules)
        .execute(executor)
        .await?;
        Ok(())
    }
}

/// (observable id, enricher, kind, value, field): the extracts' unique key. The texts are
/// borrowed from the runs written unless they had to be cleaned or cut (about 70 a new
/// observable: copying each was a measurable share of a result transaction's CPU).
type ExtractKey<'a> = (i64, &'static str, &'static str, Cow<'a, str>, Cow<'a, str>);

/// Extracts of the whole message, keyed on their unique key; value (country code, run id).
#[derive(Default)]
struct ExtractRows<'a>(BTreeMap<ExtractKey<'a>, ExtractValue<'a>>);

/// (country code, run id): what an extract row holds beside its key.
type ExtractValue<'a> = (Option<Cow<'a, str>>, Uuid);

impl<'a> ExtractRows<'a> {
    fn push(&mut self, key: ExtractKey<'a>, value: ExtractValue<'a>) {
        self.0.insert(key, value);
    }

    /// The digest of each result's rows; `results` names those that wrote none too.
    fn digests(&self, results: impl Iterator<Item = ResultKey>) -> HashMap<ResultKey, Uuid> {
        let rows = self.0.iter().map(|(key, (country_code, _))| {
            (
                (key.0, key.1),
                [key.2, &*key.3, &*key.4],
                country_code.as_deref(),
            )
        });
        answers::digests(results, rows)
    }

    /// Insert the extracts of observables in `new` (inserted by this transaction, so nothing of
    /// theirs can conflict) plainly, and upsert the others: a plain insert skips the upsert's
    /// check of the key index before each row.
    async fn execute(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        new: &HashSet<i64>,
    ) -> Result<(), StoreError> {
        let (fresh, seen): (Vec<_>, Vec<_>) =
            self.0.iter().partition(|(key, _)| new.contains(&key.0));
        ExtractColumns::of(&fresh)
            .execute(&mut **tx, INSERT_EXTRACTS)
            .await?;
        ExtractColumns::of(&seen)
            .execute(&mut **tx, UPSERT_EXTRACTS)
            .await
    }
}

const INSERT_EXTRACTS: &str = "INSERT INTO extracts (observable_id, enricher, kind, value, field, \
         country_code, run_id) \
     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::uuid[])";

const UPSERT_EXTRACTS: &str = "INSERT INTO extracts (observable_id, enricher, kind, value, field, \
         country_code, run_id) \
     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::uuid[]) \
     ON CONFLICT (observable_id, enricher, kind, value, field) DO UPDATE SET \
         country_code = excluded.country_code, last_seen_at = now(), \
         run_id = excluded.run_id";

/// Extract rows as the columns a statement binds.
#[derive(Default)]
struct ExtractColumns<'a> {
    observable_ids: Vec<i64>,
    enrichers: Vec<&'a str>,
    kinds: Vec<&'a str>,
    values: Vec<&'a str>,
    fields: Vec<&'a str>,
    country_codes: Vec<Option<&'a str>>,
    run_ids: Vec<Uuid>,
}

impl<'a> ExtractColumns<'a> {
    fn of(rows: &[(&'a ExtractKey<'_>, &'a ExtractValue<'_>)]) -> Self {
        let mut columns = ExtractColumns::default();
        for ((observable_id, enricher, kind, value, field), (country_code, run_id)) in rows {
            columns.observable_ids.push(*observable_id);
            columns.enrichers.push(enricher);
            columns.kinds.push(kind);
            columns.values.push(value);
            columns.fields.push(field);
            columns.country_codes.push(country_code.as_deref());
            columns.run_ids.push(*run_id);
        }
        columns
    }

    async fn execute(
        &self,
        executor: impl PgExecutor<'_>,
        sql: &'static str,
    ) -> Result<(), StoreError> {
        if self.observable_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(sql)
            .bind(&self.observable_ids)
            .bind(&self.enrichers)
            .bind(&self.kinds)
            .bind(&self.values)
            .bind(&self.fields)
            .bind(&self.country_codes)
            .bind(&self.run_ids)
            .execute(executor)
            .await?;
        Ok(())
    }
}

/// Rejected inputs, one per (message id, item index). A redelivery updates the row but keeps
/// the first `rejected_at`, and the highest attempt count seen.
async fn upsert_rejected(
    tx: &mut Transaction<'_, Postgres>,
    rejected: &[&RejectedInput],
) -> Result<(), StoreError> {
    let by_key: BTreeMap<(String, i32), &RejectedInput> = rejected
        .iter()
        .copied()
        .map(|r| ((pg_text(&r.message_id), r.item_index), r))
        .collect();
    let n = by_key.len();
    let mut message_ids = Vec::with_capacity(n);
    let mut item_indexes = Vec::with_capacity(n);
    let mut inputs = Vec::with_capacity(n);
    let mut codes = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    let mut contexts = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut lanes = Vec::with_capacity(n);
    for ((message_id, item_index), r) in by_key {
        message_ids.push(message_id);
        item_indexes.push(item_index);
        inputs.push(
            pg_text(&r.input)
                .chars()
                .take(REJECTED_INPUT_MAX_CHARS)
                .collect::<String>(),
        );
        codes.push(pg_text(&r.code));
        reasons.push(pg_text(&r.reason));
        sources.push(r.source.as_deref().map(pg_text));
        contexts.push(r.context.as_ref().map(jsonb));
        attempts.push(r.attempts);
        lanes.push(r.lane.as_str());
    }
    sqlx::query(
        "INSERT INTO rejected_inputs AS r (message_id, item_index, input, code, reason, source, \
             context, attempts, lane) \
         SELECT * FROM UNNEST($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::jsonb[], $8::int[], $9::text[]) \
         ON CONFLICT (message_id, item_index) DO UPDATE SET \
             input = excluded.input, code = excluded.code, reason = excluded.reason, \
             source = excluded.source, context = excluded.context, \
             attempts = GREATEST(r.attempts, excluded.attempts)",
    )
    .bind(&message_ids)
    .bind(&item_indexes)
    .bind(&inputs)
    .bind(&codes)
    .bind(&reasons)
    .bind(&sources)
    .bind(&contexts)
    .bind(&attempts)
    .bind(&lanes)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn cut(text: Cow<'_, str>, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(&text[..end]),
        Cow::Owned(mut text) => {
            text.truncate(end);
            Cow::Owned(text)
        }
    }
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_dropped() {
        assert_eq!(pg_text("a\0b"), "ab");
        let json = serde_json::json!({"k\u{0}": ["x\u{0}y", 1, null]});
        assert_eq!(jsonb(&json).0.get(), r#"{"k":["xy",1,null]}"#);
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        assert_eq!(cut("abc".into(), 10), "abc");
        assert_eq!(cut("abc".into(), 2), "ab");
        assert_eq!(cut("aé".into(), 2), "a");
        assert_eq!(cut(String::from("aé").into(), 2), "a");
        assert_eq!(millis(Duration::from_secs(u64::MAX)), i32::MAX);
    }
}
