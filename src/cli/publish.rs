//! The `publish [FILE…]` command, library part: read observables from files or stdin, validate
//! them locally, drop duplicates, and publish the rest in confirmed batches to a lane's exchange
//! ([`LaneChoice`]: by default what comes on stdin is live work, a file is a bulk backfill).
//!
//! The input formats ([`InputFormat`]: lines, csv, jsonl, stix, misp) are read by
//! [`crate::feeds`], which hands over each value a feed holds with where it was and the context
//! that traces it back, or the entry it could not use and why. Each value is normalised with
//! [`crate::observable::normalise`]; a rejected one is reported with its file, position (line,
//! CSV record, STIX or MISP object) and reason. Exact duplicates (after normalisation, over all
//! inputs) are dropped and counted: the first one's context is kept. Accepted observables are
//! sent as JSON arrays of `{"value": <canonical>, "kind": <kind>, "source": <source>,
//! "context": <context>}` (`source` and `context` when there are any; at most `batch_size` per
//! message, and never more bytes than the worker accepts), each with a fresh UUID v4 message
//! id, with publisher confirms: nothing counts as published until the broker confirmed it.
//!
//! The invariant of [`PublishSummary`]: `read = published + not_published + rejected + skipped +
//! duplicates`. What was skipped is counted by reason too (`skipped 1 indicator: pattern uses
//! AND`, `skipped 2 observables: private address (10.0.0.0/8)`).
//!
//! After publishing, [`command`] records what it sent in the `publications` ledger (when
//! Postgres answers; the publish stands either way), which `status` reads to say what is left
//! of a source, and ends with the estimate `status` gives for the lane.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::BufRead;
use std::str::FromStr;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::publish_taxii::{pull_and_publish, TaxiiSource};
use crate::feeds::{self, Entry, FeedOptions, Flow, Position, Record};
use crate::lane::Lane;
use crate::observable::{normalise, NormaliseOptions, Normalised, Observable, ObservableKind};
use crate::queue::message::DecodeLimits;
use crate::queue::{truncate_chars, PublishError, Publisher};
use crate::terminal::Progress;

pub use crate::feeds::{CsvColumn, InputFormat, MAX_LINE_BYTES};

/// Default observables per message.
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// Messages published before waiting for their confirms.
const MESSAGES_IN_FLIGHT: usize = 8;
/// Distinct skip reasons the summary counts apart; the rest are counted together.
const MAX_SKIP_REASONS: usize = 50;
pub use crate::queue::DEFAULT_ROUTING_KEY;

/// Which lane `publish` sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LaneChoice {
    /// Stdin alone is live work (someone or something piping in what it wants now); anything
    /// read from a file, alone or with stdin, is bulk (a backfill of a list).
    #[default]
    Auto,
    Live,
    Bulk,
}

impl FromStr for LaneChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(LaneChoice::Auto),
            other => other
                .parse::<Lane>()
                .map(LaneChoice::from)
                .map_err(|_| format!("unknown lane {other:?}: expected live, bulk or auto")),
        }
    }
}

impl From<Lane> for LaneChoice {
    fn from(lane: Lane) -> Self {
        match lane {
            Lane::Live => LaneChoice::Live,
            Lane::Bulk => LaneChoice::Bulk,
        }
    }
}

impl LaneChoice {
    /// The lane for these inputs (`-` is stdin; none at all means stdin too).
    pub fn resolve(self, files: &[std::path::PathBuf]) -> Lane {
        match self {
            LaneChoice::Live => Lane::Live,
            LaneChoice::Bulk => Lane::Bulk,
            LaneChoice::Auto if files.iter().all(|file| file.as_os_str() == "-") => Lane::Live,
            LaneChoice::Auto => Lane::Bulk,
        }
    }
}

