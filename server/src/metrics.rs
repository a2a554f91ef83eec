//! Prometheus metrics: each shard counts into its own [`ShardMetrics`] (no
//! shared atomics on the request path); the `/metrics` endpoint on shard 0
//! asks every shard for its samples across the mesh and renders the text
//! exposition format, one `shard` label per sample.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use shardlog_wire::Code;
use tracing::warn;

use crate::ops::{Op, Reply};
use crate::security::quota::QuotaKind;
use crate::security::{AuthFailure, Operation};
use crate::shard::ShardContext;

/// Upper bounds of the request latency histogram, in seconds.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Largest HTTP request head the metrics endpoint reads.
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 << 10;
/// Time a metrics client has to send its request.
pub const METRICS_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct MethodStats {
    by_code: BTreeMap<i32, u64>,
    buckets: [u64; LATENCY_BUCKETS_SECONDS.len()],
    count: u64,
    sum_seconds: f64,
}

#[derive(Default, Clone, Copy)]
struct FetchStats {
    records: u64,
    bytes: u64,
}

/// One shard's counters.
#[derive(Default)]
pub struct ShardMetrics {
    methods: RefCell<BTreeMap<(&'static str, &'static str), MethodStats>>,
    fetches: RefCell<BTreeMap<String, BTreeMap<u32, FetchStats>>>,
    security: SecurityStats,
    /// The executor's run time so far. glommio's `executor_stats()` hands out the time since
    /// its previous call and resets, so every read is added here: the exported counter never
    /// goes backwards, however many scrapes there are.
    busy: Cell<Duration>,
}

/// Security counters: no principal or token in any label (tokens never
/// reach metrics; principals would be unbounded label values).
#[derive(Default)]
struct SecurityStats {
    auth_failures: [Cell<u64>; AuthFailure::ALL.len()],
    denied: RefCell<BTreeMap<&'static str, u64>>,
    throttled: [Cell<u64>; QuotaKind::ALL.len()],
}

impl ShardMetrics {
    /// The executor's total run time (tasks and I/O polling) up to now.
    fn busy_total(&self) -> Duration {
        let since_last_read = glommio::executor().executor_stats().total_runtime();
        self.busy.set(self.busy.get() + since_last_read);
        self.busy.get()
    }

    /// Records one finished call.
    pub(crate) fn record_call(
        &self,
        service: &'static str,
        method: &'static str,
        code: Code,
        elapsed: Duration,
    ) {
        let mut methods = self.methods.borrow_mut();
        let stats = methods.entry((service, method)).or_default();
        *stats.by_code.entry(code.0).or_default() += 1;
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in stats.buckets.iter_mut().zip(LATENCY_BUCKETS_SECONDS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        stats.count += 1;
        stats.sum_seconds += seconds;
    }

    /// Records records served by a fetch or subscribe of a partition owned
    /// here (allocates only the first time a topic is seen).
    pub fn record_fetch(&self, topic: &str, partition: u32, records: usize, bytes: usize) {
        let mut fetches = self.fetches.borrow_mut();
        if !fetches.contains_key(topic) {
            fetches.insert(topic.to_owned(), BTreeMap::new());
        }
        let by_partition = fetches.get_mut(topic).expect("inserted above");
        let stats = by_partition.entry(partition).or_default();
        stats.records += records as u64;
        stats.bytes += bytes as u64;
    }
}

impl ShardMetrics {
    /// Counts a call refused UNAUTHENTICATED.
    pub fn record_auth_failure(&self, failure: AuthFailure) {
        let index = AuthFailure::ALL
            .iter()
            .position(|&f| f == failure)
            .unwrap_or(0);
        let counter = &self.security.auth_failures[index];
        counter.set(counter.get() + 1);
    }

    /// Counts a call refused PERMISSION_DENIED by the ACLs.
    pub fn record_denied(&self, operation: Operation) {
        *self
            .security
            .denied
            .borrow_mut()
            .entry(operation.name())
            .or_default() += 1;
    }

