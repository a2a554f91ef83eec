//! Authentication, ACLs and quotas against the real binary: token cases
//! (none, malformed, unknown, valid, valid but not allowed), an ACL matrix of
//! two principals x every Log operation x topics (own, other's, missing),
//! deny-over-allow, prefix rules, filtered listing, open health checks, and
//! per-principal rate limits with their retry hint. Tokens must never show up
//! in the server's log output or its metrics.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TestServer, block_on, connect, http_get, produce_to, record};
use shardlog_wire::client::{CallOptions, Channel};
use shardlog_wire::proto::grpc::health::v1::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
};
use shardlog_wire::proto::grpc::reflection::v1 as reflection;
use shardlog_wire::proto::shardlog::v1 as pb;
use shardlog_wire::{Code, Metadata, Status};

const ADMIN_TOKEN: &str = "admin-Zq7xK2pW9vLm4Rt8";
const ALICE_TOKEN: &str = "alice-Hn3bV6cX1sDf5Gj0";
const BOB_TOKEN: &str = "bob-Ty8uI2oP4aS6dF9g";
const LIMITED_TOKEN: &str = "limited-Qw1eR3tY5uI7oP9a";
const COUNTED_TOKEN: &str = "counted-Lk9jH7gF5dS3aQ1w";
const NEVER_ISSUED_TOKEN: &str = "never-issued-Mn4bV8cX2zL6kJ0h";

/// ACLs shared by the tests: admin may do everything (but produce to
/// `frozen.`), alice and bob own their prefixes, everyone may describe
/// `public`, and alice may not delete `alice.keep`.
const ACL_TOML: &str = r#"
[[acl]]
principal = "admin"
operations = ["all"]
topic_prefix = ""

[[acl]]
principal = "alice"
operations = ["all"]
topic_prefix = "alice."

[[acl]]
principal = "alice"
effect = "deny"
operations = ["delete"]
topic = "alice.keep"

[[acl]]
principal = "bob"
operations = ["all"]
topic_prefix = "bob."

[[acl]]
principal = "limited"
operations = ["produce", "fetch"]
topic_prefix = "limited."

[[acl]]
principal = "counted"
operations = ["produce"]
topic_prefix = "limited."

[[acl]]
principal = "*"
operations = ["describe"]
topic = "public"

[[acl]]
principal = "*"
effect = "deny"
operations = ["produce"]
topic_prefix = "frozen."
"#;

/// Writes the token file (made with the binary's own `hash-token`) and a
/// config file with `extra` appended; returns the config path.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let mut lines = String::from("# principal tokens\n");
    for (token, principal) in [
        (ADMIN_TOKEN, "admin"),
        (ALICE_TOKEN, "alice"),
        (BOB_TOKEN, "bob"),
        (LIMITED_TOKEN, "limited"),
        (COUNTED_TOKEN, "counted"),
    ] {
        lines.push_str(&hash_token_with_binary(token, principal));
    }
    let token_file = dir.join("tokens");
    std::fs::write(&token_file, lines).expect("write token file");
    let config = format!(
        "[auth]\nenabled = true\ntoken_file = {:?}\n{ACL_TOML}\n{extra}",
        token_file.to_str().expect("utf8 path")
    );
    let path = dir.join("shardlog.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

/// `printf %s TOKEN | shardlog hash-token PRINCIPAL`.
fn hash_token_with_binary(token: &str, principal: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardlog"))
        .args(["hash-token", principal])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run hash-token");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{token}").expect("write token");
    }
    let output = child.wait_with_output().expect("hash-token output");
    assert!(output.status.success(), "hash-token failed");
    let line = String::from_utf8(output.stdout).expect("utf8");
    assert!(!line.contains(token), "hash-token must not print the token");
    line
}

/// A client that sends `authorization: Bearer <token>` when it has one.
struct Client {
    channel: Channel,
    authorization: Option<String>,
}

