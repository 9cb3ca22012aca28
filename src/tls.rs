//! HTTPS: the server's TLS configuration (`--tls-cert`/`--tls-key`, `--tls-self-signed`) and the bench's and tests'
//! client configuration.
//!
//! rustls, with ring as its cryptography provider: no OpenSSL, and ring builds with the C compiler alone (the
//! aws-lc-rs provider needs CMake and takes minutes longer to build). ALPN offers `h2` first, then `http/1.1`.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use crate::config::Config;

/// The ALPN protocols the server offers, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The names `--tls-self-signed`'s certificate is for.
pub const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS configuration, if `config` asks for HTTPS.
///
/// # Errors
/// A certificate or key file that cannot be read, holds no PEM certificate or key, or a key that does not match
/// the certificate: the message names the file and what is wrong with it.
pub fn server_config(config: &Config) -> io::Result<Option<Arc<ServerConfig>>> {
    let (chain, key) = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => (read_chain(cert)?, read_key(key)?),
        (None, None) if config.tls_self_signed => self_signed()?,
        (None, None) => return Ok(None),
        _ => return Err(invalid("--tls-cert and --tls-key go together".into())),
    };
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid(format!("TLS: {error}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| invalid(format!("--tls-cert and --tls-key do not make a usable certificate: {error}")))?;
    server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Some(Arc::new(server)))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn read_chain(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|error| invalid(format!("--tls-cert {shown}: {error}")))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(format!("--tls-cert {shown}: not a PEM certificate chain: {error}")))?;
    if chain.is_empty() {
        return Err(invalid(format!("--tls-cert {shown}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|error| invalid(format!("--tls-key {shown}: {error}")))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|error| invalid(format!("--tls-key {shown}: no PEM private key (PKCS#8, PKCS#1 or SEC1): {error}")))
}

/// A certificate for [`SELF_SIGNED_NAMES`] and its key, made now.
fn self_signed() -> io::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let names = SELF_SIGNED_NAMES.iter().map(|name| name.to_string()).collect::<Vec<_>>();
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|error| invalid(format!("--tls-self-signed: could not make a certificate: {error}")))?;
    let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
    Ok((vec![made.cert.der().clone()], key.into()))
}

/// Which servers a client believes.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Only certificates that chain to these roots (PEM certificates, e.g. the server's own `--tls-cert`).
    Roots(Vec<CertificateDer<'static>>),
    /// Any certificate at all: for `--tls-self-signed` on loopback, when told to (`chatlab bench --insecure`).
    Anyone,
}

impl Trust {
    /// The certificates of the PEM file at `path`, as roots.
    ///
    /// # Errors
    /// The file cannot be read or holds no PEM certificate.
    pub fn roots_from(path: &Path) -> io::Result<Trust> {
        read_chain(path).map(Trust::Roots)
    }
}

/// A client configuration offering `alpn` (e.g. `[b"h2"]`), believing `trust`.
///
/// # Errors
/// A root certificate rustls cannot use.
pub fn client_config(trust: &Trust, alpn: &[&[u8]]) -> io::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid(format!("TLS: {error}")))?;
    let mut client = match trust {
        Trust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for root in roots {
                store.add(root.clone()).map_err(|error| invalid(format!("root certificate: {error}")))?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
        Trust::Anyone => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth(),
    };
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(client))
}

/// Believes any certificate (signatures are still checked, so the handshake is real): [`Trust::Anyone`].
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
