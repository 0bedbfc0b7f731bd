//! Where the parts meet: one delivered message in, one [`Outcome`] out.
//!
//! decode → for each item: validate kind and enrichers, normalise, answer from the cache or run
//! the enrichers → one Postgres transaction for everything the message produced. The outcome is
//! decided here and nowhere else; the consumer only maps it to ack, delayed retry or dead letter.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::chain::{ChainReport, ChainSettings, Chainer, Known, ProfileIndex};
use crate::enrich::{self, EnricherKind, Enrichment, Reputation};
use crate::failpoint;
use crate::graph::{GraphClient, GraphError, PageLimits};
use crate::in_flight::{InFlight, Lead, Role};
use crate::lane::Lane;
use crate::message::{self, DecodeLimits, Item, ObservableRequest};
use crate::observable::{self, NormaliseOptions, Normalised, Observable, ObservableKind};
use crate::outbox::RelayHandle;
use crate::progress::{self, point};
use crate::store::{
    run_id, MessageResults, RejectedInput, RunRecord, RunStatus, Store, StoreError, WalkHits,
};

/// What should happen to a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Everything the message carried is settled in Postgres. Items that were bad input are in
    /// `rejected` (and in the `rejected_inputs` table); they go to the dead-letter queue.
    Done {
        enriched: usize,
        cached: usize,
        skipped: usize,
        rejected: Vec<RejectedInput>,
        /// Reputations the chaining read from the Postgres cache instead of Graph.
        reputation_cache_hits: u64,
    },
    /// Something outside the message failed (Graph after its retries, Postgres) while the
    /// service itself answers: try later, and count the attempt.
    Retry { code: &'static str, reason: String },
    /// A service every message needs is down for everybody (its probe failed too): hand the
    /// message back without counting an attempt, and stop taking messages until the service
    /// answers again ([`Pipeline::probe`]).
    Suspend {
        dependency: Dependency,
        reason: String,
    },
    /// The message as a whole is unusable: dead-letter it at once.
    Reject { code: String, reason: String },
}

/// A service every message needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Postgres,
    Graph,
}

impl Dependency {
    pub const ALL: [Dependency; 2] = [Dependency::Postgres, Dependency::Graph];

    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Postgres => "postgres",
            Dependency::Graph => "graph",
        }
    }

    /// The reason code of a retry this service's failure caused.
    fn retry_code(self) -> &'static str {
        match self {
            Dependency::Postgres => "postgres_unavailable",
            Dependency::Graph => "graph_unavailable",
        }
    }
}

/// The code of a retry caused by a bug (a panicking message task), in the retry copy's headers.
pub const INTERNAL_ERROR: &str = "internal_error";

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
    settings: PipelineSettings,
    /// The intel profile index, replaced whole by the sync job; readers take the current `Arc`
    /// (a std lock: held only to clone or swap the pointer, never across an await).
    profiles: Arc<RwLock<Arc<ProfileIndex>>>,
    /// Reputation lookups of this worker's walks in flight, followed by the other walks.
    lookups: InFlight<Reputation>,
    /// Observables this worker is enriching, followed by their repeats (see [`Pipeline::answer`]).
    enriching: InFlight<()>,
    /// Woken when a commit stored hits whose events are owed.
    relay: RelayHandle,
}

/// An item that passed validation, with what to run for it.
struct Work {
    request: ObservableRequest,
    observable: Observable,
    enrichers: Vec<EnricherKind>,
    /// Passive DNS hops to chain, `None` when this item does not chain.
    chain_depth: Option<u32>,
}

enum ItemResult {
    Run(RunRecord),
    Rejected(RejectedInput),
}

