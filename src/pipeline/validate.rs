//! Which items of a message can be worked on: a known kind, known enrichers, a value that
//! normalises. The others become skipped runs or rejections.

use std::time::Duration;

use super::{Incoming, Pipeline};
use crate::enrich::EnricherKind;
use crate::message::{Item, ObservableRequest};
use crate::observable::{self, Normalised, Observable, ObservableKind};
use crate::store::{RejectedInput, RunRecord, RunStatus};

/// An item that passed validation, with what to run for it.
pub(super) struct Work {
    pub request: ObservableRequest,
    pub observable: Observable,
    pub enrichers: Vec<EnricherKind>,
    /// Passive DNS hops to chain, `None` when this item does not chain.
    pub chain_depth: Option<u32>,
}

pub(super) enum Validated {
    Work(Box<Work>),
    Skipped(Box<RunRecord>),
    Rejected(Box<RejectedInput>),
}

impl Validated {
    fn rejected(rejected: RejectedInput) -> Self {
        Validated::Rejected(Box::new(rejected))
    }
}

impl Incoming<'_> {
    /// Item `index` of this delivery, refused with `code`.
    pub(super) fn rejection(
        &self,
        index: usize,
        input: &str,
        code: &str,
        reason: String,
    ) -> RejectedInput {
        let index = i32::try_from(index).unwrap_or(i32::MAX);
        RejectedInput::new(
            self.message_id,
            index,
            input,
            code,
            reason,
            self.attempt,
            self.lane,
        )
    }

    /// The request's item, refused with `code`, with the origin the request gave.
    fn refuse(&self, request: &ObservableRequest, code: &str, reason: String) -> Validated {
        let rejected = self
            .rejection(request.index, &request.value, code, reason)
            .with_origin(request.source.clone(), request.context.clone());
        Validated::rejected(rejected)
    }
}

impl Pipeline {
    pub(super) fn validate(&self, message: &Incoming<'_>, item: Item) -> Validated {
        let request = match item {
            Item::Request(request) => request,
            Item::Invalid {
                index,
                input,
                code,
                reason,
            } => return Validated::rejected(message.rejection(index, &input, code, reason)),
        };
        let declared = match declared_kind(&request) {
            Ok(declared) => declared,
            Err((code, reason)) => return message.refuse(&request, code, reason),
        };
        let enrichers = match self.enrichers_of(&request) {
            Ok(enrichers) => enrichers,
            Err((code, reason)) => return message.refuse(&request, code, reason),
        };
        match observable::normalise(&request.value, declared, &self.settings.normalise) {
            Ok(Normalised::Ready(observable)) => Validated::Work(Box::new(Work {
                chain_depth: self.chain_depth(&request),
                request,
                observable,
                enrichers,
            })),
            Ok(Normalised::Skipped { observable, reason }) => Validated::Skipped(Box::new(
                skipped_run(message, request, observable, enrichers, reason),
            )),
            Err(error) => message.refuse(&request, error.code(), error.to_string()),
        }
    }

    /// The enrichers the item asks for, each once, or the default set when it names none.
    fn enrichers_of(
        &self,
        request: &ObservableRequest,
    ) -> Result<Vec<EnricherKind>, (&'static str, String)> {
        let Some(names) = &request.enrichers else {
            return Ok(self.settings.default_enrichers.clone());
        };
        let mut kinds = Vec::new();
        for name in names {
            let kind = name
                .parse::<EnricherKind>()
                .map_err(|error| ("unknown_enricher", error))?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            let reason = "`enrichers` is an empty list; leave it out to run the default set";
            return Err(("no_enrichers", reason.into()));
        }
        Ok(kinds)
    }

    /// How many passive DNS hops to chain from the item, `None` when it does not chain: the
    /// item's say, else the worker's default (an item that gives a depth chains).
    fn chain_depth(&self, request: &ObservableRequest) -> Option<u32> {
        let chain = &request.chain;
        chain
            .enabled
            .unwrap_or(self.settings.chain_by_default || chain.depth.is_some())
            .then(|| chain.depth.unwrap_or(self.settings.chain.depth))
    }
}

/// The kind the item declares, if it declares one.
fn declared_kind(
    request: &ObservableRequest,
) -> Result<Option<ObservableKind>, (&'static str, String)> {
    match request.kind.as_deref() {
        None => Ok(None),
        Some(text) => text
            .parse::<ObservableKind>()
            .map(Some)
            .map_err(|error| ("unknown_kind", error.to_string())),
    }
}

/// The run of an item normalisation skipped (a private address, say), with why.
fn skipped_run(
    message: &Incoming<'_>,
    request: ObservableRequest,
    observable: Observable,
    enrichers: Vec<EnricherKind>,
    reason: String,
) -> RunRecord {
    RunRecord {
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
    }
}