/// Options of the `publish` command.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub format: InputFormat,
    /// Only used with [`InputFormat::Csv`].
    pub csv_column: CsvColumn,
    /// Only used with [`InputFormat::Csv`] (default `,`).
    pub csv_delimiter: u8,
    /// Only used with [`InputFormat::Misp`]: skip attributes whose `to_ids` is not true.
    pub misp_to_ids_only: bool,
    /// Declared kind for every value whose feed declares none (a JSON line's own `kind`, a STIX
    /// `ipv4-addr`, a MISP `hostname` win).
    pub kind: Option<ObservableKind>,
    /// Written into every item as `source`, and used as the routing key.
    pub source: Option<String>,
    /// Observables per message, 1 ..= [`DecodeLimits::max_items`] (default 500).
    pub batch_size: usize,
    /// Draw progress on stderr when it is a terminal; `false` never draws.
    pub progress: bool,
    /// Report each rejected entry on stderr (default true).
    pub report_lines: bool,
    /// Report each skipped entry (valid but not public, e.g. a private address; an indicator
    /// whose pattern is not read) on stderr too (default false: feeds often hold many).
    pub report_skipped: bool,
    /// The lane the messages go to (default bulk, the lane of publishers that know no lanes).
    pub lane: Lane,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            format: InputFormat::Lines,
            csv_column: CsvColumn::default(),
            csv_delimiter: b',',
            misp_to_ids_only: false,
            kind: None,
            source: None,
            batch_size: DEFAULT_BATCH_SIZE,
            progress: true,
            report_lines: true,
            report_skipped: false,
            lane: Lane::Bulk,
        }
    }
}

impl PublishOptions {
    /// What the format readers need.
    fn feed_options(&self) -> FeedOptions {
        FeedOptions {
            format: self.format,
            csv_column: self.csv_column.clone(),
            csv_delimiter: self.csv_delimiter,
            misp_to_ids_only: self.misp_to_ids_only,
        }
    }
}

/// An entry that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub file: String,
    /// The 1-based line, CSV record or object number (`position` says which).
    pub line: usize,
    pub position: Position,
    /// The entry, truncated.
    pub input: String,
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.position {
            Position::Line(number) => write!(f, "{}:{number}: {}", self.file, self.reason)?,
            other => write!(f, "{}: {other}: {}", self.file, self.reason)?,
        }
        if !self.reason.contains(&self.input) {
            write!(f, " (input: {:?})", self.input)?;
        }
        Ok(())
    }
}

/// An entry deliberately not published: a valid observable that normalisation decided not to
/// enrich, or an entry the format reader passed over (an indicator whose pattern says more than
/// a list of values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEntry {
    pub file: String,
    pub position: Position,
    /// The observable, when normalisation skipped it.
    pub observable: Option<Observable>,
    /// What was skipped, for the summary: `observable`, `indicator`, `attribute`.
    pub what: &'static str,
    pub reason: String,
}

impl fmt::Display for SkippedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: skipped ", self.file, self.position)?;
        match &self.observable {
            Some(observable) => write!(f, "{}", observable.value())?,
            None => write!(f, "{}", self.what)?,
        }
        write!(f, ": {}", self.reason)
    }
}

/// What [`parse_lines`] found in one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedInput {
    /// Accepted observables, first occurrences only, in input order.
    pub observables: Vec<Observable>,
    pub rejected: Vec<Rejection>,
    pub skipped: Vec<SkippedEntry>,
    /// Exact duplicates dropped (of this input or of anything in `seen` before).
    pub duplicates: usize,
    /// Entries that held an observable (not blank, not a comment, not the CSV header).
    pub read: usize,
    /// Why the input was not read to its end (I/O error, missing CSV column, not a document).
    pub error: Option<String>,
}

/// Parse and validate one input in `options.format` without a broker: what `publish` would
/// send, reject, skip and drop. `seen` carries the duplicates check across inputs.
pub fn parse_lines<R: BufRead>(
    mut reader: R,
    name: &str,
    options: &PublishOptions,
    seen: &mut HashSet<Observable>,
) -> ParsedInput {
    let mut out = ParsedInput::default();
    let normalise_options = NormaliseOptions::default();
    let result = feeds::read(&mut reader, &options.feed_options(), &mut |entry| {
        out.read += 1;
        match classify(name, entry, options.kind, &normalise_options, seen) {
            Outcome::Accepted(observable, _) => out.observables.push(observable),
            Outcome::Duplicate => out.duplicates += 1,
            Outcome::Skipped(skipped) => out.skipped.push(skipped),
            Outcome::Rejected(rejection) => out.rejected.push(rejection),
        }
        Flow::Continue
    });
    if let Err(error) = result {
        out.error = Some(format!("{name}: {error}"));
    }
    out
}

