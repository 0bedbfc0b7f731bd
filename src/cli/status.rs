//! `status`: what waits in each lane and when it will be through, per source.

use std::time::Duration;

use clap::Args;

use crate::config::{parse_duration, BrokerArgs, DatabaseArgs};
use crate::lane::Lane;
use crate::status::{connect_store, gather};

#[derive(Args, Debug)]
pub struct StatusCmd {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub args: StatusArgs,
}

/// Command-line arguments of `status` (the broker and database flags come beside them).
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Print JSON instead of tables (a stable document, described in src/status.rs)
    #[arg(long)]
    pub json: bool,
    /// How far back rates and observables per message are measured, and what "recent" counts
    #[arg(long, default_value = "5m", value_parser = window_arg)]
    pub window: Duration,
}

fn window_arg(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        window if window.is_zero() => Err("the window must be longer than zero".into()),
        window => Ok(window),
    }
}

/// Gather, print, and return the exit code (0 when at least one part could be gathered).
pub async fn run(cmd: StatusCmd) -> anyhow::Result<i32> {
    let store = connect_store(&cmd.database.database_url).await;
    let status = gather(
        &cmd.broker.topology(),
        cmd.broker.amqp_url.expose(),
        store.as_ref().map_err(Clone::clone),
        &Lane::ALL,
        cmd.args.window,
    )
    .await;
    if cmd.args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{status}");
    }
    if let Ok(store) = store {
        store.close().await;
    }
    let nothing = status.broker_error.is_some() && status.database_error.is_some();
    Ok(if nothing { 1 } else { 0 })
}