    /// Counts a call refused RESOURCE_EXHAUSTED by a quota.
    pub fn record_throttled(&self, kind: QuotaKind) {
        let index = QuotaKind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
        let counter = &self.security.throttled[index];
        counter.set(counter.get() + 1);
    }
}

/// Feeds the wire server's call outcomes (including library-generated
/// statuses: unknown method, deadline, oversize, drain) into a shard's
/// metrics.
pub struct MetricsObserver {
    shard: std::rc::Weak<ShardContext>,
}

impl MetricsObserver {
    /// An observer recording into `shard`'s metrics.
    pub fn new(shard: &Rc<ShardContext>) -> Rc<Self> {
        Rc::new(Self {
            shard: Rc::downgrade(shard),
        })
    }
}

impl shardlog_wire::server::CallObserver for MetricsObserver {
    fn call_finished(&self, method: Option<&'static str>, code: Code, elapsed: Duration) {
        let Some(shard) = self.shard.upgrade() else {
            return;
        };
        let (service, method) = method
            .and_then(|path| path.trim_start_matches('/').split_once('/'))
            .unwrap_or(("unknown", "unknown"));
        shard.metrics.record_call(service, method, code, elapsed);
    }
}

/// Metric families: name, type, help. Samples are grouped under them.
const FAMILIES: [(&str, &str, &str); 28] = [
    (
        "grpc_requests_total",
        "counter",
        "gRPC calls finished, by method and status.",
    ),
    (
        "grpc_request_duration_seconds",
        "histogram",
        "gRPC call latency from headers to trailers.",
    ),
    (
        "shardlog_partition_log_start_offset",
        "gauge",
        "First offset still stored.",
    ),
    (
        "shardlog_partition_log_end_offset",
        "gauge",
        "Offset the next appended record gets.",
    ),
    (
        "shardlog_partition_durable_offset",
        "gauge",
        "Offsets below this are synced and readable.",
    ),
    (
        "shardlog_partition_size_bytes",
        "gauge",
        "Bytes of segment files on disk.",
    ),
    (
        "shardlog_partition_faulted",
        "gauge",
        "1 when the partition refuses service.",
    ),
    (
        "shardlog_partition_appended_records_total",
        "counter",
        "Records appended.",
    ),
    (
        "shardlog_partition_appended_bytes_total",
        "counter",
        "Batch bytes appended.",
    ),
    (
        "shardlog_partition_fsyncs_total",
        "counter",
        "fdatasync calls completed.",
    ),
    (
        "shardlog_partition_fsync_latency_us",
        "gauge",
        "Latency of the last sync round (writes issued to durable), microseconds.",
    ),
    (
        "shardlog_partition_segment_rolls_total",
        "counter",
        "Active segments sealed and replaced by a new one.",
    ),
    (
        "shardlog_partition_segments_recycled_total",
        "counter",
        "Segments started from a file retired by retention (no block allocation).",
    ),
    (
        "shardlog_partition_fetched_records_total",
        "counter",
        "Records served by Fetch and Subscribe.",
    ),
    (
        "shardlog_partition_fetched_bytes_total",
        "counter",
        "Value bytes served by Fetch and Subscribe.",
    ),
    (
        "shardlog_cross_core_inflight",
        "gauge",
        "Calls waiting on another shard.",
    ),
    (
        "shardlog_cross_core_served_running",
        "gauge",
        "Produces, fetches and other data-path calls this shard runs for other shards.",
    ),
    (
        "shardlog_connections_active",
        "gauge",
        "Open gRPC connections.",
    ),
    (
        "shardlog_connections_refused_total",
        "counter",
        "Connections closed at accept, by the cap they exceeded (total, source_ip).",
    ),
    (
        "shardlog_connections_cut_total",
        "counter",
        "Connections cut off for HTTP/2 abuse (frame floods, unfinished headers, stalled readers).",
    ),
    (
        "shardlog_cross_core_calls_total",
        "counter",
        "Calls sent to other shards.",
    ),
    (
        "shardlog_produce_inflight_requests",
        "gauge",
        "Produce requests accepted by this shard and not yet answered.",
    ),
    (
        "shardlog_produce_shed_total",
        "counter",
        "Produce requests refused UNAVAILABLE because the shard's in-flight bounds were full.",
    ),
    (
        "shardlog_cross_core_refused_total",
        "counter",
        "Cross-core calls refused (queue full).",
    ),
    (
        "shardlog_shard_busy_seconds_total",
        "counter",
        "Time the shard's executor spent running tasks and polling for I/O (not waiting idle).",
    ),
    (
        "shardlog_sync_round_wait_seconds",
        "histogram",
        "Per sync round: from its oldest append until its writes were issued (group commit).",
    ),
    (
        "shardlog_sync_round_write_seconds",
        "histogram",
        "Per sync round: from issuing its writes until all completed.",
    ),
    (
        "shardlog_sync_round_fdatasync_seconds",
        "histogram",
        "Per sync round: from issuing its fdatasync until it completed.",
    ),
];

/// Security metric families (kept apart from [`FAMILIES`] so other metric
/// additions merge cleanly).
const SECURITY_FAMILIES: [(&str, &str, &str); 3] = [
    (
        "shardlog_auth_failures_total",
        "counter",
        "Calls refused UNAUTHENTICATED, by reason.",
    ),
    (
        "shardlog_acl_denied_total",
        "counter",
        "Calls refused PERMISSION_DENIED by the ACLs, by operation.",
    ),
    (
        "shardlog_quota_throttled_total",
        "counter",
        "Calls refused RESOURCE_EXHAUSTED by a per-principal quota, by limit.",
    ),
];

/// Every metric family, in rendering order.
fn all_families() -> impl Iterator<Item = &'static (&'static str, &'static str, &'static str)> {
    FAMILIES.iter().chain(SECURITY_FAMILIES.iter())
}