/// The result of a `publish` run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishSummary {
    /// Entries that held an observable.
    pub read: usize,
    /// Observables confirmed by the broker.
    pub published: usize,
    /// Messages confirmed by the broker.
    pub messages: usize,
    pub rejected: usize,
    pub skipped: usize,
    /// How many were skipped for each (what, reason), e.g. (`indicator`, `pattern uses AND`).
    pub skip_reasons: BTreeMap<(String, String), usize>,
    pub duplicates: usize,
    /// Accepted observables that were not confirmed (a failed batch, or the run stopped).
    pub not_published: usize,
    /// Failures that stopped an input or the run (I/O errors, missing CSV column, publish
    /// errors).
    pub errors: Vec<String>,
}

impl PublishSummary {
    /// Add up the summaries of several runs (the pulls of `publish --taxii`).
    pub fn add(&mut self, other: PublishSummary) {
        self.read += other.read;
        self.published += other.published;
        self.messages += other.messages;
        self.rejected += other.rejected;
        self.skipped += other.skipped;
        for (reason, count) in other.skip_reasons {
            *self.skip_reasons.entry(reason).or_default() += count;
        }
        self.duplicates += other.duplicates;
        self.not_published += other.not_published;
        self.errors.extend(other.errors);
    }

    /// Whether the command succeeded: nothing rejected, nothing left unpublished, no error.
    /// Skipped entries and duplicates are not failures.
    pub fn is_success(&self) -> bool {
        self.rejected == 0 && self.not_published == 0 && self.errors.is_empty()
    }

    /// Process exit code for the CLI: 0 on success, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.is_success() {
            0
        } else {
            1
        }
    }

    /// One more skipped entry, counted under its reason (past [`MAX_SKIP_REASONS`] distinct
    /// ones, under "other reasons": a hostile file cannot grow the summary without bound).
    fn count_skipped(&mut self, what: &str, reason: &str) {
        self.skipped += 1;
        let mut key = (what.to_string(), reason.to_string());
        if !self.skip_reasons.contains_key(&key) && self.skip_reasons.len() >= MAX_SKIP_REASONS {
            key.1 = "other reasons".to_string();
        }
        *self.skip_reasons.entry(key).or_default() += 1;
    }
}

impl fmt::Display for PublishSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "read {}, published {} in {} message(s), rejected {}, skipped {}, duplicates {}",
            self.read, self.published, self.messages, self.rejected, self.skipped, self.duplicates
        )?;
        if self.not_published > 0 {
            write!(f, ", NOT published {}", self.not_published)?;
        }
        for ((what, reason), count) in &self.skip_reasons {
            let plural = if *count == 1 { "" } else { "s" };
            write!(f, "\nskipped {count} {what}{plural}: {reason}")?;
        }
        for error in &self.errors {
            write!(f, "\nerror: {error}")?;
        }
        Ok(())
    }
}

/// Run the `publish` command: read `inputs` (named by `names`, e.g. file names or `-`), report
/// rejected entries on stderr, publish with confirms through `publisher`, and return the summary
/// (also when something failed: see [`PublishSummary::is_success`]). An `Err` means the command
/// could not start (bad options).
///
/// Inputs are read on a separate thread, so blocking reads (stdin) do not stall the runtime.
/// The first publish failure stops the run: what was not confirmed counts as not published.
pub async fn run(
    options: PublishOptions,
    publisher: &Publisher,
    inputs: Vec<Box<dyn BufRead + Send>>,
    names: Vec<String>,
) -> anyhow::Result<PublishSummary> {
    let routing_key = check_run(&options, inputs.len(), names.len())?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<ReadEvent>(1024);
    let feed_options = options.feed_options();
    std::thread::Builder::new()
        .name("publish-reader".into())
        .spawn(move || read_inputs(inputs, feed_options, sender))
        .context("cannot start the input reader thread")?;
    let mut reading = Reading::new(&options, &names, routing_key);
    while let Some(event) = receiver.recv().await {
        reading.event(event);
        if reading.batches.ready_to_send() {
            if let Err(error) = reading.batches.send(publisher, &mut reading.summary).await {
                let error = format!("{error}; stopped, the rest of the input was not read");
                reading.error(error);
                break;
            }
        }
        reading.show_progress();
    }
    // Stops the reader thread if we left early (its next send fails).
    drop(receiver);
    Ok(reading.finish(publisher).await)
}

