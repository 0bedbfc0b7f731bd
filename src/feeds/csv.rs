//! `csv`: the value is in one column of each record, read with the `csv` crate (RFC 4180
//! quoting: `"a,b"`, `""` for a quote, line breaks inside quoted fields; records of any length;
//! any one-byte delimiter). The column is a 1-based number (no header row) or a header name
//! (the first record of each input is then the header row).
//!
//! Records are numbered from 1, the header row included, and a record may span lines, so
//! rejections name the record, not the line. A record starting with `#` is a comment; an empty
//! or blank one holds nothing. A UTF-8 byte order mark is dropped.
//!
//! The `csv` crate holds a whole record in memory, so the bytes it is given are budgeted: a record
//! over [`MAX_LINE_BYTES`] (give or take the crate's read buffer) is rejected and ends the input,
//! because past it (often an unbalanced quote) there is no telling where the next record starts.

use std::cell::Cell;
use std::io::{BufRead, Read};
use std::rc::Rc;

use ::csv::{ByteRecord, ReaderBuilder};

use super::{CsvColumn, Entry, FeedOptions, Flow, Position, Record, MAX_LINE_BYTES};
use crate::message::truncate_chars;

/// Read `input` as CSV to its end, or until `sink` stops.
pub fn read(
    input: &mut dyn BufRead,
    options: &FeedOptions,
    sink: &mut dyn FnMut(Entry) -> Flow,
) -> Result<(), String> {
    skip_bom(input).map_err(|error| format!("read error: {error}"))?;
    let budget = Rc::new(Cell::new(MAX_LINE_BYTES));
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(options.csv_delimiter)
        .comment(Some(b'#'))
        .from_reader(Budgeted {
            input,
            left: Rc::clone(&budget),
        });
    let mut column = Column::new(&options.csv_column);
    let mut record = ByteRecord::new();
    let mut number = 0;
    loop {
        number += 1;
        match reader.read_byte_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(error) => return Err(read_error(number, &error, sink)),
        }
        budget.set(MAX_LINE_BYTES);
        let Some(entry) = column.entry(number, &record)? else {
            continue;
        };
        if sink(entry) == Flow::Stop {
            return Ok(());
        }
    }
}

/// Why reading stopped at record `number`; an oversized record is handed over as rejected too.
fn read_error(number: usize, error: &::csv::Error, sink: &mut dyn FnMut(Entry) -> Flow) -> String {
    let oversized = match error.kind() {
        ::csv::ErrorKind::Io(io) => io.get_ref().is_some_and(|e| e.is::<RecordTooLarge>()),
        _ => false,
    };
    if !oversized {
        return format!("record {number}: read error: {error}");
    }
    let reason = format!("record larger than {MAX_LINE_BYTES} bytes");
    let _ = sink(Entry::rejected(Position::Record(number), "", reason));
    format!(
        "record {number} is larger than {MAX_LINE_BYTES} bytes: the rest of the input is not read \
         (past it there is no telling where the next record starts)"
    )
}

fn skip_bom(input: &mut dyn BufRead) -> std::io::Result<()> {
    if input.fill_buf()?.starts_with(b"\xef\xbb\xbf") {
        input.consume(3);
    }
    Ok(())
}

/// Where the value is: known from the start (a number) or once the header row is read.
struct Column<'a> {
    wanted: &'a CsvColumn,
    /// 0-based index, once known.
    index: Option<usize>,
}

impl<'a> Column<'a> {
    fn new(wanted: &'a CsvColumn) -> Self {
        let index = match wanted {
            CsvColumn::Number(n) => Some(n.saturating_sub(1)),
            CsvColumn::Name(_) => None,
        };
        Column { wanted, index }
    }

    /// What record `number` holds; `Err` when it is a header row without the wanted column.
    fn entry(&mut self, number: usize, record: &ByteRecord) -> Result<Option<Entry>, String> {
        if is_blank(record) {
            return Ok(None);
        }
        let Some(index) = self.index else {
            self.index = Some(self.header(number, record)?);
            return Ok(None);
        };
        let position = Position::Record(number);
        let reject = |reason: String| -> Result<Option<Entry>, String> {
            Ok(Some(Entry::rejected(
                position.clone(),
                &echo(record),
                reason,
            )))
        };
        let Some(field) = record.get(index) else {
            let columns = record.len();
            return reject(format!(
                "no column {} (the record has {columns} column(s))",
                index + 1
            ));
        };
        let Ok(text) = std::str::from_utf8(field) else {
            return reject(format!("column {} is not valid UTF-8", index + 1));
        };
        match text.trim() {
            "" => reject(format!("column {} is empty", index + 1)),
            value => Ok(Some(Entry::Record(Record {
                value: value.to_string(),
                kind: None,
                context: None,
                position,
            }))),
        }
    }