fn render_security(shard: &ShardContext, out: &mut String) {
    let id = shard.id;
    let stats = &shard.metrics.security;
    for (failure, count) in AuthFailure::ALL.iter().zip(&stats.auth_failures) {
        let labels = format!(",reason=\"{}\"", failure.label());
        sample(
            out,
            "shardlog_auth_failures_total",
            "",
            id,
            &labels,
            count.get(),
        );
    }
    for (operation, count) in stats.denied.borrow().iter() {
        let labels = format!(",operation=\"{operation}\"");
        sample(out, "shardlog_acl_denied_total", "", id, &labels, count);
    }
    for (kind, count) in QuotaKind::ALL.iter().zip(&stats.throttled) {
        let labels = format!(",limit=\"{}\"", kind.label());
        sample(
            out,
            "shardlog_quota_throttled_total",
            "",
            id,
            &labels,
            count.get(),
        );
    }
}

/// Appends one sample line, tagged with its family for grouping.
fn sample(
    out: &mut String,
    family: &str,
    suffix: &str,
    shard: usize,
    labels: &str,
    value: impl std::fmt::Display,
) {
    let _ = writeln!(
        out,
        "{family}\t{family}{suffix}{{shard=\"{shard}\"{labels}}} {value}"
    );
}

/// Renders this shard's samples as `family\tsample-line` lines; the endpoint
/// groups them under each family's HELP/TYPE header.
pub fn render_shard(shard: &ShardContext) -> String {
    let mut out = String::new();
    let id = shard.id;
    for ((service, method), stats) in shard.metrics.methods.borrow().iter() {
        let labels = format!(",service=\"{service}\",method=\"{method}\"");
        for (&code, &count) in &stats.by_code {
            let status = Code(code).name().unwrap_or("UNKNOWN_CODE");
            sample(
                &mut out,
                "grpc_requests_total",
                "",
                id,
                &format!("{labels},status=\"{status}\""),
                count,
            );
        }
        let family = "grpc_request_duration_seconds";
        for (bucket, bound) in stats.buckets.iter().zip(LATENCY_BUCKETS_SECONDS) {
            sample(
                &mut out,
                family,
                "_bucket",
                id,
                &format!("{labels},le=\"{bound}\""),
                bucket,
            );
        }
        sample(
            &mut out,
            family,
            "_bucket",
            id,
            &format!("{labels},le=\"+Inf\""),
            stats.count,
        );
        sample(&mut out, family, "_sum", id, &labels, stats.sum_seconds);
        sample(&mut out, family, "_count", id, &labels, stats.count);
    }
    let fetches = shard.metrics.fetches.borrow();
    for partition in shard.engine.partitions() {
        let pid = partition.id();
        let labels = format!(",topic=\"{}\",partition=\"{}\"", pid.topic, pid.partition);
        let offsets = partition.offsets();
        let stats = partition.stats();
        let fetched = fetches
            .get(&*pid.topic)
            .and_then(|by_partition| by_partition.get(&pid.partition))
            .copied()
            .unwrap_or_default();
        let gauges: [(&str, u64); 13] = [
            ("shardlog_partition_log_start_offset", offsets.log_start),
            ("shardlog_partition_log_end_offset", offsets.log_end),
            ("shardlog_partition_durable_offset", offsets.durable),
            ("shardlog_partition_size_bytes", partition.size_bytes()),
            (
                "shardlog_partition_faulted",
                u64::from(partition.fault().is_some()),
            ),
            (
                "shardlog_partition_appended_records_total",
                stats.appended_records,
            ),
            (
                "shardlog_partition_appended_bytes_total",
                stats.appended_bytes,
            ),
            ("shardlog_partition_fsyncs_total", stats.syncs),
            (
                "shardlog_partition_fsync_latency_us",
                stats.last_sync_latency_us,
            ),
            (
                "shardlog_partition_segment_rolls_total",
                stats.segment_rolls,
            ),
            (
                "shardlog_partition_segments_recycled_total",
                stats.segments_recycled,
            ),
            ("shardlog_partition_fetched_records_total", fetched.records),
            ("shardlog_partition_fetched_bytes_total", fetched.bytes),
        ];
        for (family, value) in gauges {
            sample(&mut out, family, "", id, &labels, value);
        }
    }
    let mesh = &shard.mesh;
    let server = shard.server.get();
    let connections = server.map_or(0, |server| server.active_connections());
    let (refused_total_cap, refused_source_ip_cap) =
        server.map_or((0, 0), |server| server.refused_connections());
    let shard_counters: [(&str, u64); 8] = [
        ("shardlog_connections_active", connections as u64),
        (
            "shardlog_connections_cut_total",
            server.map_or(0, |server| server.connections_cut()),
        ),
        ("shardlog_cross_core_inflight", mesh.inflight() as u64),
        (
            "shardlog_cross_core_served_running",
            mesh.served_running() as u64,
        ),
        ("shardlog_cross_core_calls_total", mesh.calls_total()),
        ("shardlog_cross_core_refused_total", mesh.refused_total()),
        (
            "shardlog_produce_inflight_requests",
            shard.produce_inflight_requests.get() as u64,
        ),
        (
            "shardlog_produce_shed_total",
            shard.produce_shed_total.get(),
        ),
    ];
    for (family, value) in shard_counters {
        sample(&mut out, family, "", id, "", value);
    }
    let refused = [
        (",cap=\"total\"", refused_total_cap),
        (",cap=\"source_ip\"", refused_source_ip_cap),
    ];
    for (labels, value) in refused {
        sample(
            &mut out,
            "shardlog_connections_refused_total",
            "",
            id,
            labels,
            value,
        );
    }
    let busy = shard.metrics.busy_total();
    sample(
        &mut out,
        "shardlog_shard_busy_seconds_total",
        "",
        id,
        "",
        busy.as_secs_f64(),
    );
    render_sync_rounds(shard, &mut out);
    render_security(shard, &mut out);
    out
}