/// The options a run can start with; returns the routing key.
fn check_run(options: &PublishOptions, inputs: usize, names: usize) -> anyhow::Result<String> {
    let max_items = DecodeLimits::default().max_items;
    if options.batch_size == 0 || options.batch_size > max_items {
        bail!(
            "batch size must be between 1 and {max_items} (the worker's limit), got {}",
            options.batch_size
        );
    }
    if names != inputs {
        bail!("{inputs} input(s) but {names} name(s)");
    }
    let routing_key = options
        .source
        .clone()
        .unwrap_or_else(|| DEFAULT_ROUTING_KEY.to_string());
    if routing_key.len() > 255 {
        bail!("the source is used as routing key and must be at most 255 bytes");
    }
    Ok(routing_key)
}

/// A run's state as the reader's events come in: what was read, what waits to be sent.
struct Reading<'a> {
    options: &'a PublishOptions,
    names: &'a [String],
    normalise_options: NormaliseOptions,
    seen: HashSet<Observable>,
    batches: Batcher,
    summary: PublishSummary,
    progress: Progress,
}

impl<'a> Reading<'a> {
    fn new(options: &'a PublishOptions, names: &'a [String], routing_key: String) -> Self {
        Reading {
            options,
            names,
            normalise_options: NormaliseOptions::default(),
            seen: HashSet::new(),
            batches: Batcher::new(options, routing_key),
            summary: PublishSummary::default(),
            progress: Progress::counting(options.progress),
        }
    }

    fn event(&mut self, event: ReadEvent) {
        match event {
            ReadEvent::Entry { file, entry } => {
                let outcome = classify(
                    &self.names[file],
                    entry,
                    self.options.kind,
                    &self.normalise_options,
                    &mut self.seen,
                );
                self.count(outcome);
            }
            ReadEvent::Error { file, error } => {
                self.error(format!("{}: {error}", self.names[file]));
            }
        }
    }

    /// An entry's outcome counted, batched and reported as the options say.
    fn count(&mut self, outcome: Outcome) {
        let summary = &mut self.summary;
        summary.read += 1;
        match outcome {
            Outcome::Accepted(observable, context) => {
                self.batches.push(&observable, context.as_ref());
            }
            Outcome::Duplicate => summary.duplicates += 1,
            Outcome::Skipped(skipped) => {
                summary.count_skipped(skipped.what, &skipped.reason);
                if self.options.report_skipped {
                    self.progress.line(&skipped.to_string());
                }
            }
            Outcome::Rejected(rejection) => {
                summary.rejected += 1;
                if self.options.report_lines {
                    self.progress.line(&format!("rejected {rejection}"));
                }
            }
        }
    }

    fn show_progress(&mut self) {
        if self.progress.status_due() {
            let s = &self.summary;
            self.progress.status(format!(
                "read {}, published {}, rejected {}, skipped {}, duplicates {}",
                s.read, s.published, s.rejected, s.skipped, s.duplicates
            ));
        }
    }

    fn error(&mut self, error: String) {
        self.progress.line(&format!("error: {error}"));
        self.summary.errors.push(error);
    }

    /// The last batch sent unless a send failed before; what was not sent is counted.
    async fn finish(mut self, publisher: &Publisher) -> PublishSummary {
        if self.batches.sent_ok() {
            self.batches.close_current();
            if let Err(error) = self.batches.send(publisher, &mut self.summary).await {
                self.error(error);
            }
        }
        self.summary.not_published += self.batches.abandon();
        self.progress.finish();
        self.summary
    }
}

#[derive(clap::Args, Debug)]
pub struct PublishCmd {
    #[command(flatten)]
    pub broker: crate::config::BrokerArgs,
    /// Where the publication is recorded (optional: without it the publish still happens)
    #[command(flatten)]
    pub database: crate::config::DatabaseArgs,
    #[command(flatten)]
    pub options: PublishArgs,
}