    /// The index of the wanted name in header row `number`.
    fn header(&self, number: usize, record: &ByteRecord) -> Result<usize, String> {
        let CsvColumn::Name(name) = self.wanted else {
            return Ok(0);
        };
        let wanted = name.trim();
        record
            .iter()
            .position(|field| {
                String::from_utf8_lossy(field)
                    .trim()
                    .eq_ignore_ascii_case(wanted)
            })
            .ok_or_else(|| {
                format!(
                    "record {number}: no column named {:?} in the header row ({})",
                    truncate_chars(wanted, 60),
                    echo(record)
                )
            })
    }
}

/// One field that is blank: a line of spaces.
fn is_blank(record: &ByteRecord) -> bool {
    record.len() == 1 && record[0].iter().all(u8::is_ascii_whitespace)
}

/// The record for a message: its fields joined by commas, truncated.
fn echo(record: &ByteRecord) -> String {
    let fields: Vec<_> = record.iter().map(String::from_utf8_lossy).collect();
    truncate_chars(&fields.join(","), super::ECHO_CHARS)
}

/// The input, handing out at most `left` more bytes; the reader sets `left` again after each
/// record, so no record grows past it by more than the crate's own read buffer.
struct Budgeted<'a> {
    input: &'a mut dyn BufRead,
    left: Rc<Cell<usize>>,
}

#[derive(Debug)]
struct RecordTooLarge;

impl std::fmt::Display for RecordTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "record larger than {MAX_LINE_BYTES} bytes")
    }
}

impl std::error::Error for RecordTooLarge {}

impl Read for Budgeted<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let left = self.left.get();
        if left == 0 && !buffer.is_empty() {
            return Err(std::io::Error::other(RecordTooLarge));
        }
        let room = buffer.len().min(left);
        let read = self.input.read(&mut buffer[..room])?;
        self.left.set(left - read);
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(input: &str, options: &FeedOptions) -> (Vec<Entry>, Result<(), String>) {
        let mut out = Vec::new();
        let result = read(&mut input.as_bytes(), options, &mut |entry| {
            out.push(entry);
            Flow::Continue
        });
        (out, result)
    }

    fn by_name(name: &str) -> FeedOptions {
        FeedOptions {
            format: super::super::InputFormat::Csv,
            csv_column: CsvColumn::Name(name.into()),
            ..FeedOptions::default()
        }
    }

    fn values(found: &[Entry]) -> Vec<(String, String)> {
        found
            .iter()
            .map(|entry| match entry {
                Entry::Record(r) => (r.position.to_string(), r.value.clone()),
                Entry::Rejected {
                    position, reason, ..
                } => (position.to_string(), format!("rejected: {reason}")),
                Entry::Skipped { .. } => panic!("{entry:?}"),
            })
            .collect()
    }

    #[test]
    fn quoted_fields_may_hold_delimiters_quotes_and_line_breaks() {
        let input = "\u{feff}id,url,note\n\
                     1,\"hxxp://evil[.]com/a,b\",\"multi\nline note\"\n\
                     2,8.8.8.8,\"say \"\"hi\"\"\"\n\
                     # a comment\n\
                     3,,x\n";
        let (found, result) = entries(input, &by_name("URL"));
        assert_eq!(result, Ok(()));
        assert_eq!(
            values(&found),
            [
                ("record 2".into(), "hxxp://evil[.]com/a,b".into()),
                ("record 3".into(), "8.8.8.8".into()),
                ("record 4".into(), "rejected: column 2 is empty".into()),
            ]
        );
    }

    #[test]
    fn the_delimiter_is_an_option_and_numbers_need_no_header() {
        let options = FeedOptions {
            csv_column: CsvColumn::Number(2),
            csv_delimiter: b'\t',
            ..by_name("")
        };
        let (found, _) = entries("a\tevil.example\tz\n\nb\n", &options);
        assert_eq!(
            values(&found),
            [
                ("record 1".into(), "evil.example".into()),
                (
                    "record 2".into(),
                    "rejected: no column 2 (the record has 1 column(s))".into()
                ),
            ]
        );
    }

    #[test]
    fn a_missing_header_name_stops_the_input() {
        let (found, result) = entries("id,value\n1,8.8.8.8\n", &by_name("url"));
        assert!(found.is_empty());
        assert_eq!(
            result,
            Err("record 1: no column named \"url\" in the header row (id,value)".into())
        );
    }

    #[test]
    fn a_record_over_the_bound_is_rejected_and_ends_the_input() {
        let huge = format!("1.1.1.1\n\"{}\n2.2.2.2\n", "x".repeat(MAX_LINE_BYTES * 4));
        let options = FeedOptions {
            csv_column: CsvColumn::Number(1),
            ..by_name("")
        };
        let (found, result) = entries(&huge, &options);
        assert_eq!(
            values(&found),
            [
                ("record 1".into(), "1.1.1.1".into()),
                (
                    "record 2".into(),
                    format!("rejected: record larger than {MAX_LINE_BYTES} bytes")
                ),
            ]
        );
        assert!(result.unwrap_err().starts_with("record 2 is larger than"));
    }
}
