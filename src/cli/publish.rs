//! The `publish [FILE…]` command, library part: read observables from files or stdin, validate
//! them locally, drop duplicates, and publish the rest in confirmed batches to a lane's exchange
//! ([`LaneChoice`]: by default what comes on stdin is live work, a file is a bulk backfill).
//!
//! Input formats ([`InputFormat`]):
//!
//! - `lines` (default): one observable a line;
//! - `csv`: the value is in one column ([`CsvColumn`]): a 1-based number (no header row) or a
//!   header name (then the first line of each file is the header row);
//! - `jsonl`: one JSON value a line: a string, or an object with a string `value` and an
//!   optional `kind` (other fields are ignored).
//!
//! In every format blank lines and lines starting with `#` are skipped. Each remaining line is
//! normalised with [`crate::observable::normalise`]; a rejected line is reported with its file,
//! line number and reason. Exact duplicates (after normalisation, over all inputs) are dropped and
//! counted. Accepted observables are sent as JSON arrays of
//! `{"value": <canonical>, "kind": <kind>, "source": <source>}` (at most `batch_size` per message,
//! and never more bytes than the worker accepts), each with a fresh UUID v4 message id, with
//! publisher confirms: nothing counts as published until the broker confirmed it.
//!
//! The invariant of [`PublishSummary`]: `read = published + not_published + rejected + skipped +
//! duplicates`.
//!
//! After publishing, [`command`] records what it sent in the `publications` ledger (when
//! Postgres answers; the publish stands either way), which `status` reads to say what is left
//! of a source, and ends with the estimate `status` gives for the lane.

use std::collections::HashSet;
use std::fmt;
use std::io::{BufRead, IsTerminal, Write};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::lane::Lane;
use crate::observable::{normalise, NormaliseOptions, Normalised, Observable, ObservableKind};
use crate::queue::message::{DecodeLimits, ECHO_CHARS};
use crate::queue::{truncate_chars, PublishError, Publisher};

/// Default observables per message.
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// Lines longer than this many bytes are rejected without being kept in memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Messages published before waiting for their confirms.
const MESSAGES_IN_FLIGHT: usize = 8;
pub use crate::queue::DEFAULT_ROUTING_KEY;

/// How input lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputFormat {
    #[default]
    Lines,
    Csv,
    Jsonl,
}

impl FromStr for InputFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "lines" | "text" | "txt" => Ok(InputFormat::Lines),
            "csv" => Ok(InputFormat::Csv),
            "jsonl" | "ndjson" => Ok(InputFormat::Jsonl),
            other => Err(format!(
                "unknown input format {:?}: expected lines, csv or jsonl",
                truncate_chars(other, 40)
            )),
        }
    }
}

/// Which CSV column holds the observable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsvColumn {
    /// 1-based column number; the files have no header row.
    Number(usize),
    /// Column name, looked up (case-insensitively, trimmed) in the header row of each file.
    Name(String),
}

impl Default for CsvColumn {
    fn default() -> Self {
        CsvColumn::Number(1)
    }
}

impl FromStr for CsvColumn {
    type Err = String;

    /// A positive number is a column number, anything else a header name.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the CSV column is empty".to_string());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<usize>() {
                Ok(0) | Err(_) => Err(format!(
                    "CSV column numbers start at 1, got {:?}",
                    truncate_chars(text, 40)
                )),
                Ok(n) => Ok(CsvColumn::Number(n)),
            };
        }
        Ok(CsvColumn::Name(text.to_string()))
    }
}

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
    /// Declared kind for every line (a JSON line's own `kind` wins).
    pub kind: Option<ObservableKind>,
    /// Written into every item as `source`, and used as the routing key.
    pub source: Option<String>,
    /// Observables per message, 1 ..= [`DecodeLimits::max_items`] (default 500).
    pub batch_size: usize,
    /// Progress line on stderr: `None` means when stderr is a terminal.
    pub progress: Option<bool>,
    /// Report each rejected line on stderr (default true).
    pub report_lines: bool,
    /// Report each skipped line (valid but not public, e.g. a private address) on stderr too
    /// (default false: feeds often hold many).
    pub report_skipped: bool,
    /// The lane the messages go to (default bulk, the lane of publishers that know no lanes).
    pub lane: Lane,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            format: InputFormat::Lines,
            csv_column: CsvColumn::default(),
            kind: None,
            source: None,
            batch_size: DEFAULT_BATCH_SIZE,
            progress: None,
            report_lines: true,
            report_skipped: false,
            lane: Lane::Bulk,
        }
    }
}