/// Command-line arguments of `publish`.
#[derive(clap::Args, Debug, Clone)]
pub struct PublishArgs {
    /// Files to read (`-` is stdin); stdin when none
    pub files: Vec<std::path::PathBuf>,
    /// Input format: lines, csv, jsonl, stix (a STIX 2.1 bundle) or misp (a MISP event)
    #[arg(long, default_value = "lines")]
    pub format: InputFormat,
    /// CSV column holding the observable: a 1-based number (no header row) or a header name
    #[arg(long, default_value = "1")]
    pub csv_column: CsvColumn,
    /// CSV field delimiter: one ASCII character (`;`), or `\t` for a tab
    #[arg(long, default_value = ",", value_parser = feeds::parse_csv_delimiter)]
    pub csv_delimiter: u8,
    /// MISP: read only attributes whose to_ids is true (the others are skipped and counted)
    #[arg(long)]
    pub misp_to_ids_only: bool,
    /// Declared kind of every observable (ipv4, ipv6, domain, host); guessed when absent
    #[arg(long, value_parser = parse_kind)]
    pub kind: Option<ObservableKind>,
    /// Source name written into every item and used as routing key
    #[arg(long)]
    pub source: Option<String>,
    /// Observables per message
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Never draw the progress line (it is drawn only when stderr is a terminal anyway)
    #[arg(long)]
    pub no_progress: bool,
    /// Also list each skipped entry (valid but not public, or not read), not only rejected ones
    #[arg(long)]
    pub show_skipped: bool,
    /// Lane to publish to: live, bulk, or auto (the default: stdin alone goes to live, anything
    /// read from a file or pulled from TAXII to bulk)
    #[arg(long, default_value = "auto")]
    pub lane: LaneChoice,
    /// Pull from this TAXII 2.1 API root instead of reading files (basic auth from
    /// MDTI_TAXII_USER and MDTI_TAXII_PASSWORD); only what was added since the last pull
    #[arg(long, requires = "collection", conflicts_with = "files")]
    pub taxii: Option<String>,
    /// The TAXII collection id to pull
    #[arg(long, requires = "taxii")]
    pub collection: Option<String>,
}

fn parse_kind(text: &str) -> Result<ObservableKind, String> {
    ObservableKind::from_str(text).map_err(|e| e.to_string())
}

impl PublishArgs {
    pub fn options(&self) -> PublishOptions {
        PublishOptions {
            format: self.format,
            csv_column: self.csv_column.clone(),
            csv_delimiter: self.csv_delimiter,
            misp_to_ids_only: self.misp_to_ids_only,
            kind: self.kind,
            source: self.source.clone(),
            batch_size: self.batch_size,
            progress: !self.no_progress,
            report_lines: true,
            report_skipped: self.show_skipped,
            lane: match self.taxii {
                // A pull is a backfill of whatever the collection gathered.
                Some(_) if self.lane == LaneChoice::Auto => Lane::Bulk,
                _ => self.lane.resolve(&self.files),
            },
        }
    }
}

/// The whole `publish` command: open the inputs, connect, [`run`], print the summary on stderr,
/// record the publication in Postgres, end with the lane's estimate (see [`crate::status`]),
/// and return the process exit code (0 only when everything read was published or
/// deliberately skipped or a duplicate). Postgres is optional: when it does not answer within
/// a few seconds, one warning says the ledger was not updated and the publish stands.
pub async fn command(cmd: PublishCmd) -> anyhow::Result<i32> {
    let (topology, amqp_url) = (cmd.broker.topology(), cmd.broker.amqp_url);
    let (database_url, args) = (cmd.database.database_url, cmd.options);
    let options = args.options();
    // Files are opened before connecting: a missing file is the first thing to hear about.
    let inputs = match args.taxii {
        Some(_) => None,
        None => Some(open_inputs(&args.files)?),
    };
    let url = amqp_url.expose();
    let publisher = Publisher::connect(url, topology.clone()).await?;
    let summary = match (inputs, &args.taxii, &args.collection) {
        (Some((inputs, names)), _, _) => run(options.clone(), &publisher, inputs, names).await?,
        (None, Some(api_root), Some(collection)) => {
            let source = TaxiiSource {
                api_root,
                collection,
                database_url: database_url.expose(),
            };
            pull_and_publish(source, options.clone(), &publisher).await?
        }
        (None, _, _) => bail!("--taxii needs --collection"),
    };
    let _ = publisher.close().await;
    eprintln!("{summary}");

    let store = crate::status::connect_store(&database_url).await;
    if let Err(warning) = record_publication(&store, &options, &summary).await {
        eprintln!("warning: the publications ledger was not updated ({warning}); the publish itself stands");
    }
    let window = crate::status::DEFAULT_WINDOW;
    let database = store.as_ref().map_err(Clone::clone);
    let status = crate::status::gather(&topology, url, database, &[options.lane], window).await;
    for lane in &status.lanes {
        eprintln!("{}", crate::status::estimate_line(lane, window));
    }
    if let Ok(store) = store {
        store.close().await;
    }
    Ok(summary.exit_code())
}

