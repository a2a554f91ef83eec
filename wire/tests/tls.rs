//! The wire server over TLS (`Server::serve_tls`) on loopback, with
//! certificates made at test time: calls work, mTLS names the client as the
//! handler sees it, bad client certificates and ALPN without `h2` are
//! refused, a reload changes only new handshakes, and a silent client is
//! cut by the handshake timeout.

mod tls_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::AsyncReadExt as _;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use shardlog_wire::client::{CallOptions, Channel};
use shardlog_wire::server::{Router, Server, ServerConfig};
use shardlog_wire::tls::{ClientAuth, TlsAcceptor, TlsFiles, server_config};
use shardlog_wire::{Request, Response};
use tls_support::{
    Ca, Leaf, client_config, client_config_with_versions, connect, server_name, write,
};

const WHOAMI: &str = "/test.Tls/WhoAmI";
/// Bound on any single call or read in these tests (never reached when
/// things work).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Answers what the server knows of the caller's connection.
fn router() -> Router {
    let mut router = Router::new();
    router.unary(WHOAMI, |request: Request<()>| async move {
        let connection = request.context().connection();
        let principal = connection.tls_principal.as_deref().unwrap_or("-");
        Ok(Response::new(format!(
            "tls={} principal={principal}",
            connection.tls
        )))
    });
    router
}

/// Files for a server certificate from `ca`, with mTLS against `client_ca`.
fn files(
    dir: &Path,
    ca: &Ca,
    client_ca: Option<&Ca>,
    client_auth: ClientAuth,
    crl: Option<String>,
) -> TlsFiles {
    let server = ca.server();
    TlsFiles {
        cert_path: write(dir, "server.pem", &server.cert_pem),
        key_path: write(dir, "server.key", &server.key_pem),
        client_ca_path: client_ca.map(|ca| write(dir, "client-ca.pem", &ca.cert_pem)),
        client_auth,
        crl_paths: crl
            .map(|crl| write(dir, "revoked.crl", &crl))
            .into_iter()
            .collect(),
    }
}

/// Starts a TLS server with `config` on this executor; returns its address
/// and the acceptor (for reloads).
fn start(tls: Arc<rustls::ServerConfig>, server_config: ServerConfig) -> (SocketAddr, TlsAcceptor) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::new(tls);
    let server = Server::new(router(), server_config);
    let serving = acceptor.clone();
    glommio::spawn_local(async move { server.serve_tls(listener, serving).await }).detach();
    (addr, acceptor)
}

async fn who_am_i(channel: &Channel) -> Result<String, String> {
    let options = CallOptions {
        timeout: Some(CALL_TIMEOUT),
        ..CallOptions::default()
    };
    channel
        .unary::<(), String>(WHOAMI, &(), options)
        .await
        .map(Response::into_inner)
        .map_err(|status| format!("call: {status}"))
}

/// Connects and calls once; the answer or why it failed.
async fn call(addr: SocketAddr, client: Arc<rustls::ClientConfig>) -> Result<String, String> {
    who_am_i(&connect(addr, client).await?).await
}

fn run<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(body)
        .expect("executor")
        .join()
        .expect("test body");
}

const H2: &[&[u8]] = &[b"h2"];

#[test]
fn tls_without_client_auth_serves_calls() {
    run(|| async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("server-ca");
        let tls = server_config(&files(dir.path(), &ca, None, ClientAuth::Required, None))
            .expect("config");
        let (addr, _) = start(tls, ServerConfig::default());
        let answer = call(addr, client_config(&ca.cert_pem, None, H2)).await;
        assert_eq!(answer.as_deref(), Ok("tls=true principal=-"));
        // A client that does not trust the server's CA refuses it.
        let stranger = Ca::new("other-ca");
        let refused = call(addr, client_config(&stranger.cert_pem, None, H2)).await;
        assert!(refused.is_err(), "{refused:?}");
    });
}

#[test]
fn mtls_names_the_client_from_san_or_common_name() {
    run(|| async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("ca");
        let tls = server_config(&files(
            dir.path(),
            &ca,
            Some(&ca),
            ClientAuth::Required,
            None,
        ))
        .expect("config");
        let (addr, _) = start(tls, ServerConfig::default());
        let with_san = ca.client(Some("producer.example"), "ignored");
        let answer = call(addr, client_config(&ca.cert_pem, Some(&with_san), H2)).await;
        assert_eq!(answer.as_deref(), Ok("tls=true principal=producer.example"));
        let cn_only = ca.client(None, "alice");
        let answer = call(addr, client_config(&ca.cert_pem, Some(&cn_only), H2)).await;
        assert_eq!(answer.as_deref(), Ok("tls=true principal=alice"));
        // TLS 1.2 carries the client certificate differently: same answer.
        let tls12 = [&rustls::version::TLS12];
        let client = client_config_with_versions(&ca.cert_pem, Some(&cn_only), H2, &tls12);
        assert_eq!(
            call(addr, client).await.as_deref(),
            Ok("tls=true principal=alice")
        );
    });
}

#[test]
fn mtls_refuses_missing_untrusted_expired_and_revoked_client_certificates() {
    run(|| async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("ca");
        let good = ca.client(None, "good");
        let revoked = ca.client(None, "revoked");
        let expired = ca.expired_client("expired");
        let crl = ca.crl(&[revoked.serial]);
        let tls = server_config(&files(
            dir.path(),
            &ca,
            Some(&ca),
            ClientAuth::Required,
            Some(crl),
        ))
        .expect("config");
        let (addr, _) = start(tls, ServerConfig::default());
        let stranger = Ca::new("untrusted-ca").client(None, "mallory");
        let refused: [(&str, Option<&Leaf>); 4] = [
            ("no certificate", None),
            ("untrusted CA", Some(&stranger)),
            ("expired", Some(&expired)),
            ("revoked", Some(&revoked)),
        ];
        for (case, identity) in refused {
            let outcome = call(addr, client_config(&ca.cert_pem, identity, H2)).await;
            assert!(outcome.is_err(), "{case}: admitted: {outcome:?}");
        }
        let answer = call(addr, client_config(&ca.cert_pem, Some(&good), H2)).await;
        assert_eq!(answer.as_deref(), Ok("tls=true principal=good"));
    });
}

