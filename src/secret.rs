//! A string that never prints itself.
//!
//! Client secrets and access tokens travel through settings, error paths and `Debug` output of
//! structs that hold them; wrapping them here means a `{:?}` anywhere in the crate shows
//! `[redacted]` instead of the value, and reading the value takes a deliberate `expose()`.
//! URLs that may carry a password are shown through [`redact_url`].

use std::fmt;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it (a form field, a header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

const UNPARSABLE: &str = "[unparsable URL]";

/// A URL for logs, errors and `Debug`: any password, and the value of a query parameter named
/// like a secret (Postgres URLs take `?password=`), replaced by `***`.
///
/// The password is cut out of the text before the URL is parsed: one holding an unescaped `#`,
/// `/` or `?` would otherwise be parsed as the start of a fragment, path or query, and printed
/// as one. Everything up to the last `@` counts as user and password, which on a mistyped URL
/// may hide more than the password; that is the safe side. A URL that does not parse even then
/// shows its scheme and host only, text without a scheme nothing at all.
pub fn redact_url(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://").filter(|(s, _)| is_scheme(s)) else {
        return UNPARSABLE.into();
    };
    let (userinfo, host_on) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let without_password = match userinfo {
        Some(userinfo) => format!("{scheme}://{}@{host_on}", hide_password(userinfo)),
        None => raw.to_owned(),
    };
    match url::Url::parse(&without_password) {
        Ok(url) => hide_secret_query_values(url).to_string(),
        Err(_) => {
            let userinfo = if userinfo.is_some() { "***@" } else { "" };
            format!("{scheme}://{userinfo}{} {UNPARSABLE}", host_of(host_on))
        }
    }
}

/// `text` (an error message about `raw_url`) fit to print: the URL replaced by
/// [`redact_url`]'s form, and its password, as written and percent-decoded, by `***`. Client
/// libraries quote a URL they could not use, or a part of it, in their errors.
pub fn scrub_url(text: &str, raw_url: &str) -> String {
    let mut scrubbed = text.to_owned();
    if !raw_url.is_empty() {
        scrubbed = scrubbed.replace(raw_url, &redact_url(raw_url));
    }
    if let Some(password) = password_of(raw_url) {
        let decoded = percent_encoding::percent_decode_str(password).decode_utf8_lossy();
        for form in [password, decoded.as_ref()] {
            scrubbed = scrubbed.replace(form, "***");
        }
    }
    scrubbed
}

/// The password of a URL, as written: what [`redact_url`] hides (after the first `:` of
/// everything up to the last `@`).
fn password_of(raw: &str) -> Option<&str> {
    let (_, rest) = raw.split_once("://")?;
    let userinfo = &rest[..rest.rfind('@')?];
    userinfo
        .split_once(':')
        .map(|(_, password)| password)
        .filter(|password| !password.is_empty())
}

fn is_scheme(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn hide_password(userinfo: &str) -> String {
    match userinfo.split_once(':') {
        Some((user, password)) if !password.is_empty() => format!("{user}:***"),
        _ => userinfo.to_owned(),
    }
}

/// The host (and port) at the start of `text`, printable characters only, at most 100.
fn host_of(text: &str) -> String {
    text.chars()
        .take_while(|c| !matches!(c, '/' | '?' | '#'))
        .filter(|c| !c.is_control())
        .take(100)
        .collect()
}

fn hide_secret_query_values(mut url: url::Url) -> url::Url {
    let is_secret = |key: &str| {
        let key = key.to_ascii_lowercase();
        ["password", "secret", "token"]
            .iter()
            .any(|word| key.contains(word))
    };
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    if pairs.iter().any(|(key, _)| is_secret(key)) {
        let shown = pairs.iter().map(|(key, value)| {
            let value = if is_secret(key) { "***" } else { value };
            (key.as_str(), value)
        });
        url.query_pairs_mut().clear().extend_pairs(shown);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("s3cr3t-value");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(secret.expose(), "s3cr3t-value");
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:hunter2@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/mdti"),
            "postgres://postgres@127.0.0.1/mdti"
        );
    }

    /// URLs as a person might mistype them: a password with a character a URL cannot carry
    /// unescaped, a broken host, a missing `//`, a password passed as a query parameter.
    const MISTYPED: [&str; 10] = [
        "amqp://user:p@ss hunter2@broker.example:5672/%2f",
        "amqp://guest:hunter2@[::1:5672/",
        "amqp://guest:5672#hunter2@broker.example/%2f",
        "amqp://guest:5672/hunter2@broker.example/%2f",
        "amqp://guest:5672?hunter2@broker.example/%2f",
        "amqp://guest:se#hunter2@broker.example/",
        "amqp://guest:hunter2@broker.example:notaport/",
        "amqp://guest:hunter2\n@broker.example/",
        "amqp:guest:hunter2@broker.example",
        "postgres://postgres@127.0.0.1/mdti?sslmode=disable&password=hunter2",
    ];

    #[test]
    fn a_mistyped_url_never_shows_its_password() {
        for raw in MISTYPED {
            let shown = redact_url(raw);
            assert!(!shown.contains("hunter2"), "{raw:?} shown as {shown:?}");
        }
    }

    #[test]
    fn a_message_quoting_a_url_or_its_password_is_scrubbed() {
        let raw = "amqp://guest:p%40ss@127.0.0.1:1/%2f";
        let message = format!("cannot use {raw}; password p@ss; raw p%40ss");
        assert_eq!(
            scrub_url(&message, raw),
            "cannot use amqp://guest:***@127.0.0.1:1/%2f; password ***; raw ***"
        );
        assert_eq!(scrub_url("refused", "postgres://h/db"), "refused");
    }

    #[test]
    fn a_mistyped_url_still_shows_where_it_points() {
        assert_eq!(
            redact_url("amqp://guest:5672#hunter2@broker.example/%2f"),
            "amqp://guest:***@broker.example/%2f"
        );
        assert_eq!(
            redact_url("amqp://user:p@ss hunter2@broker.example:5672/%2f"),
            "amqp://user:***@broker.example:5672/%2f"
        );
        assert_eq!(
            redact_url("amqp://guest:hunter2@[::1:5672/"),
            "amqp://***@[::1:5672 [unparsable URL]"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/mdti?sslmode=disable&password=hunter2"),
            "postgres://postgres@127.0.0.1/mdti?sslmode=disable&password=***"
        );
        assert_eq!(
            redact_url("amqp:guest:hunter2@broker.example"),
            "[unparsable URL]"
        );
    }
}