/// Inputs to read, and the name of each.
type Inputs = (Vec<Box<dyn BufRead + Send>>, Vec<String>);

/// The inputs `files` name (`-` is stdin; none at all means stdin), with their names.
fn open_inputs(files: &[std::path::PathBuf]) -> anyhow::Result<Inputs> {
    let mut inputs: Vec<Box<dyn BufRead + Send>> = Vec::new();
    let mut names = Vec::new();
    if files.is_empty() {
        inputs.push(Box::new(std::io::BufReader::new(std::io::stdin())));
        names.push("<stdin>".to_string());
    }
    for path in files {
        if path.as_os_str() == "-" {
            inputs.push(Box::new(std::io::BufReader::new(std::io::stdin())));
            names.push("<stdin>".to_string());
        } else {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            inputs.push(Box::new(std::io::BufReader::new(file)));
            names.push(path.display().to_string());
        }
    }
    Ok((inputs, names))
}

/// One `publications` row for what this run had confirmed (none when it sent nothing: the
/// ledger is about what waits), under its source or the default routing key, bounded in time.
async fn record_publication(
    store: &Result<crate::store::Store, String>,
    options: &PublishOptions,
    summary: &PublishSummary,
) -> Result<(), String> {
    if summary.messages == 0 {
        return Ok(());
    }
    let store = store.as_ref().map_err(Clone::clone)?;
    let source = options.source.as_deref().unwrap_or(DEFAULT_ROUTING_KEY);
    let write = store.record_publication(
        source,
        options.lane,
        summary.published as u64,
        summary.messages as u64,
    );
    match tokio::time::timeout(crate::status::CONNECT_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("recording the publication: {error}")),
        Err(_) => Err("recording the publication took longer than 3 s".into()),
    }
}

/// What the reader thread hands over.
enum ReadEvent {
    Entry {
        file: usize,
        entry: Entry,
    },
    /// The rest of input `file` could not be read.
    Error {
        file: usize,
        error: String,
    },
}

/// Read every input in turn in the options' format, until the receiving side is gone.
fn read_inputs(
    inputs: Vec<Box<dyn BufRead + Send>>,
    options: FeedOptions,
    sender: tokio::sync::mpsc::Sender<ReadEvent>,
) {
    for (file, mut input) in inputs.into_iter().enumerate() {
        let mut gone = false;
        let result = feeds::read(&mut *input, &options, &mut |entry| {
            if sender
                .blocking_send(ReadEvent::Entry { file, entry })
                .is_ok()
            {
                Flow::Continue
            } else {
                gone = true;
                Flow::Stop
            }
        });
        if gone {
            return;
        }
        if let Err(error) = result {
            if sender
                .blocking_send(ReadEvent::Error { file, error })
                .is_err()
            {
                return;
            }
        }
    }
}

/// What became of an entry.
enum Outcome {
    /// To publish, with its context.
    Accepted(Observable, Option<Value>),
    Duplicate,
    Skipped(SkippedEntry),
    Rejected(Rejection),
}

