//! What `status` and `publish` read about each lane: how much was done, rejected and
//! dead-lettered, per source, all-time and within a window; how many observables a message
//! holds; and the ledger of what `publish` sent (`publications`, `migrations/0011_lanes.sql`).
//!
//! Windows end at the database's `now()`, the clock `created_at` and `rejected_at` were written
//! with, so a skewed client clock cannot shift them.
//!
//! Items without a source count under [`crate::message::DEFAULT_ROUTING_KEY`]: that is the name
//! `publish` records in its ledger for what it sends without `--source` (whose items carry no
//! source), so its ledger can be settled against them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{stored_lane, Store, StoreError};
use crate::lane::Lane;
use crate::message::DEFAULT_ROUTING_KEY;

/// What one source did in one lane: runs (done), rejected items and dead-lettered messages,
/// all-time and within the window, and the Graph requests its runs in the window cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceActivity {
    pub lane: Lane,
    pub source: String,
    pub done: i64,
    pub done_in_window: i64,
    pub graph_requests_in_window: i64,
    pub rejected: i64,
    pub rejected_in_window: i64,
    pub dead_lettered: i64,
    pub dead_lettered_in_window: i64,
}

/// Runs and the distinct messages they came from, in one lane within the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageSizes {
    pub lane: Lane,
    pub runs: i64,
    pub messages: i64,
}

/// One `publications` row: what one `publish` run sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub lane: Lane,
    pub source: String,
    pub observables: i64,
    pub published_at: DateTime<Utc>,
}

fn lane_names(lanes: &[Lane]) -> Vec<String> {
    lanes.iter().map(|lane| lane.as_str().to_owned()).collect()
}

