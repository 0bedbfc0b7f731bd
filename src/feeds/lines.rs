//! `lines` (one observable a line) and `jsonl` (one JSON value a line: a string, or an object
//! with a string `value` and an optional `kind`; other fields are ignored).
//!
//! Blank lines and lines starting with `#` hold nothing. Lines are read at most
//! [`MAX_LINE_BYTES`] at a time: a longer line is rejected, its rest passed over unread into
//! memory. A UTF-8 byte order mark before the first line is dropped.

use std::io::BufRead;
use std::str::FromStr;

use serde_json::Value;

use super::{Entry, Flow, InputFormat, Position, Record, MAX_LINE_BYTES};
use crate::observable::ObservableKind;

/// Read `input` in `format` (lines or jsonl) to its end, or until `sink` stops.
pub fn read(
    input: &mut dyn BufRead,
    format: InputFormat,
    sink: &mut dyn FnMut(Entry) -> Flow,
) -> Result<(), String> {
    let mut lines = LineReader::new(input);
    while let Some((number, line)) = lines
        .next_line()
        .map_err(|error| format!("read error: {error}"))?
    {
        if let Some(entry) = entry(number, &line, format) {
            if sink(entry) == Flow::Stop {
                break;
            }
        }
    }
    Ok(())
}

/// What line `number` holds, if anything.
fn entry(number: usize, line: &RawLine, format: InputFormat) -> Option<Entry> {
    let position = Position::Line(number);
    let text = match std::str::from_utf8(&line.bytes) {
        Ok(text) => text,
        Err(error) => {
            let reason = format!(
                "not valid UTF-8 (invalid byte sequence at byte {})",
                error.valid_up_to()
            );
            let input = String::from_utf8_lossy(&line.bytes);
            return Some(Entry::rejected(position, &input, reason));
        }
    };
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    if line.too_long {
        let reason = format!("line longer than {MAX_LINE_BYTES} bytes");
        return Some(Entry::rejected(position, trimmed, reason));
    }
    let (value, kind) = match format {
        InputFormat::Jsonl => match json_line(trimmed) {
            Ok(found) => found,
            Err(reason) => return Some(Entry::rejected(position, trimmed, reason)),
        },
        _ => (trimmed.to_string(), None),
    };
    Some(Entry::Record(Record {
        value,
        kind,
        context: None,
        position,
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(input: &str, format: InputFormat) -> Vec<Entry> {
        let mut out = Vec::new();
        read(&mut input.as_bytes(), format, &mut |entry| {
            out.push(entry);
            Flow::Continue
        })
        .unwrap();
        out
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

    #[test]
    fn lines_skip_blanks_and_comments_and_keep_their_numbers() {
        let found = entries(
            "\u{feff}# list\n\n  evil[.]com \n8.8.8.8\r\n",
            InputFormat::Lines,
        );
        let values: Vec<(String, usize)> = found
            .iter()
            .map(|entry| match entry {
                Entry::Record(record) => (record.value.clone(), record.position.number()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            values,
            [("evil[.]com".to_string(), 3), ("8.8.8.8".to_string(), 4)]
        );
    }

    #[test]
    fn json_lines_carry_their_kind_and_reject_what_is_not_a_value() {
        let found = entries(
            "{\"value\": \"a.example\", \"kind\": \"host\"}\n[1]\n",
            InputFormat::Jsonl,
        );
        let Entry::Record(record) = &found[0] else {
            panic!("{found:?}")
        };
        assert_eq!(record.kind, Some(ObservableKind::Host));
        assert_eq!(
            found[1],
            Entry::Rejected {
                position: Position::Line(2),
                input: "[1]".into(),
                reason: "expected a JSON string or an object with `value`".into(),
            }
        );
    }
}
