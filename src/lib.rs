//! Queue-driven enrichment of observables with Microsoft Defender Threat Intelligence.
//!
//! A delivery goes [`consumer`] → [`pipeline`] ([`message`] decoded, [`enrich`]ers asking
//! [`graph`], [`chain`] walking passive DNS to actor hits) → [`store`] (one transaction) →
//! `decide` in `pipeline/outcome.rs` (the one decision: ack, retry, dead letter, hand back) →
//! [`consumer`] (carried out); [`outbox`] announces the hits. [`app`] starts a worker the same
//! way for every entry point; [`cli`] holds the commands, one file each.
//!
//! ARCHITECTURE.md gives every module's layer (each uses only lower ones, as `tests/layers.rs`
//! checks), a message's path, and how to add an enricher or a command.

// A function longer than clippy.toml's limit is split where its steps are (CI denies warnings).
#![warn(clippy::too_many_lines)]

pub mod app;
pub mod backoff;
pub mod bench;
pub mod chain;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod demo;
pub mod enrich;
pub mod export;
pub mod failpoint;
pub mod feeds;
pub mod fleet;
pub mod graph;
pub mod http_body;
pub mod in_flight;
pub mod lane;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod model;
pub mod observable;
pub mod ops;
pub mod outbox;
pub mod pipeline;
pub mod progress;
pub mod queue;
pub mod secret;
pub mod service;
pub mod setting;
pub mod sim;
pub mod status;
pub mod store;
pub mod taxii;
pub mod terminal;

// `publish`'s parsing and confirmed batches are also for feeds that publish from Rust.
pub use cli::publish;
