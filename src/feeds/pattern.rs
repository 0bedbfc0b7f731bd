//! The part of the STIX 2.1 patterning language that names addresses and names outright: one
//! observation (`[…]`) or several joined by `OR`, each holding one comparison or several joined
//! by `OR`, of `domain-name:value`, `ipv4-addr:value`, `ipv6-addr:value` or `url:value` with `=`
//! and a string (`'it''s'` is not STIX: a quote is `\'`, a backslash `\\`). Parentheses group.
//!
//! Anything else a pattern can say (`AND`, `FOLLOWEDBY`, `NOT`, other operators such as
//! `MATCHES` or `LIKE`, other object paths, qualifiers such as `WITHIN`) makes the pattern
//! [`Unsupported`](PatternError::Unsupported), with the first such thing as the reason: such a
//! pattern does not say "this address is bad" on its own. Since only `OR` is kept, grouping never
//! changes what a pattern means here, and the scan needs no recursion.
//!
//! Written here because the crates on crates.io that parse STIX patterns come with a whole STIX
//! object model (and, for one, serde_json's `preserve_order` for the whole build), and the one
//! whose parser was checked keeps string escapes undone.

use crate::observable::ObservableKind;

/// One `path = 'value'` comparison the pattern ORs together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// The STIX object type: `domain-name`, `ipv4-addr`, `ipv6-addr` or `url`.
    pub object: &'static str,
    /// The string, escapes undone.
    pub value: String,
}

impl Comparison {
    /// The kind the object type declares (`domain-name` and `url` leave it to the value).
    pub fn kind(&self) -> Option<ObservableKind> {
        declared_kind(self.object)
    }
}

/// The kind a STIX object type declares (`domain-name` and `url` leave it to the value).
pub fn declared_kind(object: &str) -> Option<ObservableKind> {
    match object {
        "ipv4-addr" => Some(ObservableKind::Ipv4),
        "ipv6-addr" => Some(ObservableKind::Ipv6),
        _ => None,
    }
}

/// The object types whose `value` is read, in patterns and as objects.
pub const OBJECT_TYPES: [&str; 4] = ["domain-name", "ipv4-addr", "ipv6-addr", "url"];

/// Why a pattern gave no comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternError {
    /// Valid as far as read, but says more than "one of these": e.g. `pattern uses AND`.
    Unsupported(String),
    /// Not a STIX pattern.
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Open(char),
    Close(char),
    Str(String),
    Operator(String),
    Word(String),
}

/// The comparisons `pattern` ORs together.
pub fn parse(pattern: &str) -> Result<Vec<Comparison>, PatternError> {
    let tokens = tokens(pattern)?;
    let mut scan = Scan::default();
    let mut at = 0;
    while at < tokens.len() {
        at = scan.step(&tokens, at)?;
    }
    scan.finish()
}

/// Where the scan is: the open brackets and parentheses, and whether an operand was just read.
#[derive(Default)]
struct Scan {
    open: Vec<char>,
    after_operand: bool,
    comparisons: Vec<Comparison>,
}

impl Scan {
    /// Read the token at `at` (a comparison is several); returns where the next one starts.
    fn step(&mut self, tokens: &[Token], at: usize) -> Result<usize, PatternError> {
        let in_brackets = self.open.contains(&'[');
        match (&tokens[at], self.after_operand) {
            (Token::Open('['), false) if !in_brackets => self.open.push('['),
            (Token::Open(_), false) => self.open.push('('),
            (Token::Close(c), true) => self.close(*c)?,
            (Token::Word(word), true) => self.keyword(word)?,
            (Token::Word(_), false) if in_brackets => {
                let (comparison, next) = comparison(tokens, at)?;
                self.comparisons.push(comparison);
                self.after_operand = true;
                return Ok(next);
            }
            (other, _) => return Err(invalid(format!("unexpected {}", shown(other)))),
        }
        Ok(at + 1)
    }

    fn close(&mut self, c: char) -> Result<(), PatternError> {
        let opening = if c == ']' { '[' } else { '(' };
        match self.open.pop() {
            Some(open) if open == opening => Ok(()),
            _ => Err(invalid(format!("unbalanced {c:?}"))),
        }
    }

    /// A keyword after an operand: `OR` goes on, anything else is more than this reads.
    fn keyword(&mut self, word: &str) -> Result<(), PatternError> {
        let upper = word.to_ascii_uppercase();
        match upper.as_str() {
            "OR" => {
                self.after_operand = false;
                Ok(())
            }
            "AND" | "FOLLOWEDBY" => Err(unsupported(format!("pattern uses {upper}"))),
            "WITHIN" | "REPEATS" | "START" | "STOP" => {
                Err(unsupported(format!("pattern uses the qualifier {upper}")))
            }
            _ => Err(invalid(format!("unexpected {word:?}"))),
        }
    }

