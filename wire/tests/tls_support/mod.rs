//! Test PKI built at test time with `rcgen`: CAs, server and client
//! certificates (valid, expired, revoked), CRLs, PEM files in a temp dir,
//! and rustls client configurations. Shared by the wire and server TLS
//! tests (the server includes it by path).

#![allow(dead_code)]

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber, date_time_ymd,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A certificate authority that issues leaves and CRLs.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    next_serial: Cell<u64>,
}

/// An issued certificate and its key.
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Its serial number (to revoke it).
    pub serial: u64,
}

impl Ca {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert_pem = params.self_signed(&key).expect("CA cert").pem();
        Ca {
            issuer: Issuer::new(params, key),
            cert_pem,
            next_serial: Cell::new(1),
        }
    }

    fn issue(&self, mut params: CertificateParams) -> Leaf {
        let serial = self.next_serial.get();
        self.next_serial.set(serial + 1);
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate: DNS SAN `san` if given, subject CN `cn`.
    pub fn client(&self, san: Option<&str>, cn: &str) -> Leaf {
        self.issue(client_params(san, cn))
    }

    /// A client certificate that expired long ago.
    pub fn expired_client(&self, cn: &str) -> Leaf {
        let mut params = client_params(None, cn);
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2001, 1, 1);
        self.issue(params)
    }

    /// A CRL revoking `serials`, PEM.
    pub fn crl(&self, serials: &[u64]) -> String {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: date_time_ymd(2021, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .expect("crl")
            .pem()
            .expect("crl pem")
    }
}

fn client_params(san: Option<&str>, cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(san.map(str::to_owned).into_iter().collect::<Vec<_>>())
        .expect("client params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write PEM file");
    path
}

/// The server name clients verify.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("server name")
}

/// A rustls client trusting `ca_pem`, presenting `identity` if given,
/// offering `alpn`.
pub fn client_config(
    ca_pem: &str,
    identity: Option<&Leaf>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    client_config_with_versions(ca_pem, identity, alpn, rustls::DEFAULT_VERSIONS)
}

/// [`client_config`] limited to the TLS `versions` given.
pub fn client_config_with_versions(
    ca_pem: &str,
    identity: Option<&Leaf>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.expect("CA PEM")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => {
            let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("c")];
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS + HTTP/2 channel to `addr` (server name `localhost`), or why the
/// TLS or HTTP/2 handshake failed.
pub async fn connect(
    addr: std::net::SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> Result<shardlog_wire::client::Channel, String> {
    let tcp = glommio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = futures_rustls::TlsConnector::from(client)
        .connect(server_name(), tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (channel, driver) = shardlog_wire::client::Channel::handshake(tls, "localhost")
        .await
        .map_err(|e| format!("h2: {e}"))?;
    glommio::spawn_local(driver).detach();
    Ok(channel)
}