fn path(method: &str) -> String {
    format!("/shardlog.v1.Log/{method}")
}

impl Client {
    async fn new(addr: SocketAddr, token: Option<&str>) -> Self {
        Self::with_authorization(addr, token.map(|token| format!("Bearer {token}"))).await
    }

    async fn with_authorization(addr: SocketAddr, authorization: Option<String>) -> Self {
        Self {
            channel: connect(addr).await,
            authorization,
        }
    }

    fn options(&self) -> CallOptions {
        let mut metadata = Metadata::new();
        if let Some(value) = &self.authorization {
            metadata
                .insert("authorization", value)
                .expect("ascii value");
        }
        CallOptions::default()
            .with_timeout(Duration::from_secs(30))
            .with_metadata(metadata)
    }

    async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, Status> {
        let path = path(method);
        let response = self.channel.unary(&path, request, self.options());
        response.await.map(|response| response.into_inner())
    }

    async fn list(&self) -> Result<Vec<String>, Status> {
        let response: pb::ListTopicsResponse =
            self.unary("ListTopics", &pb::ListTopicsRequest {}).await?;
        let mut topics = response.topics;
        topics.sort();
        Ok(topics)
    }

    async fn create(&self, topic: &str) -> Result<(), Status> {
        let request = pb::CreateTopicRequest {
            topic: topic.to_owned(),
            partition_count: 2,
            retention: None,
        };
        self.unary::<_, pb::CreateTopicResponse>("CreateTopic", &request)
            .await
            .map(drop)
    }

    async fn produce(&self, topic: &str, value_bytes: usize) -> Result<(), Status> {
        let request = produce_to(topic, 0, vec![record(&vec![b'v'; value_bytes])]);
        self.unary::<_, pb::ProduceResponse>("Produce", &request)
            .await
            .map(drop)
    }

    async fn fetch(&self, topic: &str) -> Result<pb::FetchResponse, Status> {
        let request = pb::FetchRequest {
            topic: topic.to_owned(),
            ..Default::default()
        };
        self.unary("Fetch", &request).await
    }

    /// Runs `operation` on `topic` and returns its status code.
    async fn run(&self, operation: Op, topic: &str) -> Result<(), Status> {
        let topic_owned = topic.to_owned();
        match operation {
            Op::Create => self.create(topic).await,
            Op::Delete => {
                let request = pb::DeleteTopicRequest { topic: topic_owned };
                self.unary::<_, pb::DeleteTopicResponse>("DeleteTopic", &request)
                    .await
                    .map(drop)
            }
            Op::Describe => {
                let request = pb::DescribeTopicRequest { topic: topic_owned };
                self.unary::<_, pb::DescribeTopicResponse>("DescribeTopic", &request)
                    .await
                    .map(drop)
            }
            Op::Produce => self.produce(topic, 8).await,
            Op::ProduceStream => self.produce_stream(topic).await,
            Op::Append => self.append(topic).await,
            Op::Fetch => self.fetch(topic).await.map(drop),
            Op::Subscribe => self.subscribe_first(topic).await,
            Op::Commit => {
                let request = pb::CommitOffsetRequest {
                    group: "g".to_owned(),
                    topic: topic_owned,
                    partition: 0,
                    offset: 1,
                    metadata: String::new(),
                };
                self.unary::<_, pb::CommitOffsetResponse>("CommitOffset", &request)
                    .await
                    .map(drop)
            }
            Op::GetCommitted => {
                let request = pb::GetCommittedOffsetRequest {
                    group: "g".to_owned(),
                    topic: topic_owned,
                    partition: 0,
                };
                self.unary::<_, pb::GetCommittedOffsetResponse>("GetCommittedOffset", &request)
                    .await
                    .map(drop)
            }
        }
    }

