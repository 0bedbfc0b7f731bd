//! RabbitMQ or PostgreSQL not there when a command starts: the command ends at once with one
//! error that names the service and its URL (the password hidden), says the cause once, and
//! gives the way forward (`scripts/services.sh`, `docker compose up -d`, the setting to change).
//! "Not there" is a closed port: a listener bound, its port taken, the listener dropped.
//!
//! The other service is the real one, so that the error is the missing one's however far the
//! command would otherwise get.

mod support;

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdti_worker::queue::Topology;
use support::{amqp_url, delete_topology, test_topology, TestDb};

const PASSWORD: &str = "s3cret";

/// Far beyond the milliseconds a refused connection takes; a command that waits out a pool's
/// acquire timeout, or retries, is killed here.
const BOUND: Duration = Duration::from_secs(20);

/// A port of this host nothing listens on (its listener is dropped before the port is used).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// What a run of the binary left.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn read_all(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = from.read_to_string(&mut text);
        text
    })
}

/// Run the binary with `args` and `env`, `8.8.8.8` on stdin; killed, and the test failed, past
/// [`BOUND`].
fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mdti-worker"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("MDTI_")) {
        command.env_remove(name);
    }
    let mut child = command
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // Dropped at once: a command that reads stdin sees one line and its end.
    let _ = child.stdin.take().unwrap().write_all(b"8.8.8.8\n");
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{args:?} still running after {BOUND:?}: it waited (for a pool, a retry) instead \
                 of saying the service is missing; stderr so far:\n{}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// One service's guide in `text`, said once, and the password nowhere.
fn assert_guide(text: &str, service: &str, shown_url: &str, setting: &str, what: &str) {
    assert!(
        text.contains(&format!("cannot reach {service} at {shown_url}: ")),
        "{what}: the service and its URL (password hidden) are not named:\n{text}"
    );
    for way in [
        "`bash scripts/services.sh`",
        "`docker compose up -d rabbitmq postgres`",
        setting,
    ] {
        assert!(text.contains(way), "{what}: {way} missing:\n{text}");
    }
    assert_eq!(
        text.matches("refused").count(),
        1,
        "{what}: the cause is not said exactly once:\n{text}"
    );
    assert!(
        !text.contains("pool timed out"),
        "{what}: waited for the pool:\n{text}"
    );
}

fn assert_fails_with_guide(run: &Run, service: &str, shown_url: &str, setting: &str, what: &str) {
    assert!(
        !run.status.success(),
        "{what} succeeded:\n{}{}",
        run.stdout,
        run.stderr
    );
    assert_guide(&run.stderr, service, shown_url, setting, what);
    for output in [&run.stdout, &run.stderr] {
        assert!(
            !output.contains(PASSWORD),
            "{what}: the password leaked:\n{output}"
        );
    }
}