/// A line that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// The line, truncated.
    pub input: String,
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.reason)?;
        if !self.reason.contains(&self.input) {
            write!(f, " (line: {:?})", self.input)?;
        }
        Ok(())
    }
}

/// A valid observable that normalisation decided not to enrich.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    pub file: String,
    pub line: usize,
    pub observable: Observable,
    pub reason: String,
}

impl fmt::Display for SkippedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: skipped {}: {}",
            self.file,
            self.line,
            self.observable.value(),
            self.reason
        )
    }
}

/// What [`parse_lines`] found in one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedInput {
    /// Accepted observables, first occurrences only, in input order.
    pub observables: Vec<Observable>,
    pub rejected: Vec<Rejection>,
    pub skipped: Vec<SkippedLine>,
    /// Exact duplicates dropped (of this input or of anything in `seen` before).
    pub duplicates: usize,
    /// Lines that held an observable (not blank, not a comment, not the CSV header).
    pub read: usize,
    /// Why the input was not read to its end (I/O error, missing CSV column).
    pub error: Option<String>,
}

/// Parse and validate one input without a broker: what `publish` would send, reject, skip and
/// drop. `seen` carries the duplicates check across inputs.
pub fn parse_lines<R: BufRead>(
    reader: R,
    name: &str,
    options: &PublishOptions,
    seen: &mut HashSet<Observable>,
) -> ParsedInput {
    let mut out = ParsedInput::default();
    let mut parser = LineParser::new(options);
    let mut lines = LineReader::new(reader);
    loop {
        let (number, line) = match lines.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(error) => {
                out.error = Some(format!("{name}: read error: {error}"));
                break;
            }
        };
        match parser.line(name, number, line, seen) {
            Outcome::Ignored => {}
            Outcome::Accepted(observable) => {
                out.read += 1;
                out.observables.push(observable);
            }
            Outcome::Duplicate => {
                out.read += 1;
                out.duplicates += 1;
            }
            Outcome::Skipped(skipped) => {
                out.read += 1;
                out.skipped.push(skipped);
            }
            Outcome::Rejected(rejection) => {
                out.read += 1;
                out.rejected.push(rejection);
            }
            Outcome::FileError(error) => {
                out.error = Some(error);
                break;
            }
        }
    }
    out
}

/// The result of a `publish` run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishSummary {
    /// Lines that held an observable.
    pub read: usize,
    /// Observables confirmed by the broker.
    pub published: usize,
    /// Messages confirmed by the broker.
    pub messages: usize,
    pub rejected: usize,
    pub skipped: usize,
    pub duplicates: usize,
    /// Accepted observables that were not confirmed (a failed batch, or the run stopped).
    pub not_published: usize,
    /// Failures that stopped an input or the run (I/O errors, missing CSV column, publish
    /// errors).
    pub errors: Vec<String>,
}

impl PublishSummary {
    /// Whether the command succeeded: nothing rejected, nothing left unpublished, no error.
    /// Skipped lines and duplicates are not failures.
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
        for error in &self.errors {
            write!(f, "\nerror: {error}")?;
        }
        Ok(())
    }
}