#[test]
fn optional_client_auth_admits_anonymous_clients_but_verifies_presented_ones() {
    run(|| async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("ca");
        let tls = server_config(&files(
            dir.path(),
            &ca,
            Some(&ca),
            ClientAuth::Optional,
            None,
        ))
        .expect("config");
        let (addr, _) = start(tls, ServerConfig::default());
        let answer = call(addr, client_config(&ca.cert_pem, None, H2)).await;
        assert_eq!(answer.as_deref(), Ok("tls=true principal=-"));
        let bob = ca.client(None, "bob");
        let answer = call(addr, client_config(&ca.cert_pem, Some(&bob), H2)).await;
        assert_eq!(answer.as_deref(), Ok("tls=true principal=bob"));
        let stranger = Ca::new("untrusted-ca").client(None, "mallory");
        let outcome = call(addr, client_config(&ca.cert_pem, Some(&stranger), H2)).await;
        assert!(
            outcome.is_err(),
            "untrusted certificate admitted: {outcome:?}"
        );
    });
}

#[test]
fn alpn_without_h2_is_refused() {
    run(|| async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("ca");
        let tls = server_config(&files(dir.path(), &ca, None, ClientAuth::Required, None))
            .expect("config");
        let (addr, _) = start(tls, ServerConfig::default());
        let tcp = TcpStream::connect(addr).await.expect("tcp");
        let http1_only = client_config(&ca.cert_pem, None, &[b"http/1.1"]);
        let outcome = futures_rustls::TlsConnector::from(http1_only)
            .connect(server_name(), tcp)
            .await;
        assert!(outcome.is_err(), "handshake without h2 must fail");
        // Offering h2 among others is fine.
        let both = client_config(&ca.cert_pem, None, &[b"http/1.1", b"h2"]);
        assert!(call(addr, both).await.is_ok());
    });
}

#[test]
fn reload_changes_new_handshakes_and_keeps_open_connections() {
    run(|| async {
        let dir = tempfile::tempdir().expect("dir");
        let old_ca = Ca::new("old-ca");
        let tls = server_config(&files(
            dir.path(),
            &old_ca,
            None,
            ClientAuth::Required,
            None,
        ))
        .expect("config");
        let (addr, acceptor) = start(tls, ServerConfig::default());
        let open = connect(addr, client_config(&old_ca.cert_pem, None, H2))
            .await
            .expect("connect before reload");
        assert!(who_am_i(&open).await.is_ok());

        let new_ca = Ca::new("new-ca");
        let new_dir = tempfile::tempdir().expect("dir");
        let new_files = files(new_dir.path(), &new_ca, None, ClientAuth::Required, None);
        acceptor.replace(server_config(&new_files).expect("new config"));

        let old_trust = call(addr, client_config(&old_ca.cert_pem, None, H2)).await;
        assert!(old_trust.is_err(), "old certificate still served");
        let new_trust = call(addr, client_config(&new_ca.cert_pem, None, H2)).await;
        assert_eq!(new_trust.as_deref(), Ok("tls=true principal=-"));
        assert!(who_am_i(&open).await.is_ok(), "open connection survives");
    });
}

#[test]
fn drain_ends_tls_handshakes_in_progress() {
    run(|| async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("ca");
        let tls = server_config(&files(dir.path(), &ca, None, ClientAuth::Required, None))
            .expect("config");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = ServerConfig {
            handshake_timeout: Duration::from_secs(3600),
            ..ServerConfig::default()
        };
        let server = Server::new(router(), config);
        let serving = server.clone();
        let acceptor = TlsAcceptor::new(tls);
        glommio::spawn_local(async move { serving.serve_tls(listener, acceptor).await }).detach();
        let _silent = TcpStream::connect(addr).await.expect("tcp");
        while server.active_connections() == 0 {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        // Without the drain reaching the TLS handshake, shutdown would wait
        // for the hour-long handshake timeout.
        let shutdown = std::pin::pin!(server.shutdown());
        let bound = std::pin::pin!(glommio::timer::sleep(CALL_TIMEOUT));
        let finished = futures_util::future::select(shutdown, bound).await;
        assert!(
            matches!(finished, futures_util::future::Either::Left(_)),
            "drain stuck"
        );
        assert_eq!(server.active_connections(), 0);
    });
}

#[test]
fn silent_client_is_cut_by_the_handshake_timeout() {
    run(|| async {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("ca");
        let tls = server_config(&files(dir.path(), &ca, None, ClientAuth::Required, None))
            .expect("config");
        let config = ServerConfig {
            handshake_timeout: Duration::from_millis(200),
            ..ServerConfig::default()
        };
        let (addr, _) = start(tls, config);
        // Connects, never sends a ClientHello: the server must close.
        let mut silent = TcpStream::connect(addr).await.expect("tcp");
        silent
            .set_read_timeout(Some(CALL_TIMEOUT))
            .expect("timeout");
        let mut buffer = [0_u8; 64];
        let read = silent
            .read(&mut buffer)
            .await
            .expect("closed, not timed out");
        assert_eq!(read, 0, "server closed the connection");
    });
}