#[tokio::test]
async fn rabbitmq_missing_ends_every_command_at_once_with_the_way_forward() {
    let db = TestDb::new().await;
    let port = closed_port();
    let url = format!("amqp://guest:{PASSWORD}@127.0.0.1:{port}/%2f");
    let shown = format!("amqp://guest:***@127.0.0.1:{port}/%2f");
    let broker = [
        "--amqp-url",
        url.as_str(),
        "--database-url",
        db.url.as_str(),
    ];
    let commands: [&[&str]; 6] = [
        &["demo"],
        &["publish", "--no-progress"],
        &["dlq", "list"],
        &["dlq", "replay"],
        &["worker", "--simulator", "--metrics-listen", "off"],
        &["bench", "--observables", "10"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        // `dlq` takes no database.
        let flags = if command[0] == "dlq" {
            &broker[..2]
        } else {
            &broker[..]
        };
        args.extend(flags);
        let run = run(&args, &[]);
        let what = format!("{command:?}");
        assert_fails_with_guide(&run, "RabbitMQ", &shown, "MDTI_AMQP_URL", &what);
    }
    // The setting the guide names is the one the command reads.
    let run = run(&["dlq", "list"], &[("MDTI_AMQP_URL", url.as_str())]);
    assert_fails_with_guide(
        &run,
        "RabbitMQ",
        &shown,
        "MDTI_AMQP_URL",
        "MDTI_AMQP_URL set",
    );
}

#[tokio::test]
async fn postgres_missing_ends_every_command_at_once_with_the_way_forward() {
    let topology = test_topology();
    let port = closed_port();
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/db");
    let shown = format!("postgres://postgres:***@127.0.0.1:{port}/db");
    let amqp = amqp_url();
    let commands: [&[&str]; 7] = [
        &["report"],
        &["export"],
        &["migrate"],
        &["sync-profiles", "--simulator"],
        &["worker", "--simulator", "--metrics-listen", "off"],
        &["demo"],
        &["bench", "--observables", "10"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend(["--database-url", url.as_str()]);
        if matches!(command[0], "worker" | "demo" | "bench") {
            args.extend(["--amqp-url", amqp.as_str()]);
        }
        if matches!(command[0], "worker" | "demo") {
            args.extend(["--queue-prefix", topology.prefix.as_str()]);
        }
        let run = run(&args, &[]);
        let what = format!("{command:?}");
        assert_fails_with_guide(&run, "PostgreSQL", &shown, "MDTI_DATABASE_URL", &what);
    }
    let run = run(&["report"], &[("MDTI_DATABASE_URL", url.as_str())]);
    assert_fails_with_guide(
        &run,
        "PostgreSQL",
        &shown,
        "MDTI_DATABASE_URL",
        "MDTI_DATABASE_URL set",
    );
    // Nothing should have been declared; should a change make it so, it is not left behind.
    let demo = Topology {
        prefix: format!("{}.demo", topology.prefix),
        retry_delay: Duration::from_secs(2),
    };
    for declared in [&topology, &demo] {
        delete_topology(declared).await;
    }
}

/// `status` shows the half it can gather (as documented), with the missing service's guide in
/// place of the other half; with neither service there it fails, with both guides.
#[tokio::test]
async fn status_gives_the_missing_services_guide_in_place_of_its_half() {
    let topology = test_topology();
    let pg_port = closed_port();
    let pg_url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{pg_port}/db");
    let pg_shown = format!("postgres://postgres:***@127.0.0.1:{pg_port}/db");
    let amqp = amqp_url();
    let prefix = ["--queue-prefix", topology.prefix.as_str()];

    let mut args = vec!["status", "--database-url", pg_url.as_str()];
    args.extend(["--amqp-url", amqp.as_str()]);
    args.extend(prefix);
    let half = run(&args, &[]);
    assert!(half.status.success(), "the broker half is shown: {half:?}");
    assert!(
        half.stdout
            .contains("note: Postgres part missing (done, rates, sources): cannot reach"),
        "{}",
        half.stdout
    );
    assert_guide(
        &half.stdout,
        "PostgreSQL",
        &pg_shown,
        "MDTI_DATABASE_URL",
        "status",
    );
    assert!(!half.stdout.contains(PASSWORD) && !half.stderr.contains(PASSWORD));

    let amqp_port = closed_port();
    let amqp_url = format!("amqp://guest:{PASSWORD}@127.0.0.1:{amqp_port}/%2f");
    let amqp_shown = format!("amqp://guest:***@127.0.0.1:{amqp_port}/%2f");
    let mut args = vec!["status", "--database-url", pg_url.as_str()];
    args.extend(["--amqp-url", amqp_url.as_str()]);
    args.extend(prefix);
    let neither = run(&args, &[]);
    assert!(!neither.status.success(), "nothing to show: {neither:?}");
    let (broker_note, database_note) = neither
        .stdout
        .split_once("note: Postgres part missing")
        .expect("the Postgres note follows the broker's");
    assert_guide(
        broker_note,
        "RabbitMQ",
        &amqp_shown,
        "MDTI_AMQP_URL",
        "status, broker note",
    );
    assert_guide(
        database_note,
        "PostgreSQL",
        &pg_shown,
        "MDTI_DATABASE_URL",
        "status, Postgres note",
    );
    assert!(!neither.stdout.contains(PASSWORD) && !neither.stderr.contains(PASSWORD));
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\nstdout:\n{}\nstderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}
