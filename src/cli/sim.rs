//! `sim`: the Graph simulator, served until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::common::shutdown_signal;
use crate::config::parse_duration;
use crate::sim;

#[derive(Args, Debug)]
pub struct SimCmd {
    /// Address to listen on
    #[arg(long, env = "MDTI_SIM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Items per page when the client gives no $top
    #[arg(long, default_value_t = 50)]
    pub page_size: usize,
    /// Enforced requests per second; beyond it, 429 with Retry-After
    #[arg(long)]
    pub rate_limit: Option<f64>,
    /// Share of Graph requests answered with a 5xx
    #[arg(long, default_value_t = 0.0)]
    pub error_ratio: f64,
    /// Latency added to every answer
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub latency: Duration,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key
    #[arg(long, env = "MDTI_SIM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert
    #[arg(long, env = "MDTI_SIM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

pub async fn run(cmd: SimCmd) -> anyhow::Result<i32> {
    let config = sim::SimConfig {
        page_size: cmd.page_size,
        rate_limit: cmd.rate_limit,
        error_ratio: cmd.error_ratio,
        latency: cmd.latency,
        ..sim::SimConfig::default()
    };
    let tls = match (&cmd.tls_cert, &cmd.tls_key) {
        (Some(cert), Some(key)) => Some(sim::TlsIdentity::from_files(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!(
        "Graph simulator on {scheme}://{0}/v1.0 (token: {scheme}://{0}/<tenant>/oauth2/v2.0/token, client sim-client / sim-secret)",
        cmd.listen
    );
    sim::serve(config, cmd.listen, tls.as_ref(), shutdown_signal()).await?;
    Ok(0)
}
