//! `publish --taxii API_ROOT --collection ID`: what a TAXII 2.1 collection added since the last
//! run, published as the objects of a STIX bundle would be (see [`crate::feeds`]).
//!
//! The collection's cursor lives in Postgres (`taxii_cursors`), so Postgres is required here,
//! unlike for files. Each pull is published in full before its cursor advances: a run that
//! fails to publish (the broker, a confirm) leaves the cursor where it was and the next run
//! pulls the same objects again. Objects rejected or skipped with a reason do not hold the
//! cursor back: pulling them again would give the same answer.

use std::io::BufRead;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use super::publish::{run, PublishOptions, PublishSummary};
use crate::feeds::InputFormat;
use crate::queue::Publisher;
use crate::store::Store;
use crate::taxii::{Client, Collection, Credentials, Cursor, Limits};

/// How long the first connection to Postgres may take before the command says so.
const DATABASE_LIMIT: Duration = Duration::from_secs(5);

/// Pulls of one run at most: each is bounded by [`Limits`], and a server that keeps saying
/// "more" cannot keep the command going for ever.
const MAX_PULLS: usize = 1_000;

/// Where to pull from.
pub struct TaxiiSource<'a> {
    pub api_root: &'a str,
    pub collection: &'a str,
    pub database_url: &'a str,
}

/// Pull and publish until the collection has nothing newer; returns the summary of every pull
/// added up, and says on stderr where each pull left the cursor.
pub async fn pull_and_publish(
    source: TaxiiSource<'_>,
    mut options: PublishOptions,
    publisher: &Publisher,
) -> anyhow::Result<PublishSummary> {
    options.format = InputFormat::Stix;
    let collection = Collection::new(source.api_root, source.collection)?;
    let client = Client::new(Credentials::from_env()?, Limits::default())?;
    let store = Store::open(source.database_url, 2, DATABASE_LIMIT).await?;
    let mut total = PublishSummary::default();
    let mut cursor = store.taxii_cursor(&collection).await?;
    for _ in 0..MAX_PULLS {
        let pull = client.pull(&collection, cursor.as_ref()).await?;
        let name = format!("{} collection {}", collection.api_root(), collection.id());
        let summary = run(
            options.clone(),
            publisher,
            vec![bundle(pull.objects)],
            vec![name],
        )
        .await?;
        let published_all = summary.not_published == 0 && summary.errors.is_empty();
        total.add(summary);
        if !published_all {
            eprintln!(
                "the cursor stays at {}: not everything was published",
                shown(cursor.as_ref())
            );
            break;
        }
        let Some(added_after) = pull.added_after else {
            break;
        };
        let moved = cursor.as_ref() != Some(&added_after);
        if moved {
            store
                .advance_taxii_cursor(&collection, &added_after)
                .await
                .context("advancing the TAXII cursor")?;
        }
        eprintln!("TAXII cursor at {}", added_after.as_str());
        cursor = Some(added_after);
        if !pull.more || !moved {
            break;
        }
    }
    store.close().await;
    Ok(total)
}

fn shown(cursor: Option<&Cursor>) -> String {
    cursor.map_or_else(|| "the start".to_owned(), |c| c.as_str().to_owned())
}

/// The pulled objects as the STIX reader reads a file.
fn bundle(objects: Vec<serde_json::Value>) -> Box<dyn BufRead + Send> {
    let document = json!({"type": "bundle", "id": "bundle--taxii-pull", "objects": objects});
    Box::new(std::io::Cursor::new(document.to_string().into_bytes()))
}