/// What an entry of `file` amounts to: a record normalised (accepted the first time its value
/// is seen, a duplicate after), or the reader's own rejection or skip.
fn classify(
    file: &str,
    entry: Entry,
    kind: Option<ObservableKind>,
    options: &NormaliseOptions,
    seen: &mut HashSet<Observable>,
) -> Outcome {
    match entry {
        Entry::Record(record) => normalised(file, record, kind, options, seen),
        Entry::Rejected {
            position,
            input,
            reason,
        } => rejected(file, position, input, reason),
        Entry::Skipped {
            position,
            what,
            reason,
        } => Outcome::Skipped(SkippedEntry {
            file: file.to_string(),
            position,
            observable: None,
            what,
            reason,
        }),
    }
}

fn normalised(
    file: &str,
    record: Record,
    kind: Option<ObservableKind>,
    options: &NormaliseOptions,
    seen: &mut HashSet<Observable>,
) -> Outcome {
    match normalise(&record.value, record.kind.or(kind), options) {
        Err(invalid) => rejected(file, record.position, record.value, invalid.to_string()),
        Ok(Normalised::Skipped { observable, reason }) => Outcome::Skipped(SkippedEntry {
            file: file.to_string(),
            position: record.position,
            observable: Some(observable),
            what: "observable",
            reason,
        }),
        Ok(Normalised::Ready(observable)) => {
            if seen.contains(&observable) {
                Outcome::Duplicate
            } else {
                seen.insert(observable.clone());
                Outcome::Accepted(observable, record.context)
            }
        }
    }
}

/// An entry of `file` rejected, echoing at most [`feeds::ECHO_CHARS`] of its input.
fn rejected(file: &str, position: Position, input: String, reason: String) -> Outcome {
    Outcome::Rejected(Rejection {
        file: file.to_string(),
        line: position.number(),
        position,
        input: truncate_chars(&input, feeds::ECHO_CHARS),
        reason,
    })
}

/// Accumulates observables into messages and sends them a few at a time.
struct Batcher {
    batch_size: usize,
    max_body_bytes: usize,
    routing_key: String,
    source: Option<String>,
    lane: Lane,
    /// Items of the message being built, serialised.
    current: Vec<Vec<u8>>,
    current_bytes: usize,
    /// Closed messages not sent yet: (body, observable count).
    closed: Vec<(Vec<u8>, usize)>,
    any_failure: bool,
}

impl Batcher {
    fn new(options: &PublishOptions, routing_key: String) -> Self {
        Batcher {
            batch_size: options.batch_size,
            // Leave room for the brackets and commas, and some margin.
            max_body_bytes: DecodeLimits::default().max_body_bytes - 1024,
            routing_key,
            source: options.source.clone(),
            lane: options.lane,
            current: Vec::new(),
            current_bytes: 0,
            closed: Vec::new(),
            any_failure: false,
        }
    }

    fn push(&mut self, observable: &Observable, context: Option<&Value>) {
        let mut item = json!({
            "value": observable.value(),
            "kind": observable.kind(),
        });
        if let Some(source) = &self.source {
            item["source"] = Value::String(source.clone());
        }
        if let Some(context) = context {
            item["context"] = context.clone();
        }
        let item = serde_json::to_vec(&item).unwrap_or_default();
        if !self.current.is_empty() && self.current_bytes + item.len() + 1 > self.max_body_bytes {
            self.close_current();
        }
        self.current_bytes += item.len() + 1;
        self.current.push(item);
        if self.current.len() >= self.batch_size {
            self.close_current();
        }
    }