/// The shard's sync-round phase histograms, in seconds.
fn render_sync_rounds(shard: &ShardContext, out: &mut String) {
    let id = shard.id;
    let stats = shard.engine.sync_round_stats();
    let phases = [
        ("shardlog_sync_round_wait_seconds", stats.wait),
        ("shardlog_sync_round_write_seconds", stats.write),
        ("shardlog_sync_round_fdatasync_seconds", stats.fdatasync),
    ];
    for (family, histogram) in phases {
        for (bound_us, count) in histogram.cumulative() {
            let labels = format!(",le=\"{}\"", bound_us as f64 / 1e6);
            sample(out, family, "_bucket", id, &labels, count);
        }
        sample(out, family, "_bucket", id, ",le=\"+Inf\"", histogram.count);
        sample(out, family, "_sum", id, "", histogram.sum_us as f64 / 1e6);
        sample(out, family, "_count", id, "", histogram.count);
    }
}

/// Gathers every shard's samples and renders the exposition text.
pub async fn render_all(shard: &Rc<ShardContext>) -> String {
    let mut by_family: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for target in 0..shard.shard_count {
        let text = match shard.call(target, Op::Metrics, None).await {
            Ok(Reply::Metrics(text)) => text,
            _ => continue,
        };
        for entry in text.lines() {
            if let Some((family, sample)) = entry.split_once('\t')
                && let Some((name, _, _)) = all_families().find(|(name, _, _)| *name == family)
            {
                by_family.entry(name).or_default().push(sample.to_owned());
            }
        }
    }
    let mut out = String::new();
    for (name, kind, help) in all_families() {
        let Some(samples) = by_family.get(name) else {
            continue;
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for sample in samples {
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

/// Serves `GET /metrics` over plain HTTP/1.1 on shard 0 until the listener
/// is dropped. One connection at a time is enough for a scraper.
pub async fn serve(listener: glommio::net::TcpListener, shard: Rc<ShardContext>) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                warn!(%error, "metrics accept failed");
                glommio::timer::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let answer = answer_one(stream, &shard);
        let timeout = async {
            glommio::timer::sleep(METRICS_REQUEST_TIMEOUT).await;
        };
        futures_lite::future::or(answer, timeout).await;
    }
}

async fn answer_one(mut stream: glommio::net::TcpStream, shard: &Rc<ShardContext>) {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&chunk[..read]),
        }
        if head.len() > METRICS_REQUEST_BYTES_MAX {
            let _ = stream.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").await;
            return;
        }
    }
    let request_line = head.split(|&byte| byte == b'\r').next().unwrap_or_default();
    let response = if request_line.starts_with(b"GET /metrics ") {
        let body = render_all(shard).await;
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.close().await;
}