    fn finish(self) -> Result<Vec<Comparison>, PatternError> {
        if !self.open.is_empty() {
            return Err(invalid("unbalanced brackets".into()));
        }
        if !self.after_operand || self.comparisons.is_empty() {
            return Err(invalid(
                "the pattern ends where a comparison should be".into(),
            ));
        }
        Ok(self.comparisons)
    }
}

/// The comparison starting at `at`, and where the next token starts.
fn comparison(tokens: &[Token], at: usize) -> Result<(Comparison, usize), PatternError> {
    let (path, next) = object_path(tokens, at);
    let object = supported_path(&path)?;
    let operator = match tokens.get(next) {
        Some(Token::Operator(operator)) => operator.as_str(),
        Some(Token::Word(word)) if is_operator_word(word) => {
            return Err(unsupported(format!(
                "pattern compares with {}",
                word.to_ascii_uppercase()
            )))
        }
        other => {
            return Err(invalid(format!(
                "expected an operator after {path}, got {}",
                opt(other)
            )))
        }
    };
    if operator != "=" {
        return Err(unsupported(format!("pattern compares with {operator}")));
    }
    match tokens.get(next + 1) {
        Some(Token::Str(value)) => Ok((
            Comparison {
                object,
                value: value.clone(),
            },
            next + 2,
        )),
        other => Err(invalid(format!(
            "expected a string after {path} =, got {}",
            opt(other)
        ))),
    }
}

/// The object path starting at `at` (a word, then maybe quoted parts and list indexes:
/// `file:hashes.'SHA-256'`, `x:list[*].name`), and where the next token starts.
fn object_path(tokens: &[Token], at: usize) -> (String, usize) {
    let mut path = String::new();
    let mut next = at;
    loop {
        let dotted = path.is_empty() || path.ends_with('.');
        match (tokens.get(next), tokens.get(next + 1), tokens.get(next + 2)) {
            (Some(Token::Word(word)), ..) if dotted || word.starts_with('.') => {
                path.push_str(word);
                next += 1;
            }
            (Some(Token::Str(part)), ..) if dotted => {
                path.push_str(&format!("'{part}'"));
                next += 1;
            }
            (Some(Token::Open('[')), Some(Token::Word(index)), Some(Token::Close(']'))) => {
                path.push_str(&format!("[{index}]"));
                next += 3;
            }
            _ => return (path, next),
        }
    }
}

/// The object type of a `type:value` path this reads.
fn supported_path(path: &str) -> Result<&'static str, PatternError> {
    let found = path
        .strip_suffix(":value")
        .and_then(|object| OBJECT_TYPES.iter().find(|t| **t == object));
    match found {
        Some(object) => Ok(object),
        None if path.contains(':') => Err(unsupported(format!(
            "pattern looks at {}, not the value of a domain-name, ipv4-addr, ipv6-addr or url",
            crate::message::truncate_chars(path, 80)
        ))),
        None => Err(invalid(format!("{path:?} is not an object path"))),
    }
}

fn is_operator_word(word: &str) -> bool {
    ["NOT", "LIKE", "MATCHES", "IN", "ISSUBSET", "ISSUPERSET"]
        .iter()
        .any(|keyword| keyword.eq_ignore_ascii_case(word))
}

/// The pattern cut into tokens; strings with their escapes undone.
fn tokens(pattern: &str) -> Result<Vec<Token>, PatternError> {
    let mut tokens = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match c {
            c if c.is_whitespace() => continue,
            '[' | '(' => Token::Open(c),
            ']' | ')' => Token::Close(c),
            '\'' => Token::Str(string(&mut chars)?),
            '=' | '!' | '<' | '>' => {
                let mut operator = c.to_string();
                if chars.next_if_eq(&'=').is_some() {
                    operator.push('=');
                }
                Token::Operator(operator)
            }
            _ => {
                let mut word = c.to_string();
                while let Some(c) =
                    chars.next_if(|c| !c.is_whitespace() && !"[]()'=!<>".contains(*c))
                {
                    word.push(c);
                }
                Token::Word(word)
            }
        };
        tokens.push(token);
    }
    Ok(tokens)
}

