use clap::Parser;
use mdti_worker::cli::{self, Cli, LogFormat};

// Under load the worker allocates and frees many short-lived buffers across its runtime's
// threads (JSON pages, row arrays); glibc's malloc spent about as much CPU on them as the
// worker's own code. jemalloc's per-thread caches make that cheap.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// jemalloc's settings, read once at start-up (`_RJEM_MALLOC_CONF` in the environment still
// overrides them). By default each of eight arenas keeps freed pages dirty for 10 s: in the
// benchmark at prefetch 256 the worker ended its run holding some 25 MiB more than with these
// settings, and peaked some 8 MiB higher. One arena serves a runtime of a few threads (each has
// its own cache in front of it); freed pages go back once 100 ms old, purged by the threads
// that allocate as they go rather than by a background thread of jemalloc's. A throttled worker
// woke that thread some 900 times a run, and a wake-up is what waiting costs: without it, 8 %
// fewer wake-ups and some 10 % less CPU throttled, the same unthrottled (README, Benchmark). An
// idle worker keeps the pages it freed last until it allocates again.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 70] =
    b"narenas:1,dirty_decay_ms:100,muzzy_decay_ms:0,background_thread:false\0";

fn main() -> std::process::ExitCode {
    // The env file must be loaded before clap reads the environment, and before any thread
    // exists: look for --config by hand first.
    if let Some(path) = config_path() {
        if let Err(error) = mdti_worker::config::load_env_file(path.as_ref()) {
            eprintln!("error: {error}");
            return std::process::ExitCode::from(2);
        }
    }
    let cli = Cli::parse();
    mdti_worker::logging::init(matches!(cli.log_format, LogFormat::Json));
    let runtime = match cli.runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--config FILE`, `--config=FILE` or `MDTI_CONFIG`, read without clap.
fn config_path() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--config=").map(str::to_owned))
        })
        .or_else(|| std::env::var("MDTI_CONFIG").ok())
}
