//! The `shardlog` binary's `[tls]` listener with certificates made at test
//! time: the Log service over TLS and mTLS (valid, missing, revoked client
//! certificates), SIGHUP reload (open connections stay, new handshakes see
//! the new certificate, a broken reload changes nothing), the client
//! certificate's principal judged by the ACLs, clear startup
//! errors, and stock grpcio / grpc-js clients with their own TLS stacks.

mod common;

#[path = "../../wire/tests/tls_support/mod.rs"]
mod tls_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Log, TestServer, block_on};
use shardlog_wire::Code;
use shardlog_wire::client::{Client, ClientConfig, GlommioRuntime};
use shardlog_wire::tls::ClientTls;
use tls_support::{Ca, Leaf, client_config, write};

/// Longest wait for a SIGHUP reload to reach every shard.
const RELOAD_WAIT_MAX: Duration = Duration::from_secs(20);

/// PEM files of one test PKI in a temp dir, and the server config naming them.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    config_path: PathBuf,
}

impl Pki {
    /// A server certificate from a fresh CA; mTLS against the same CA with
    /// `client_auth`, and an empty CRL (tests rewrite it).
    fn new(client_auth: &str) -> Pki {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Ca::new("test-ca");
        let pki = Pki {
            config_path: dir.path().join("shardlog.toml"),
            dir,
            ca,
        };
        pki.write_server_certificate(&pki.ca);
        write(pki.dir.path(), "ca.pem", &pki.ca.cert_pem);
        write(pki.dir.path(), "ca.crl", &pki.ca.crl(&[]));
        let path = |name: &str| pki.dir.path().join(name).display().to_string();
        let config = format!(
            "[tls]\nlisten = \"127.0.0.1:0\"\ncert_path = {:?}\nkey_path = {:?}\n\
             client_ca_path = {:?}\nclient_auth = {client_auth:?}\ncrl_paths = [{:?}]\n",
            path("server.pem"),
            path("server.key"),
            path("ca.pem"),
            path("ca.crl"),
        );
        std::fs::write(&pki.config_path, config).expect("write config");
        pki
    }

    fn write_server_certificate(&self, issuer: &Ca) {
        let server = issuer.server();
        write(self.dir.path(), "server.pem", &server.cert_pem);
        write(self.dir.path(), "server.key", &server.key_pem);
    }