    fn close_current(&mut self) {
        if self.current.is_empty() {
            return;
        }
        let count = self.current.len();
        let mut body = Vec::with_capacity(self.current_bytes + 2);
        body.push(b'[');
        for (n, item) in self.current.drain(..).enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&item);
        }
        body.push(b']');
        self.current_bytes = 0;
        self.closed.push((body, count));
    }

    fn ready_to_send(&self) -> bool {
        self.closed.len() >= MESSAGES_IN_FLIGHT
    }

    fn sent_ok(&self) -> bool {
        !self.any_failure
    }

    /// Publish the closed messages and wait for their confirms.
    async fn send(
        &mut self,
        publisher: &Publisher,
        summary: &mut PublishSummary,
    ) -> Result<(), String> {
        if self.closed.is_empty() {
            return Ok(());
        }
        let messages = std::mem::take(&mut self.closed);
        let counts: Vec<usize> = messages.iter().map(|(_, count)| *count).collect();
        let items = messages
            .into_iter()
            .map(|(body, _)| {
                (
                    self.routing_key.clone(),
                    body,
                    "application/json".to_string(),
                    uuid::Uuid::new_v4().to_string(),
                )
            })
            .collect();
        match publisher.publish_batch_to(self.lane, items).await {
            Ok(_) => {
                summary.messages += counts.len();
                summary.published += counts.iter().sum::<usize>();
                Ok(())
            }
            Err(error) => {
                self.any_failure = true;
                let failed: Vec<usize> = match &error {
                    PublishError::Batch { failed, .. } => failed.iter().map(|f| f.index).collect(),
                    _ => (0..counts.len()).collect(),
                };
                for (index, count) in counts.iter().enumerate() {
                    if failed.contains(&index) {
                        summary.not_published += count;
                    } else {
                        summary.messages += 1;
                        summary.published += count;
                    }
                }
                Err(format!("publishing failed: {error}"))
            }
        }
    }

    /// Count what was never sent.
    fn abandon(&mut self) -> usize {
        let unsent = self.current.len() + self.closed.iter().map(|(_, count)| count).sum::<usize>();
        self.current.clear();
        self.current_bytes = 0;
        self.closed.clear();
        unsent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_alone_is_live_work_and_any_file_makes_it_bulk() {
        let files = |names: &[&str]| -> Vec<std::path::PathBuf> {
            names.iter().map(std::path::PathBuf::from).collect()
        };
        let auto = LaneChoice::default();
        assert_eq!(auto.resolve(&files(&[])), Lane::Live);
        assert_eq!(auto.resolve(&files(&["-"])), Lane::Live);
        assert_eq!(auto.resolve(&files(&["iocs.txt"])), Lane::Bulk);
        assert_eq!(auto.resolve(&files(&["iocs.txt", "-"])), Lane::Bulk);
        assert_eq!(LaneChoice::Live.resolve(&files(&["iocs.txt"])), Lane::Live);
        assert_eq!(LaneChoice::Bulk.resolve(&files(&[])), Lane::Bulk);
        assert_eq!(" Live".parse::<LaneChoice>(), Ok(LaneChoice::Live));
        assert_eq!("auto".parse::<LaneChoice>(), Ok(LaneChoice::Auto));
        assert!("fast".parse::<LaneChoice>().unwrap_err().contains("auto"));
    }

    #[test]
    fn csv_rejections_name_the_record() {
        let options = PublishOptions {
            format: InputFormat::Csv,
            csv_column: CsvColumn::Name("url".into()),
            csv_delimiter: b';',
            ..PublishOptions::default()
        };
        let input = "id;url\n1;\"not a\nhost!\"\n2;8.8.8.8\n";
        let parsed = parse_lines(input.as_bytes(), "f.csv", &options, &mut HashSet::new());
        assert_eq!(parsed.read, 2);
        assert_eq!(parsed.observables.len(), 1);
        let rejection = &parsed.rejected[0];
        assert_eq!(
            (rejection.line, &rejection.position),
            (2, &Position::Record(2))
        );
        assert!(
            rejection.to_string().starts_with("f.csv: record 2: "),
            "{rejection}"
        );
    }

    #[test]
    fn skips_are_counted_by_reason_within_a_bound() {
        let mut summary = PublishSummary::default();
        summary.count_skipped("indicator", "pattern uses AND");
        summary.count_skipped("indicator", "pattern uses AND");
        summary.count_skipped("attribute", "to_ids is not true");
        assert_eq!(
            summary.to_string(),
            "read 0, published 0 in 0 message(s), rejected 0, skipped 3, duplicates 0\n\
             skipped 1 attribute: to_ids is not true\n\
             skipped 2 indicators: pattern uses AND"
        );
        for n in 0..MAX_SKIP_REASONS * 2 {
            summary.count_skipped("attribute", &format!("type x{n} is not read"));
        }
        assert_eq!(summary.skip_reasons.len(), MAX_SKIP_REASONS + 1);
        assert_eq!(summary.skipped, 3 + MAX_SKIP_REASONS * 2);
    }
}
