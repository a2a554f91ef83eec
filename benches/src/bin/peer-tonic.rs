//! `peer-tonic`: the side-by-side peer of the suite, the durable log server
//! a Rust developer would otherwise write with tonic 0.14 + tokio: the same
//! `shardlog.v1` CreateTopic / DescribeTopic / Produce / ProduceStream /
//! Fetch, with the same durability: one file per partition, a writer task
//! per partition that group-commits (everything queued while a sync runs is
//! written and covered by the next `fdatasync`) before acknowledging.
//! File I/O runs on tokio's blocking pool, as std::fs must.
//!
//! Usage: `peer-tonic --port PORT --data-dir DIR [--blocking-threads-max 64]`; runs until
//! killed. Pin it with `taskset -c 0` (the suite does). Prints
//! `peer-tonic listening on ADDR` once bound.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use shardlog_wire::proto::shardlog::v1::{
    CreateTopicRequest, CreateTopicResponse, DescribeTopicRequest, DescribeTopicResponse,
    FetchRequest, FetchResponse, FetchedRecord, PartitionDescription, ProduceRequest,
    ProduceResponse, Record, TopicDescription,
};
use tokio::sync::{mpsc, oneshot};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::{Request, Response, Status, Streaming};

/// Appends queued per partition before producers wait (backpressure).
const PARTITION_QUEUE_DEPTH: usize = 4096;
/// Most appends one group commit covers.
const GROUP_COMMIT_APPENDS_MAX: usize = 1024;
/// Default and largest fetch size.
const FETCH_BYTES_MAX: usize = 1 << 20;
/// Most partitions per topic.
const PARTITIONS_MAX: u32 = 4096;
/// Most responses a ProduceStream call keeps queued.
const STREAM_INFLIGHT_MAX: usize = 128;
/// Frame header: key length + 1 (0 = no key), value length, timestamp.
const FRAME_HEADER_BYTES: usize = 4 + 4 + 8;

/// One appended batch waiting for its group commit.
struct AppendJob {
    records: Vec<Record>,
    reply: oneshot::Sender<Result<u64, Status>>,
}

/// Durable state of one partition, shared by the writer and the readers.
#[derive(Default)]
struct PartitionIndex {
    /// File position of each durable record; the record count is the end offset.
    positions: Vec<u64>,
    /// File length covered by the last sync.
    durable_bytes: u64,
    failed: bool,
}

struct Partition {
    file: Arc<File>,
    queue: mpsc::Sender<AppendJob>,
    index: Arc<Mutex<PartitionIndex>>,
}

struct Topic {
    partitions: Vec<Arc<Partition>>,
}

/// The server state.
struct State {
    data_dir: PathBuf,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn valid_topic_name(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl State {
    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, Status> {
        let topics = lock(&self.topics);
        let topic = topics
            .get(topic)
            .ok_or_else(|| Status::not_found(format!("topic {topic}")))?;
        topic
            .partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("partition {partition}")))
    }

    fn create_topic(&self, request: &CreateTopicRequest) -> Result<TopicDescription, Status> {
        if !valid_topic_name(&request.topic)
            || !(1..=PARTITIONS_MAX).contains(&request.partition_count)
        {
            return Err(Status::invalid_argument(
                "bad topic name or partition count",
            ));
        }
        let mut topics = lock(&self.topics);
        if topics.contains_key(&request.topic) {
            return Err(Status::already_exists(request.topic.clone()));
        }
        let dir = self.data_dir.join(&request.topic);
        let partitions = create_partitions(&dir, request.partition_count)
            .map_err(|e| Status::internal(format!("create {}: {e}", dir.display())))?;
        let topic = Arc::new(Topic { partitions });
        let description = describe(&request.topic, &topic);
        topics.insert(request.topic.clone(), topic);
        Ok(description)
    }
}