    fn start_server(&self) -> (TestServer, SocketAddr) {
        let config = self.config_path.to_str().expect("utf8 path");
        let server = TestServer::start_with(2, &["--config", config]);
        let tls_addr = server.tls_addr.expect("tls listener address printed");
        (server, tls_addr)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The Log service over TLS, or why the handshake failed.
async fn connect(addr: SocketAddr, client: Arc<rustls::ClientConfig>) -> Result<Log, String> {
    let channel = tls_support::connect(addr, client).await?;
    Ok(Log { channel })
}

/// Connects and creates `topic`; Ok once the server answered.
async fn create_topic(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    topic: &str,
) -> Result<(), String> {
    let log = connect(addr, client).await?;
    log.create_topic(topic, 1)
        .await
        .map(drop)
        .map_err(|status| status.to_string())
}

const H2: &[&[u8]] = &[b"h2"];

#[test]
fn mtls_serves_the_log_service_and_refuses_missing_and_revoked_certificates() {
    let pki = Pki::new("required");
    let revoked = pki.ca.client(None, "revoked");
    // Re-issue the CRL now that the revoked serial is known.
    write(pki.dir.path(), "ca.crl", &pki.ca.crl(&[revoked.serial]));
    let good = pki.ca.client(Some("producer.example"), "producer");
    write(pki.dir.path(), "good.pem", &good.cert_pem);
    write(pki.dir.path(), "good.key", &good.key_pem);
    let (ca_path, good_pem, good_key) = (
        pki.path("ca.pem"),
        pki.path("good.pem"),
        pki.path("good.key"),
    );
    let (server, addr) = pki.start_server();
    let ca_pem = pki.ca.cert_pem.clone();
    let plaintext = server.addr;
    block_on(move || async move {
        // The client library over mTLS, configured from PEM files.
        let tls = shardlog_wire::tls::client_config(&ca_path, Some((&good_pem, &good_key)))
            .expect("client tls config");
        let config = ClientConfig {
            tls: Some(ClientTls::new(tls, "localhost").expect("server name")),
            ..ClientConfig::default()
        };
        let client = Client::new(GlommioRuntime, addr, config).expect("client");
        let created = client.admin().create_topic("via-client-library", 2).await;
        assert_eq!(created.expect("create over mtls").partition_count, 2);

        let ok = create_topic(addr, client_config(&ca_pem, Some(&good), H2), "over-mtls").await;
        assert_eq!(ok, Ok(()));
        let log = connect(addr, client_config(&ca_pem, Some(&good), H2))
            .await
            .expect("mtls connect");
        let description = log.describe("over-mtls").await.expect("describe");
        assert_eq!(description.partitions.len(), 1);
        for (case, identity) in [("no certificate", None), ("revoked", Some(&revoked))] {
            let outcome = create_topic(addr, client_config(&ca_pem, identity, H2), case).await;
            assert!(outcome.is_err(), "{case}: admitted");
        }
        // The plaintext listener still serves next to the TLS one.
        let log = Log::connect(plaintext).await;
        assert!(log.describe("over-mtls").await.is_ok());
    });
    drop(server);
}

#[test]
fn client_certificate_principal_is_what_the_acls_judge() {
    let pki = Pki::new("optional");
    let acl = "\n[auth]\nenabled = true\n\n[[acl]]\nprincipal = \"producer.example\"\n\
               operations = [\"all\"]\ntopic_prefix = \"prod.\"\n\n[[acl]]\n\
               principal = \"reader\"\noperations = [\"describe\"]\ntopic_prefix = \"prod.\"\n";
    let mut config = std::fs::read_to_string(&pki.config_path).expect("read config");
    config.push_str(acl);
    std::fs::write(&pki.config_path, config).expect("write config");
    // The SAN names the producer; the reader has only a common name.
    let producer = pki.ca.client(Some("producer.example"), "producer");
    let reader = pki.ca.client(None, "reader");
    let (server, addr) = pki.start_server();
    let ca_pem = pki.ca.cert_pem.clone();
    let plaintext = server.addr;
    block_on(move || async move {
        let as_producer = connect(addr, client_config(&ca_pem, Some(&producer), H2))
            .await
            .expect("producer connects");
        as_producer
            .create_topic("prod.orders", 1)
            .await
            .expect("the producer may create under prod.");
        let refused = as_producer.create_topic("other.orders", 1).await;
        assert_eq!(
            refused.expect_err("outside its prefix").code(),
            Code::PERMISSION_DENIED
        );

        let as_reader = connect(addr, client_config(&ca_pem, Some(&reader), H2))
            .await
            .expect("reader connects");
        let described = as_reader.describe("prod.orders").await;
        assert_eq!(
            described.expect("the reader may describe").partitions.len(),
            1
        );
        let refused = as_reader.create_topic("prod.more", 1).await;
        assert_eq!(
            refused.expect_err("describe only").code(),
            Code::PERMISSION_DENIED
        );

        // Without a certificate or a token there is no principal at all.
        let anonymous = connect(addr, client_config(&ca_pem, None, H2))
            .await
            .expect("optional client auth admits the handshake");
        let refused = anonymous.describe("prod.orders").await;
        assert_eq!(
            refused.expect_err("no principal").code(),
            Code::UNAUTHENTICATED
        );
        let refused = Log::connect(plaintext).await.describe("prod.orders").await;
        assert_eq!(
            refused.expect_err("plaintext, no token").code(),
            Code::UNAUTHENTICATED
        );
    });
    drop(server);
}

#[test]
fn sighup_reloads_certificates_for_new_connections_and_keeps_open_ones() {
    let pki = Pki::new("optional");
    let (server, addr) = pki.start_server();
    let pid = server.pid() as i32;
    let old_ca = pki.ca.cert_pem.clone();
    let new_ca = Ca::new("rotated-ca");
    let new_ca_pem = new_ca.cert_pem.clone();
    let server_pem = pki.path("server.pem");
    let server_key = pki.path("server.key");
    let new_server = new_ca.server();
    block_on(move || async move {
        let open = connect(addr, client_config(&old_ca, None, H2))
            .await
            .expect("connect before reload");
        open.create_topic("before-reload", 1)
            .await
            .expect("call before reload");

        // A reload that fails (garbage key) keeps the old certificate.
        std::fs::write(&server_key, "garbage").expect("write");
        sighup(pid);
        // Let the signal thread take this SIGHUP before the next one (two
        // pending signals of a kind merge into one).
        glommio::timer::sleep(Duration::from_millis(300)).await;
        let kept = create_topic(addr, client_config(&old_ca, None, H2), "kept").await;
        assert_eq!(kept, Ok(()), "a failed reload keeps the old certificate");
        std::fs::write(&server_pem, &new_server.cert_pem).expect("write");
        std::fs::write(&server_key, &new_server.key_pem).expect("write");
        sighup(pid);
        let deadline = Instant::now() + RELOAD_WAIT_MAX;
        // Every shard must have switched: several consecutive new
        // connections (spread over shards by SO_REUSEPORT) see the new one.
        let mut consecutive_new = 0;
        while consecutive_new < 8 {
            assert!(Instant::now() < deadline, "reload not seen in time");
            let new_trust = client_config(&new_ca_pem, None, H2);
            match create_topic(addr, new_trust, &format!("after-{consecutive_new}")).await {
                Ok(()) => consecutive_new += 1,
                Err(_) => {
                    consecutive_new = 0;
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let old_trust = create_topic(addr, client_config(&old_ca, None, H2), "old").await;
        assert!(old_trust.is_err(), "old certificate still served");
        open.describe("before-reload")
            .await
            .expect("open connection survives the reload");
    });
    drop(server);
}

fn sighup(pid: i32) {
    // SAFETY: signalling a child process this test started.
    let sent = unsafe { libc::kill(pid, libc::SIGHUP) };
    assert_eq!(sent, 0, "SIGHUP sent");
}

#[test]
fn startup_fails_clearly_when_tls_files_are_missing_or_invalid() {
    let dir = tempfile::tempdir().expect("dir");
    let garbage = write(dir.path(), "garbage.pem", "not a certificate");
    let missing = dir.path().join("missing.pem");
    for (cert, key, expected) in [
        (&garbage, &garbage, "no PEM item"),
        (&missing, &garbage, "missing.pem"),
    ] {
        let config = write(
            dir.path(),
            "shardlog.toml",
            &format!(
                "[tls]\nlisten = \"127.0.0.1:0\"\ncert_path = {:?}\nkey_path = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ),
        );
        let output = Command::new("timeout")
            .arg("60")
            .arg(env!("CARGO_BIN_EXE_shardlog"))
            .args(["--config", config.to_str().expect("path")])
            .args(["--listen", "127.0.0.1:0", "--shards", "1", "--no-pin"])
            .args(["--metrics-listen", "off", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("SHARDLOG_LOG", "warn")
            .output()
            .expect("run shardlog");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "bad TLS files: a config error"
        );
        assert!(
            stderr.contains("tls") && stderr.contains(expected),
            "unclear error: {stderr}"
        );
    }
}

#[test]
fn plaintext_listener_can_be_turned_off() {
    let pki = Pki::new("optional");
    let config = std::fs::read_to_string(&pki.config_path).expect("config");
    std::fs::write(&pki.config_path, format!("listen = \"off\"\n{config}")).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardlog"))
        .args(["--config", pki.config_path.to_str().expect("path")])
        .args([
            "--shards",
            "1",
            "--no-pin",
            "--metrics-listen",
            "off",
            "--data-dir",
        ])
        .arg(pki.path("data"))
        .env_remove("SHARDLOG_LISTEN")
        .env("SHARDLOG_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn shardlog");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("line");
    let tls_addr: Option<SocketAddr> = line
        .split_once(", tls on ")
        .and_then(|(_, rest)| rest.split(',').next())
        .and_then(|address| address.parse().ok());
    let ca_pem = pki.ca.cert_pem.clone();
    let served = tls_addr.map(|addr| {
        block_on(move || async move {
            create_topic(addr, client_config(&ca_pem, None, H2), "tls-only").await
        })
    });
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    assert!(line.starts_with("shardlog listening on off "), "{line}");
    assert_eq!(served, Some(Ok(())), "{line}");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// Runs a stock client script; returns its stdout, panics with its output
/// on failure.
fn run_client(program: &str, script: &Path, args: &[String]) -> String {
    let output = Command::new("timeout")
        .arg("120")
        .arg(program)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {script:?} {args:?} failed:\n{stdout}\n{}\n(pip install -r \
         wire/tests/interop/requirements.txt; npm ci --prefix wire/tests/interop/node)",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn grpcio_and_grpc_js_connect_over_tls_and_mtls() {
    let pki = Pki::new("optional");
    let client: Leaf = pki.ca.client(None, "stock-client");
    write(pki.dir.path(), "client.pem", &client.cert_pem);
    write(pki.dir.path(), "client.key", &client.key_pem);
    let stranger = Ca::new("untrusted").client(None, "mallory");
    write(pki.dir.path(), "stranger.pem", &stranger.cert_pem);
    write(pki.dir.path(), "stranger.key", &stranger.key_pem);
    let (server, addr) = pki.start_server();
    let root = repo_root();
    let proto_root = root.join("wire/proto").display().to_string();
    let file = |name: &str| pki.path(name).display().to_string();
    let clients = [
        ("python3", root.join("wire/tests/interop/tls_client.py")),
        ("node", root.join("wire/tests/interop/node/tls_client.js")),
    ];
    for (program, script) in &clients {
        for (mode, cert, key, expect) in [
            ("tls", "-", "-", "ok"),
            ("mtls", "client.pem", "client.key", "ok"),
            ("untrusted", "stranger.pem", "stranger.key", "refused"),
        ] {
            let pem = |name: &str| {
                if name == "-" {
                    "-".to_owned()
                } else {
                    file(name)
                }
            };
            let args = [
                addr.port().to_string(),
                proto_root.clone(),
                file("ca.pem"),
                pem(cert),
                pem(key),
                format!("{program}-{mode}"),
                expect.to_owned(),
            ];
            let stdout = run_client(program, script, &args);
            assert!(
                stdout.contains(&format!("tls client {expect}")),
                "{program} {mode}: {stdout}"
            );
        }
    }
    drop(server);
}