    async fn produce_stream(&self, topic: &str) -> Result<(), Status> {
        let (mut sink, response) = self
            .channel
            .bidi_streaming::<pb::ProduceRequest, pb::ProduceResponse>(
                &path("ProduceStream"),
                self.options(),
            )
            .await?;
        // A refused call may close before taking the message: the status
        // comes from the response either way.
        let _ = sink.send(&produce_to(topic, 0, vec![record(b"s")])).await;
        let _ = sink.finish();
        let mut stream = response.response().await?.into_inner();
        while stream.message().await?.is_some() {}
        Ok(())
    }

    async fn append(&self, topic: &str) -> Result<(), Status> {
        let (mut sink, response) = self
            .channel
            .client_streaming::<pb::ProduceRequest, pb::AppendSummary>(
                &path("Append"),
                self.options(),
            )
            .await?;
        let _ = sink.send(&produce_to(topic, 0, vec![record(b"a")])).await;
        let _ = sink.finish();
        response.response().await.map(drop)
    }

    /// Subscribes from offset 0 and waits for the first message (the topics
    /// it is used on hold records).
    async fn subscribe_first(&self, topic: &str) -> Result<(), Status> {
        let request = pb::SubscribeRequest {
            topic: topic.to_owned(),
            ..Default::default()
        };
        let mut stream = self
            .channel
            .server_streaming::<_, pb::FetchResponse>(&path("Subscribe"), &request, self.options())
            .await?
            .into_inner();
        let first = stream.message().await?;
        assert!(first.is_some(), "subscription delivers the stored record");
        Ok(())
    }

    async fn health(&self) -> Result<i32, Status> {
        let request = HealthCheckRequest {
            service: "shardlog.v1.Log".to_owned(),
        };
        let response = self
            .channel
            .unary::<_, HealthCheckResponse>(
                "/grpc.health.v1.Health/Check",
                &request,
                self.options(),
            )
            .await?;
        Ok(response.into_inner().status)
    }

    async fn reflection_list(&self) -> Result<(), Status> {
        let (mut sink, response) = self
            .channel
            .bidi_streaming::<reflection::ServerReflectionRequest, reflection::ServerReflectionResponse>(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                self.options(),
            )
            .await?;
        let request = reflection::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                reflection::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let _ = sink.send(&request).await;
        let _ = sink.finish();
        let mut stream = response.response().await?.into_inner();
        let first = stream.message().await?;
        assert!(first.is_some(), "reflection answers");
        Ok(())
    }
}

/// Every Log RPC, by the operation a client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Delete,
    Describe,
    Produce,
    ProduceStream,
    Append,
    Fetch,
    Subscribe,
    Commit,
    GetCommitted,
}

/// The non-destructive operations (create and delete are checked apart,
/// after the matrix, since they change the topics).
const READ_WRITE_OPS: [Op; 8] = [
    Op::Describe,
    Op::Produce,
    Op::ProduceStream,
    Op::Append,
    Op::Fetch,
    Op::Subscribe,
    Op::Commit,
    Op::GetCommitted,
];

fn code_of(result: &Result<(), Status>) -> Code {
    result.as_ref().err().map_or(Code::OK, Status::code)
}

#[track_caller]
fn assert_code(result: Result<(), Status>, expected: Code, what: &str) -> String {
    let code = code_of(&result);
    assert_eq!(code, expected, "{what}: {result:?}");
    result
        .err()
        .map(|status| status.message().to_owned())
        .unwrap_or_default()
}

/// Free loopback port for the metrics endpoint.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A server whose stderr (trace logging) is captured to a file, to prove
/// tokens never reach the log. The harness inherits stderr, so this one
/// spawns the binary itself, with the harness's flags.
struct LoggedServer {
    child: Child,
    addr: SocketAddr,
    stderr_path: PathBuf,
}

impl LoggedServer {
    fn start(dir: &Path, config: &Path, metrics_port: u16) -> Self {
        let stderr_path = dir.join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardlog"))
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--shards", "2", "--no-pin"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .env("SHARDLOG_LOG", "trace")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn shardlog");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("listening line");
        let addr = line
            .strip_prefix("shardlog listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .parse()
            .expect("address");
        Self {
            child,
            addr,
            stderr_path,
        }
    }

