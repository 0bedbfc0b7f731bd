//! The formats feeds come in, read into one kind of [`Entry`]: a [`Record`] (a raw value, the
//! kind the feed declared if any, the context that traces it back to the feed, and where it was),
//! or an entry the feed held but that is rejected or skipped, with the reason.
//!
//! - `lines` and `jsonl` ([`lines`]): one observable a line, or one JSON value a line;
//! - `csv` ([`csv`], through the `csv` crate): one column of each record, by header name or
//!   number, any one-byte delimiter, RFC 4180 quoting;
//! - `stix` ([`stix`]): a STIX 2.1 bundle's indicators (simple patterns, [`pattern`]) and its
//!   domain, address and URL objects;
//! - `misp` ([`misp`]): a MISP event's address and name attributes.
//!
//! Nothing here normalises: the values are as the feed wrote them, and the reader's caller
//! decides what they are ([`crate::observable::normalise`]). Every reader keeps its memory
//! bounded: a line or record over [`MAX_LINE_BYTES`] and a JSON document over
//! [`MAX_DOCUMENT_BYTES`] are refused with the reason, not held.

pub mod csv;
pub mod lines;
pub mod misp;
pub mod pattern;
pub mod stix;

use std::fmt;
use std::io::{BufRead, Read};
use std::str::FromStr;

use serde_json::Value;

use crate::message::truncate_chars;
use crate::observable::ObservableKind;

/// Lines longer than this many bytes, and CSV records larger, are rejected without being kept in
/// memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// JSON documents (STIX bundles, MISP events) are read whole, up to this many bytes.
pub const MAX_DOCUMENT_BYTES: u64 = 256 * 1024 * 1024;
/// How much of an offending input a rejection echoes, in characters.
pub const ECHO_CHARS: usize = crate::message::ECHO_CHARS;

/// How an input is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputFormat {
    #[default]
    Lines,
    Csv,
    Jsonl,
    Stix,
    Misp,
}

impl FromStr for InputFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "lines" | "text" | "txt" => Ok(InputFormat::Lines),
            "csv" => Ok(InputFormat::Csv),
            "jsonl" | "ndjson" => Ok(InputFormat::Jsonl),
            "stix" | "stix2" => Ok(InputFormat::Stix),
            "misp" => Ok(InputFormat::Misp),
            other => Err(format!(
                "unknown input format {:?}: expected lines, csv, jsonl, stix or misp",
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

/// The byte between CSV fields: one ASCII character, or `\t` / `tab` for a tab.
pub fn parse_csv_delimiter(text: &str) -> Result<u8, String> {
    match text {
        "\\t" | "tab" | "TAB" => return Ok(b'\t'),
        _ => {}
    }
    match text.as_bytes() {
        [byte] if byte.is_ascii() && *byte != b'"' && *byte != b'\n' && *byte != b'\r' => Ok(*byte),
        _ => Err(format!(
            "the CSV delimiter must be one ASCII character other than a quote or a line break \
             (or \\t), got {:?}",
            truncate_chars(text, 20)
        )),
    }
}

/// How the readers read: the format and what some formats need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedOptions {
    pub format: InputFormat,
    pub csv_column: CsvColumn,
    pub csv_delimiter: u8,
    /// MISP: skip attributes whose `to_ids` is false.
    pub misp_to_ids_only: bool,
}

impl Default for FeedOptions {
    fn default() -> Self {
        FeedOptions {
            format: InputFormat::Lines,
            csv_column: CsvColumn::default(),
            csv_delimiter: b',',
            misp_to_ids_only: false,
        }
    }
}

/// Where in its input an entry was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// 1-based line number.
    Line(usize),
    /// 1-based CSV record number (a header row is record 1; a record may span lines).
    Record(usize),
    /// An object of a JSON document: its 1-based place among the document's objects (or
    /// attributes), and its name, e.g. `indicator indicator--8e2e…` or `attribute 5e5d…`.
    Object { number: usize, name: String },
}

impl Position {
    /// The line, record or object number.
    pub fn number(&self) -> usize {
        match self {
            Position::Line(n) | Position::Record(n) => *n,
            Position::Object { number, .. } => *number,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(n) => write!(f, "line {n}"),
            Position::Record(n) => write!(f, "record {n}"),
            Position::Object { name, .. } => f.write_str(name),
        }
    }
}

/// A value a feed holds, as the feed wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub value: String,
    /// The kind the feed declared (a STIX `ipv4-addr`, a MISP `hostname`, a JSON line's `kind`).
    pub kind: Option<ObservableKind>,
    /// What traces the value back to the feed (a STIX id, a MISP event), passed through to the
    /// worker with the value.
    pub context: Option<Value>,
    pub position: Position,
}

