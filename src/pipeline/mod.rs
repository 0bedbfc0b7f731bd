//! Where the parts meet: one delivered message in, one [`Outcome`] out.
//!
//! decode → for each item: validate kind and enrichers, normalise, answer from the cache or run
//! the enrichers → one Postgres transaction for everything the message produced. What then
//! happens to the delivery is decided from that outcome in one place ([`decide`]); the consumer
//! only carries it out.

mod answer;
mod outcome;
mod validate;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use foldhash::{HashMap, HashMapExt};
use futures::StreamExt;

use crate::chain::{CanonicalNames, ChainSettings, InFlightLookups, ProfileIndex};
use crate::enrich::EnricherKind;
use crate::failpoint;
use crate::graph::{GraphClient, PageLimits};
use crate::in_flight::InFlight;
use crate::lane::Lane;
use crate::message::{self, DecodeLimits, Item};
use crate::model::WalkCache;
use crate::observable::{NormaliseOptions, Observable};
use crate::outbox::RelayHandle;
use crate::progress::{self, point};
use crate::store::{run_id, MessageResults, RejectedInput, RunRecord, RunStatus, Store, WalkHits};
use answer::{run_record, Answer};
use outcome::Failure;
pub use outcome::{
    decide, Dependency, Disposition, Letter, Outcome, GAVE_UP, GRAPH_REFUSED, INTERNAL_ERROR,
    POSTGRES_REFUSED,
};
use validate::{Validated, Work};

/// The host whose reputation probes Graph: any answer, found or not, means Graph serves.
const GRAPH_PROBE_HOST: &str = "microsoft.com";

/// One delivery, as the pipeline needs it.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    pub message_id: &'a str,
    pub body: &'a [u8],
    pub content_type: Option<&'a str>,
    pub attempt: u32,
    /// The lane it came through, recorded with its runs and rejections.
    pub lane: Lane,
}

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub default_enrichers: Vec<EnricherKind>,
    pub cache_ttl: Duration,
    pub normalise: NormaliseOptions,
    pub page_limits: PageLimits,
    pub decode: DecodeLimits,
    pub item_concurrency: usize,
    /// Infrastructure chaining: whether items chain unless they say otherwise, and how.
    pub chain_by_default: bool,
    pub chain: ChainSettings,
}

#[derive(Clone)]
pub struct Pipeline {
    graph: GraphClient,
    store: Store,
    /// The store as the chaining walks read and save reputations, made once for all walks.
    walk_cache: Arc<dyn WalkCache>,
    settings: PipelineSettings,
    /// The intel profile index, replaced whole by the sync job; readers take the current `Arc`
    /// (a std lock: held only to clone or swap the pointer, never across an await).
    profiles: Arc<RwLock<Arc<ProfileIndex>>>,
    /// Lookups of this worker's walks in flight, followed by the other walks.
    lookups: InFlightLookups,
    /// Counterparts' canonical names, worked out once for all walks.
    names: CanonicalNames,
    /// Observables this worker is enriching, followed by their repeats (see [`Pipeline::answer`]).
    enriching: InFlight<()>,
    /// Woken when a commit stored hits whose events are owed.
    relay: RelayHandle,
}

/// What became of one item: a run to record, or a rejection.
enum ItemResult {
    Run(RunRecord),
    Rejected(RejectedInput),
}

impl Pipeline {
    pub fn new(graph: GraphClient, store: Store, settings: PipelineSettings) -> Self {
        Pipeline {
            graph,
            walk_cache: Arc::new(store.clone()),
            store,
            settings,
            profiles: Arc::default(),
            lookups: InFlightLookups::default(),
            names: CanonicalNames::default(),
            enriching: InFlight::default(),
            relay: RelayHandle::default(),
        }
    }

    /// What wakes the outbox relay of this pipeline's worker.
    pub fn relay(&self) -> &RelayHandle {
        &self.relay
    }

    /// How this pipeline walks and attributes.
    pub fn chain_settings(&self) -> &ChainSettings {
        &self.settings.chain
    }

    /// Replace the intel profile index every later walk matches against.
    pub fn set_profiles(&self, profiles: ProfileIndex) {
        *self.profiles.write().expect("profile lock poisoned") = Arc::new(profiles);
    }

    fn current_profiles(&self) -> Arc<ProfileIndex> {
        Arc::clone(&self.profiles.read().expect("profile lock poisoned"))
    }