/// A string literal's content up to its closing quote: `\'` is a quote, `\\` a backslash.
fn string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, PatternError> {
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\'' => return Ok(out),
            '\\' => match chars.next() {
                Some(escaped @ ('\'' | '\\')) => out.push(escaped),
                Some(other) => {
                    return Err(invalid(format!("unknown escape \\{other} in a string")))
                }
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(invalid("a string is not closed".into()))
}

fn unsupported(reason: String) -> PatternError {
    PatternError::Unsupported(reason)
}

fn invalid(reason: String) -> PatternError {
    PatternError::Invalid(reason)
}

fn shown(token: &Token) -> String {
    match token {
        Token::Open(c) | Token::Close(c) => format!("{c:?}"),
        Token::Str(s) => format!("string '{}'", crate::message::truncate_chars(s, 40)),
        Token::Operator(s) | Token::Word(s) => {
            format!("{:?}", crate::message::truncate_chars(s, 40))
        }
    }
}

fn opt(token: Option<&Token>) -> String {
    token.map_or_else(|| "the end".to_string(), shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pattern: &str) -> Vec<(&'static str, String)> {
        parse(pattern)
            .unwrap_or_else(|e| panic!("{pattern}: {e:?}"))
            .into_iter()
            .map(|c| (c.object, c.value))
            .collect()
    }

    fn unsupported_reason(pattern: &str) -> String {
        match parse(pattern) {
            Err(PatternError::Unsupported(reason)) => reason,
            other => panic!("{pattern}: {other:?}"),
        }
    }

    fn invalid_reason(pattern: &str) -> String {
        match parse(pattern) {
            Err(PatternError::Invalid(reason)) => reason,
            other => panic!("{pattern}: {other:?}"),
        }
    }

    #[test]
    fn one_comparison() {
        assert_eq!(
            values("[domain-name:value = 'evil.example']"),
            [("domain-name", "evil.example".to_string())]
        );
    }

    #[test]
    fn comparisons_and_observations_joined_by_or() {
        assert_eq!(
            values("[ipv4-addr:value = '198.51.100.7' OR domain-name:value='y.example']"),
            [
                ("ipv4-addr", "198.51.100.7".to_string()),
                ("domain-name", "y.example".to_string())
            ]
        );
        assert_eq!(
            values("([url:value = 'http://a.example/x'] or [ipv6-addr:value = '2001:db8::1'])"),
            [
                ("url", "http://a.example/x".to_string()),
                ("ipv6-addr", "2001:db8::1".to_string())
            ]
        );
    }

    #[test]
    fn string_escapes_are_undone() {
        assert_eq!(
            values(r"[url:value = 'http://a.example/it\'s\\here']"),
            [("url", r"http://a.example/it's\here".to_string())]
        );
        assert_eq!(
            invalid_reason(r"[url:value = 'a\nb']"),
            "unknown escape \\n in a string"
        );
    }

    #[test]
    fn more_than_an_or_of_values_is_unsupported() {
        let and = "[ipv4-addr:value = '1.2.3.4' AND domain-name:value = 'x.example']";
        assert_eq!(unsupported_reason(and), "pattern uses AND");
        let followed = "[ipv4-addr:value = '1.2.3.4'] FOLLOWEDBY [domain-name:value = 'x.example']";
        assert_eq!(unsupported_reason(followed), "pattern uses FOLLOWEDBY");
        assert_eq!(
            unsupported_reason("[domain-name:value MATCHES '^evil']"),
            "pattern compares with MATCHES"
        );
        assert_eq!(
            unsupported_reason("[domain-name:value NOT = 'a.example']"),
            "pattern compares with NOT"
        );
        assert_eq!(
            unsupported_reason("[ipv4-addr:value != '1.2.3.4']"),
            "pattern compares with !="
        );
        assert!(unsupported_reason("[file:hashes.'SHA-256' = 'ab']")
            .starts_with("pattern looks at file:hashes.'SHA-256', not"));
        assert!(unsupported_reason("[x-list:items[*].name = 'a']")
            .starts_with("pattern looks at x-list:items[*].name, not"));
        assert_eq!(
            unsupported_reason("[domain-name:value = 'a.example'] WITHIN 300 SECONDS"),
            "pattern uses the qualifier WITHIN"
        );
    }

    #[test]
    fn what_is_not_a_pattern_is_invalid() {
        for pattern in [
            "",
            "domain-name:value = 'a'",
            "[domain-name:value = 'a'",
            "[domain-name:value = 'a']]",
            "[domain-name:value = 'a' OR]",
            "[domain-name:value = 'a]",
            "[[domain-name:value = 'a']]",
            "[domain-name:value 'a']",
            "[domain-name:value OR 'a']",
            "[domain-name:value = a]",
        ] {
            invalid_reason(pattern);
        }
    }
}
