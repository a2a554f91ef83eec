//! Server configuration: embedded defaults, overridden by a TOML file, then by
//! environment variables, then by command-line flags (last wins).
//!
//! Every setting is documented in `docs/operations.md` with its default; keep
//! the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// Listen address used when nothing else is configured.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:50051";
/// Data directory used when nothing else is configured (relative to the
/// working directory).
pub const DATA_DIR_DEFAULT: &str = "./shardlog-data";
/// Metrics listen address used when nothing else is configured.
pub const METRICS_LISTEN_DEFAULT: &str = "127.0.0.1:9464";
/// Room kept in a gRPC message for what a fetch answer's byte budget does not
/// count: the framing of the one record that may cross the budget (offset,
/// timestamp, protobuf tags and lengths, up to 1024 headers: under 19 KiB) and
/// the answer's own fields (topic name, offsets).
pub const RESPONSE_OVERHEAD_BYTES: usize = 64 << 10;

// The framing of a record with the most headers fits in the room: at most 18
// bytes per header (tags of the header, its key and value: 1 byte each; their
// lengths: 5 bytes each), 1 KiB for the record's and the answer's own fields.
const _: () =
    assert!(shardlog_engine::format::RECORD_HEADERS_MAX * 18 + 1024 <= RESPONSE_OVERHEAD_BYTES);
/// Upper bound on shards: one executor per core, and nobody has more cores.
pub const SHARDS_MAX: usize = 1024;
/// Smallest segment size, for the server default and a topic's own: every
/// segment keeps a file (and its map) open, so tiny segments exhaust file
/// descriptors long before the disk fills.
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 64 << 10;
/// Largest segment size, for the server default and a topic's own: retention
/// deletes whole segments, so bigger ones would hold data far past its limits
/// (and sizes near `u64::MAX` overflow position arithmetic).
pub const SEGMENT_SIZE_BYTES_MAX: u64 = 4 << 30;

/// Checks a segment size against [`SEGMENT_SIZE_BYTES_MIN`] and
/// [`SEGMENT_SIZE_BYTES_MAX`]; the error says what is allowed.
pub fn validate_segment_bytes(segment_bytes: u64) -> Result<(), String> {
    if (SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX).contains(&segment_bytes) {
        return Ok(());
    }
    Err(format!(
        "must be between {SEGMENT_SIZE_BYTES_MIN} (64 KiB) and {SEGMENT_SIZE_BYTES_MAX} (4 GiB), got {segment_bytes}"
    ))
}

/// Command-line flags of the `shardlog` binary.
#[derive(Debug, Parser, Default)]
#[command(
    name = "shardlog",
    version,
    about = "Thread-per-core durable log server (gRPC)"
)]
pub struct Cli {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// gRPC listen address (every shard binds it with SO_REUSEPORT).
    #[arg(long, value_name = "ADDR", env = "SHARDLOG_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory holding topics, partitions and metadata.
    #[arg(long, value_name = "DIR", env = "SHARDLOG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of shards (one pinned executor each); default: online CPUs.
    #[arg(long, value_name = "N", env = "SHARDLOG_SHARDS")]
    pub shards: Option<usize>,
    /// Prometheus endpoint address (HTTP/1.1 GET /metrics); "off" disables it.
    #[arg(long, value_name = "ADDR|off", env = "SHARDLOG_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Also serve the gRPC interop `grpc.testing.TestService`.
    #[arg(long)]
    pub grpc_testing: bool,
    /// Do not pin shard executors to CPUs (for shared machines and tests).
    #[arg(long)]
    pub no_pin: bool,
    /// Log format: "text" or "json".
    #[arg(long, value_name = "FORMAT", env = "SHARDLOG_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// A tool to run instead of the server.
    #[command(subcommand)]
    pub command: Option<CliCommand>,
}

