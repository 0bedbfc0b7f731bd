//! The one place that decides, for every Graph or token answer, whether to retry and how long to
//! wait. Nothing else in the crate inspects a status code to make that choice.
//!
//! - 2xx: success. 404: MDTI has nothing on this host, a normal empty answer (Graph documents no
//!   body for it, so the status alone decides).
//! - 401: the token was refused; refresh it once and try again.
//! - 429, and 503 with `Retry-After`: the tenant is throttled; wait exactly what Graph asked, and
//!   make the whole client wait, not just this request. A wait past `--graph-max-retry-after`
//!   is not held at all: the request fails at once as transient (the message is retried later)
//!   rather than freeze every request of the process, or of the fleet, that long.
//! - 408, other 5xx, 429 without a header, timeouts, connection errors and truncated bodies:
//!   back off exponentially with full jitter, capped.
//! - Every other 4xx is the request's fault: retrying would only spend quota.
//! - A server certificate the client does not trust (unknown issuer, wrong name, expired) is a
//!   configuration problem: not retried, and the reason names the certificate problem.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use tokio_rustls::rustls;

/// What to do with one attempt's result.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Success,
    NotFound,
    RefreshToken,
    /// Graph said how long to wait; the whole client holds back that long (never past the cap
    /// given to [`classify_status`]).
    RetryAfter(Duration),
    /// Graph asked for a wait past the cap: fail now, as transient, and hold nothing.
    WaitTooLong(String),
    /// A transient failure without a hint: exponential backoff with full jitter.
    Backoff(String),
    GiveUp(String),
}

/// A `Retry-After` header: the wait it asks for and, for the error that may refuse it, the
/// header as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryAfter {
    /// `Duration::MAX` for a number of seconds past what a `Duration` holds.
    pub wait: Duration,
    /// Trimmed and cut to `HEADER_SHOWN` (40) characters: it ends up in an error message.
    pub header: String,
}

/// Characters of a `Retry-After` header quoted in an error; real ones are under 30.
const HEADER_SHOWN: usize = 40;

impl RetryAfter {
    /// `None` when the value is neither delta-seconds nor an HTTP-date.
    pub fn read(value: &str, now: SystemTime) -> Option<RetryAfter> {
        Some(RetryAfter {
            wait: parse_retry_after(value, now)?,
            header: value.trim().chars().take(HEADER_SHOWN).collect(),
        })
    }
}

/// What to do with an answer of `status`. A `Retry-After` longer than `max_wait` is never held.
pub fn classify_status(
    status: StatusCode,
    retry_after: Option<&RetryAfter>,
    max_wait: Duration,
) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Success,
        404 => Verdict::NotFound,
        401 => Verdict::RefreshToken,
        429 | 503 => match retry_after {
            Some(asked) => hold_or_refuse(asked, max_wait),
            None => Verdict::Backoff(format!("HTTP {} without Retry-After", status.as_u16())),
        },
        408 | 500..=599 => match retry_after {
            // 504 can come with Retry-After too; honour it when it does.
            Some(asked) => hold_or_refuse(asked, max_wait),
            None => Verdict::Backoff(format!("HTTP {}", status.as_u16())),
        },
        other => Verdict::GiveUp(format!("HTTP {other} is not retryable")),
    }
}

/// Hold what Graph asked, unless that is past the cap: a day-long hold would freeze every
/// request with messages in flight, so the request fails now and its message comes back later.
fn hold_or_refuse(asked: &RetryAfter, max_wait: Duration) -> Verdict {
    if asked.wait <= max_wait {
        return Verdict::RetryAfter(asked.wait);
    }
    let wait = if asked.wait == Duration::MAX {
        "longer than any clock holds".to_owned()
    } else if asked.wait.subsec_nanos() == 0 {
        format!("{}s", asked.wait.as_secs())
    } else {
        format!("{:.3}s", asked.wait.as_secs_f64())
    };
    Verdict::WaitTooLong(format!(
        "Graph asked to wait {wait} (Retry-After: {}), more than --graph-max-retry-after {}",
        asked.header,
        short_duration(max_wait)
    ))
}

