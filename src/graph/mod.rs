//! Microsoft Graph threat intelligence (`/security/threatIntelligence`) client.
//!
//! [`GraphClient`] owns the token cache ([`auth`]), the process-wide budget ([`throttle`], its rate
//! learnt from Graph's 429s by [`adaptive`]) and the
//! request loop; [`retry`] is the single place that classifies answers; [`body`] reads answers
//! up to a cap; `tls` decides whom `--ca-cert` trusts; [`model`] holds tolerant serde types.
//! This module knows no broker and no database.

pub mod adaptive;
pub mod auth;
pub mod body;
pub mod client;
pub mod model;
pub mod path;
pub mod retry;
pub mod throttle;
mod tls;

pub use client::{Collection, GraphClient, GraphSettings, GraphStats, PageLimits};

/// Why a Graph call failed after the client did what it could.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("Graph {endpoint} gave up after {attempts} attempt(s): {reason}")]
    GaveUp {
        endpoint: &'static str,
        attempts: u32,
        reason: String,
        /// Whether the last failure was of a kind that may pass (throttling, 5xx, network).
        transient: bool,
    },
    #[error("Graph token request failed: {reason}")]
    Token { transient: bool, reason: String },
    #[error("refusing to follow an @odata.nextLink outside the configured Graph base URL")]
    ForeignNextLink,
    #[error("Graph client configuration: {0}")]
    Config(String),
}

impl GraphError {
    /// Whether trying the same work later may succeed. The worker turns this into a delayed
    /// retry; everything else is permanent for the message.
    pub fn is_transient(&self) -> bool {
        match self {
            GraphError::GaveUp { transient, .. } | GraphError::Token { transient, .. } => {
                *transient
            }
            GraphError::ForeignNextLink | GraphError::Config(_) => false,
        }
    }
}