    /// Stops the server (SIGTERM, so shutdown logging runs too) and returns
    /// everything it logged.
    fn stop_and_read_log(mut self) -> String {
        // SAFETY: signalling the child process this test owns.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        assert_eq!(status.code(), Some(0), "clean shutdown");
        std::fs::read_to_string(&self.stderr_path).expect("read log")
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn token_cases_health_reflection_and_no_token_in_logs_or_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), "");
    let metrics_port = free_port();
    let server = LoggedServer::start(dir.path(), &config, metrics_port);
    let addr = server.addr;
    let malformed_values = [
        format!("Basic {ALICE_TOKEN}"),
        "Bearer".to_owned(),
        format!("Bearer {ALICE_TOKEN} extra"),
        format!("Bearer {ALICE_TOKEN}!"),
    ];
    let malformed = malformed_values.clone();
    block_on(move || async move {
        let admin = Client::new(addr, Some(ADMIN_TOKEN)).await;
        admin.create("alice.orders").await.expect("admin creates");

        let anonymous = Client::new(addr, None).await;
        let message = assert_code(
            anonymous.list().await.map(drop),
            Code::UNAUTHENTICATED,
            "none",
        );
        assert!(message.contains("missing credentials"), "{message}");
        for value in malformed {
            let client = Client::with_authorization(addr, Some(value.clone())).await;
            let message = assert_code(
                client.run(Op::Describe, "alice.orders").await,
                Code::UNAUTHENTICATED,
                "malformed",
            );
            assert!(message.contains("malformed"), "{message}");
            assert!(!message.contains(ALICE_TOKEN), "never echoes: {message}");
        }
        let unknown = Client::new(addr, Some(NEVER_ISSUED_TOKEN)).await;
        let message = assert_code(
            unknown.run(Op::Produce, "alice.orders").await,
            Code::UNAUTHENTICATED,
            "unknown",
        );
        assert!(!message.contains(NEVER_ISSUED_TOKEN), "{message}");

        let alice = Client::new(addr, Some(ALICE_TOKEN)).await;
        assert_code(
            alice.run(Op::Produce, "alice.orders").await,
            Code::OK,
            "valid",
        );
        let bob = Client::new(addr, Some(BOB_TOKEN)).await;
        let message = assert_code(
            bob.run(Op::Produce, "alice.orders").await,
            Code::PERMISSION_DENIED,
            "valid but not allowed",
        );
        assert!(
            message.contains("\"bob\""),
            "names the principal: {message}"
        );

        // Health stays open for load balancers; reflection needs a principal.
        let health = anonymous.health().await.expect("health without a token");
        assert_eq!(health, ServingStatus::Serving as i32);
        assert_code(
            anonymous.reflection_list().await,
            Code::UNAUTHENTICATED,
            "reflection",
        );
        assert_code(
            bob.reflection_list().await,
            Code::OK,
            "reflection with a token",
        );
    });

    let metrics = http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics");
    for reason in ["missing", "malformed", "unknown_token"] {
        let total: u64 = metrics
            .lines()
            .filter(|line| {
                line.starts_with("shardlog_auth_failures_total{")
                    && line.contains(&format!("reason=\"{reason}\""))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(total >= 1, "auth failures by {reason} counted:\n{metrics}");
    }
    assert!(metrics.contains("shardlog_acl_denied_total{"), "{metrics}");
    let log = server.stop_and_read_log();
    assert!(
        log.contains("authentication on"),
        "debug log captured:\n{log}"
    );
    for secret in [ADMIN_TOKEN, ALICE_TOKEN, BOB_TOKEN, NEVER_ISSUED_TOKEN] {
        assert!(!log.contains(secret), "a token reached the server log");
        assert!(!metrics.contains(secret), "a token reached the metrics");
    }
}

#[test]
fn acl_matrix_two_principals_every_operation_own_others_and_missing_topics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), "");
    let config = config.to_str().expect("utf8 path");
    let server = TestServer::start_with(2, &["--config", config]);
    let addr = server.addr;
    block_on(move || async move {
        let admin = Client::new(addr, Some(ADMIN_TOKEN)).await;
        for topic in ["alice.own", "alice.keep", "bob.own", "public", "frozen.t"] {
            admin.create(topic).await.expect("admin creates");
        }
        for topic in ["alice.own", "bob.own"] {
            admin.produce(topic, 8).await.expect("seed a record");
        }
        let alice = Client::new(addr, Some(ALICE_TOKEN)).await;
        let bob = Client::new(addr, Some(BOB_TOKEN)).await;

        for (client, me, other) in [(&alice, "alice", "bob"), (&bob, "bob", "alice")] {
            let own = format!("{me}.own");
            let own_missing = format!("{me}.missing");
            let others = format!("{other}.own");
            let others_missing = format!("{other}.missing");
            for op in READ_WRITE_OPS {
                let what = |topic: &str| format!("{me} {op:?} {topic}");
                assert_code(client.run(op, &own).await, Code::OK, &what(&own));
                assert_code(
                    client.run(op, &own_missing).await,
                    Code::NOT_FOUND,
                    &what(&own_missing),
                );
                // No right: the same answer whether or not the topic exists.
                let existing = assert_code(
                    client.run(op, &others).await,
                    Code::PERMISSION_DENIED,
                    &what(&others),
                );
                let missing = assert_code(
                    client.run(op, &others_missing).await,
                    Code::PERMISSION_DENIED,
                    &what(&others_missing),
                );
                assert_eq!(
                    existing.replace(&others, "T"),
                    missing.replace(&others_missing, "T"),
                    "same message shape for existing and missing topics"
                );
            }
            let what = |op: Op, topic: &str| format!("{me} {op:?} {topic}");
            for op in [Op::Create, Op::Delete] {
                for topic in [&others, &others_missing] {
                    let result = client.run(op, topic).await;
                    assert_code(result, Code::PERMISSION_DENIED, &what(op, topic));
                }
            }
            let result = client.run(Op::Create, &own).await;
            assert_code(result, Code::ALREADY_EXISTS, &what(Op::Create, &own));
            let result = client.run(Op::Delete, &own_missing).await;
            assert_code(result, Code::NOT_FOUND, &what(Op::Delete, &own_missing));
        }

        // Listings hold only what the principal may describe.
        let alice_sees = alice.list().await.expect("list");
        assert_eq!(alice_sees, ["alice.keep", "alice.own", "public"]);
        assert_eq!(bob.list().await.expect("list"), ["bob.own", "public"]);
        assert_eq!(admin.list().await.expect("list").len(), 5);

        // `*` rules: everyone may describe `public`, nothing more.
        assert_code(
            bob.run(Op::Describe, "public").await,
            Code::OK,
            "describe public",
        );
        assert_code(
            bob.run(Op::Fetch, "public").await,
            Code::PERMISSION_DENIED,
            "fetch public",
        );

        // Deny wins over allow: alice may do all on alice.* but not delete
        // alice.keep; admin may do all but not produce to frozen.*.
        let denied = alice.run(Op::Delete, "alice.keep").await;
        assert_code(denied, Code::PERMISSION_DENIED, "deny over prefix allow");
        assert_code(
            alice.run(Op::Describe, "alice.keep").await,
            Code::OK,
            "other ops stay",
        );
        let frozen = admin.run(Op::Produce, "frozen.t").await;
        assert_code(frozen, Code::PERMISSION_DENIED, "`*` deny over allow");
        assert_code(
            admin.run(Op::Describe, "frozen.t").await,
            Code::OK,
            "admin describes",
        );

        // The destructive cells last: own topics are created and deleted.
        for client in [&alice, &bob] {
            let me = if std::ptr::eq(client, &alice) {
                "alice"
            } else {
                "bob"
            };
            let fresh = format!("{me}.missing");
            assert_code(client.run(Op::Create, &fresh).await, Code::OK, "create own");
            assert_code(client.run(Op::Delete, &fresh).await, Code::OK, "delete own");
            let own = format!("{me}.own");
            assert_code(client.run(Op::Delete, &own).await, Code::OK, "delete own");
        }
    });
}

