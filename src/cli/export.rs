//! `export`: flagged observables and actor hits as a STIX 2.1 bundle, JSON lines or CSV.

use std::path::PathBuf;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Args;

use super::common::{read_store, since_arg};
use crate::config::DatabaseArgs;
use crate::export::{stix, ExportFormat, ExportRow};
use crate::taxii::{Client, Collection, Credentials, Limits};

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
    #[arg(long, default_value = "-", conflicts_with = "taxii")]
    pub output: PathBuf,
    /// Add the STIX bundle's objects to a TAXII 2.1 collection at this API root instead of
    /// writing them (basic auth from MDTI_TAXII_USER and MDTI_TAXII_PASSWORD)
    #[arg(long, value_name = "API_ROOT", requires = "collection")]
    pub taxii: Option<String>,
    /// The collection of --taxii (its id)
    #[arg(long, value_name = "ID", requires = "taxii")]
    pub collection: Option<String>,
}

pub async fn run(cmd: ExportCmd) -> anyhow::Result<i32> {
    let filter = crate::export::ExportFilter {
        since: cmd.since,
        actor: cmd.actor,
    };
    if cmd.taxii.is_some() && cmd.format != ExportFormat::Stix {
        bail!("--taxii adds STIX objects: leave --format at stix");
    }
    let store = read_store(&cmd.database).await?;
    let rows = store.export_rows(&filter).await?;
    if let (Some(api_root), Some(collection)) = (&cmd.taxii, &cmd.collection) {
        return add_to_collection(&rows, api_root, collection).await;
    }
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

/// The bundle's objects posted to the collection; exit 1 when the server refused any.
async fn add_to_collection(rows: &[ExportRow], api_root: &str, id: &str) -> anyhow::Result<i32> {
    let collection = Collection::new(api_root, id)?;
    let client = Client::new(Credentials::from_env()?, Limits::default())?;
    let bundle = stix::bundle(rows);
    let objects = bundle["objects"].as_array().map_or(&[][..], Vec::as_slice);
    let added = client.add(&collection, objects).await?;
    for failure in &added.failures {
        eprintln!("refused {failure}");
    }
    eprintln!(
        "{} row(s) exported as {} STIX object(s) to collection {} at {}: {} added, {} refused, {} pending",
        rows.len(),
        objects.len(),
        collection.id(),
        collection.api_root(),
        added.success,
        added.failure,
        added.pending
    );
    for status in &added.pending_statuses {
        eprintln!("pending: the server's status {status} says how it ends");
    }
    Ok(i32::from(added.failure > 0))
}