/// `5m`, `90s`, `1500ms`: a duration the way the settings are written.
fn short_duration(duration: Duration) -> String {
    let (secs, millis) = (duration.as_secs(), duration.subsec_millis());
    match (secs, millis) {
        (0, 0) => "0s".to_owned(),
        (secs, 0) if secs % 3600 == 0 => format!("{}h", secs / 3600),
        (secs, 0) if secs % 60 == 0 => format!("{}m", secs / 60),
        (secs, 0) => format!("{secs}s"),
        _ => format!("{}ms", duration.as_millis()),
    }
}

/// Transport failures are worth another try, and the reason says which kind it was; except a
/// certificate the client does not trust, which no retry will change.
pub fn classify_transport(error: &reqwest::Error) -> Verdict {
    if let Some(problem) = certificate_problem(error) {
        return Verdict::GiveUp(format!(
            "TLS certificate not trusted: {problem} (if a proxy or private CA signs it, point --ca-cert at that CA's PEM)"
        ));
    }
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "body could not be read"
    } else {
        "request failed"
    };
    // reqwest's Display carries the URL (host keys, never secrets); the causes say what
    // actually happened (refused, reset, DNS).
    Verdict::Backoff(format!("{kind}: {}{}", without_url(error), causes(error)))
}

/// The rustls verdict on the server's certificate, found anywhere in the error's causes.
fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls @ rustls::Error::InvalidCertificate(_)) =
            error.downcast_ref::<rustls::Error>()
        {
            return Some(tls.to_string());
        }
        // An io::Error's source() skips the error it wraps, and that is where the TLS layer
        // puts the rustls error (inside another io::Error): open it instead.
        current = match error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// `: cause: deeper cause` for every cause not already in the text before it.
fn causes(error: &reqwest::Error) -> String {
    let mut out = String::new();
    let mut current = std::error::Error::source(error);
    while let Some(cause) = current {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        current = cause.source();
    }
    out
}

/// reqwest errors print their URL; keep the message short and free of query strings.
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), url.path());
    }
    text
}