impl Pipeline {
    pub fn new(graph: GraphClient, store: Store, settings: PipelineSettings) -> Self {
        Pipeline {
            graph,
            store,
            settings,
            profiles: Arc::default(),
            lookups: InFlight::default(),
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

    pub async fn handle(&self, message: &Incoming<'_>) -> Outcome {
        failpoint::check(failpoint::point::MESSAGE, message.body);
        let items = match message::decode(message.body, message.content_type, &self.settings.decode)
        {
            Ok(items) => items,
            Err(error) => return self.reject(message, error.code(), error.to_string()).await,
        };

        let mut results = Vec::with_capacity(items.len());
        let mut work = Vec::new();
        for item in items {
            match self.validate(message, item) {
                Validated::Work(w) => work.push(*w),
                Validated::Skipped(run) => results.push(ItemResult::Run(*run)),
                Validated::Rejected(rejected) => results.push(ItemResult::Rejected(*rejected)),
            }
        }

        // The same observable twice in one message is enriched once.
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

        // The futures are collected first: a lazy `map` closure inside the stream would make
        // this future's type higher-ranked over the borrow, which `tokio::spawn` cannot accept.
        let may_wait = unique.len() == 1;
        let pending: Vec<_> = unique.iter().map(|w| self.answer(w, may_wait)).collect();
        let mut answers: Vec<Result<Answer, Failure>> = futures::stream::iter(pending)
            .buffered(self.settings.item_concurrency.max(1))
            .collect()
            .await;
        for (w, answer) in unique.iter().zip(&answers) {
            match answer {
                Ok(answer) => results.push(ItemResult::Run(run_record(message, w, answer))),
                Err(failure) if failure.retryable => {
                    return self.retry_or_suspend(failure.clone()).await;
                }
                Err(failure) => {
                    return self
                        .reject(message, GRAPH_REFUSED, failure.reason.clone())
                        .await
                }
            }
        }
        for (at, w) in &repeats {
            if let Ok(answer) = &answers[*at] {
                results.push(ItemResult::Run(run_record(message, w, answer)));
            }
        }

        let mut runs = Vec::new();
        let mut rejected = Vec::new();
        for result in results {
            match result {
                ItemResult::Run(run) => runs.push(run),
                ItemResult::Rejected(r) => rejected.push(r),
            }
        }
        let count = |status| runs.iter().filter(|r| r.status == status).count();
        let (enriched, cached, skipped) = (
            count(RunStatus::Enriched),
            count(RunStatus::Cached),
            count(RunStatus::Skipped),
        );
        let reputation_cache_hits = answers
            .iter()
            .filter_map(|a| a.as_ref().ok()?.chain.as_ref())
            .map(|report| report.reputation_cache_hits)
            .sum();
        // The walks' actor hits go in the same transaction as the runs they belong to (the
        // run records are built, so the hits can be moved out of the answers).
        let walks: Vec<WalkHits> = unique
            .iter()
            .zip(&mut answers)
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
            .collect();
        let results = MessageResults {
            runs,
            rejected,
            walks,
        };
        let committed = progress::wait_at(point::COMMIT, self.store.commit_results(results)).await;
        let (results, pending) = match committed {
            (results, Ok(pending)) => (results, pending),
            (_, Err(error)) => return self.retry_or_suspend(Failure::store(error)).await,
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
            enriched,
            cached,
            skipped,
            rejected: results.rejected,
            reputation_cache_hits,
        }
    }

    /// The whole message is unusable: recorded in `rejected_inputs` (item -1), then
    /// dead-lettered. Should the record fail, the message is retried instead, so that no
    /// rejection is missing from Postgres.
    async fn reject(&self, message: &Incoming<'_>, code: &str, reason: String) -> Outcome {
        let rejected = RejectedInput {
            message_id: message.message_id.to_owned(),
            item_index: -1,
            input: excerpt(message.body),
            code: code.to_owned(),
            reason,
            source: None,
            context: None,
            attempts: message.attempt as i32,
            lane: message.lane,
        };
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
        if failure.service_may_be_down {
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

    fn validate(&self, message: &Incoming<'_>, item: Item) -> Validated {
        let request = match item {
            Item::Request(request) => request,
            Item::Invalid {
                index,
                input,
                code,
                reason,
            } => {
                return Validated::rejected(rejection(
                    message, index, input, code, reason, None, None,
                ));
            }
        };
        let reject = |code: &str, reason: String| {
            rejection(
                message,
                request.index,
                request.value.clone(),
                code,
                reason,
                request.source.clone(),
                request.context.clone(),
            )
        };
        let declared = match request.kind.as_deref() {
            None => None,
            Some(text) => match text.parse::<ObservableKind>() {
                Ok(kind) => Some(kind),
                Err(error) => {
                    return Validated::rejected(reject("unknown_kind", error.to_string()))
                }
            },
        };
        let enrichers = match &request.enrichers {
            None => self.settings.default_enrichers.clone(),
            Some(names) => {
                let mut kinds = Vec::new();
                for name in names {
                    match name.parse::<EnricherKind>() {
                        Ok(kind) if !kinds.contains(&kind) => kinds.push(kind),
                        Ok(_) => {}
                        Err(error) => {
                            return Validated::rejected(reject("unknown_enricher", error))
                        }
                    }
                }
                if kinds.is_empty() {
                    return Validated::rejected(reject(
                        "no_enrichers",
                        "`enrichers` is an empty list; leave it out to run the default set".into(),
                    ));
                }
                kinds
            }
        };
        match observable::normalise(&request.value, declared, &self.settings.normalise) {
            Ok(Normalised::Ready(observable)) => {
                let chain = request.chain;
                let chain_depth = chain
                    .enabled
                    .unwrap_or(self.settings.chain_by_default || chain.depth.is_some())
                    .then(|| chain.depth.unwrap_or(self.settings.chain.depth));
                Validated::Work(Box::new(Work {
                    request,
                    observable,
                    enrichers,
                    chain_depth,
                }))
            }
            Ok(Normalised::Skipped { observable, reason }) => {
                Validated::Skipped(Box::new(RunRecord {
                    message_id: message.message_id.to_owned(),
                    item_index: request.index as i32,
                    source: request.source,
                    context: request.context,
                    observable,
                    status: RunStatus::Skipped,
                    detail: Some(reason),
                    enrichers,
                    graph_requests: 0,
                    duration: Duration::ZERO,
                    enrichment: None,
                    lane: message.lane,
                }))
            }
            Err(error) => Validated::rejected(reject(error.code(), error.to_string())),
        }
    }

    /// The cache or Graph, then the chaining. An answer without an enrichment is a cache hit;
    /// a cached observable is not chained again (its hits are already stored) unless forced.
    /// The answer for one item: the store's if it is fresh, else Graph's.
    ///
    /// An observable this worker is already enriching for another message is not enriched
    /// again: the repeat waits until that message's rows are committed, then finds them fresh
    /// (or, if that message failed, enriches it itself). Only an item that is its message's
    /// only work waits (`may_wait`): its message then leads nothing, so no two messages can
    /// wait for each other. An item with `force` waits for nobody.
    async fn answer(&self, work: &Work, may_wait: bool) -> Result<Answer, Failure> {
        let started = Instant::now();
        let enriching = match self.enriching.join(&enriching_key(&work.observable)) {
            Role::Lead(lead) => Some(lead),
            Role::Follow(follower) => {
                if may_wait && !work.request.force {
                    progress::wait_at(point::REPEAT, follower.answer()).await;
                }
                None
            }
        };
        if !work.request.force {
            let check =
                self.store
                    .is_fresh(&work.observable, &work.enrichers, self.settings.cache_ttl);
            let fresh = progress::wait_at(point::POSTGRES, check)
                .await
                .map_err(Failure::store)?;
            if fresh {
                // Nothing for repeats to wait for: the rows are already there.
                return Ok(Answer {
                    enrichment: None,
                    chain: None,
                    requests: 0,
                    duration: started.elapsed(),
                    _enriching: None,
                });
            }
        }
        let enrichment = enrich::enrich(
            &self.graph,
            &work.observable,
            &work.enrichers,
            self.settings.page_limits,
        )
        .await
        .map_err(|error| Failure::graph(&work.observable, &error))?;
        let mut requests = enrichment.graph_requests;
        let chain = match work.chain_depth {
            None => None,
            Some(depth) => {
                let settings = ChainSettings {
                    depth,
                    ..self.settings.chain.clone()
                };
                let chainer = Chainer::new(self.graph.clone(), Some(self.store.clone()), settings)
                    .with_profiles(self.current_profiles())
                    .with_in_flight(self.lookups.clone());
                // The enrichers just asked Graph about the IOC: the walk starts from their
                // answers instead of asking again. A reputation Graph did not find is known too.
                let unknown = Reputation::default();
                let known = Known {
                    passive_dns: enrichment
                        .results
                        .iter()
                        .find_map(|r| r.passive_dns.as_ref()),
                    reputation: enrichment.results.iter().find_map(|r| {
                        match (r.enricher, &r.reputation) {
                            (_, Some(reputation)) => Some(reputation),
                            (EnricherKind::Reputation, None) if !r.found => Some(&unknown),
                            _ => None,
                        }
                    }),
                };
                let report = chainer
                    .walk_from(&work.observable, known)
                    .await
                    .map_err(|error| {
                        let reason = format!("chaining {}: {error}", work.observable);
                        Failure::graph_side(error.is_transient(), reason)
                    })?;
                requests += report.graph_requests;
                Some(report)
            }
        };
        Ok(Answer {
            enrichment: Some(enrichment),
            chain,
            requests,
            duration: started.elapsed(),
            _enriching: enriching,
        })
    }
}

/// The key of an observable's enrichment in flight.
fn enriching_key(observable: &Observable) -> String {
    format!("{}:{}", observable.kind(), observable.value())
}

enum Validated {
    Work(Box<Work>),
    Skipped(Box<RunRecord>),
    Rejected(Box<RejectedInput>),
}

impl Validated {
    fn rejected(rejected: RejectedInput) -> Self {
        Validated::Rejected(Box::new(rejected))
    }
}

fn run_record(message: &Incoming<'_>, work: &Work, answer: &Answer) -> RunRecord {
    let Answer {
        enrichment,
        requests,
        duration,
        ..
    } = answer;
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
        graph_requests: *requests,
        duration: *duration,
        enrichment: enrichment.clone(),
        lane: message.lane,
    }
}

fn rejection(
    message: &Incoming<'_>,
    index: usize,
    input: String,
    code: &str,
    reason: String,
    source: Option<String>,
    context: Option<serde_json::Value>,
) -> RejectedInput {
    RejectedInput {
        message_id: message.message_id.to_owned(),
        item_index: index as i32,
        input: input.chars().take(1000).collect(),
        code: code.to_owned(),
        reason,
        source,
        context,
        attempts: message.attempt as i32,
        lane: message.lane,
    }
}

/// The cache's answer (no enrichment) or Graph's, the chaining's report, and what it cost.
struct Answer {
    enrichment: Option<Enrichment>,
    chain: Option<ChainReport>,
    requests: u64,
    duration: Duration,
    /// The lead of this observable's enrichment, held until the message's rows are committed:
    /// repeats waiting on it then find them in the store.
    _enriching: Option<Lead<()>>,
}

/// Why an item could not be answered; it decides the whole message.
#[derive(Debug, Clone)]
struct Failure {
    /// Trying later may succeed; otherwise the message is refused for good.
    retryable: bool,
    /// The service the failure came from.
    service: Dependency,
    /// The failure may be the service's rather than the item's: worth a probe.
    service_may_be_down: bool,
    reason: String,
}

impl Failure {
    /// Graph's own classification decides: a transient failure (throttling, 5xx, network, after
    /// the client's retries) is retried later; a permanent one (Graph refused the request, the
    /// credentials are wrong) will not improve by waiting and is dead-lettered with the reason,
    /// ready for a replay once the cause is fixed.
    fn graph(observable: &Observable, error: &GraphError) -> Self {
        Failure::graph_side(
            error.is_transient(),
            format!("Graph, for {observable}: {error}"),
        )
    }

    /// A failure on Graph's side (a request, or a chaining walk), as Graph's client classified
    /// it.
    fn graph_side(transient: bool, reason: String) -> Self {
        Failure {
            retryable: transient,
            service: Dependency::Graph,
            service_may_be_down: transient,
            reason,
        }
    }

    /// Transient or not, a failed read or write means nothing was committed: the message must
    /// survive, so it is retried. Only a failure of the database or the connection may mean
    /// Postgres is down for everybody.
    fn store(error: StoreError) -> Self {
        Failure {
            retryable: true,
            service: Dependency::Postgres,
            service_may_be_down: error.is_transient(),
            reason: format!("Postgres: {error}"),
        }
    }
}

/// The code of a message Graph refused for good (400, 403, wrong credentials).
const GRAPH_REFUSED: &str = "graph_refused";

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(1000)]).into_owned()
}