    pub fn graph(&self) -> &GraphClient {
        &self.graph
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// One delivery to its [`Outcome`]. `Done` only once everything the message produced is
    /// committed, in one transaction.
    pub async fn handle(&self, message: &Incoming<'_>) -> Outcome {
        failpoint::check(failpoint::point::MESSAGE, message.body);
        let decoded = message::decode(message.body, message.content_type, &self.settings.decode);
        let items = match decoded {
            Ok(items) => items,
            Err(error) => return self.reject(message, error.code(), error.to_string()).await,
        };
        let (mut results, work) = self.validate_all(message, items);
        let (unique, repeats) = deduplicate(work);
        let mut answers = self.answer_all(&unique).await;
        if let Err(failure) = add_runs(message, &unique, &repeats, &mut answers, &mut results) {
            return self.fail(message, failure).await;
        }
        let reputation_cache_hits = answers
            .iter()
            .filter_map(|a| a.as_ref().ok()?.chain.as_ref())
            .map(|report| report.reputation_cache_hits)
            .sum();
        let walks = self.walk_hits(message, &unique, &mut answers);
        let results = message_results(results, walks);
        let tally = Tally::of(&results.runs, reputation_cache_hits);
        self.commit(message, results, tally, answers).await
    }

    /// Sort the items into work, and the runs and rejections already settled.
    fn validate_all(
        &self,
        message: &Incoming<'_>,
        items: Vec<Item>,
    ) -> (Vec<ItemResult>, Vec<Work>) {
        let mut results = Vec::with_capacity(items.len());
        let mut work = Vec::new();
        for item in items {
            match self.validate(message, item) {
                Validated::Work(w) => work.push(*w),
                Validated::Skipped(run) => results.push(ItemResult::Run(*run)),
                Validated::Rejected(rejected) => results.push(ItemResult::Rejected(*rejected)),
            }
        }
        (results, work)
    }

    /// Each piece of work's answer, in order, at most `item_concurrency` at once.
    async fn answer_all(&self, unique: &[Work]) -> Vec<Result<Answer, Failure>> {
        // The futures are collected first: a lazy `map` closure inside the stream would make
        // this future's type higher-ranked over the borrow, which `tokio::spawn` cannot accept.
        let may_wait = unique.len() == 1;
        let pending: Vec<_> = unique.iter().map(|w| self.answer(w, may_wait)).collect();
        futures::stream::iter(pending)
            .buffered(self.settings.item_concurrency.max(1))
            .collect()
            .await
    }

    /// The walks' actor hits, to go in the same transaction as the runs they belong to (the
    /// run records are built, so the hits can be moved out of the answers).
    fn walk_hits(
        &self,
        message: &Incoming<'_>,
        unique: &[Work],
        answers: &mut [Result<Answer, Failure>],
    ) -> Vec<WalkHits> {
        unique
            .iter()
            .zip(answers)
            .filter_map(|(w, answer)| match answer {
                Ok(Answer {
                    chain: Some(report),
                    ..
                }) if !report.hits.is_empty() => Some(WalkHits {
                    observable: w.observable.clone(),
                    run_id: Some(run_id(message.message_id, w.request.index as i32)),
                    context: w.request.context.clone(),
                    hits: std::mem::take(&mut report.hits),
                    min_event_confidence: self.settings.chain.min_event_confidence,
                }),
                _ => None,
            })
            .collect()
    }

    /// Commit the message's results; `answers` (their leads) are held until then, so that
    /// repeats waiting on these observables find the rows.
    async fn commit(
        &self,
        message: &Incoming<'_>,
        results: MessageResults,
        tally: Tally,
        answers: Vec<Result<Answer, Failure>>,
    ) -> Outcome {
        let committed = progress::wait_at(point::COMMIT, self.store.commit_results(results)).await;
        let (results, pending) = match committed {
            (results, Ok(pending)) => (results, pending),
            (_, Err(error)) => return self.fail(message, Failure::store(error)).await,
        };
        progress::global().advanced();
        failpoint::check(failpoint::point::AFTER_RESULTS_COMMIT, message.body);
        // The rows are committed: repeats waiting on these observables may read them now.
        drop(answers);
        // Attributions left owed an event: the relay announces them (see `crate::outbox`).
        if pending.iter().any(|owed| !owed.is_empty()) {
            self.relay.wake();
        }
        Outcome::Done {
            enriched: tally.enriched,
            cached: tally.cached,
            skipped: tally.skipped,
            rejected: results.rejected,
            reputation_cache_hits: tally.reputation_cache_hits,
        }
    }

    /// A failure that decides the whole message: tried again later when that may succeed,
    /// else refused for good under the code of the service that refused it.
    async fn fail(&self, message: &Incoming<'_>, failure: Failure) -> Outcome {
        if failure.retryable {
            return self.retry_or_suspend(failure).await;
        }
        let code = failure.service.refused_code();
        self.reject(message, code, failure.reason).await
    }

    /// The whole message is unusable: recorded in `rejected_inputs` (item -1), then
    /// dead-lettered. Should the record fail, whatever the error, the message is retried
    /// instead, so that no rejection is missing from Postgres.
    async fn reject(&self, message: &Incoming<'_>, code: &str, reason: String) -> Outcome {
        let rejected = RejectedInput::whole_message(
            message.message_id,
            message.body,
            code,
            reason,
            message.attempt,
            message.lane,
        );
        match self.store.record_rejection(&rejected).await {
            Ok(()) => Outcome::Reject {
                code: rejected.code,
                reason: rejected.reason,
            },
            Err(error) => self.retry_or_suspend(Failure::store(error)).await,
        }
    }

    /// One decision for every failure that is not the message's fault: when the service it
    /// came from fails its probe too, the service is down for everybody and the message is
    /// handed back uncounted; otherwise the failure is this message's, and its attempt counts.
    async fn retry_or_suspend(&self, failure: Failure) -> Outcome {
        let dependency = failure.service;
        if failure.retryable {
            if let Err(down) = self.probe(dependency).await {
                return Outcome::Suspend {
                    dependency,
                    reason: format!("{}; probe: {down}", failure.reason),
                };
            }
        }
        Outcome::Retry {
            code: dependency.retry_code(),
            reason: failure.reason,
        }
    }

    /// Whether `dependency` serves now: Postgres answers `SELECT 1`; Graph answers a reputation
    /// request with anything but a transient failure (a 404 or a refusal is still an answer).
    pub async fn probe(&self, dependency: Dependency) -> Result<(), String> {
        match dependency {
            Dependency::Postgres => self.store.ping().await.map_err(|error| error.to_string()),
            Dependency::Graph => match self.graph.reputation(GRAPH_PROBE_HOST).await {
                Err(error) if error.is_transient() => Err(error.to_string()),
                _ => Ok(()),
            },
        }
    }
}

/// The same observable twice in one message is enriched once: the work to do, and each repeat
/// with the position of its first in it.
fn deduplicate(work: Vec<Work>) -> (Vec<Work>, Vec<(usize, Work)>) {
    let mut first_of: HashMap<(Observable, Vec<EnricherKind>, bool, Option<u32>), usize> =
        HashMap::new();
    let mut unique = Vec::new();
    let mut repeats = Vec::new();
    for w in work {
        let key = (
            w.observable.clone(),
            w.enrichers.clone(),
            w.request.force,
            w.chain_depth,
        );
        match first_of.get(&key) {
            Some(&at) => repeats.push((at, w)),
            None => {
                first_of.insert(key, unique.len());
                unique.push(w);
            }
        }
    }
    (unique, repeats)
}

/// The runs of the answered work and its repeats, added to `results`; the first failure
/// instead, which decides the whole message. Each enrichment moves out of its answer into its
/// run, and a repeat's run gets a copy of its first's: held until the commit, enrichments are
/// most of a message's memory, and nothing after this reads them from the answers.
fn add_runs(
    message: &Incoming<'_>,
    unique: &[Work],
    repeats: &[(usize, Work)],
    answers: &mut [Result<Answer, Failure>],
    results: &mut Vec<ItemResult>,
) -> Result<(), Failure> {
    let first = results.len();
    for (w, answer) in unique.iter().zip(answers.iter_mut()) {
        let answer = answer.as_mut().map_err(|failure| failure.clone())?;
        let enrichment = answer.enrichment.take();
        results.push(ItemResult::Run(run_record(message, w, answer, enrichment)));
    }
    for (at, w) in repeats {
        let enrichment = match results.get(first + at) {
            Some(ItemResult::Run(run)) => run.enrichment.clone(),
            _ => continue,
        };
        if let Ok(answer) = &answers[*at] {
            results.push(ItemResult::Run(run_record(message, w, answer, enrichment)));
        }
    }
    Ok(())
}

/// Everything the message produced, in the form the store commits.
fn message_results(results: Vec<ItemResult>, walks: Vec<WalkHits>) -> MessageResults {
    let mut runs = Vec::new();
    let mut rejected = Vec::new();
    for result in results {
        match result {
            ItemResult::Run(run) => runs.push(run),
            ItemResult::Rejected(r) => rejected.push(r),
        }
    }
    MessageResults {
        runs,
        rejected,
        walks,
    }
}

/// The counts a `Done` outcome reports.
struct Tally {
    enriched: usize,
    cached: usize,
    skipped: usize,
    reputation_cache_hits: u64,
}

impl Tally {
    fn of(runs: &[RunRecord], reputation_cache_hits: u64) -> Self {
        let count = |status| runs.iter().filter(|r| r.status == status).count();
        Tally {
            enriched: count(RunStatus::Enriched),
            cached: count(RunStatus::Cached),
            skipped: count(RunStatus::Skipped),
            reputation_cache_hits,
        }
    }
}
