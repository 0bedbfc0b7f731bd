//! Whom Graph and login connections trust with `--ca-cert`: the usual public roots (the
//! webpki-roots reqwest uses on its own) and the file's certificates as CAs; and a certificate
//! of that file presented as the server's own, as it is.
//!
//! The last is for the self-signed certificate `openssl req -x509` makes: it is marked
//! `CA:TRUE`, and WebPKI refuses a CA certificate as a server's (`CaUsedAsEndEntity`) where curl
//! accepts it. Such a certificate is trusted only when it is byte for byte one the operator
//! gave, and only for the names it carries.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{verify_server_name, WebPkiServerVerifier};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::GraphError;

/// The certificates of a PEM file; a file with none is refused here, not at the first
/// handshake far from the cause.
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, GraphError> {
    let problem = |what: String| {
        GraphError::Config(format!("CA certificate file {}: {what}", path.display()))
    };
    let pem = std::fs::read(path).map_err(|e| problem(e.to_string()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(format!("unreadable PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(problem(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    Ok(certificates)
}

/// A TLS client configuration (for `path`'s certificates, `given`) trusting the public roots, `given` as CAs, and `given` as the
/// server's own certificate.
pub(crate) fn client_config(
    path: &Path,
    given: Vec<CertificateDer<'static>>,
) -> Result<ClientConfig, GraphError> {
    let problem = |what: String| {
        GraphError::Config(format!("CA certificate file {}: {what}", path.display()))
    };
    // An explicit provider: the dependency graph enables more than one, so rustls cannot pick
    // a process default on its own.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for certificate in &given {
        roots
            .add(certificate.clone())
            .map_err(|e| problem(format!("a certificate cannot be trusted: {e}")))?;
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| problem(e.to_string()))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| problem(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(GivenOrWebPki { webpki, given }))
        .with_no_client_auth();
    // What reqwest offers when it builds the configuration itself (with its http2 feature).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// WebPKI's verdict, except that a certificate refused only for being a CA is accepted when it
/// is one of `given` and names the server.
#[derive(Debug)]
struct GivenOrWebPki {
    webpki: Arc<WebPkiServerVerifier>,
    given: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for GivenOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match verdict {
            Err(error) if ca_used_as_end_entity(&error) && self.is_given(end_entity) => {
                // WebPKI checks the validity period before the CA flag, so this certificate is
                // in date; what its refusal skipped is the name, checked here.
                let certificate = ParsedCertificate::try_from(end_entity)?;
                verify_server_name(&certificate, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

impl GivenOrWebPki {
    fn is_given(&self, presented: &CertificateDer<'_>) -> bool {
        self.given
            .iter()
            .any(|given| given.as_ref() == presented.as_ref())
    }
}

fn ca_used_as_end_entity(error: &rustls::Error) -> bool {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}