/// Subcommands of the `shardlog` binary (without one, it serves).
#[derive(Debug, clap::Subcommand)]
pub enum CliCommand {
    /// Reads a bearer token on stdin (one trailing newline is dropped) and
    /// prints its token-file line: the SHA-256 hex digest, then PRINCIPAL.
    HashToken {
        /// The principal the token authenticates as.
        principal: Option<String>,
    },
}

/// The whole configuration, as read from TOML (every field optional there).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Plaintext gRPC listen address; `"off"` in TOML disables it (then
    /// only the `[tls]` listener serves).
    #[serde(deserialize_with = "address_or_off")]
    pub listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Shard count; 0 means one per online CPU.
    pub shards: usize,
    /// CPUs to pin shards to, in shard order; empty means CPU i for shard i.
    pub cpus: Vec<usize>,
    /// Pin shard executors to CPUs.
    pub pin_cpus: bool,
    /// Prometheus endpoint address; `None` disables it.
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `grpc.testing.TestService` too.
    pub grpc_testing: bool,
    /// "text" or "json".
    pub log_format: String,
    /// Storage defaults for new topics.
    pub storage: StorageConfig,
    /// Request limits.
    pub limits: LimitsConfig,
    /// HTTP/2 and gRPC transport settings.
    pub transport: TransportConfig,
    /// Fault injection for tests; never set in production.
    pub testing: TestingConfig,
    /// Authentication (`[auth]`).
    pub auth: crate::security::AuthConfig,
    /// Topic ACL rules (`[[acl]]`), enforced when auth is on.
    pub acl: Vec<crate::security::acl::AclRuleConfig>,
    /// Per-principal rate limits (`[quotas]`).
    pub quotas: crate::security::quota::QuotasConfig,
    /// The TLS listener (off unless `tls.listen` is set).
    pub tls: TlsConfig,
    /// Open connections per source IP, counted across every shard: not
    /// read from TOML; each clone of this config shares the one table.
    #[serde(skip)]
    pub source_ip_connections: shardlog_wire::server::SourceIpConnections,
}

/// The TLS listener: certificate, key, and optional mTLS (`[tls]`). Files
/// are re-read on SIGHUP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// TLS gRPC listen address (every shard binds it with SO_REUSEPORT);
    /// unset: no TLS listener.
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain, leaf first.
    pub cert_path: Option<PathBuf>,
    /// PEM private key of the leaf certificate.
    pub key_path: Option<PathBuf>,
    /// PEM bundle of CAs for client certificates; set: mTLS on.
    pub client_ca_path: Option<PathBuf>,
    /// With mTLS, whether clients must present a certificate.
    pub client_auth: ClientAuthMode,
    /// PEM CRLs checked against client certificates.
    pub crl_paths: Vec<PathBuf>,
}

/// `tls.client_auth` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// A handshake without a valid client certificate fails.
    #[default]
    Required,
    /// Clients may connect without a certificate (no TLS principal).
    Optional,
}

impl TlsConfig {
    /// The TLS files to load, when the TLS listener is on.
    pub fn files(&self) -> Option<shardlog_wire::tls::TlsFiles> {
        self.listen?;
        Some(shardlog_wire::tls::TlsFiles {
            cert_path: self.cert_path.clone()?,
            key_path: self.key_path.clone()?,
            client_ca_path: self.client_ca_path.clone(),
            client_auth: match self.client_auth {
                ClientAuthMode::Required => shardlog_wire::tls::ClientAuth::Required,
                ClientAuthMode::Optional => shardlog_wire::tls::ClientAuth::Optional,
            },
            crl_paths: self.crl_paths.clone(),
        })
    }

