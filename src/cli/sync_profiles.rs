//! `sync-profiles`: intel profiles and their indicators synced from Graph into Postgres now.

use clap::Args;

use crate::app;
use crate::chain::retro::sync_and_match;
use crate::chain::ChainSettings;
use crate::config::{DatabaseArgs, GraphArgs};

#[derive(Args, Debug)]
pub struct SyncProfilesCmd {
    #[command(flatten)]
    pub graph: GraphArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Use an in-process Graph simulator instead of Microsoft Graph
    #[arg(long)]
    pub simulator: bool,
}

pub async fn run(mut cmd: SyncProfilesCmd) -> anyhow::Result<i32> {
    let (graph, _sim) = app::graph_client(&mut cmd.graph, cmd.simulator).await?;
    let store = app::migrate(&cmd.database).await?;
    let settings = ChainSettings::default();
    let (summary, _, retro) = sync_and_match(&graph, &store, &settings).await?;
    println!("{summary:#?}\n{retro:#?}");
    Ok(0)
}