fn create_partitions(dir: &Path, count: u32) -> std::io::Result<Vec<Arc<Partition>>> {
    std::fs::create_dir_all(dir)?;
    let mut partitions = Vec::with_capacity(count as usize);
    for number in 0..count {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.join(format!("{number}.log")))?;
        let file = Arc::new(file);
        let (queue, jobs) = mpsc::channel(PARTITION_QUEUE_DEPTH);
        let index = Arc::new(Mutex::new(PartitionIndex::default()));
        tokio::spawn(writer(file.clone(), jobs, index.clone()));
        partitions.push(Arc::new(Partition { file, queue, index }));
    }
    File::open(dir)?.sync_all()?;
    if let Some(parent) = dir.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(partitions)
}

fn describe(name: &str, topic: &Topic) -> TopicDescription {
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(number, partition)| {
            let index = lock(&partition.index);
            let end = index.positions.len() as u64;
            PartitionDescription {
                partition: number as u32,
                log_start_offset: 0,
                log_end_offset: end,
                durable_offset: end,
                owner_shard: 0,
                size_bytes: index.durable_bytes,
                fault: if index.failed {
                    "write failed".into()
                } else {
                    String::new()
                },
            }
        })
        .collect();
    TopicDescription {
        name: name.to_owned(),
        partition_count: topic.partitions.len() as u32,
        retention: None,
        partitions,
    }
}

/// Encodes one record frame: key length + 1, value length, timestamp, key, value.
fn encode_record(record: &Record, out: &mut BytesMut) {
    let key_len_plus_one = record.key.as_ref().map_or(0, |k| k.len() as u32 + 1);
    out.put_u32_le(key_len_plus_one);
    out.put_u32_le(record.value.len() as u32);
    out.put_i64_le(record.timestamp_ms);
    if let Some(key) = &record.key {
        out.put_slice(key);
    }
    out.put_slice(&record.value);
}

/// Decodes one frame at the start of `bytes`; `None` if truncated.
fn decode_record(bytes: &mut Bytes, offset: u64) -> Option<FetchedRecord> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return None;
    }
    let mut header = &bytes[..FRAME_HEADER_BYTES];
    let key_len_plus_one = header.get_u32_le() as usize;
    let value_len = header.get_u32_le() as usize;
    let timestamp_ms = header.get_i64_le();
    let key_len = key_len_plus_one.saturating_sub(1);
    if bytes.len() < FRAME_HEADER_BYTES + key_len + value_len {
        return None;
    }
    bytes.advance(FRAME_HEADER_BYTES);
    let key = (key_len_plus_one > 0).then(|| bytes.split_to(key_len));
    let value = bytes.split_to(value_len);
    Some(FetchedRecord {
        offset,
        key,
        value,
        timestamp_ms,
        headers: Vec::new(),
    })
}

/// The partition's writer: takes every queued append, writes them in one
/// positioned write, fdatasyncs, then acknowledges them in order.
async fn writer(
    file: Arc<File>,
    mut jobs: mpsc::Receiver<AppendJob>,
    index: Arc<Mutex<PartitionIndex>>,
) {
    let mut group = Vec::with_capacity(GROUP_COMMIT_APPENDS_MAX);
    while jobs.recv_many(&mut group, GROUP_COMMIT_APPENDS_MAX).await > 0 {
        let (file_bytes, failed) = {
            let index = lock(&index);
            (index.durable_bytes, index.failed)
        };
        if failed {
            for job in group.drain(..) {
                let _ = job.reply.send(Err(Status::internal("partition failed")));
            }
            continue;
        }
        let mut buffer = BytesMut::new();
        let mut positions = Vec::new();
        for job in &group {
            for record in &job.records {
                positions.push(file_bytes + buffer.len() as u64);
                encode_record(record, &mut buffer);
            }
        }
        let written = buffer.len() as u64;
        let sync_file = file.clone();
        let result = tokio::task::spawn_blocking(move || {
            sync_file.write_all_at(&buffer, file_bytes)?;
            sync_file.sync_data()
        })
        .await;
        let mut index = lock(&index);
        if !matches!(result, Ok(Ok(()))) {
            // Never retry-then-ack a failed fdatasync.
            index.failed = true;
            drop(index);
            for job in group.drain(..) {
                let _ = job
                    .reply
                    .send(Err(Status::internal("write or fdatasync failed")));
            }
            continue;
        }
        let mut base = index.positions.len() as u64;
        index.positions.extend_from_slice(&positions);
        index.durable_bytes = file_bytes + written;
        drop(index);
        for job in group.drain(..) {
            let count = job.records.len() as u64;
            let _ = job.reply.send(Ok(base));
            base += count;
        }
    }
}

