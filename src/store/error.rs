//! The store's one error type, and the question the worker asks of it: retry later, or give up
//! on this message?

use sqlx::migrate::MigrateError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not a `source`: sqlx's message already quotes the server's, and an error chain printed
    /// whole (`{:#}`) would repeat it once per level.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] MigrateError),
    /// A stored row that this build cannot read back (a kind or enricher name it does not know).
    #[error("stored {what} could not be read: {detail}")]
    Decode { what: &'static str, detail: String },
    /// One failure of a transaction that held several messages' rows, given to each of them.
    #[error("{0}")]
    Shared(std::sync::Arc<StoreError>),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Database(error)
    }
}

impl StoreError {
    /// Whether the failure is the database's or the network's rather than the data's, so the
    /// same write may succeed later: connection refused, reset or closed, pool timeout, I/O,
    /// serialization failure and deadlock, administrator or crash shutdown, the server starting
    /// up, running out of connections or disk, failover to a read-only replica. Constraint
    /// violations, bad values and SQL errors are not: retrying would fail the same way.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(error) => sqlx_is_transient(error),
            StoreError::Migrate(error) => match error {
                MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _) => {
                    sqlx_is_transient(error)
                }
                _ => false,
            },
            StoreError::Decode { .. } => false,
            StoreError::Shared(error) => error.is_transient(),
        }
    }

    /// Whether a transaction holding several messages' rows may have failed because of one of
    /// them, so that each written alone would fail only that one: anything about the data
    /// (not transient), and lock-order conflicts (deadlock, serialization), which are
    /// unlikely to recur in a smaller transaction. A failure of the database or the connection
    /// is not: every message would fail the same way, each after its own wait.
    pub fn may_be_one_writes(&self) -> bool {
        !self.is_transient() || matches!(self.sqlstate().as_deref(), Some("40001" | "40P01"))
    }

    /// The SQLSTATE of a database error, if the server sent one.
    pub fn sqlstate(&self) -> Option<String> {
        let error = match self {
            StoreError::Database(error) => error,
            StoreError::Migrate(
                MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _),
            ) => error,
            StoreError::Shared(error) => return error.sqlstate(),
            _ => return None,
        };
        match error {
            sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
            _ => None,
        }
    }
}

fn sqlx_is_transient(error: &sqlx::Error) -> bool {
    match error {
        // Refused, reset, broken pipe, unexpected EOF: the connection, not the statement.
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        // A connection dropped mid-message shows up as a protocol error.
        sqlx::Error::Protocol(_) => true,
        // Every connection stayed busy or could not be opened within the acquire timeout.
        sqlx::Error::PoolTimedOut => true,
        // The pool was closed under us: the worker is shutting down, so the message is not at
        // fault and must go back to the queue.
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| sqlstate_is_transient(&code)),
        sqlx::Error::Migrate(error) => match error.as_ref() {
            MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _) => {
                sqlx_is_transient(error)
            }
            _ => false,
        },
        _ => false,
    }
}

/// <https://www.postgresql.org/docs/current/errcodes-appendix.html>
fn sqlstate_is_transient(code: &str) -> bool {
    // Class 08: connection exception.
    code.starts_with("08")
        // Class 53: insufficient resources (disk full, out of memory, too many connections).
        || (code.starts_with("53"))
        || matches!(
            code,
            // serialization_failure, deadlock_detected
            "40001" | "40P01"
            // admin_shutdown, crash_shutdown, cannot_connect_now
            | "57P01" | "57P02" | "57P03"
            // idle_session_timeout
            | "57P05"
            // query_canceled (statement_timeout, pg_cancel_backend)
            | "57014"
            // lock_not_available (lock_timeout)
            | "55P03"
            // read_only_sql_transaction: a failover left us on a standby for a while
            | "25006"
            // io_error
            | "58030"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for code in [
            "08006", "08001", "40001", "40P01", "57P01", "57P02", "57P03", "53300",
        ] {
            assert!(sqlstate_is_transient(code), "{code}");
        }
        for code in [
            "23505", "23503", "23514", "42601", "42P01", "22P02", "54000",
        ] {
            assert!(!sqlstate_is_transient(code), "{code}");
        }
    }

    #[test]
    fn a_shared_failure_is_classified_as_its_cause() {
        let shared = |error: sqlx::Error| StoreError::Shared(std::sync::Arc::new(error.into()));
        assert!(shared(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!shared(sqlx::Error::RowNotFound).is_transient());
    }

    #[test]
    fn only_failures_that_may_be_one_messages_split_a_group_commit() {
        let decode = StoreError::Decode {
            what: "extract",
            detail: String::new(),
        };
        assert!(decode.may_be_one_writes(), "data: try each alone");
        assert!(!StoreError::from(sqlx::Error::PoolTimedOut).may_be_one_writes());
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!StoreError::from(sqlx::Error::Io(refused)).may_be_one_writes());
    }

    #[test]
    fn a_database_error_printed_with_its_causes_says_what_happened_once() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused here");
        let error = anyhow::Error::from(StoreError::from(sqlx::Error::Io(refused)));
        let printed = format!("{error:#}");
        assert_eq!(printed.matches("refused here").count(), 1, "{printed}");
    }

    #[test]
    fn connection_failures_are_transient() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(StoreError::from(sqlx::Error::Io(refused)).is_transient());
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_transient());
        assert!(StoreError::from(sqlx::Error::PoolClosed).is_transient());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_transient());
        assert!(!StoreError::Decode {
            what: "extract",
            detail: String::new()
        }
        .is_transient());
    }
}
