//! The two services the commands need, RabbitMQ and PostgreSQL, and what a command says when it
//! cannot get a first connection to one: [`Unavailable`], whose text names the service and its
//! URL (password hidden), says the cause once, and gives the way forward.
//!
//! The broker's connect (`queue::connect`) and the database's first connection (`store`) build
//! it; everything above prints it as it is. A running worker that loses a service does not see
//! it: its reconnects and pauses are the consumer's and the pipeline's.

use std::error::Error;
use std::fmt;
use std::time::Duration;

/// How long a command waits for a service to answer its first connection. Refused and unknown
/// hosts answer at once; this bounds a host that drops the packets, or a server that accepts
/// the connection and never speaks.
pub const FIRST_ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Longest cause (in characters) kept: the rest of a server's message adds nothing a person reads.
const MAX_CAUSE_CHARS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    RabbitMq,
    Postgres,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::RabbitMq => "RabbitMQ",
            Service::Postgres => "PostgreSQL",
        }
    }

    /// The environment variable and the flag that set its URL (`config::BrokerArgs`,
    /// `config::DatabaseArgs`).
    pub fn setting(self) -> (&'static str, &'static str) {
        match self {
            Service::RabbitMq => ("MDTI_AMQP_URL", "--amqp-url"),
            Service::Postgres => ("MDTI_DATABASE_URL", "--database-url"),
        }
    }

    /// What a usable URL looks like.
    fn url_shape(self) -> &'static str {
        match self {
            Service::RabbitMq => "amqp://user:password@host:5672/%2f",
            Service::Postgres => "postgres://user:password@host:5432/mdti",
        }
    }

    /// What to check when the service answered and refused.
    fn refused_hint(self) -> &'static str {
        match self {
            Service::RabbitMq => "check the user, password and virtual host in",
            Service::Postgres => "check the user, password and database name in",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why there is no connection, as far as the way forward differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Nothing usable answered: connection refused, unknown host, no answer in time, reset.
    Unreachable,
    /// The service answered and refused: wrong user or password, no such database or virtual
    /// host, no right to create the database.
    Refused,
    /// The URL itself cannot be used.
    BadUrl,
}

/// A service a command needs could not be connected to. Its `Display` is the whole guide, on
/// several lines; [`Unavailable::summary`] is its first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    service: Service,
    /// The URL as it may be shown (its password hidden).
    url: String,
    problem: Problem,
    /// Said once, and as it may be shown (no password in it).
    cause: String,
}

impl Unavailable {
    /// `shown_url` and `cause` must already be fit to print: the URL's password hidden, and no
    /// password in the cause (`secret::redact_url`, `secret::scrub_url`).
    pub fn new(service: Service, shown_url: String, problem: Problem, cause: &str) -> Self {
        let cause = match cause.char_indices().nth(MAX_CAUSE_CHARS) {
            Some((cut, _)) => format!("{}…", &cause[..cut]),
            None => cause.to_owned(),
        };
        Unavailable {
            service,
            url: shown_url,
            problem,
            cause,
        }
    }

    /// No answer at all within `limit`.
    pub fn no_answer(service: Service, shown_url: String, limit: Duration) -> Self {
        let cause = format!("no answer within {} s", limit.as_secs_f64());
        Unavailable::new(service, shown_url, Problem::Unreachable, &cause)
    }

    pub fn service(&self) -> Service {
        self.service
    }

    pub fn problem(&self) -> Problem {
        self.problem
    }

    pub fn cause(&self) -> &str {
        &self.cause
    }

    /// The first line: the service, its URL and the cause, without the way forward (for a log
    /// line repeated while a running worker reconnects).
    pub fn summary(&self) -> String {
        let (service, url, cause) = (self.service, &self.url, &self.cause);
        match self.problem {
            Problem::Unreachable => format!("cannot reach {service} at {url}: {cause}"),
            Problem::Refused => format!("{service} at {url} refused the connection: {cause}"),
            // A parser's reason often quotes the URL already (as shown, password hidden).
            Problem::BadUrl if cause.contains(url.as_str()) => {
                format!("unusable {service} URL: {cause}")
            }
            Problem::BadUrl => format!("unusable {service} URL {url}: {cause}"),
        }
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (variable, flag) = self.service.setting();
        let service = self.service;
        writeln!(f, "{}", self.summary())?;
        match self.problem {
            Problem::Unreachable => {
                writeln!(
                    f,
                    "  start it: `bash scripts/services.sh` (starts RabbitMQ and PostgreSQL on \
                     this machine, installing them if missing)"
                )?;
                writeln!(f, "        or: `docker compose up -d rabbitmq postgres`")?;
                write!(f, "  or set {variable} ({flag}) to where {service} runs")
            }
            Problem::Refused => {
                write!(f, "  {} {variable} ({flag})", service.refused_hint())?;
                if service == Service::Postgres {
                    write!(f, "; `mdti-worker migrate` creates a missing database")?;
                }
                Ok(())
            }
            Problem::BadUrl => write!(
                f,
                "  set {variable} ({flag}) to a URL like {}",
                service.url_shape()
            ),
        }
    }
}

