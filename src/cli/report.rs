//! `report`: what the worker did over a window.

use chrono::{DateTime, Utc};
use clap::Args;

use super::common::{read_store, since_arg, OutputFormat};
use crate::config::DatabaseArgs;

#[derive(Args, Debug)]
pub struct ReportCmd {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The window: a duration back from now (7d, 24h) or an RFC 3339 time
    #[arg(long, default_value = "7d", value_parser = since_arg)]
    pub since: DateTime<Utc>,
    /// Actors and recent hits shown, at most
    #[arg(long, default_value_t = 10)]
    pub top: u32,
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

pub async fn run(cmd: ReportCmd) -> anyhow::Result<i32> {
    let store = read_store(&cmd.database).await?;
    let report = store.report(cmd.since, i64::from(cmd.top)).await?;
    match cmd.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Table => print!("{report}"),
    }
    Ok(0)
}
