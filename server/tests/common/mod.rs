//! Test harness: runs the real `shardlog` binary on a free loopback port with
//! a temp data dir, and talks to it with the wire crate's gRPC client on a
//! glommio executor.

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use shardlog_wire::client::{CallOptions, Channel, RequestSink, StreamingResponseFuture};
use shardlog_wire::proto::shardlog::v1 as pb;
use shardlog_wire::{Code, Response, Status, Streaming};

/// How long a server gets to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server gets to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running server process; killed when dropped.
pub struct TestServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The TLS listener's address, when the config turns `[tls]` on.
    pub tls_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    shards: usize,
    extra_args: Vec<String>,
}

impl TestServer {
    /// Starts a server with `shards` shards in a fresh temp data dir.
    pub fn start(shards: usize) -> Self {
        Self::start_with(shards, &[])
    }

    /// Starts a server with extra command-line flags.
    pub fn start_with(shards: usize, extra_args: &[&str]) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        let mut server = Self {
            child: None,
            addr: "127.0.0.1:0".parse().expect("addr"),
            tls_addr: None,
            data_dir,
            _temp: Some(temp),
            shards,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shardlog"));
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--shards")
            .arg(self.shards.to_string())
            .arg("--no-pin")
            .args(&self.extra_args)
            .env_remove("SHARDLOG_LISTEN")
            .env_remove("SHARDLOG_DATA_DIR")
            .env("SHARDLOG_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !self.extra_args.iter().any(|a| a == "--metrics-listen") {
            command.arg("--metrics-listen").arg("off");
        }
        let mut child = command.spawn().expect("spawn shardlog");
        let stdout = child.stdout.take().expect("stdout");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = line_rx
            .recv_timeout(START_TIMEOUT)
            .expect("server printed its listening line");
        let addr = line
            .strip_prefix("shardlog listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        self.addr = addr.parse().expect("listening address");
        self.tls_addr = line
            .split_once(", tls on ")
            .and_then(|(_, rest)| rest.split(',').next())
            .and_then(|tls| tls.parse().ok());
        self.child = Some(child);
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: signalling a child process we own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not stop within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a server that was signalled elsewhere to exit; asserts 0.
    pub fn wait_exit(&mut self) {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert_eq!(status.code(), Some(0), "clean shutdown exits 0");
                return;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the server (no chance to sync anything).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data dir (new port).
    pub fn restart(&mut self) {
        assert_eq!(self.stop(), Some(0), "clean shutdown exits 0");
        self.spawn();
    }

    /// Starts the server again after it stopped or was killed.
    pub fn restart_after_kill(&mut self) {
        assert!(self.child.is_none(), "the old process is gone first");
        self.spawn();
    }

    /// Replaces the extra command-line flags used by the next (re)start.
    pub fn set_extra_args(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
    }

    /// Resident set size of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("VmRSS")
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `body` on a fresh glommio executor (unbound) and returns its output.
pub fn block_on<T, F, Fut>(body: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(body)
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

/// Opens one HTTP/2 connection to `addr`; the driver runs on this executor.
pub async fn connect(addr: SocketAddr) -> Channel {
    let stream = glommio::net::TcpStream::connect(addr)
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (channel, driver) = Channel::handshake(stream, &addr.to_string())
        .await
        .expect("handshake");
    glommio::spawn_local(driver).detach();
    channel
}

/// A thin typed client for the Log service.
#[derive(Clone)]
pub struct Log {
    pub channel: Channel,
}

fn path(method: &str) -> String {
    format!("/shardlog.v1.Log/{method}")
}

impl Log {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self {
            channel: connect(addr).await,
        }
    }

    pub async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, Status> {
        let options = CallOptions {
            timeout: Some(Duration::from_secs(30)),
            ..CallOptions::default()
        };
        self.channel
            .unary(&path(method), request, options)
            .await
            .map(|response| response.into_inner())
    }

    pub async fn create_topic(
        &self,
        topic: &str,
        partition_count: u32,
    ) -> Result<pb::CreateTopicResponse, Status> {
        let request = pb::CreateTopicRequest {
            topic: topic.to_owned(),
            partition_count,
            retention: None,
        };
        self.unary("CreateTopic", &request).await
    }

    pub async fn describe(&self, topic: &str) -> Result<pb::TopicDescription, Status> {
        let request = pb::DescribeTopicRequest {
            topic: topic.to_owned(),
        };
        let response: pb::DescribeTopicResponse = self.unary("DescribeTopic", &request).await?;
        Ok(response.topic.expect("description"))
    }

    pub async fn produce(
        &self,
        request: pb::ProduceRequest,
    ) -> Result<pb::ProduceResponse, Status> {
        self.unary("Produce", &request).await
    }

    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<pb::FetchResponse, Status> {
        let request = pb::FetchRequest {
            topic: topic.to_owned(),
            partition,
            offset,
            ..Default::default()
        };
        self.unary("Fetch", &request).await
    }

    /// Fetches every record of a partition from `offset` to its durable end.
    pub async fn fetch_all(
        &self,
        topic: &str,
        partition: u32,
        mut offset: u64,
    ) -> Vec<pb::FetchedRecord> {
        let mut records = Vec::new();
        loop {
            let response = self.fetch(topic, partition, offset).await.expect("fetch");
            if response.records.is_empty() {
                return records;
            }
            offset = response.next_offset;
            records.extend(response.records);
        }
    }
}

/// A record with the given value and a fixed timestamp.
pub fn record(value: &[u8]) -> pb::Record {
    pb::Record {
        key: None,
        value: value.to_vec().into(),
        timestamp_ms: 1_700_000_000_000,
        headers: Vec::new(),
    }
}

/// A produce request of `records` to an explicit partition.
pub fn produce_to(topic: &str, partition: u32, records: Vec<pb::Record>) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: topic.to_owned(),
        partition: Some(partition),
        records,
        ..Default::default()
    }
}

/// Asserts `result` failed with `code`; returns its message.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> String {
    match result {
        Ok(value) => panic!("expected {code:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "status: {status:?}");
            status.message().to_owned()
        }
    }
}

/// GETs `path` over plain HTTP/1.1; the body on 200, empty otherwise.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("http response");
    if head.starts_with("HTTP/1.1 200") {
        body.to_owned()
    } else {
        String::new()
    }
}

/// A small deterministic generator (xorshift) so a failing seed replays.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Opens a ProduceStream on `channel` (no deadline).
pub async fn open_produce_stream(
    channel: &Channel,
) -> Result<
    (
        RequestSink<pb::ProduceRequest>,
        StreamingResponseFuture<pb::ProduceResponse>,
    ),
    Status,
> {
    channel
        .bidi_streaming("/shardlog.v1.Log/ProduceStream", CallOptions::default())
        .await
}

/// Opens a Subscribe on `channel` (no deadline).
pub async fn open_subscribe(
    channel: &Channel,
    request: &pb::SubscribeRequest,
) -> Result<Response<Streaming<pb::FetchResponse>>, Status> {
    channel
        .server_streaming(
            "/shardlog.v1.Log/Subscribe",
            request,
            CallOptions::default(),
        )
        .await
}