/// What a reader found.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Record(Record),
    /// An entry that holds no usable value: `input` is what it held, truncated.
    Rejected {
        position: Position,
        input: String,
        reason: String,
    },
    /// An entry deliberately not read: `what` names it for the summary (`indicator`,
    /// `attribute`), `reason` says why, e.g. `pattern uses AND`.
    Skipped {
        position: Position,
        what: &'static str,
        reason: String,
    },
}

impl Entry {
    fn rejected(position: Position, input: &str, reason: impl Into<String>) -> Entry {
        Entry::Rejected {
            position,
            input: truncate_chars(input, ECHO_CHARS),
            reason: reason.into(),
        }
    }
}

/// Whether a reader goes on after handing over an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Whoever takes the entries is gone: stop reading.
    Stop,
}

/// Read one input to its end in `options.format`, handing each entry to `sink`. `Err` says why
/// the rest of the input could not be read (an I/O error, a CSV column missing from the header,
/// a document that is not JSON or too large); the entries before it were handed over.
pub fn read(
    input: &mut dyn BufRead,
    options: &FeedOptions,
    sink: &mut dyn FnMut(Entry) -> Flow,
) -> Result<(), String> {
    match options.format {
        InputFormat::Lines | InputFormat::Jsonl => lines::read(input, options.format, sink),
        InputFormat::Csv => csv::read(input, options, sink),
        InputFormat::Stix => stix::read(&read_document(input, MAX_DOCUMENT_BYTES)?, sink),
        InputFormat::Misp => misp::read(&read_document(input, MAX_DOCUMENT_BYTES)?, options, sink),
    }
}

/// A whole JSON document, refused past `max` bytes (never holding more than one byte over).
fn read_document(input: &mut dyn BufRead, max: u64) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    Read::take(input, max + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("read error: {error}"))?;
    if bytes.len() as u64 > max {
        return Err(format!(
            "the document is larger than {}, the most read whole",
            size(max)
        ));
    }
    Ok(bytes)
}

/// `max` bytes in the largest whole unit.
fn size(max: u64) -> String {
    match max {
        m if m >= 1 << 20 && m % (1 << 20) == 0 => format!("{} MiB", m >> 20),
        m if m >= 1 << 10 && m % (1 << 10) == 0 => format!("{} KiB", m >> 10),
        m => format!("{m} bytes"),
    }
}

/// At most `max` strings of a JSON list, each truncated, for a context.
fn bounded_strings(items: &[String], max: usize) -> Value {
    Value::Array(
        items
            .iter()
            .take(max)
            .map(|item| Value::String(truncate_chars(item, 100)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn csv_delimiters_are_one_byte_or_a_named_tab() {
        assert_eq!(parse_csv_delimiter(";"), Ok(b';'));
        assert_eq!(parse_csv_delimiter("\t"), Ok(b'\t'));
        assert_eq!(parse_csv_delimiter("\\t"), Ok(b'\t'));
        assert_eq!(parse_csv_delimiter("tab"), Ok(b'\t'));
        assert!(parse_csv_delimiter(";;").is_err());
        assert!(parse_csv_delimiter("\"").is_err());
        assert!(parse_csv_delimiter("§").is_err());
        assert!(parse_csv_delimiter("").is_err());
    }

    #[test]
    fn formats_by_name() {
        assert_eq!("STIX".parse(), Ok(InputFormat::Stix));
        assert_eq!("misp".parse(), Ok(InputFormat::Misp));
        assert!("xml".parse::<InputFormat>().unwrap_err().contains("misp"));
    }

    #[test]
    fn documents_over_the_bound_are_refused() {
        let mut input = std::io::BufReader::new(std::io::repeat(b' ').take(5000));
        let error = read_document(&mut input, 4096).unwrap_err();
        assert_eq!(
            error,
            "the document is larger than 4 KiB, the most read whole"
        );
        let mut input = "{}".as_bytes();
        assert_eq!(read_document(&mut input, 2), Ok(b"{}".to_vec()));
        assert_eq!(size(MAX_DOCUMENT_BYTES), "256 MiB");
    }

    #[test]
    fn positions_say_what_they_count() {
        assert_eq!(Position::Line(4).to_string(), "line 4");
        assert_eq!(Position::Record(3).to_string(), "record 3");
        let object = Position::Object {
            number: 2,
            name: "indicator indicator--1".into(),
        };
        assert_eq!(
            (object.to_string().as_str(), object.number()),
            ("indicator indicator--1", 2)
        );
    }
}