impl Store {
    /// Record that `publish` sent `observables` in `messages` for `source` to `lane`.
    pub async fn record_publication(
        &self,
        source: &str,
        lane: Lane,
        observables: u64,
        messages: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO publications (source, lane, observables, messages) VALUES ($1, $2, $3, $4)",
        )
        .bind(source)
        .bind(lane.as_str())
        .bind(i64::try_from(observables).unwrap_or(i64::MAX))
        .bind(i64::try_from(messages).unwrap_or(i64::MAX))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Per lane (of `lanes`) and source: runs, rejected items (`item_index >= 0`) and
    /// dead-lettered messages (`item_index = -1`), all-time and within the last `window`.
    pub async fn source_activity(
        &self,
        lanes: &[Lane],
        window: Duration,
    ) -> Result<Vec<SourceActivity>, StoreError> {
        let rows = sqlx::query(
            "WITH bounds AS (SELECT now() - make_interval(secs => $2) AS since), \
             runs AS ( \
                 SELECT lane, coalesce(source, $3) AS source, count(*) AS done, \
                        count(*) FILTER (WHERE created_at >= since) AS done_w, \
                        coalesce(sum(graph_requests) FILTER (WHERE created_at >= since), 0) AS req_w, \
                        0::bigint AS rej, 0::bigint AS rej_w, 0::bigint AS dead, 0::bigint AS dead_w \
                 FROM enrichment_runs, bounds WHERE lane = ANY($1) GROUP BY 1, 2), \
             rejections AS ( \
                 SELECT lane, coalesce(source, $3) AS source, 0::bigint, 0::bigint, 0::bigint, \
                        count(*) FILTER (WHERE item_index >= 0), \
                        count(*) FILTER (WHERE item_index >= 0 AND rejected_at >= since), \
                        count(*) FILTER (WHERE item_index < 0), \
                        count(*) FILTER (WHERE item_index < 0 AND rejected_at >= since) \
                 FROM rejected_inputs, bounds WHERE lane = ANY($1) GROUP BY 1, 2) \
             SELECT lane, source, sum(done)::bigint AS done, sum(done_w)::bigint AS done_w, \
                    sum(req_w)::bigint AS req_w, sum(rej)::bigint AS rej, \
                    sum(rej_w)::bigint AS rej_w, sum(dead)::bigint AS dead, \
                    sum(dead_w)::bigint AS dead_w \
             FROM (SELECT * FROM runs UNION ALL SELECT * FROM rejections) both_kinds \
             GROUP BY lane, source ORDER BY lane, source",
        )
        .bind(lane_names(lanes))
        .bind(window.as_secs_f64())
        .bind(DEFAULT_ROUTING_KEY)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SourceActivity {
                    lane: stored_lane(row.try_get("lane")?),
                    source: row.try_get("source")?,
                    done: row.try_get("done")?,
                    done_in_window: row.try_get("done_w")?,
                    graph_requests_in_window: row.try_get("req_w")?,
                    rejected: row.try_get("rej")?,
                    rejected_in_window: row.try_get("rej_w")?,
                    dead_lettered: row.try_get("dead")?,
                    dead_lettered_in_window: row.try_get("dead_w")?,
                })
            })
            .collect()
    }

    /// Runs and distinct messages per lane (of `lanes`) within the last `window`: how many
    /// observables a message of that lane holds, as measured.
    pub async fn message_sizes(
        &self,
        lanes: &[Lane],
        window: Duration,
    ) -> Result<Vec<MessageSizes>, StoreError> {
        let rows = sqlx::query(
            "SELECT lane, count(*) AS runs, count(DISTINCT message_id) AS messages \
             FROM enrichment_runs \
             WHERE lane = ANY($1) AND created_at >= now() - make_interval(secs => $2) \
             GROUP BY lane",
        )
        .bind(lane_names(lanes))
        .bind(window.as_secs_f64())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(MessageSizes {
                    lane: stored_lane(row.try_get("lane")?),
                    runs: row.try_get("runs")?,
                    messages: row.try_get("messages")?,
                })
            })
            .collect()
    }

    /// Every publication to `lanes`, by lane and source, oldest first.
    pub async fn publications(&self, lanes: &[Lane]) -> Result<Vec<Publication>, StoreError> {
        let rows = sqlx::query(
            "SELECT lane, source, observables, published_at FROM publications \
             WHERE lane = ANY($1) ORDER BY lane, source, published_at, id",
        )
        .bind(lane_names(lanes))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Publication {
                    lane: stored_lane(row.try_get("lane")?),
                    source: row.try_get("source")?,
                    observables: row.try_get("observables")?,
                    published_at: row.try_get("published_at")?,
                })
            })
            .collect()
    }

    /// Items of `source` in `lane` settled (done or rejected) from each of `times` (ascending)
    /// until the next one: element `i` counts `[times[i], times[i + 1])`, the last one up to
    /// now. Dead-lettered messages are not counted: how many items one held is not known here,
    /// and a replay brings them back.
    pub async fn settled_between(
        &self,
        lane: Lane,
        source: &str,
        times: &[DateTime<Utc>],
    ) -> Result<Vec<i64>, StoreError> {
        let Some(first) = times.first() else {
            return Ok(Vec::new());
        };
        // width_bucket numbers the intervals from 1 (0: before the first time).
        let rows = sqlx::query(
            "SELECT width_bucket(at, $3::timestamptz[]) AS bucket, count(*) AS settled FROM ( \
                 SELECT created_at AS at FROM enrichment_runs \
                 WHERE lane = $1 AND coalesce(source, $5) = $2 AND created_at >= $4 \
                 UNION ALL \
                 SELECT rejected_at FROM rejected_inputs \
                 WHERE lane = $1 AND coalesce(source, $5) = $2 AND item_index >= 0 \
                   AND rejected_at >= $4) settled \
             GROUP BY 1",
        )
        .bind(lane.as_str())
        .bind(source)
        .bind(times)
        .bind(first)
        .bind(DEFAULT_ROUTING_KEY)
        .fetch_all(self.pool())
        .await?;
        let mut settled = vec![0; times.len()];
        for row in &rows {
            let bucket: i32 = row.try_get("bucket")?;
            let count: i64 = row.try_get("settled")?;
            if let Some(slot) = usize::try_from(bucket - 1)
                .ok()
                .and_then(|i| settled.get_mut(i))
            {
                *slot += count;
            }
        }
        Ok(settled)
    }
}