/// Run the `publish` command: read `inputs` (named by `names`, e.g. file names or `-`), report
/// rejected lines on stderr, publish with confirms through `publisher`, and return the summary
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
    std::thread::Builder::new()
        .name("publish-reader".into())
        .spawn(move || read_inputs(inputs, sender))
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
        reading.progress.update(&reading.summary);
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
    parser: LineParser<'a>,
    seen: HashSet<Observable>,
    batches: Batcher,
    summary: PublishSummary,
    progress: Progress,
    /// The input whose reading failed: its remaining lines are ignored.
    failed_file: Option<usize>,
}

impl<'a> Reading<'a> {
    fn new(options: &'a PublishOptions, names: &'a [String], routing_key: String) -> Self {
        Reading {
            options,
            names,
            parser: LineParser::new(options),
            seen: HashSet::new(),
            batches: Batcher::new(options, routing_key),
            summary: PublishSummary::default(),
            progress: Progress::new(
                options
                    .progress
                    .unwrap_or_else(|| std::io::stderr().is_terminal()),
            ),
            failed_file: None,
        }
    }

    fn event(&mut self, event: ReadEvent) {
        match event {
            ReadEvent::Line { file, number, line } => {
                if self.failed_file != Some(file) {
                    let outcome = self
                        .parser
                        .line(&self.names[file], number, line, &mut self.seen);
                    self.count(file, outcome);
                }
            }
            ReadEvent::EndOfFile { file } => {
                self.parser.end_of_file();
                if self.failed_file == Some(file) {
                    self.failed_file = None;
                }
            }
            ReadEvent::Error { file, error } => {
                self.parser.end_of_file();
                self.error(format!("{}: read error: {error}", self.names[file]));
            }
        }
    }

    /// A line's outcome counted, batched and reported as the options say.
    fn count(&mut self, file: usize, outcome: Outcome) {
        let summary = &mut self.summary;
        match outcome {
            Outcome::Ignored => return,
            Outcome::FileError(error) => {
                self.failed_file = Some(file);
                return self.error(error);
            }
            Outcome::Accepted(observable) => self.batches.push(&observable),
            Outcome::Duplicate => summary.duplicates += 1,
            Outcome::Skipped(skipped) => {
                summary.skipped += 1;
                if self.options.report_skipped {
                    self.progress.message(&skipped.to_string());
                }
            }
            Outcome::Rejected(rejection) => {
                summary.rejected += 1;
                if self.options.report_lines {
                    self.progress.message(&format!("rejected {rejection}"));
                }
            }
        }
        self.summary.read += 1;
    }

