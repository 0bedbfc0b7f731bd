//! The answer for one item: the store's if it is fresh, else Graph's, then the chaining.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::outcome::Failure;
use super::validate::Work;
use super::{Incoming, Pipeline};
use crate::chain::{ChainFindings, ChainSettings, Chainer, Known};
use crate::enrich::{self, EnricherKind, Enrichment, Reputation};
use crate::in_flight::{Lead, Role};
use crate::observable::Observable;
use crate::progress::{self, point};
use crate::store::{RunRecord, RunStatus};

/// The cache's answer (no enrichment) or Graph's, the chaining's report, and what it cost.
pub(super) struct Answer {
    pub enrichment: Option<Enrichment>,
    pub chain: Option<ChainFindings>,
    pub requests: u64,
    pub duration: Duration,
    /// The lead of this observable's enrichment, held until the message's rows are committed:
    /// repeats waiting on it then find them in the store.
    pub _enriching: Option<Lead<()>>,
}

impl Pipeline {
    /// The cache or Graph, then the chaining. An answer without an enrichment is a cache hit;
    /// a cached observable is not chained again (its hits are already stored) unless forced.
    ///
    /// An observable this worker is already enriching for another message is not enriched
    /// again: the repeat waits until that message's rows are committed, then finds them fresh
    /// (or, if that message failed, enriches it itself). Only an item that is its message's
    /// only work waits (`may_wait`): its message then leads nothing, so no two messages can
    /// wait for each other. An item with `force` waits for nobody.
    pub(super) async fn answer(&self, work: &Work, may_wait: bool) -> Result<Answer, Failure> {
        let started = Instant::now();
        let enriching = self.lead_or_follow(work, may_wait).await;
        if !work.request.force && self.is_fresh(work).await? {
            // Nothing for repeats to wait for: the rows are already there.
            return Ok(Answer {
                enrichment: None,
                chain: None,
                requests: 0,
                duration: started.elapsed(),
                _enriching: None,
            });
        }
        let enrichment = enrich::enrich(
            &self.graph,
            &work.observable,
            &work.enrichers,
            self.settings.page_limits,
        )
        .await
        .map_err(|error| Failure::graph(&work.observable, &error))?;
        let chain = match work.chain_depth {
            None => None,
            Some(depth) => Some(self.chain(work, depth, &enrichment).await?),
        };
        let chain_requests = chain.as_ref().map_or(0, |report| report.graph_requests);
        Ok(Answer {
            requests: enrichment.graph_requests + chain_requests,
            enrichment: Some(enrichment),
            chain,
            duration: started.elapsed(),
            _enriching: enriching,
        })
    }

    /// Lead this observable's enrichment, or follow the message that leads it (waiting for its
    /// commit when `may_wait` and the item is not forced).
    async fn lead_or_follow(&self, work: &Work, may_wait: bool) -> Option<Lead<()>> {
        match self.enriching.join(&enriching_key(&work.observable)) {
            Role::Lead(lead) => Some(lead),
            Role::Follow(follower) => {
                if may_wait && !work.request.force {
                    progress::wait_at(point::REPEAT, follower.answer()).await;
                }
                None
            }
        }
    }

    /// Whether the store holds every enricher's answer for the observable, younger than the
    /// cache TTL.
    async fn is_fresh(&self, work: &Work) -> Result<bool, Failure> {
        let check = self
            .store
            .is_fresh(&work.observable, &work.enrichers, self.settings.cache_ttl);
        progress::wait_at(point::POSTGRES, check)
            .await
            .map_err(Failure::store)
    }

    /// Walk `depth` passive DNS hops from the observable, matching the intel profiles.
    async fn chain(
        &self,
        work: &Work,
        depth: u32,
        enrichment: &Enrichment,
    ) -> Result<ChainFindings, Failure> {
        let settings = ChainSettings {
            depth,
            ..self.settings.chain.clone()
        };
        let chainer = Chainer::new(
            self.graph.clone(),
            Some(Arc::clone(&self.walk_cache)),
            settings,
        )
        .with_profiles(self.current_profiles())
        .with_in_flight(self.lookups.clone())
        .with_names(self.names.clone());
        let unknown = Reputation::default();
        chainer
            .walk_from(&work.observable, known_from(enrichment, &unknown))
            .await
            .map_err(|error| {
                let reason = format!("chaining {}: {error}", work.observable);
                Failure::graph_side(error.is_transient(), reason)
            })
    }
}

/// The enrichers just asked Graph about the IOC: the walk starts from their answers instead of
/// asking again. A reputation Graph did not find is known too (as `unknown`).
fn known_from<'a>(enrichment: &'a Enrichment, unknown: &'a Reputation) -> Known<'a> {
    Known {
        passive_dns: enrichment
            .results
            .iter()
            .find_map(|r| r.passive_dns.as_ref()),
        reputation: enrichment
            .results
            .iter()
            .find_map(|r| match (r.enricher, &r.reputation) {
                (_, Some(reputation)) => Some(reputation),
                (EnricherKind::Reputation, None) if !r.found => Some(unknown),
                _ => None,
            }),
    }
}

/// The key of an observable's enrichment in flight.
fn enriching_key(observable: &Observable) -> String {
    format!("{}:{}", observable.kind(), observable.value())
}

/// The run of an answered item, holding `enrichment` (the answer's, taken out of it).
pub(super) fn run_record(
    message: &Incoming<'_>,
    work: &Work,
    answer: &Answer,
    enrichment: Option<Enrichment>,
) -> RunRecord {
    RunRecord {
        message_id: message.message_id.to_owned(),
        item_index: work.request.index as i32,
        source: work.request.source.clone(),
        context: work.request.context.clone(),
        observable: work.observable.clone(),
        status: if enrichment.is_some() {
            RunStatus::Enriched
        } else {
            RunStatus::Cached
        },
        detail: None,
        enrichers: work.enrichers.clone(),
        graph_requests: answer.requests,
        duration: answer.duration,
        enrichment,
        lane: message.lane,
    }
}
