//! TLS for gRPC connections. Server side: builds a rustls configuration
//! from PEM files (certificate chain, private key, optional client CA bundle
//! and CRLs for mTLS), names the client of a verified certificate, and holds
//! the per-executor [`TlsAcceptor`] whose configuration a reload swaps.
//! Client side: [`client_config`] and [`ClientTls`] for the client library.
//!
//! Policy: TLS 1.2 and 1.3 only, ALPN `h2` only (a client offering ALPN
//! without `h2` fails the handshake), the `ring` crypto provider.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};

/// The only application protocol offered and accepted.
pub const ALPN_H2: &[u8] = b"h2";

/// TLS sessions each executor remembers for resumption. rustls' default
/// cache is one mutex-guarded map per configuration; every executor gets its
/// own so handshakes on different cores never share a lock (a client that
/// lands on another core does a full handshake).
pub const SESSION_CACHE_ENTRIES_PER_EXECUTOR: usize = 256;

/// Whether a client must present a certificate when mTLS is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// Handshakes without a valid client certificate fail.
    #[default]
    Required,
    /// A client may connect without a certificate (it then has no TLS
    /// principal); one it presents must still verify.
    Optional,
}

/// Where the server's TLS material lives; re-read on every
/// [`server_config`] call (startup and each reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
    /// PEM bundle of CAs trusted for client certificates; `Some` turns mTLS on.
    pub client_ca_path: Option<PathBuf>,
    /// With mTLS: whether a client certificate is required.
    pub client_auth: ClientAuth,
    /// PEM CRLs checked against client certificates (needs `client_ca_path`).
    pub crl_paths: Vec<PathBuf>,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid PEM or holds no item of the expected kind.
    #[error("invalid {what} in {path}: {reason}")]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the material (e.g. key does not match certificate).
    #[error("{what}: {source}")]
    Rustls {
        /// What was being set up.
        what: &'static str,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The client verifier could not be built (e.g. a CRL does not parse).
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A client's server name is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {name:?}: {reason}")]
    InvalidServerName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// CRLs were given without a client CA bundle.
    #[error("crl_paths needs client_ca_path (CRLs only apply to client certificates)")]
    CrlWithoutClientCa,
}

/// The crypto provider every TLS configuration of this crate uses.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads `files` and builds the server configuration: TLS 1.2/1.3, ALPN
/// `h2`, and a WebPKI client verifier (with CRLs) when a client CA is set.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let chain = read_certificates("certificate chain", &files.cert_path)?;
    let key = read_private_key(&files.key_path)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions",
            source,
        })?;
    let builder = match &files.client_ca_path {
        Some(ca_path) => builder.with_client_cert_verifier(client_verifier(
            ca_path,
            files.client_auth,
            &files.crl_paths,
            provider,
        )?),
        None if !files.crl_paths.is_empty() => return Err(TlsError::CrlWithoutClientCa),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls {
            what: "server certificate and key",
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

fn client_verifier(
    ca_path: &Path,
    client_auth: ClientAuth,
    crl_paths: &[PathBuf],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in read_certificates("client CA bundle", ca_path)? {
        roots.add(ca).map_err(|source| TlsError::Rustls {
            what: "client CA bundle",
            source,
        })?;
    }
    let mut crls = Vec::new();
    for path in crl_paths {
        crls.extend(read_pem_items::<CertificateRevocationListDer>(
            "certificate revocation list",
            path,
        )?);
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).with_crls(crls);
    if client_auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    Ok(builder.build()?)
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn pem_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Every PEM item of type `T` in the file; at least one.
fn read_pem_items<T: PemObject>(what: &'static str, path: &Path) -> Result<Vec<T>, TlsError> {
    let pem = read_file(what, path)?;
    let items = T::pem_slice_iter(&pem)
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if items.is_empty() {
        return Err(pem_error(what, path, "no PEM item of this kind found"));
    }
    Ok(items)
}

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    read_pem_items(what, path)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "private key";
    let pem = read_file(WHAT, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| pem_error(WHAT, path, e))
}

/// A client configuration trusting the CAs in `ca_path` (PEM), presenting
/// the certificate chain and key of `identity` (PEM paths) if given (mTLS),
/// offering ALPN `h2`, TLS 1.2 and 1.3.
pub fn client_config(
    ca_path: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in read_certificates("CA bundle", ca_path)? {
        roots.add(ca).map_err(|source| TlsError::Rustls {
            what: "CA bundle",
            source,
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions",
            source,
        })?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert_path, key_path)) => {
            let chain = read_certificates("certificate chain", cert_path)?;
            let key = read_private_key(key_path)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| TlsError::Rustls {
                    what: "client certificate and key",
                    source,
                })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// TLS for the client library's connections (see
/// `client::ClientConfig::tls`).
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The rustls configuration, e.g. from [`client_config`].
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry (DNS name or IP).
    pub server_name: ServerName<'static>,
}

impl ClientTls {
    /// TLS with `config`, verifying the server as `server_name`.
    pub fn new(
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<ClientTls, TlsError> {
        let server_name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
            TlsError::InvalidServerName {
                name: server_name.to_owned(),
                reason: e.to_string(),
            }
        })?;
        Ok(ClientTls {
            config,
            server_name,
        })
    }
}

