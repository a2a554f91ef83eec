//! Standard gRPC clients we did not write (Python grpcio, Node grpc-js)
//! produce to and fetch from the real server; each reads back byte-identical
//! what the other wrote, and the Rust client checks the same bytes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Log, TestServer, block_on};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// Runs `program args` with a time bound; panics with its output on failure.
fn run_client(
    program: &str,
    args: &[&str],
    envs: &[(&str, PathBuf)],
    install_hint: &str,
) -> String {
    let mut command = Command::new("timeout");
    command.arg("120").arg(program).args(args);
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {install_hint}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{stdout}\n{stderr}\nif a module is missing: {install_hint}",
        output.status
    );
    stdout
}

fn value_of(i: usize) -> Vec<u8> {
    (0..i * 13 % 700)
        .map(|j| ((i * 7 + j) % 256) as u8)
        .collect()
}

#[test]
fn python_and_node_clients_round_trip_byte_identical() {
    let server = TestServer::start(2);
    let port = server.addr.port().to_string();
    let root = repo_root();
    let proto_root = root.join("wire/proto");
    let proto_root = proto_root.to_str().expect("utf8 path");
    let python = run_client(
        "python3",
        &[
            root.join("server/tests/clients/log_client.py")
                .to_str()
                .expect("path"),
            &port,
            proto_root,
            "stock",
        ],
        &[],
        "pip install -r wire/tests/interop/requirements.txt",
    );
    assert!(python.contains("python ok"), "{python}");
    let node = run_client(
        "node",
        &[
            root.join("server/tests/clients/log_client.js")
                .to_str()
                .expect("path"),
            &port,
            proto_root,
            "stock",
        ],
        &[(
            "NODE_PATH",
            root.join("wire/tests/interop/node/node_modules"),
        )],
        "npm ci --prefix wire/tests/interop/node",
    );
    assert!(node.contains("node ok"), "{node}");

    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        let records = log.fetch_all("stock", 1, 0).await;
        assert_eq!(records.len(), 60);
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.value.as_ref(), value_of(i).as_slice(), "record {i}");
            assert_eq!(record.key.as_deref(), Some(format!("k{i}").as_bytes()));
        }
        let from_node: Vec<_> = log
            .fetch_all("stock", 0, 0)
            .await
            .into_iter()
            .filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(b"node-")))
            .collect();
        assert_eq!(from_node.len(), 30);
        for (i, record) in from_node.iter().enumerate() {
            assert_eq!(record.value.as_ref(), value_of(i + 1000).as_slice());
        }
    });
}
