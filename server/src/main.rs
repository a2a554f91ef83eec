//! `shardlog`: the server binary. See `docs/operations.md`.

use std::process::ExitCode;

use clap::Parser;
use shardlog_server::config::{Cli, CliCommand, Config};
use shardlog_server::runtime;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(CliCommand::HashToken { principal }) = &cli.command {
        return hash_token(principal.as_deref());
    }
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("shardlog: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log_format);
    let data_dir = config.data_dir.clone();
    let shards = config.shards;
    let metrics = config.metrics_listen;
    let result = runtime::run(config, |listening| {
        let on_or_off = |address: Option<std::net::SocketAddr>| {
            address.map_or_else(|| "off".to_owned(), |a| format!("on {a}"))
        };
        let plaintext = listening
            .plaintext
            .map_or_else(|| "off".to_owned(), |a| a.to_string());
        // Scripts and tests read this line to find the bound ports.
        println!(
            "shardlog listening on {plaintext} ({shards} shards), tls {}, data in {}, metrics {}",
            on_or_off(listening.tls),
            data_dir.display(),
            on_or_off(metrics)
        );
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardlog: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHARDLOG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `shardlog hash-token [PRINCIPAL]`: prints the token-file line for the
/// token on stdin, so operators never hash by hand. The token is never
/// echoed, even in errors.
fn hash_token(principal: Option<&str>) -> ExitCode {
    let mut token = String::new();
    if let Err(error) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut token) {
        eprintln!("shardlog hash-token: cannot read the token from stdin: {error}");
        return ExitCode::from(2);
    }
    let token = token
        .strip_suffix('\n')
        .map(|rest| rest.strip_suffix('\r').unwrap_or(rest))
        .unwrap_or(&token);
    match shardlog_server::security::tokens::token_file_line(token, principal) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("shardlog hash-token: {error}");
            ExitCode::from(2)
        }
    }
}
