//! Our side of the wire benchmark: `grpc.testing.TestService` (EmptyCall and
//! the rest of the interop service) on shardlog-wire, one glommio executor
//! pinned to one CPU.
//!
//! Usage: `wire-empty-server --port PORT [--cpu CPU]` (127.0.0.1, CPU 0 by
//! default); runs until killed.

use glommio::{LocalExecutorBuilder, Placement};
use shardlog_wire::server::{Router, Server, ServerConfig};
use shardlog_wire::services::testing;

struct Args {
    port: u16,
    cpu: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { port: 0, cpu: 0 };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => args.port = value.parse().map_err(|e| format!("--port: {e}"))?,
            "--cpu" => args.cpu = value.parse().map_err(|e| format!("--cpu: {e}"))?,
            _ => {
                return Err(format!(
                    "unknown flag {flag}; usage: --port PORT [--cpu CPU]"
                ));
            }
        }
    }
    if args.port == 0 {
        return Err("usage: wire-empty-server --port PORT [--cpu CPU]".into());
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let handle = LocalExecutorBuilder::new(Placement::Fixed(args.cpu))
        .name("wire-bench")
        .spawn(move || async move {
            let listener = glommio::net::TcpListener::bind(("127.0.0.1", args.port))
                .map_err(|e| format!("bind 127.0.0.1:{}: {e}", args.port))?;
            let mut router = Router::new();
            testing::register(&mut router);
            let server = Server::new(router, ServerConfig::default());
            server.serve(listener).await.map_err(|e| e.to_string())
        })?;
    handle.join()??;
    Ok(())
}