/// The identity in a client certificate: its first subject alternative
/// name of type DNS, URI or email, else its subject common name. `None` if
/// the certificate does not parse or names nobody.
pub fn certificate_principal(certificate: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        let first = san.value.general_names.iter().find_map(|name| match name {
            GeneralName::DNSName(name) | GeneralName::URI(name) | GeneralName::RFC822Name(name) => {
                Some(*name)
            }
            _ => None,
        });
        if let Some(name) = first {
            return Some(name.to_owned());
        }
    }
    parsed
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// The TLS side of one executor's listener: the configuration new
/// handshakes use. Cheap to clone (`Rc` inside); [`replace`](Self::replace)
/// is how a reload reaches this executor. Connections already established
/// keep the configuration they were accepted with.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Rc<RefCell<Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("alpn", &self.config.borrow().alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// An acceptor using `config` (see [`server_config`]) with a session
    /// cache of its own.
    pub fn new(config: Arc<rustls::ServerConfig>) -> TlsAcceptor {
        TlsAcceptor {
            config: Rc::new(RefCell::new(with_own_session_cache(&config))),
        }
    }

    /// Makes every later handshake use `config` (with a fresh session
    /// cache of this acceptor's own).
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        *self.config.borrow_mut() = with_own_session_cache(&config);
    }

    /// The configuration of the next handshake.
    pub(crate) fn current(&self) -> futures_rustls::TlsAcceptor {
        futures_rustls::TlsAcceptor::from(self.config.borrow().clone())
    }
}

fn with_own_session_cache(config: &rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    let mut own = config.clone();
    own.session_storage =
        rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES_PER_EXECUTOR);
    Arc::new(own)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(params: rcgen::CertificateParams) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn principal_is_first_san_then_common_name() {
        let mut params = rcgen::CertificateParams::new(vec!["svc.example".to_owned()]).expect("p");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ignored-cn");
        assert_eq!(
            certificate_principal(&certificate(params)).as_deref(),
            Some("svc.example")
        );

        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("p");
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://prod/producer".try_into().expect("uri"),
        )];
        assert_eq!(
            certificate_principal(&certificate(params)).as_deref(),
            Some("spiffe://prod/producer")
        );

        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("p");
        params.subject_alt_names = vec![
            rcgen::SanType::IpAddress([10, 0, 0, 1].into()),
            rcgen::SanType::Rfc822Name("ops@example.com".try_into().expect("email")),
        ];
        assert_eq!(
            certificate_principal(&certificate(params)).as_deref(),
            Some("ops@example.com"),
            "IP SANs are skipped"
        );

        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("p");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        assert_eq!(
            certificate_principal(&certificate(params)).as_deref(),
            Some("alice")
        );
        assert_eq!(
            certificate_principal(&CertificateDer::from(vec![1, 2, 3])),
            None
        );
    }

    #[test]
    fn missing_and_bad_files_are_named() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem").expect("write");
        let files = TlsFiles {
            cert_path: missing.clone(),
            key_path: garbage.clone(),
            client_ca_path: None,
            client_auth: ClientAuth::Required,
            crl_paths: Vec::new(),
        };
        let error = server_config(&files).expect_err("missing cert").to_string();
        assert!(
            error.contains("certificate chain") && error.contains("missing.pem"),
            "{error}"
        );
        let files = TlsFiles {
            cert_path: garbage.clone(),
            ..files
        };
        let error = server_config(&files).expect_err("bad cert").to_string();
        assert!(error.contains("no PEM item"), "{error}");
    }
}