#[test]
fn quotas_refuse_over_limit_with_a_retry_hint_and_spare_others() {
    // Tiny per-shard rates so a few quick calls cross them, with buckets of
    // 2 s so a refusal holds even if the machine stalls for over a second
    // between two calls. Every call goes to partition 0: one owner shard's
    // buckets see all of a principal's traffic.
    let quotas = r#"
[quotas]
burst_ms = 2000

[[quotas.limit]]
principal = "limited"
produce_bytes_per_sec = 5000
fetch_bytes_per_sec = 5000

[[quotas.limit]]
principal = "counted"
requests_per_sec = 4
"#;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), quotas);
    let config = config.to_str().expect("utf8 path");
    let server = TestServer::start_with(2, &["--config", config]);
    let addr = server.addr;
    block_on(move || async move {
        let admin = Client::new(addr, Some(ADMIN_TOKEN)).await;
        for topic in ["limited.bytes", "limited.requests"] {
            admin.create(topic).await.expect("admin creates");
        }
        let limited = Client::new(addr, Some(LIMITED_TOKEN)).await;

        // Bytes: a full bucket (10,000) admits an 8,000-byte batch; the next
        // one finds 2,000 (plus 5,000/s refilled meanwhile) and is refused.
        limited
            .produce("limited.bytes", 8000)
            .await
            .expect("within the byte rate");
        let refused = limited
            .produce("limited.bytes", 8000)
            .await
            .expect_err("over the byte rate");
        let retry_after_ms = assert_throttled(&refused, "produce bytes/s");
        assert!(
            retry_after_ms <= 1201,
            "6,000 bytes at 5,000/s: {retry_after_ms}"
        );
        // Nothing was written by the refused call.
        admin
            .produce("limited.bytes", 8000)
            .await
            .expect("admin is not limited");
        let stored = admin.fetch("limited.bytes").await.expect("fetch");
        assert_eq!(stored.records.len(), 2, "the refused batch was not stored");

        // Fetch bytes: the first fetch is served whole (16,000 bytes) and
        // leaves the bucket in debt, so the next one waits.
        let served = limited.fetch("limited.bytes").await.expect("fetch");
        assert_eq!(served.records.len(), 2);
        let refused = limited.fetch("limited.bytes").await.expect_err("in debt");
        let retry_after_ms = assert_throttled(&refused, "fetch bytes/s");
        assert!(
            retry_after_ms >= 100,
            "debt of ~6,000 bytes at 5,000/s: {retry_after_ms}"
        );
        // A subscription in debt is paced, not ended: it still delivers.
        limited
            .subscribe_first("limited.bytes")
            .await
            .expect("subscribe waits out the debt");

        // Requests: the burst is 8 (2 s of 4/s); of 20 quick produces some
        // are refused (admitting all would take 3 s), the first 8 pass.
        let counted = Client::new(addr, Some(COUNTED_TOKEN)).await;
        let mut outcomes = Vec::new();
        for _ in 0..20 {
            outcomes.push(counted.produce("limited.requests", 1).await);
        }
        assert!(outcomes[..8].iter().all(Result::is_ok), "{outcomes:?}");
        let throttled: Vec<&Status> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(!throttled.is_empty(), "some calls over 4/s are refused");
        assert_throttled(throttled[0], "requests/s");
        // Waiting the hint of a refusal is enough for the next call (calls
        // admitted after an earlier refusal spent its hint: take a fresh one;
        // refusals take nothing).
        let mut refusal = None;
        for _ in 0..20 {
            if let Err(status) = counted.produce("limited.requests", 1).await {
                refusal = Some(status);
                break;
            }
        }
        let refusal = refusal.expect("20 quick calls cross 4/s again");
        let retry_after_ms = assert_throttled(&refusal, "requests/s");
        glommio::timer::sleep(Duration::from_millis(retry_after_ms)).await;
        counted
            .produce("limited.requests", 1)
            .await
            .expect("admitted after the hinted wait");
        // Others are not limited.
        for _ in 0..12 {
            admin.produce("limited.requests", 1).await.expect("admin");
        }
    });
}

