//! Graph over TLS: the simulator served over HTTPS with a self-signed certificate made here.
//! Without the CA setting the client refuses it at once, naming the certificate problem; with
//! `ca_cert_file` pointing at the PEM it is trusted, next links included.

use std::path::PathBuf;

use mdti_worker::graph::{GraphClient, GraphError, GraphSettings, PageLimits};
use mdti_worker::sim::{self, SimConfig, SimHandle, TlsIdentity};

mod support;
use support::graph_settings;

/// The simulator over HTTPS, and its self-signed certificate as a PEM file (removed on drop).
struct TlsSim {
    sim: SimHandle,
    ca_file: PathBuf,
}

impl Drop for TlsSim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

async fn tls_sim() -> TlsSim {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    tls_sim_with(TlsIdentity {
        cert_chain_pem: certified.cert.pem().into_bytes(),
        private_key_pem: certified.key_pair.serialize_pem().into_bytes(),
    })
    .await
}

/// A self-signed certificate for `names` marked `CA:TRUE`, as `openssl req -x509` makes it.
fn ca_marked_identity(names: &[&str]) -> TlsIdentity {
    ca_marked_identity_with(names, |_| {})
}

fn ca_marked_identity_with(
    names: &[&str],
    adjust: impl FnOnce(&mut rcgen::CertificateParams),
) -> TlsIdentity {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    adjust(&mut params);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    TlsIdentity {
        cert_chain_pem: cert.pem().into_bytes(),
        private_key_pem: key.serialize_pem().into_bytes(),
    }
}

async fn tls_sim_with(identity: TlsIdentity) -> TlsSim {
    let ca_file = std::env::temp_dir().join(format!(
        "mdti-test-ca-{}.pem",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&ca_file, &identity.cert_chain_pem).unwrap();
    let sim = sim::spawn_tls(SimConfig::default(), &identity)
        .await
        .unwrap();
    assert!(sim.graph_base_url().starts_with("https://"));
    TlsSim { sim, ca_file }
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_at_once_with_the_reason() {
    let tls = tls_sim().await;
    let graph = GraphClient::new(GraphSettings {
        max_attempts: 6,
        ..graph_settings(&tls.sim)
    })
    .unwrap();

    let error = graph.whois("contoso.com").await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("certificate"), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(
        text.contains("--ca-cert"),
        "the reason says what to do: {text}"
    );
    assert!(
        matches!(
            error,
            GraphError::Token {
                transient: false,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.is_transient(), "waiting will not make it trusted");
    // One handshake, refused; no retry, and nothing reached the simulator's HTTP side.
    let retries = graph
        .stats()
        .retries
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(retries, 0);
    assert_eq!(tls.sim.count("token"), 0);
    assert_eq!(tls.sim.count("graph"), 0);
}

#[tokio::test]
async fn the_certificate_is_trusted_with_the_ca_setting_pages_included() {
    let tls = tls_sim().await;
    let graph = GraphClient::new(GraphSettings {
        ca_cert_file: Some(tls.ca_file.clone()),
        ..graph_settings(&tls.sim)
    })
    .unwrap();

    let whois = graph.whois("contoso.com").await.unwrap();
    assert!(whois.is_some());
    // A popular host has many pages: each next link is https on the same host, so it is
    // followed over TLS too.
    let limits = PageLimits {
        page_size: Some(20),
        max_pages: Some(3),
    };
    let pages = graph
        .passive_dns("popular.contoso.com", limits)
        .await
        .unwrap();
    assert_eq!(pages.pages, 3);
    assert_eq!(pages.items.len(), 60);
    assert_eq!(tls.sim.count("token"), 1);
    assert_eq!(tls.sim.count("whois"), 1);
    assert_eq!(tls.sim.count("passiveDns"), 3);
}

#[tokio::test]
async fn a_ca_file_that_is_not_pem_is_a_configuration_error_naming_the_file() {
    let tls = tls_sim().await;
    std::fs::write(&tls.ca_file, "not a certificate").unwrap();
    let error = GraphClient::new(GraphSettings {
        ca_cert_file: Some(tls.ca_file.clone()),
        ..graph_settings(&tls.sim)
    })
    .err()
    .expect("a CA file without a certificate is refused");
    let text = error.to_string();
    assert!(text.contains("CA certificate file"), "{text}");
    assert!(
        text.contains(tls.ca_file.file_name().unwrap().to_str().unwrap()),
        "{text}"
    );
}

#[tokio::test]
async fn turning_verification_off_accepts_any_certificate() {
    let tls = tls_sim().await;
    let graph = GraphClient::new(GraphSettings {
        tls_verify: false,
        ..graph_settings(&tls.sim)
    })
    .unwrap();
    assert!(graph.whois("contoso.com").await.unwrap().is_some());
}

#[tokio::test]
async fn a_self_signed_certificate_marked_ca_is_trusted_as_itself_for_its_own_names_only() {
    let tls = tls_sim_with(ca_marked_identity(&["127.0.0.1", "localhost"])).await;
    let graph = GraphClient::new(GraphSettings {
        ca_cert_file: Some(tls.ca_file.clone()),
        ..graph_settings(&tls.sim)
    })
    .unwrap();
    let whois = graph.whois("contoso.com").await.unwrap();
    assert!(whois.is_some());

    // The same kind of certificate for another name: given in the CA file, yet the name the
    // client connects to (127.0.0.1) is still checked.
    let elsewhere = tls_sim_with(ca_marked_identity(&["other.example"])).await;
    let graph = GraphClient::new(GraphSettings {
        ca_cert_file: Some(elsewhere.ca_file.clone()),
        ..graph_settings(&elsewhere.sim)
    })
    .unwrap();
    let error = graph.whois("contoso.com").await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("not valid for name \"127.0.0.1\""), "{text}");
    assert!(!error.is_transient(), "{text}");

    // Nor is an expired one trusted for being given.
    let expired = tls_sim_with(ca_marked_identity_with(&["127.0.0.1"], |params| {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }))
    .await;
    let graph = GraphClient::new(GraphSettings {
        ca_cert_file: Some(expired.ca_file.clone()),
        ..graph_settings(&expired.sim)
    })
    .unwrap();
    let text = graph.whois("contoso.com").await.unwrap_err().to_string();
    assert!(text.contains("expired"), "{text}");
}