async fn produce(state: &State, request: ProduceRequest) -> Result<ProduceResponse, Status> {
    if request.records.is_empty() {
        return Err(Status::invalid_argument("empty batch"));
    }
    let number = request.partition.unwrap_or(0);
    let partition = state.partition(&request.topic, number)?;
    let record_count = request.records.len() as u32;
    let (reply, acked) = oneshot::channel();
    let job = AppendJob {
        records: request.records,
        reply,
    };
    partition
        .queue
        .send(job)
        .await
        .map_err(|_| Status::unavailable("partition writer stopped"))?;
    let base_offset = acked
        .await
        .map_err(|_| Status::unavailable("partition writer stopped"))??;
    Ok(ProduceResponse {
        partition: number,
        base_offset,
        record_count,
        duplicate: false,
    })
}

async fn fetch(state: &State, request: FetchRequest) -> Result<FetchResponse, Status> {
    let partition = state.partition(&request.topic, request.partition)?;
    let max_bytes = match request.max_bytes as usize {
        0 => FETCH_BYTES_MAX,
        n => n.min(FETCH_BYTES_MAX),
    };
    let (start, end_position, end_offset) = {
        let index = lock(&partition.index);
        let end_offset = index.positions.len() as u64;
        if request.offset > end_offset {
            return Err(Status::out_of_range(format!(
                "offset {} > end {end_offset}",
                request.offset
            )));
        }
        let start = index.positions.get(request.offset as usize).copied();
        (start, index.durable_bytes, end_offset)
    };
    let mut response = FetchResponse {
        topic: request.topic,
        partition: request.partition,
        records: Vec::new(),
        next_offset: request.offset,
        log_start_offset: 0,
        durable_offset: end_offset,
    };
    let Some(start) = start else {
        return Ok(response);
    };
    let length = (end_position - start).min(max_bytes as u64) as usize;
    let file = partition.file.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        let mut buffer = vec![0u8; length];
        file.read_exact_at(&mut buffer, start)
            .map(|()| Bytes::from(buffer))
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(|e| Status::internal(e.to_string()))?;
    let mut bytes = bytes;
    let records_max = match request.max_records {
        0 => u64::MAX,
        n => u64::from(n),
    };
    let mut offset = request.offset;
    while offset < end_offset && (offset - request.offset) < records_max {
        let Some(record) = decode_record(&mut bytes, offset) else {
            break;
        };
        response.records.push(record);
        offset += 1;
    }
    response.next_offset = offset;
    Ok(response)
}

/// The `shardlog.v1.Log` service (the methods the suite uses).
#[derive(Clone)]
struct LogService {
    state: Arc<State>,
}

impl tonic::server::NamedService for LogService {
    const NAME: &'static str = "shardlog.v1.Log";
}

/// One unary method: a tonic `UnaryService` over an async fn of the state.
struct Unary<F>(Arc<State>, F);

impl<Req, Resp, F, Fut> tonic::server::UnaryService<Req> for Unary<F>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Arc<State>, Req) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    type Response = Resp;
    type Future = BoxFuture<Response<Resp>, Status>;

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        let future = (self.1)(self.0.clone(), request.into_inner());
        Box::pin(async move { future.await.map(Response::new) })
    }
}

/// ProduceStream: every request is produced as it arrives (pipelined, up to
/// [`STREAM_INFLIGHT_MAX`] in flight) and answered in order.
struct ProduceStream(Arc<State>);

type ResponseStream =
    Pin<Box<dyn tokio_stream_like::Stream<Item = Result<ProduceResponse, Status>> + Send>>;

