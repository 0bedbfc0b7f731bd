//! The one place that decides, for every Graph or token answer, whether to retry and how long to
//! wait. Nothing else in the crate inspects a status code to make that choice.
//!
//! - 2xx: success. 404: MDTI has nothing on this host, a normal empty answer (Graph documents no
//!   body for it, so the status alone decides).
//! - 401: the token was refused; refresh it once and try again.
//! - 429, and 503 with `Retry-After`: the tenant is throttled; wait exactly what Graph asked, and
//!   make the whole client wait, not just this request.
//! - 408, other 5xx, 429 without a header, timeouts, connection errors and truncated bodies:
//!   back off exponentially with full jitter, capped.
//! - Every other 4xx is the request's fault: retrying would only spend quota.
//! - A server certificate the client does not trust (unknown issuer, wrong name, expired) is a
//!   configuration problem: not retried, and the reason names the certificate problem.

use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::StatusCode;
use tokio_rustls::rustls;

/// What to do with one attempt's result.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Success,
    NotFound,
    RefreshToken,
    /// Graph said how long to wait; the whole client holds back that long.
    RetryAfter(Duration),
    /// A transient failure without a hint: exponential backoff with full jitter.
    Backoff(String),
    GiveUp(String),
}

pub fn classify_status(status: StatusCode, retry_after: Option<Duration>) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Success,
        404 => Verdict::NotFound,
        401 => Verdict::RefreshToken,
        429 | 503 => match retry_after {
            Some(wait) => Verdict::RetryAfter(wait),
            None => Verdict::Backoff(format!("HTTP {} without Retry-After", status.as_u16())),
        },
        408 | 500..=599 => match retry_after {
            // 504 can come with Retry-After too; honour it when it does.
            Some(wait) => Verdict::RetryAfter(wait),
            None => Verdict::Backoff(format!("HTTP {}", status.as_u16())),
        },
        other => Verdict::GiveUp(format!("HTTP {other} is not retryable")),
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

/// `Retry-After` is delta-seconds (Graph sends fractions like `2.128`) or an HTTP-date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Capped exponential backoff with full jitter: a random wait in `[0, min(cap, base * 2^n))`.
/// Full jitter spreads the retries of many tasks that failed together, so they do not return
/// to a struggling service as one wave.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let ceiling = exp.min(cap);
    if ceiling.is_zero() {
        return Duration::ZERO;
    }
    rand::thread_rng().gen_range(Duration::ZERO..ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_with_a_header_waits_what_graph_asked() {
        let wait = Duration::from_millis(2128);
        assert_eq!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, Some(wait)),
            Verdict::RetryAfter(wait)
        );
        assert_eq!(
            classify_status(StatusCode::SERVICE_UNAVAILABLE, Some(wait)),
            Verdict::RetryAfter(wait)
        );
    }

    #[test]
    fn server_errors_and_timeouts_back_off() {
        for status in [408, 500, 502, 503, 504] {
            let verdict = classify_status(StatusCode::from_u16(status).unwrap(), None);
            assert!(
                matches!(verdict, Verdict::Backoff(_)),
                "{status}: {verdict:?}"
            );
        }
    }

    #[test]
    fn client_errors_are_not_retried_but_404_is_an_empty_answer() {
        for status in [400, 403, 405, 409, 422] {
            let verdict = classify_status(StatusCode::from_u16(status).unwrap(), None);
            assert!(
                matches!(verdict, Verdict::GiveUp(_)),
                "{status}: {verdict:?}"
            );
        }
        assert_eq!(
            classify_status(StatusCode::NOT_FOUND, None),
            Verdict::NotFound
        );
        assert_eq!(
            classify_status(StatusCode::UNAUTHORIZED, None),
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
    }

    #[test]
    fn backoff_stays_under_its_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 0..40 {
            assert!(backoff_delay(attempt, base, cap) < cap);
        }
        assert!(backoff_delay(0, base, cap) < base);
    }
}
