//! Queue-driven enrichment of observables with Microsoft Defender Threat Intelligence.
//!
//! The flow, and the module that owns each step:
//!
//! - [`observable`]: parse, refang and canonicalise what feeds send (IPv4, IPv6, domains, hosts).
//! - [`graph`]: the Microsoft Graph threat intelligence client: token cache, one shared rate
//!   limiter, the single retry classifier, paging.
//! - [`enrich`]: the enrichers (whois, passive DNS, host, host pairs, subdomains, reputation) and the
//!   mapping of Graph records to indicators and extracts.
//! - [`lane`]: live and bulk work, each with its own queue, consumer and priority for quota.
//! - [`in_flight`]: work in flight in the process, followed by whoever needs the same thing
//!   meanwhile (a counterpart's reputation, a repeated observable's enrichment).
//! - [`outbox`]: announcing actor hits on the events exchange from the rows that hold them, at
//!   least once whatever fails between a message's commit and the broker's confirm.
//! - [`fleet`]: several workers sharing one tenant's Graph quota through leases in Postgres.
//! - [`progress`]: whether the worker gets anywhere, and what each message in flight waits on.
//! - [`ops`]: the worker's `/metrics`, `/healthz` and `/readyz` listener, reading the counters
//!   the work keeps; [`metrics`] holds the histogram and the Prometheus text format.
//! - [`status`]: what waits in each lane and when it will be through, from the broker and
//!   Postgres.
//! - [`app`]: a worker built from its settings and run, the same way for every entry point.
//! - [`cli`]: the commands, one module each.
//! - [`sim`]: a Graph simulator that serves the documented shapes and misbehaves like Graph does.
//!
//! `graph` knows no broker and no database, `enrich` knows no broker, `observable` depends on
//! nothing of the crate: the pipeline is where they meet.

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
pub mod fleet;
pub mod graph;
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
pub mod sim;
pub mod status;
pub mod store;

// `publish`'s line parsing and confirmed batches are also for feeds that publish from Rust.
pub use cli::publish;
