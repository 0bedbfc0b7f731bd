//! What several commands share: reading the store, `--since`, the output format, and the
//! signal that ends a long-running command.

use chrono::{DateTime, Utc};
use clap::ValueEnum;

use crate::config::DatabaseArgs;
use crate::service::FIRST_ANSWER_WITHIN;
use crate::store::Store;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Json,
    Table,
}

/// `--since`, read when the command line is: relative to the moment the command started.
pub fn since_arg(text: &str) -> Result<DateTime<Utc>, String> {
    crate::export::parse_since(text, Utc::now())
}

/// A store for reading what the worker wrote: one connection, no migrations. Postgres missing
/// is said at once (see [`Store::open`]).
pub async fn read_store(database: &DatabaseArgs) -> anyhow::Result<Store> {
    let url = database.database_url.expose();
    Ok(Store::open(url, 1, FIRST_ANSWER_WITHIN).await?)
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