/// Checks a quota refusal: RESOURCE_EXHAUSTED, the limit named, the wait in
/// the message and in the `retry-after-ms` trailer; returns the wait.
#[track_caller]
fn assert_throttled(status: &Status, limit: &str) -> u64 {
    assert_eq!(status.code(), Code::RESOURCE_EXHAUSTED, "{status:?}");
    assert!(status.message().contains(limit), "{status:?}");
    let hint = status
        .metadata()
        .get("retry-after-ms")
        .unwrap_or_else(|| panic!("retry-after-ms trailer: {status:?}"));
    let retry_after_ms: u64 = hint.parse().expect("retry-after-ms is a number");
    assert!(retry_after_ms > 0, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("retry after {retry_after_ms} ms")),
        "{status:?}"
    );
    retry_after_ms
}

#[test]
fn bad_security_settings_are_configuration_errors_that_never_echo_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("tokens");
    // A token pasted where its hash belongs: refused, and not repeated.
    std::fs::write(&token_file, format!("{ALICE_TOKEN} alice\n")).expect("write");
    let cases = [
        format!("[auth]\nenabled = true\ntoken_file = {token_file:?}\n"),
        "[[acl]]\nprincipal = \"a\"\noperations = [\"fetch\"]\ntopic = \"t\"\n".to_owned(),
        "[auth]\nenabled = true\n[[acl]]\nprincipal = \"a\"\noperations = [\"fetch\"]\n".to_owned(),
    ];
    for config in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &config).expect("write config");
        let output = Command::new(env!("CARGO_BIN_EXE_shardlog"))
            .arg("--config")
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .expect("run shardlog");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{config}: {stderr}");
        assert!(stderr.contains("invalid security settings"), "{stderr}");
        assert!(
            !stderr.contains(ALICE_TOKEN),
            "the token is not echoed: {stderr}"
        );
    }
}