    fn validate(&self, plaintext: Option<SocketAddr>) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.to_owned(),
            })
        };
        let Some(listen) = self.listen else {
            if plaintext.is_none() {
                return invalid(
                    "listen",
                    "is \"off\" and no [tls] listen is set: nothing to serve",
                );
            }
            return Ok(());
        };
        // Port 0 picks a free port for each listener separately.
        if plaintext == Some(listen) && listen.port() != 0 {
            return invalid(
                "tls.listen",
                "must differ from the plaintext listen address",
            );
        }
        if self.cert_path.is_none() {
            return invalid("tls.cert_path", "is required with tls.listen");
        }
        if self.key_path.is_none() {
            return invalid("tls.key_path", "is required with tls.listen");
        }
        if self.client_ca_path.is_none() && !self.crl_paths.is_empty() {
            return invalid(
                "tls.crl_paths",
                "needs tls.client_ca_path (CRLs apply to client certificates)",
            );
        }
        Ok(())
    }
}

/// Deserializes an address, or `"off"` as `None`.
fn address_or_off<'de, D>(deserializer: D) -> Result<Option<SocketAddr>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!("{text:?} is neither an address nor \"off\""))
    })
}

/// Test-only fault injection at the engine's storage boundary (io_uring
/// operations are out of reach of strace and LD_PRELOAD shims).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestingConfig {
    /// Only files whose path contains this string get the fdatasync fault.
    pub fdatasync_eio_path: Option<String>,
    /// The Nth fdatasync (1-based, per shard, over affected files) and every
    /// later one return EIO.
    pub fdatasync_eio_nth: Option<u64>,
}

/// Defaults for partitions of newly created topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Roll the active segment once it reaches this size.
    pub segment_bytes_max: u64,
    /// Roll the active segment once its first record is this old.
    pub segment_age_ms_max: u64,
    /// Default retention by size per partition; 0 = unlimited.
    pub retention_bytes_max: u64,
    /// Default retention by age; 0 = forever.
    pub retention_age_ms_max: u64,
    /// How often each shard applies retention.
    pub retention_check_interval_ms: u64,
    /// Partitions a topic may have.
    pub topic_partitions_max: u32,
    /// Zero-fill new segments ahead of the writer (off the hot path), so syncs never pay for
    /// allocating blocks.
    pub prezero_segments: bool,
    /// Reuse a segment file retired by retention as a later segment (zero-filled by
    /// overwriting, in the background) instead of deleting it.
    pub recycle_segments: bool,
}

/// Bounds on what one request may ask for.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest gRPC message accepted (RESOURCE_EXHAUSTED beyond).
    pub message_bytes_max: usize,
    /// Largest single record (key + value + headers).
    pub record_bytes_max: usize,
    /// Most records in one produce request.
    pub batch_records_max: usize,
    /// Depth of each cross-core queue (one per ordered pair of shards).
    pub cross_core_queue_depth: usize,
    /// Requests one shard may have waiting on other shards; beyond it a
    /// request is refused UNAVAILABLE with nothing written.
    pub cross_core_inflight_max: usize,
    /// Produce requests a ProduceStream/Append call keeps in flight.
    pub stream_inflight_max: usize,
    /// Memory held by produces a shard has accepted and not yet answered (record bytes plus
    /// each record's and header's in-memory struct); beyond it a
    /// produce is refused UNAVAILABLE with nothing written (load shedding, not buffering).
    pub produce_inflight_bytes_max: usize,
    /// Produce requests a shard has accepted and not yet answered; beyond it a produce is
    /// refused UNAVAILABLE with nothing written. Bounds the queue of small produces, which
    /// never reach the byte budget: without it an overloaded shard holds every request
    /// HTTP/2 lets in until the clients' deadlines expire.
    pub produce_inflight_requests_max: usize,
    /// Default and largest fetch size.
    pub fetch_bytes_max: usize,
    /// Longest long-poll wait a fetch may ask for.
    pub fetch_wait_ms_max: u64,
    /// Open connections per shard.
    pub connections_per_shard_max: usize,
    /// Open connections per source IP address across all shards; 0
    /// disables the cap.
    pub connections_per_ip_max: u32,
}