/// `Retry-After` is delta-seconds (Graph sends fractions like `2.128`) or an HTTP-date. A number
/// too large for a `Duration` is still a request to wait very long: `Duration::MAX`, which the
/// cap then refuses.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        if !(seconds.is_finite() && seconds >= 0.0) {
            return None;
        }
        // abs() turns -0 into 0, which try_from_secs_f64 would call negative.
        return Some(Duration::try_from_secs_f64(seconds.abs()).unwrap_or(Duration::MAX));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(300);

    fn asked(value: &str) -> RetryAfter {
        RetryAfter::read(value, SystemTime::now()).expect("a readable Retry-After")
    }

    #[test]
    fn throttling_with_a_header_waits_what_graph_asked() {
        let wait = Duration::from_millis(2128);
        assert_eq!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, Some(&asked("2.128")), CAP),
            Verdict::RetryAfter(wait)
        );
        assert_eq!(
            classify_status(StatusCode::SERVICE_UNAVAILABLE, Some(&asked("2.128")), CAP),
            Verdict::RetryAfter(wait)
        );
    }

    #[test]
    fn a_wait_past_the_cap_is_refused_naming_what_graph_sent() {
        let verdict = classify_status(StatusCode::TOO_MANY_REQUESTS, Some(&asked("86400")), CAP);
        assert_eq!(
            verdict,
            Verdict::WaitTooLong(
                "Graph asked to wait 86400s (Retry-After: 86400), more than --graph-max-retry-after 5m"
                    .into()
            )
        );
        let verdict = classify_status(StatusCode::TOO_MANY_REQUESTS, Some(&asked("300.5")), CAP);
        assert!(
            matches!(&verdict, Verdict::WaitTooLong(reason) if reason.contains("wait 300.500s")),
            "{verdict:?}"
        );
        // Exactly the cap is still held.
        assert_eq!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, Some(&asked("300")), CAP),
            Verdict::RetryAfter(CAP)
        );
    }

    #[test]
    fn server_errors_and_timeouts_back_off() {
        for status in [408, 500, 502, 503, 504] {
            let verdict = classify_status(StatusCode::from_u16(status).unwrap(), None, CAP);
            assert!(
                matches!(verdict, Verdict::Backoff(_)),
                "{status}: {verdict:?}"
            );
        }
    }

    #[test]
    fn client_errors_are_not_retried_but_404_is_an_empty_answer() {
        for status in [400, 403, 405, 409, 422] {
            let verdict = classify_status(StatusCode::from_u16(status).unwrap(), None, CAP);
            assert!(
                matches!(verdict, Verdict::GiveUp(_)),
                "{status}: {verdict:?}"
            );
        }
        assert_eq!(
            classify_status(StatusCode::NOT_FOUND, None, CAP),
            Verdict::NotFound
        );
        assert_eq!(
            classify_status(StatusCode::UNAUTHORIZED, None, CAP),
            Verdict::RefreshToken
        );
    }

    #[test]
    fn retry_after_reads_fractions_whole_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("2.128", now),
            Some(Duration::from_millis(2128))
        );
        assert_eq!(parse_retry_after("10", now), Some(Duration::from_secs(10)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("1e20", now), Some(Duration::MAX));
        assert_eq!(parse_retry_after("NaN", now), None);
    }

    /// Retry-After values a hostile or broken server might send: fixed edge cases, then a few
    /// thousand generated from number, date and garbage pieces (seeded, so a failure repeats).
    fn hostile_retry_after_values() -> Vec<String> {
        let mut values = edge_retry_after_values();
        values.extend(generated_retry_after_values());
        values
    }

    /// Edge cases of numbers, dates and garbage, each written out.
    fn edge_retry_after_values() -> Vec<String> {
        let mut values: Vec<String> = [
            "",
            " ",
            "0",
            "-0",
            "+5",
            "-1",
            ".5",
            "5.",
            "1e20",
            "1e12",
            "1E400",
            "1e-400",
            "86400",
            "1.7976931348623157e308",
            "18446744073709551616",
            "18446744073709551615",
            "inf",
            "-inf",
            "+infinity",
            "NaN",
            "nan",
            "0x10",
            "1_000",
            "2.128",
            "\u{0}",
            "Wed, 21 Oct 2099 07:28:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Mon, 32 Foo 2099 99:99:99 GMT",
        ]
        .iter()
        .map(|v| v.to_string())
        .collect();
        values.push("9".repeat(400));
        values.push(format!("0.{}1", "0".repeat(400)));
        values
    }

    /// A few thousand values made of number, date and garbage pieces, and random bytes.
    fn generated_retry_after_values() -> Vec<String> {
        use rand::{Rng, SeedableRng};
        let mut values = Vec::new();
        const PIECES: [&str; 22] = [
            "0",
            "1",
            "7",
            "9",
            "99999999999",
            "4294967296",
            ".",
            "e",
            "E",
            "+",
            "-",
            "inf",
            "NaN",
            " ",
            "GMT",
            ",",
            "Wed",
            "2099",
            ":",
            "Oct",
            "\u{ff}",
            "x",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for _ in 0..3000 {
            let pieces = rng.gen_range(1..8);
            values.push(
                (0..pieces)
                    .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
                    .collect(),
            );
        }
        for _ in 0..1000 {
            let bytes: Vec<u8> = (0..rng.gen_range(0..24)).map(|_| rng.gen()).collect();
            values.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        values
    }

    #[test]
    fn no_retry_after_value_panics_or_holds_past_the_cap() {
        let now = SystemTime::now();
        for value in hostile_retry_after_values() {
            let header = RetryAfter::read(&value, now);
            for status in [
                StatusCode::TOO_MANY_REQUESTS,
                StatusCode::SERVICE_UNAVAILABLE,
            ] {
                match classify_status(status, header.as_ref(), CAP) {
                    Verdict::RetryAfter(wait) => {
                        assert!(wait <= CAP, "{value:?} made the client hold {wait:?}")
                    }
                    Verdict::WaitTooLong(reason) => {
                        assert!(reason.len() < 200, "{value:?}: {reason}")
                    }
                    Verdict::Backoff(_) => assert!(header.is_none(), "{value:?}"),
                    other => panic!("{value:?} gave {other:?}"),
                }
            }
        }
    }

    #[test]
    fn durations_are_shown_the_way_settings_are_written() {
        assert_eq!(short_duration(Duration::from_secs(300)), "5m");
        assert_eq!(short_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(short_duration(Duration::from_secs(90)), "90s");
        assert_eq!(short_duration(Duration::from_millis(1500)), "1500ms");
    }
}