impl tonic::server::StreamingService<ProduceRequest> for ProduceStream {
    type Response = ProduceResponse;
    type ResponseStream = ResponseStream;
    type Future = BoxFuture<Response<ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<ProduceRequest>>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let mut incoming = request.into_inner();
            let (results, outgoing) = mpsc::channel(STREAM_INFLIGHT_MAX);
            let (order, mut ordered) = mpsc::channel::<
                tokio::task::JoinHandle<Result<ProduceResponse, Status>>,
            >(STREAM_INFLIGHT_MAX);
            tokio::spawn(async move {
                while let Some(handle) = ordered.recv().await {
                    let result = handle
                        .await
                        .unwrap_or_else(|e| Err(Status::internal(e.to_string())));
                    if results.send(result).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                while let Ok(Some(request)) = incoming.message().await {
                    let state = state.clone();
                    let handle = tokio::spawn(async move { produce(&state, request).await });
                    if order.send(handle).await.is_err() {
                        break;
                    }
                }
            });
            let stream: ResponseStream = Box::pin(tokio_stream_like::ReceiverStream(outgoing));
            Ok(Response::new(stream))
        })
    }
}

/// A minimal `Stream` over an mpsc receiver (avoids a tokio-stream dependency).
mod tokio_stream_like {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    pub use tonic::codegen::tokio_stream::Stream;

    /// Adapts a receiver to a stream.
    pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

    impl<T> Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

fn codec<Req, Resp>() -> tonic_prost::ProstCodec<Resp, Req> {
    tonic_prost::ProstCodec::default()
}

impl<B> Service<http::Request<B>> for LogService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let state = self.state.clone();
        match request.uri().path() {
            "/shardlog.v1.Log/Produce" => Box::pin(async move {
                let method = Unary(state, |s: Arc<State>, r: ProduceRequest| async move {
                    produce(&s, r).await
                });
                Ok(tonic::server::Grpc::new(codec())
                    .unary(method, request)
                    .await)
            }),
            "/shardlog.v1.Log/Fetch" => Box::pin(async move {
                let method = Unary(state, |s: Arc<State>, r: FetchRequest| async move {
                    fetch(&s, r).await
                });
                Ok(tonic::server::Grpc::new(codec())
                    .unary(method, request)
                    .await)
            }),
            "/shardlog.v1.Log/CreateTopic" => Box::pin(async move {
                let method = Unary(state, |s: Arc<State>, r: CreateTopicRequest| async move {
                    let topic = s.create_topic(&r)?;
                    Ok(CreateTopicResponse { topic: Some(topic) })
                });
                Ok(tonic::server::Grpc::new(codec())
                    .unary(method, request)
                    .await)
            }),
            "/shardlog.v1.Log/DescribeTopic" => Box::pin(async move {
                let method = Unary(state, |s: Arc<State>, r: DescribeTopicRequest| async move {
                    let topics = lock(&s.topics);
                    let topic = topics
                        .get(&r.topic)
                        .ok_or_else(|| Status::not_found(r.topic.clone()))?;
                    Ok(DescribeTopicResponse {
                        topic: Some(describe(&r.topic, topic)),
                    })
                });
                Ok(tonic::server::Grpc::new(codec())
                    .unary(method, request)
                    .await)
            }),
            "/shardlog.v1.Log/ProduceStream" => Box::pin(async move {
                Ok(tonic::server::Grpc::new(codec())
                    .streaming(ProduceStream(state), request)
                    .await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

struct Args {
    port: u16,
    data_dir: PathBuf,
    blocking_threads_max: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        port: 0,
        data_dir: PathBuf::from("./peer-tonic-data"),
        blocking_threads_max: 64,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => args.port = value.parse().map_err(|e| format!("--port: {e}"))?,
            "--data-dir" => args.data_dir = PathBuf::from(value),
            "--blocking-threads-max" => {
                args.blocking_threads_max = value
                    .parse()
                    .map_err(|e| format!("--blocking-threads-max: {e}"))?
            }
            _ => {
                return Err(format!(
                    "unknown flag {flag}; usage: peer-tonic --port PORT --data-dir DIR"
                ));
            }
        }
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.data_dir)?;
    // One thread, as the suite gives each server one core; file I/O goes to
    // tokio's blocking pool (threads created on demand).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(args.blocking_threads_max)
        .build()?;
    let service = LogService {
        state: Arc::new(State {
            data_dir: args.data_dir,
            topics: Mutex::new(HashMap::new()),
        }),
    };
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
        println!("peer-tonic listening on {}", listener.local_addr()?);
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
