//! The observable normalisation corpus (`tests/data/observables.tsv`), every row checked and every
//! failing row reported at once, and a property test: no input makes `normalise` panic, and every
//! value it accepts is canonical, safe as one path segment, and normalises to itself.

use mdti_worker::observable::{normalise, NormaliseOptions, Normalised, ObservableKind};

mod support;
use support::decode_escapes;

const CORPUS: &str = include_str!("data/observables.tsv");

/// The corpus cell as text: bytes that are not UTF-8 become U+FFFD, as a lossy decode of a
/// queue message would make them.
fn decode(cell: &str) -> Result<String, String> {
    decode_escapes(cell).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// The outcome in the corpus notation.
fn outcome(result: &Result<Normalised, mdti_worker::observable::InvalidObservable>) -> String {
    match result {
        Ok(Normalised::Ready(o)) => format!("ready:{}:{}", o.kind(), o.value()),
        Ok(Normalised::Skipped { observable, .. }) => {
            format!("skipped:{}:{}", observable.kind(), observable.value())
        }
        Err(e) => format!("invalid:{}", e.code()),
    }
}

/// Long values are cut so a failure report stays readable.
fn short(s: &str) -> String {
    if s.chars().count() <= 120 {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(120).collect();
        format!("{cut:?}... ({} bytes)", s.len())
    }
}

#[test]
fn corpus_rows_all_normalise_as_expected() {
    let opts = NormaliseOptions::default();
    let mut rows = 0;
    let mut failures = Vec::new();
    for (index, line) in CORPUS.lines().enumerate() {
        let line_no = index + 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        rows += 1;
        let cells: Vec<&str> = line.split('\t').collect();
        let [input, declared, expected] = cells[..] else {
            failures.push(format!(
                "line {line_no}: expected 3 TAB-separated columns, found {}",
                cells.len()
            ));
            continue;
        };
        let (input, expected) = match (decode(input), decode(expected)) {
            (Ok(i), Ok(e)) => (i, e),
            (Err(e), _) | (_, Err(e)) => {
                failures.push(format!("line {line_no}: {e}"));
                continue;
            }
        };
        let declared = match declared {
            "-" => None,
            kind => match kind.parse::<ObservableKind>() {
                Ok(k) => Some(k),
                Err(e) => {
                    failures.push(format!("line {line_no}: {e}"));
                    continue;
                }
            },
        };
        let result = normalise(&input, declared, &opts);
        let got = outcome(&result);
        if got != expected {
            let detail = match &result {
                Err(e) => format!(" ({e})"),
                Ok(Normalised::Skipped { reason, .. }) => format!(" ({reason})"),
                Ok(Normalised::Ready(_)) => String::new(),
            };
            failures.push(format!(
                "line {line_no}: input {} declared {declared:?}\n    expected {}\n    got      {}{detail}",
                short(&input),
                short(&expected),
                short(&got),
            ));
        }
    }
    assert!(
        rows >= 70,
        "the corpus should have at least 70 rows, has {rows}"
    );
    assert!(
        failures.is_empty(),
        "{} of {rows} corpus rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_decoder_understands_its_escapes() {
    assert_eq!(decode(r"a\tb\nc\\d\0e\x41").unwrap(), "a\tb\nc\\d\0eA");
    assert_eq!(decode("@big:3.com").unwrap(), "aaa.com");
    assert_eq!(decode(r"\xff").unwrap(), "\u{fffd}");
    assert_eq!(decode(r"\xc3\xbc").unwrap(), "ü");
    assert!(decode(r"\q").is_err());
}

/// xorshift64: deterministic, so a failure reproduces.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Single characters and a few multi-character pieces, so that some strings come out valid.
const PIECES: &[&str] = &[
    ".", ".", ".", "/", ":", ":", "%", "?", "#", "[", "]", "@", " ", "\t", "\0", "\u{7f}", "\\",
    "(", ")", "{", "}", "*", "-", "_", "a", "e", "z", "E", "X", "x", "0", "1", "8", "9", "255",
    "ü", "例", "。", "💩", "\u{200d}", "\u{fffd}", "\u{85}", "\u{feff}", "ｅ", "８", "[.]",
    "(dot)", "[:]", "hxxp", "hxxp://", "https://", "::", "ffff", "xn--", "com", "co.uk", "local",
    "contoso", "0x", "%2f", "../",
];

/// Mostly well-formed: an optional scheme, labels, a TLD, an optional port or path, with a
/// tricky piece now and then.
fn name_like(rng: &mut XorShift) -> String {
    const LABEL: &[&str] = &[
        "a", "b", "x", "0", "7", "-", "_", "ü", "例", "xn--", "ffff", "contoso",
    ];
    const TLD: &[&str] = &["com", "co.uk", "local", "arpa", "1", "255", "ｅ", "💩"];
    const AROUND: &[&str] = &["", "", "", "http://", "hxxps[://]", "[", "user@", " ", "*."];
    const AFTER: &[&str] = &[
        "", "", "", ":443", "/x?y#z", "]", "/24", "%2f", ".", "..", "\\a",
    ];
    let mut s = String::from(AROUND[rng.below(AROUND.len())]);
    for _ in 0..=rng.below(4) {
        for _ in 0..=rng.below(4) {
            let piece = if rng.below(10) == 0 {
                PIECES[rng.below(PIECES.len())]
            } else {
                LABEL[rng.below(LABEL.len())]
            };
            s.push_str(piece);
        }
        s.push_str(if rng.below(12) == 0 { "[.]" } else { "." });
    }
    s.push_str(TLD[rng.below(TLD.len())]);
    s.push_str(AFTER[rng.below(AFTER.len())]);
    s
}

fn forbidden_in_canonical(c: char) -> bool {
    !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_' | ':')
}

#[test]
fn random_inputs_never_panic_and_accepted_values_are_canonical() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0;
    let mut failures = Vec::new();
    for case in 0..20_000 {
        let input = if case % 2 == 0 {
            let len = rng.below(24);
            (0..len).map(|_| PIECES[rng.below(PIECES.len())]).collect()
        } else {
            name_like(&mut rng)
        };
        let declared = match rng.below(6) {
            k @ 0..=3 => Some(ObservableKind::ALL[k]),
            _ => None,
        };
        let opts = NormaliseOptions {
            allow_non_public: rng.below(2) == 0,
        };
        let result = normalise(&input, declared, &opts);
        let observable = match result {
            Ok(n) => n.into_observable(),
            Err(e) => {
                let msg = e.to_string();
                if msg.len() > 2000 {
                    failures.push(format!(
                        "case {case}: {input:?}: message of {} bytes",
                        msg.len()
                    ));
                }
                continue;
            }
        };
        accepted += 1;
        let value = observable.value();
        if value.is_empty() || value.chars().any(forbidden_in_canonical) {
            failures.push(format!("case {case}: {input:?} -> unsafe value {value:?}"));
        }
        // canonical values are fixed points
        let again = normalise(
            value,
            Some(observable.kind()),
            &NormaliseOptions {
                allow_non_public: true,
            },
        );
        match again {
            Ok(Normalised::Ready(o)) if o == observable => {}
            other => failures.push(format!(
                "case {case}: {input:?} -> {observable} but that normalises to {other:?}"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        accepted > 200,
        "only {accepted} random inputs were accepted; the generator is too harsh"
    );
}