/// The same answers through a client we did not write: grpcio sees the
/// codes, and the retry hint as trailing metadata.
#[test]
fn stock_grpcio_client_sees_auth_codes_and_the_retry_hint() {
    let quotas = "[[quotas.limit]]\nprincipal = \"counted\"\nrequests_per_sec = 4\n";
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), quotas);
    let config = config.to_str().expect("utf8 path");
    let server = TestServer::start_with(2, &["--config", config]);
    let addr = server.addr;
    block_on(move || async move {
        let admin = Client::new(addr, Some(ADMIN_TOKEN)).await;
        for topic in ["alice.own", "bob.own", "limited.requests"] {
            admin.create(topic).await.expect("admin creates");
        }
    });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("timeout")
        .arg("120")
        .arg("python3")
        .arg(root.join("tests/clients/auth_client.py"))
        .arg(addr.port().to_string())
        .arg(root.join("../wire/proto"))
        .env("SHARDLOG_ALICE_TOKEN", ALICE_TOKEN)
        .env("SHARDLOG_COUNTED_TOKEN", COUNTED_TOKEN)
        .output()
        .expect("run python3 (pip install -r wire/tests/interop/requirements.txt)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("python auth ok"),
        "auth_client.py failed ({}):\n{stdout}\n{stderr}\nif grpc is missing: pip install -r wire/tests/interop/requirements.txt",
        output.status
    );
}
