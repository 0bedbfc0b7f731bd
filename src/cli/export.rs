//! `export`: flagged observables and actor hits as a STIX 2.1 bundle, JSON lines or CSV.

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;

use super::common::{read_store, since_arg};
use crate::config::DatabaseArgs;

#[derive(Args, Debug)]
pub struct ExportCmd {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[arg(long, value_enum, default_value = "stix")]
    pub format: crate::export::ExportFormat,
    /// Only what was active since: a duration back from now (7d, 24h) or an RFC 3339 time
    #[arg(long, value_parser = since_arg)]
    pub since: Option<DateTime<Utc>>,
    /// Only hits of this actor (its name or an alias, case-insensitive)
    #[arg(long)]
    pub actor: Option<String>,
    /// Write here instead of standard output (`-`: standard output)
    #[arg(long, default_value = "-")]
    pub output: PathBuf,
}

pub async fn run(cmd: ExportCmd) -> anyhow::Result<i32> {
    let filter = crate::export::ExportFilter {
        since: cmd.since,
        actor: cmd.actor,
    };
    let store = read_store(&cmd.database).await?;
    let rows = store.export_rows(&filter).await?;
    let text = crate::export::render(&rows, cmd.format);
    if cmd.output.as_os_str() == "-" {
        use std::io::Write;
        std::io::stdout().write_all(text.as_bytes())?;
    } else {
        std::fs::write(&cmd.output, text)
            .with_context(|| format!("writing {}", cmd.output.display()))?;
        eprintln!("{} row(s) exported to {}", rows.len(), cmd.output.display());
    }
    Ok(0)
}