    fn error(&mut self, error: String) {
        self.progress.message(&format!("error: {error}"));
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
    /// Input format: lines, csv or jsonl
    #[arg(long, default_value = "lines")]
    pub format: InputFormat,
    /// CSV column holding the observable: a 1-based number (no header row) or a header name
    #[arg(long, default_value = "1")]
    pub csv_column: CsvColumn,
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
    /// Also list each skipped line (valid but not public), not only rejected ones
    #[arg(long)]
    pub show_skipped: bool,
    /// Lane to publish to: live, bulk, or auto (the default: stdin alone goes to live, anything
    /// read from a file, with or without stdin, to bulk)
    #[arg(long, default_value = "auto")]
    pub lane: LaneChoice,
}

fn parse_kind(text: &str) -> Result<ObservableKind, String> {
    ObservableKind::from_str(text).map_err(|e| e.to_string())
}

impl PublishArgs {
    pub fn options(&self) -> PublishOptions {
        PublishOptions {
            format: self.format,
            csv_column: self.csv_column.clone(),
            kind: self.kind,
            source: self.source.clone(),
            batch_size: self.batch_size,
            progress: if self.no_progress { Some(false) } else { None },
            report_lines: true,
            report_skipped: self.show_skipped,
            lane: self.lane.resolve(&self.files),
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
    let (inputs, names) = open_inputs(&args.files)?;
    let url = amqp_url.expose();
    let publisher = Publisher::connect(url, topology.clone()).await?;
    let summary = run(options.clone(), &publisher, inputs, names).await?;
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

/// Lines read on the reader thread.
enum ReadEvent {
    Line {
        file: usize,
        number: usize,
        line: RawLine,
    },
    EndOfFile {
        file: usize,
    },
    Error {
        file: usize,
        error: String,
    },
}

fn read_inputs(inputs: Vec<Box<dyn BufRead + Send>>, sender: tokio::sync::mpsc::Sender<ReadEvent>) {
    for (file, input) in inputs.into_iter().enumerate() {
        let mut lines = LineReader::new(input);
        loop {
            let event = match lines.next_line() {
                Ok(Some((number, line))) => ReadEvent::Line { file, number, line },
                Ok(None) => ReadEvent::EndOfFile { file },
                Err(error) => ReadEvent::Error {
                    file,
                    error: error.to_string(),
                },
            };
            let last = !matches!(event, ReadEvent::Line { .. });
            if sender.blocking_send(event).is_err() {
                return;
            }
            if last {
                break;
            }
        }
    }
}

/// One physical line as read: at most [`MAX_LINE_BYTES`] bytes, without the line ending.
#[derive(Debug)]
struct RawLine {
    bytes: Vec<u8>,
    /// The line was longer than [`MAX_LINE_BYTES`]; `bytes` holds its beginning.
    too_long: bool,
}

/// Reads lines of bounded length, numbering them from 1.
struct LineReader<R> {
    reader: R,
    number: usize,
}

impl<R: BufRead> LineReader<R> {
    fn new(reader: R) -> Self {
        LineReader { reader, number: 0 }
    }

    fn next_line(&mut self) -> std::io::Result<Option<(usize, RawLine)>> {
        let mut bytes = Vec::new();
        let mut too_long = false;
        let mut any = false;
        loop {
            let buffer = match self.reader.fill_buf() {
                Ok(buffer) => buffer,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if buffer.is_empty() {
                break;
            }
            any = true;
            let (chunk, used, done) = match buffer.iter().position(|&b| b == b'\n') {
                Some(end) => (&buffer[..end], end + 1, true),
                None => (buffer, buffer.len(), false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(bytes.len());
            if chunk.len() > room {
                too_long = true;
            }
            bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.reader.consume(used);
            if done {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        self.number += 1;
        if self.number == 1 && bytes.starts_with(b"\xef\xbb\xbf") {
            bytes.drain(..3);
        }
        Ok(Some((self.number, RawLine { bytes, too_long })))
    }
}

enum Outcome {
    /// Blank, comment, or the CSV header row.
    Ignored,
    Accepted(Observable),
    Duplicate,
    Skipped(SkippedLine),
    Rejected(Rejection),
    /// The rest of this input cannot be read (e.g. the CSV column is not in the header).
    FileError(String),
}

/// Line `number` of `file` rejected, echoing at most [`ECHO_CHARS`] of its input.
fn rejected(file: &str, number: usize, input: &str, reason: String) -> Outcome {
    Outcome::Rejected(Rejection {
        file: file.to_string(),
        line: number,
        input: truncate_chars(input, ECHO_CHARS),
        reason,
    })
}

/// Turns lines into outcomes; the state is the CSV header of the current input.
struct LineParser<'a> {
    options: &'a PublishOptions,
    normalise_options: NormaliseOptions,
    /// 0-based column index, once known for the current input.
    csv_index: Option<usize>,
}

impl<'a> LineParser<'a> {
    fn new(options: &'a PublishOptions) -> Self {
        let mut parser = LineParser {
            options,
            normalise_options: NormaliseOptions::default(),
            csv_index: None,
        };
        parser.end_of_file();
        parser
    }

    /// Forget the header of the input that ended.
    fn end_of_file(&mut self) {
        self.csv_index = match &self.options.csv_column {
            CsvColumn::Number(n) => Some(n.saturating_sub(1)),
            CsvColumn::Name(_) => None,
        };
    }

    fn line(
        &mut self,
        file: &str,
        number: usize,
        line: RawLine,
        seen: &mut HashSet<Observable>,
    ) -> Outcome {
        let text = match std::str::from_utf8(&line.bytes) {
            Ok(text) => text,
            Err(error) => {
                return rejected(
                    file,
                    number,
                    &String::from_utf8_lossy(&line.bytes),
                    format!(
                        "not valid UTF-8 (invalid byte sequence at byte {})",
                        error.valid_up_to()
                    ),
                )
            }
        };
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return Outcome::Ignored;
        }
        if line.too_long {
            let reason = format!("line longer than {MAX_LINE_BYTES} bytes");
            return rejected(file, number, trimmed, reason);
        }
        match self.value(file, number, text, trimmed) {
            Ok((value, declared)) => self.normalised(file, number, &value, declared, seen),
            Err(outcome) => outcome,
        }
    }

    /// The observable a line holds in the input's format, and its declared kind; or what the
    /// line amounts to when it holds none (a rejection, a CSV header).
    fn value(
        &mut self,
        file: &str,
        number: usize,
        text: &str,
        trimmed: &str,
    ) -> Result<(String, Option<ObservableKind>), Outcome> {
        let reject = |reason: String| rejected(file, number, trimmed, reason);
        match self.options.format {
            InputFormat::Lines => Ok((trimmed.to_string(), self.options.kind)),
            InputFormat::Csv => {
                let fields = split_csv(text).map_err(reject)?;
                let Some(index) = self.csv_index else {
                    return Err(self.read_header(file, number, &fields));
                };
                match fields.get(index).map(|field| field.trim()) {
                    None => Err(reject(format!(
                        "no column {} (the line has {} column(s))",
                        index + 1,
                        fields.len()
                    ))),
                    Some("") => Err(reject(format!("column {} is empty", index + 1))),
                    Some(value) => Ok((value.to_string(), self.options.kind)),
                }
            }
            InputFormat::Jsonl => match json_line(trimmed) {
                Ok((value, kind)) => Ok((value, kind.or(self.options.kind))),
                Err(reason) => Err(reject(reason)),
            },
        }
    }

    /// A value normalised: accepted the first time it is seen, a duplicate after.
    fn normalised(
        &self,
        file: &str,
        number: usize,
        value: &str,
        declared: Option<ObservableKind>,
        seen: &mut HashSet<Observable>,
    ) -> Outcome {
        match normalise(value, declared, &self.normalise_options) {
            Err(invalid) => rejected(file, number, value, invalid.to_string()),
            Ok(Normalised::Skipped { observable, reason }) => Outcome::Skipped(SkippedLine {
                file: file.to_string(),
                line: number,
                observable,
                reason: reason.to_string(),
            }),
            Ok(Normalised::Ready(observable)) => {
                if seen.contains(&observable) {
                    Outcome::Duplicate
                } else {
                    seen.insert(observable.clone());
                    Outcome::Accepted(observable)
                }
            }
        }
    }

    fn read_header(&mut self, file: &str, number: usize, fields: &[String]) -> Outcome {
        let CsvColumn::Name(wanted) = &self.options.csv_column else {
            return Outcome::Ignored;
        };
        let found = fields
            .iter()
            .position(|field| field.trim().eq_ignore_ascii_case(wanted.trim()));
        match found {
            Some(index) => {
                self.csv_index = Some(index);
                Outcome::Ignored
            }
            None => Outcome::FileError(format!(
                "{file}:{number}: no column named {:?} in the header row ({})",
                truncate_chars(wanted, 60),
                truncate_chars(&fields.join(","), ECHO_CHARS)
            )),
        }
    }
}

/// Split one CSV line (RFC 4180 quoting: `"a,b"`, `""` for a quote; no line breaks in fields).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    let mut quoted_field = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                _ => field.push(c),
            }
        } else {
            match c {
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    quoted_field = false;
                }
                '"' if field.trim().is_empty() && !quoted_field => {
                    field.clear();
                    in_quotes = true;
                    quoted_field = true;
                }
                _ => field.push(c),
            }
        }
    }
    if in_quotes {
        return Err("unterminated quoted CSV field".to_string());
    }
    fields.push(field);
    Ok(fields)
}

/// A JSON line: a string, or an object with a string `value` and an optional string `kind`.
fn json_line(line: &str) -> Result<(String, Option<ObservableKind>), String> {
    let parsed: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    match parsed {
        Value::String(value) => Ok((value, None)),
        Value::Object(fields) => {
            let value = match fields.get("value") {
                Some(Value::String(value)) => value.clone(),
                None | Some(Value::Null) => return Err("`value` is required".to_string()),
                Some(_) => return Err("`value` must be a string".to_string()),
            };
            let kind = match fields.get("kind") {
                None | Some(Value::Null) => None,
                Some(Value::String(kind)) => Some(
                    ObservableKind::from_str(kind).map_err(|e| format!("invalid `kind`: {e}"))?,
                ),
                Some(_) => return Err("`kind` must be a string".to_string()),
            };
            Ok((value, kind))
        }
        _ => Err("expected a JSON string or an object with `value`".to_string()),
    }
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

    fn push(&mut self, observable: &Observable) {
        let mut item = json!({
            "value": observable.value(),
            "kind": observable.kind(),
        });
        if let Some(source) = &self.source {
            item["source"] = Value::String(source.clone());
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

/// A single updating progress line on stderr (when enabled), and line reports that do not
/// collide with it.
struct Progress {
    enabled: bool,
    drawn: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            drawn: false,
            last: None,
        }
    }

    fn clear(&mut self, stderr: &mut impl Write) {
        if self.drawn {
            let _ = write!(stderr, "\r\x1b[2K");
            self.drawn = false;
        }
    }

    fn message(&mut self, text: &str) {
        let mut stderr = std::io::stderr().lock();
        self.clear(&mut stderr);
        let _ = writeln!(stderr, "{text}");
    }

    fn update(&mut self, summary: &PublishSummary) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(now);
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r\x1b[2Kread {}, published {}, rejected {}, skipped {}, duplicates {}",
            summary.read, summary.published, summary.rejected, summary.skipped, summary.duplicates
        );
        let _ = stderr.flush();
        self.drawn = true;
    }

    fn finish(&mut self) {
        let mut stderr = std::io::stderr().lock();
        self.clear(&mut stderr);
        let _ = stderr.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_split() {
        assert_eq!(split_csv("a,b,c").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(
            split_csv(r#""a,b","say ""hi""",c"#).unwrap(),
            vec!["a,b", r#"say "hi""#, "c"]
        );
        assert_eq!(split_csv("a,,").unwrap(), vec!["a", "", ""]);
        assert!(split_csv(r#""open,b"#).is_err());
    }

    #[test]
    fn csv_column_parsing() {
        assert_eq!("2".parse::<CsvColumn>(), Ok(CsvColumn::Number(2)));
        assert!("0".parse::<CsvColumn>().is_err());
        assert_eq!(
            "indicator".parse::<CsvColumn>(),
            Ok(CsvColumn::Name("indicator".into()))
        );
    }

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
    fn long_lines_are_bounded() {
        let input = format!("{}\nnext\n", "a".repeat(MAX_LINE_BYTES * 3));
        let mut reader = LineReader::new(std::io::BufReader::with_capacity(1000, input.as_bytes()));
        let (number, first) = reader.next_line().unwrap().unwrap();
        assert_eq!(number, 1);
        assert!(first.too_long);
        assert_eq!(first.bytes.len(), MAX_LINE_BYTES);
        let (number, second) = reader.next_line().unwrap().unwrap();
        assert_eq!((number, second.bytes.as_slice()), (2, b"next".as_slice()));
        assert!(reader.next_line().unwrap().is_none());
    }
}