/// HTTP/2 transport settings handed to the wire layer.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// Concurrent streams advertised per connection.
    pub max_concurrent_streams: u32,
    /// Largest header block accepted.
    pub max_header_list_size_bytes: u32,
    /// Per-stream flow-control window.
    pub stream_window_bytes: u32,
    /// Per-connection flow-control window.
    pub connection_window_bytes: u32,
    /// Time a new connection has to finish the HTTP/2 handshake.
    pub handshake_timeout_ms: u64,
    /// Close connections idle (no open stream) for this long.
    pub idle_timeout_ms: u64,
    /// Send a keepalive PING after this much silence; 0 disables.
    pub keepalive_interval_ms: u64,
    /// Close the connection when a keepalive PING is not answered in time.
    pub keepalive_timeout_ms: u64,
    /// How long shutdown waits for in-flight calls before closing.
    pub drain_grace_ms: u64,
    /// Longest a request header block may take to arrive (slowloris).
    pub request_header_timeout_ms: u64,
    /// Frames without request data (empty DATA, PING, SETTINGS, PRIORITY)
    /// a connection may send per second before it is cut off.
    pub noop_frames_per_second_max: u32,
    /// Reset a streamed response that waited this long for the client to
    /// read; 0 waits forever.
    pub send_stall_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Some(LISTEN_DEFAULT.parse().expect("valid default address")),
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            shards: 0,
            cpus: Vec::new(),
            pin_cpus: true,
            metrics_listen: Some(
                METRICS_LISTEN_DEFAULT
                    .parse()
                    .expect("valid default address"),
            ),
            grpc_testing: false,
            log_format: "text".to_owned(),
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            transport: TransportConfig::default(),
            testing: TestingConfig::default(),
            auth: crate::security::AuthConfig::default(),
            acl: Vec::new(),
            quotas: crate::security::quota::QuotasConfig::default(),
            tls: TlsConfig::default(),
            source_ip_connections: Default::default(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            segment_bytes_max: 128 << 20,
            segment_age_ms_max: 7 * 24 * 3600 * 1000,
            retention_bytes_max: 0,
            retention_age_ms_max: 0,
            retention_check_interval_ms: 30_000,
            topic_partitions_max: 4096,
            prezero_segments: true,
            recycle_segments: true,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            message_bytes_max: 4 << 20,
            record_bytes_max: 1 << 20,
            batch_records_max: 100_000,
            cross_core_queue_depth: 1024,
            cross_core_inflight_max: 4096,
            stream_inflight_max: 128,
            produce_inflight_bytes_max: 256 << 20,
            produce_inflight_requests_max: 4096,
            fetch_bytes_max: 1 << 20,
            fetch_wait_ms_max: 60_000,
            connections_per_shard_max: 10_000,
            connections_per_ip_max: 4096,
        }
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 1024,
            max_header_list_size_bytes: 16 << 10,
            stream_window_bytes: 1 << 20,
            connection_window_bytes: 16 << 20,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 600_000,
            keepalive_interval_ms: 60_000,
            keepalive_timeout_ms: 20_000,
            drain_grace_ms: 10_000,
            request_header_timeout_ms: 10_000,
            noop_frames_per_second_max: 1000,
            send_stall_timeout_ms: 60_000,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        source: Box<toml::de::Error>,
    },
    /// A `[tls]` file is missing or invalid.
    #[error("invalid tls settings: {0}")]
    Tls(#[from] shardlog_wire::tls::TlsError),
    /// A value is out of its allowed range.
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        /// The setting's name as written in TOML.
        setting: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// The token file, an ACL rule or a quota entry is invalid.
    #[error("invalid security settings: {0}")]
    Security(#[from] crate::security::SecurityError),
}

impl Config {
    /// Builds the configuration from the file named by `cli.config` (if any),
    /// then applies the flags (clap already folded in the environment).
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let mut config = match &cli.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply_cli(cli)?;
        config.resolve_shards();
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    fn apply_cli(&mut self, cli: &Cli) -> Result<(), ConfigError> {
        if let Some(listen) = cli.listen {
            self.listen = Some(listen);
        }
        if let Some(dir) = &cli.data_dir {
            self.data_dir = dir.clone();
        }
        if let Some(shards) = cli.shards {
            self.shards = shards;
        }
        if let Some(metrics) = &cli.metrics_listen {
            self.metrics_listen = parse_optional_addr(metrics)?;
        }
        if cli.grpc_testing {
            self.grpc_testing = true;
        }
        if cli.no_pin {
            self.pin_cpus = false;
        }
        if let Some(format) = &cli.log_format {
            self.log_format = format.clone();
        }
        Ok(())
    }

    fn resolve_shards(&mut self) {
        if self.shards == 0 {
            self.shards = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
    }

    /// The CPU shard `shard` is pinned to.
    pub fn cpu_of_shard(&self, shard: usize) -> usize {
        self.cpus.get(shard).copied().unwrap_or(shard)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return invalid("shards", "must be between 1 and 1024");
        }
        if !self.cpus.is_empty() && self.cpus.len() < self.shards {
            return invalid("cpus", "must list one CPU per shard");
        }
        if self.log_format != "text" && self.log_format != "json" {
            return invalid("log_format", "must be \"text\" or \"json\"");
        }
        if self.limits.cross_core_queue_depth == 0
            || self.limits.stream_inflight_max == 0
            || self.limits.produce_inflight_requests_max == 0
        {
            return invalid("limits", "queue depths must be at least 1");
        }
        if self.limits.produce_inflight_bytes_max < self.limits.message_bytes_max {
            return invalid(
                "limits.produce_inflight_bytes_max",
                "must be at least message_bytes_max",
            );
        }
        self.limits.validate_answer_size()?;
        if self.storage.topic_partitions_max == 0 {
            return invalid("storage.topic_partitions_max", "must be at least 1");
        }
        if let Err(error) = self.server_config().validate() {
            return Err(ConfigError::Invalid {
                setting: "transport",
                reason: error.to_string(),
            });
        }
        if let Err(reason) = validate_segment_bytes(self.storage.segment_bytes_max) {
            return invalid("storage.segment_bytes_max", &reason);
        }
        // Reads the token file too, so a bad one is a configuration error
        // (exit 2) rather than a failed startup.
        crate::security::SecurityPolicy::from_config(self)?;
        self.tls.validate(self.listen)?;
        // Reads the TLS files too: a bad one is a configuration error (exit
        // 2), reported before anything starts.
        if let Some(files) = self.tls.files() {
            shardlog_wire::tls::server_config(&files)?;
        }
        Ok(())
    }
}

impl LimitsConfig {
    /// A fetch or Subscribe answer holds encoded records (framing included)
    /// while their total is below `fetch_bytes_max`, so it may cross it by one
    /// record of up to `record_bytes_max` plus that record's framing (at most
    /// 1024 headers): all of it, and the answer's own fields, must fit in one
    /// gRPC message, or the offsets it holds could never be fetched.
    fn validate_answer_size(&self) -> Result<(), ConfigError> {
        let answer_bytes_max = self
            .fetch_bytes_max
            .saturating_add(self.record_bytes_max)
            .saturating_add(RESPONSE_OVERHEAD_BYTES);
        if answer_bytes_max > self.message_bytes_max {
            return Err(ConfigError::Invalid {
                setting: "limits.fetch_bytes_max",
                reason: format!(
                    "fetch_bytes_max ({}) + record_bytes_max ({}) + 64 KiB of framing must fit in message_bytes_max ({})",
                    self.fetch_bytes_max, self.record_bytes_max, self.message_bytes_max
                ),
            });
        }
        Ok(())
    }
}

impl Config {
    /// The wire server's settings derived from this configuration.
    pub fn server_config(&self) -> shardlog_wire::server::ServerConfig {
        let transport = &self.transport;
        let millis = std::time::Duration::from_millis;
        let non_zero = |ms: u64| (ms > 0).then(|| millis(ms));
        shardlog_wire::server::ServerConfig {
            max_concurrent_streams: transport.max_concurrent_streams,
            max_header_list_size_bytes: transport.max_header_list_size_bytes,
            max_message_bytes: self.limits.message_bytes_max,
            initial_stream_window_bytes: transport.stream_window_bytes,
            initial_connection_window_bytes: transport.connection_window_bytes,
            handshake_timeout: millis(transport.handshake_timeout_ms),
            idle_timeout: non_zero(transport.idle_timeout_ms),
            keepalive_interval: non_zero(transport.keepalive_interval_ms),
            keepalive_timeout: millis(transport.keepalive_timeout_ms),
            drain_grace: millis(transport.drain_grace_ms),
            max_connections: self.limits.connections_per_shard_max,
            max_connections_per_ip: (self.limits.connections_per_ip_max > 0)
                .then_some(self.limits.connections_per_ip_max),
            source_ip_connections: self.source_ip_connections.clone(),
            request_header_timeout: millis(transport.request_header_timeout_ms),
            max_noop_frames_per_second: transport.noop_frames_per_second_max,
            send_stall_timeout: non_zero(transport.send_stall_timeout_ms),
            ..shardlog_wire::server::ServerConfig::default()
        }
    }
}

fn parse_optional_addr(text: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| ConfigError::Invalid {
        setting: "metrics_listen",
        reason: format!("{text:?} is neither an address nor \"off\""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_loopback_50051_in_local_dir() {
        let config = Config::load(&Cli::default()).expect("defaults are valid");
        assert_eq!(
            config.listen,
            Some("127.0.0.1:50051".parse().expect("addr"))
        );
        assert_eq!(config.data_dir, PathBuf::from("./shardlog-data"));
        assert!(config.shards >= 1);
    }

    #[test]
    fn abuse_limits_map_to_the_wire_and_clones_share_the_per_ip_table() {
        let config = Config::from_toml(
            "[limits]\nconnections_per_ip_max = 0\n[transport]\nsend_stall_timeout_ms = 0\n\
             request_header_timeout_ms = 1500\nnoop_frames_per_second_max = 7\n",
        )
        .expect("valid toml");
        let wire = config.server_config();
        assert_eq!(wire.max_connections_per_ip, None, "0 disables the cap");
        assert_eq!(wire.send_stall_timeout, None, "0 waits forever");
        assert_eq!(wire.request_header_timeout.as_millis(), 1500);
        assert_eq!(wire.max_noop_frames_per_second, 7);
        let defaults = Config::default().server_config();
        assert_eq!(defaults.max_connections_per_ip, Some(4096));
        // Every shard gets a clone of one Config: their wire configs must
        // count in the same table for the cap to be process-wide.
        let shard_config = config.clone();
        assert!(
            config
                .server_config()
                .source_ip_connections
                .is_shared_with(&shard_config.server_config().source_ip_connections)
        );
        assert!(
            !Config::default()
                .source_ip_connections
                .is_shared_with(&config.source_ip_connections)
        );
    }

    #[test]
    fn toml_then_flags_override() {
        let mut config = Config::from_toml(
            "listen = \"0.0.0.0:7000\"\nshards = 3\n[limits]\nfetch_bytes_max = 4096\n",
        )
        .expect("valid toml");
        assert_eq!(config.shards, 3);
        assert_eq!(config.limits.fetch_bytes_max, 4096);
        let cli = Cli {
            shards: Some(2),
            metrics_listen: Some("off".into()),
            ..Cli::default()
        };
        config.apply_cli(&cli).expect("valid flags");
        assert_eq!(config.shards, 2);
        assert_eq!(config.listen, Some("0.0.0.0:7000".parse().expect("addr")));
        assert!(config.metrics_listen.is_none());
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let config =
            Config::from_toml(include_str!("../dist/shardlog.toml")).expect("example parses");
        assert_eq!(config.listen.map(|a| a.port()), Some(50051));
    }

    #[test]
    fn tls_section_parses_and_is_checked() {
        let text = "listen = \"off\"\n[tls]\nlisten = \"0.0.0.0:7443\"\n\
                    cert_path = \"/etc/shardlog/server.pem\"\nkey_path = \"/etc/shardlog/server.key\"\n\
                    client_ca_path = \"/etc/shardlog/ca.pem\"\nclient_auth = \"optional\"\n\
                    crl_paths = [\"/etc/shardlog/ca.crl\"]\n";
        let config = Config::from_toml(text).expect("valid toml");
        assert_eq!(config.listen, None);
        assert_eq!(config.tls.client_auth, ClientAuthMode::Optional);
        config
            .tls
            .validate(config.listen)
            .expect("valid tls section");
        let files = config.tls.files().expect("tls on");
        assert_eq!(files.client_auth, shardlog_wire::tls::ClientAuth::Optional);
        assert_eq!(files.crl_paths.len(), 1);

        let refused = |text: &str, setting: &str| {
            let config = Config::from_toml(text).expect("valid toml");
            match config.tls.validate(config.listen) {
                Err(ConfigError::Invalid { setting: got, .. }) => assert_eq!(got, setting),
                other => panic!("{text}: {other:?}"),
            }
        };
        refused("listen = \"off\"\n", "listen");
        refused("[tls]\nlisten = \"127.0.0.1:7443\"\n", "tls.cert_path");
        refused(
            "[tls]\nlisten = \"127.0.0.1:7443\"\ncert_path = \"c\"\n",
            "tls.key_path",
        );
        refused(
            "[tls]\nlisten = \"127.0.0.1:7443\"\ncert_path = \"c\"\nkey_path = \"k\"\ncrl_paths = [\"r\"]\n",
            "tls.crl_paths",
        );
        refused(
            "listen = \"127.0.0.1:7443\"\n[tls]\nlisten = \"127.0.0.1:7443\"\ncert_path = \"c\"\nkey_path = \"k\"\n",
            "tls.listen",
        );
        assert!(Config::from_toml("[tls]\nclient_auth = \"sometimes\"\n").is_err());
        assert!(Config::from_toml("listen = \"nowhere\"\n").is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(Config::from_toml("listen_addr = \"x\"").is_err());
    }

    #[test]
    fn a_fetch_answer_of_fetch_bytes_max_plus_one_record_must_fit_in_a_message() {
        let limits = |message: usize, record: usize, fetch: usize| LimitsConfig {
            message_bytes_max: message,
            record_bytes_max: record,
            fetch_bytes_max: fetch,
            ..LimitsConfig::default()
        };
        let mib = 1 << 20;
        assert!(LimitsConfig::default().validate_answer_size().is_ok());
        assert!(
            limits(mib, 448 << 10, 448 << 10)
                .validate_answer_size()
                .is_ok()
        );
        // Each fits alone, but not together: an answer may hold both.
        for (record, fetch) in [(512 << 10, 512 << 10), (mib - 1, 1), (1, mib - 1)] {
            assert!(matches!(
                limits(mib, record, fetch).validate_answer_size(),
                Err(ConfigError::Invalid {
                    setting: "limits.fetch_bytes_max",
                    ..
                })
            ));
        }
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let mut config = Config {
            shards: 2,
            ..Config::default()
        };
        config.limits.record_bytes_max = config.limits.message_bytes_max + 1;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid { .. })
        ));
        for segment_bytes_max in [(64 << 10) - 1, (4 << 30) + 1] {
            let mut config = Config {
                shards: 2,
                ..Config::default()
            };
            config.storage.segment_bytes_max = segment_bytes_max;
            assert!(matches!(
                config.validate(),
                Err(ConfigError::Invalid {
                    setting: "storage.segment_bytes_max",
                    ..
                })
            ));
        }
    }
}
