//! `enrich`: observables enriched (or chained) now and the mapped result printed; no broker,
//! no database.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::bail;
use clap::Args;

use super::common::OutputFormat;
use crate::app;
use crate::chain::{ChainSettings, Chainer};
use crate::config::{EnricherList, GraphArgs};
use crate::enrich;
use crate::graph::GraphClient;
use crate::model::{MemoryCache, WalkCache};
use crate::observable::{self, NormaliseOptions, Normalised, Observable, ObservableKind};

#[derive(Args, Debug)]
pub struct EnrichCmd {
    /// Observables (IPv4, IPv6, domains, hosts; defanged forms are fine)
    #[arg(required = true)]
    pub observables: Vec<String>,
    /// Kind of every observable given (auto-detected when absent)
    #[arg(long)]
    pub kind: Option<String>,
    /// Enrichers to run (comma-separated, or `all`)
    #[arg(long, default_value = "all")]
    pub enrichers: EnricherList,
    #[arg(long, value_enum, default_value = "json")]
    pub format: OutputFormat,
    /// Enrich private, loopback and reserved addresses and internal names too
    #[arg(long)]
    pub allow_non_public: bool,
    /// Use an in-process Graph simulator instead of Microsoft Graph
    #[arg(long)]
    pub simulator: bool,
    /// Chain instead of enriching: walk passive DNS, take the reputations, print the actors
    /// with the domains and IPs that link them
    #[arg(long)]
    pub chain: bool,
    /// Passive DNS hops of the walk
    #[arg(long, default_value_t = 1)]
    pub chain_depth: u32,
    #[command(flatten)]
    pub graph: GraphArgs,
}

pub async fn run(mut cmd: EnrichCmd) -> anyhow::Result<i32> {
    let Some(observables) = ready_observables(&cmd)? else {
        return Ok(2);
    };
    if !cmd.simulator && !cmd.graph.has_credentials() {
        bail!(
            "no Graph credentials: set MDTI_TENANT_ID, MDTI_CLIENT_ID and MDTI_CLIENT_SECRET (or MDTI_CLIENT_SECRET_FILE), or pass --simulator"
        );
    }
    let (graph, _sim) = app::graph_client(&mut cmd.graph, cmd.simulator).await?;
    if cmd.chain {
        return chain(&cmd, graph, &observables).await;
    }
    let limits = cmd.graph.page_limits();
    let mut results = Vec::new();
    for observable in &observables {
        results.push(enrich::enrich(&graph, observable, &cmd.enrichers.0, limits).await?);
    }
    match cmd.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&results)?),
        OutputFormat::Table => print!(
            "{}",
            enrich::table::table(&results, std::io::stdout().is_terminal())
        ),
    }
    Ok(0)
}

/// The observables given, normalised; the skipped ones are reported and left out. None when
/// any is invalid (each reported).
fn ready_observables(cmd: &EnrichCmd) -> anyhow::Result<Option<Vec<Observable>>> {
    let options = NormaliseOptions {
        allow_non_public: cmd.allow_non_public,
    };
    let declared = match cmd.kind.as_deref().map(str::parse::<ObservableKind>) {
        None => None,
        Some(Ok(kind)) => Some(kind),
        Some(Err(error)) => bail!("--kind: {error}"),
    };
    let mut observables = Vec::new();
    let mut invalid = 0;
    for raw in &cmd.observables {
        match observable::normalise(raw, declared, &options) {
            Ok(Normalised::Ready(observable)) => observables.push(observable),
            Ok(Normalised::Skipped { observable, reason }) => {
                eprintln!("skipped {observable}: {reason} (use --allow-non-public to enrich it)");
            }
            Err(error) => {
                eprintln!(
                    "invalid observable {:?}: {error}",
                    raw.chars().take(100).collect::<String>()
                );
                invalid += 1;
            }
        }
    }
    Ok((invalid == 0).then_some(observables))
}

/// `enrich --chain`: the seed's answer, actors with their linking domains and IPs. It needs no
/// database: reputations are cached in memory for the run, so observables that resolve to the
/// same infrastructure ask Graph once; with no synced profile index, attribution comes from the
/// reputation rules (the worker also matches intel profile indicators).
async fn chain(
    cmd: &EnrichCmd,
    graph: GraphClient,
    observables: &[Observable],
) -> anyhow::Result<i32> {
    let settings = ChainSettings {
        depth: cmd.chain_depth,
        ..ChainSettings::default()
    };
    let cache: Arc<dyn WalkCache> = Arc::new(MemoryCache::default());
    let chainer = Chainer::new(graph, Some(cache), settings);
    let mut reports = Vec::new();
    for observable in observables {
        reports.push(chainer.walk(observable).await?);
    }
    match cmd.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        OutputFormat::Table => {
            for report in &reports {
                println!("{report}");
            }
        }
    }
    Ok(0)
}