impl Error for Unavailable {}

/// The messages of `error` and of its sources, each said once: client libraries wrap an I/O
/// error and print it inside their own message, so a plain walk of the chain says
/// "Connection refused" twice. A level whose message an outer one already contains is dropped.
pub fn causes(error: &(dyn Error + 'static)) -> String {
    let mut kept: Vec<String> = Vec::new();
    let mut level = Some(error);
    // Bounded: a chain is a handful of levels, but nothing stops a cycle-like long one.
    for _ in 0..16 {
        let Some(current) = level else { break };
        let text = current.to_string();
        let text = text.trim();
        if !text.is_empty() && !kept.iter().any(|outer| outer.contains(text)) {
            kept.push(text.to_owned());
        }
        level = current.source();
    }
    kept.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library error that prints its source inside its own message, as lapin's and sqlx's do.
    #[derive(Debug)]
    struct Wrapping(std::io::Error);

    impl fmt::Display for Wrapping {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "IO error: {}", self.0)
        }
    }

    impl Error for Wrapping {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[derive(Debug)]
    struct Labelled(&'static str, std::io::Error);

    impl fmt::Display for Labelled {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Labelled {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.1)
        }
    }

    fn refused() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused")
    }

    #[test]
    fn a_cause_its_wrapper_already_prints_is_said_once() {
        assert_eq!(causes(&Wrapping(refused())), "IO error: Connection refused");
    }

    #[test]
    fn a_source_that_adds_something_is_kept_after_its_label() {
        let error = Labelled("opening the session", refused());
        assert_eq!(causes(&error), "opening the session: Connection refused");
    }

    fn unreachable_broker() -> Unavailable {
        Unavailable::new(
            Service::RabbitMq,
            "amqp://guest:***@127.0.0.1:1/%2f".into(),
            Problem::Unreachable,
            "IO error: Connection refused",
        )
    }

    #[test]
    fn the_guide_names_the_service_its_url_the_cause_and_the_way_forward() {
        let text = unreachable_broker().to_string();
        assert_eq!(
            text.lines().next().unwrap(),
            "cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f: IO error: Connection refused"
        );
        for way in [
            "`bash scripts/services.sh`",
            "`docker compose up -d rabbitmq postgres`",
            "MDTI_AMQP_URL (--amqp-url)",
        ] {
            assert!(text.contains(way), "{way} missing from:\n{text}");
        }
        assert_eq!(text.matches("refused").count(), 1, "{text}");
    }

    #[test]
    fn a_refusal_points_at_the_credentials_not_at_starting_the_service() {
        let error = Unavailable::new(
            Service::Postgres,
            "postgres://app:***@db.example/mdti".into(),
            Problem::Refused,
            "password authentication failed for user \"app\"",
        );
        let text = error.to_string();
        assert!(
            text.starts_with("PostgreSQL at postgres://app:***@db.example/mdti refused"),
            "{text}"
        );
        assert!(
            text.contains("MDTI_DATABASE_URL (--database-url)"),
            "{text}"
        );
        assert!(text.contains("`mdti-worker migrate`"), "{text}");
        assert!(!text.contains("services.sh"), "{text}");
    }

    #[test]
    fn a_long_cause_is_cut() {
        let long = "x".repeat(10_000);
        let error = Unavailable::new(Service::Postgres, String::new(), Problem::Refused, &long);
        assert_eq!(error.cause().chars().count(), MAX_CAUSE_CHARS + 1);
    }

    #[test]
    fn no_answer_says_how_long_it_waited() {
        let error = Unavailable::no_answer(
            Service::Postgres,
            "postgres://h/db".into(),
            FIRST_ANSWER_WITHIN,
        );
        assert_eq!(
            error.summary(),
            "cannot reach PostgreSQL at postgres://h/db: no answer within 5 s"
        );
    }
}
