//! Runs one load on a single glommio executor (pinned to a chosen CPU):
//! connects, creates the topic, drives the chosen call shape open or closed
//! loop, drains, verifies, and returns the [`RunReport`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use shardlog_wire::client::{CallOptions, Channel};
use shardlog_wire::proto::grpc::testing::Empty;
use shardlog_wire::proto::shardlog::v1::{
    AckLevel, AppendSummary, CreateTopicRequest, CreateTopicResponse, FetchRequest, FetchResponse,
    ProduceRequest, ProduceResponse, Record, SubscribeRequest,
};
use shardlog_wire::{Code, Status};

use super::config::{AckMode, LoadConfig, Shape};
use super::schedule::{Arrivals, PartitionPicker, SCHEDULE_SLACK};
use super::stats::{Recorder, RunReport, Timeline, Verification};
use super::verify::{self, Ack, AckLog, FETCH_PATH, decode_key, encode_key, payload};

/// `/shardlog.v1.Log/Produce`.
pub const PRODUCE_PATH: &str = "/shardlog.v1.Log/Produce";
/// `/shardlog.v1.Log/ProduceStream`.
pub const PRODUCE_STREAM_PATH: &str = "/shardlog.v1.Log/ProduceStream";
/// `/shardlog.v1.Log/Append`.
pub const APPEND_PATH: &str = "/shardlog.v1.Log/Append";
/// `/shardlog.v1.Log/Subscribe`.
pub const SUBSCRIBE_PATH: &str = "/shardlog.v1.Log/Subscribe";
/// `/shardlog.v1.Log/CreateTopic`.
pub const CREATE_TOPIC_PATH: &str = "/shardlog.v1.Log/CreateTopic";

/// Requests queued per long-lived stream before new ones count as overflow.
const STREAM_QUEUE_DEPTH: usize = 4096;
/// How long the run waits for outstanding replies after the schedule ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Poll interval while draining.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// Time between creating the schedule and its first request (lets every
/// task start first).
const SCHEDULE_LEAD: Duration = Duration::from_millis(20);
/// Batches per partition written before a Fetch run.
const FETCH_PREFILL_BATCHES_PER_PARTITION: u32 = 8;
/// Payload bytes the open loop keeps in flight at most (with
/// `inflight_max`, the tighter bound wins): an overloaded server must not
/// make the generator itself swap.
const INFLIGHT_PAYLOAD_BYTES_MAX: u64 = 256 << 20;
/// Warm-up sleep: glommio's first timer sleep is slow.
const TIMER_WARMUP: Duration = Duration::from_millis(10);

/// Why a run could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Bad configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The executor could not start or panicked.
    #[error("executor: {0}")]
    Executor(String),
    /// Could not connect or handshake.
    #[error("connect to {target}: {reason}")]
    Connect {
        /// Address.
        target: String,
        /// What failed.
        reason: String,
    },
    /// Topic setup failed.
    #[error("topic {topic}: {reason}")]
    Topic {
        /// Topic name.
        topic: String,
        /// What failed.
        reason: String,
    },
}

/// Runs `config` on a new executor pinned to `cpu` (unpinned if `None`);
/// shows a progress bar if `progress`.
pub fn run_load(
    config: &LoadConfig,
    cpu: Option<usize>,
    progress: bool,
) -> Result<RunReport, LoadError> {
    config.validate().map_err(LoadError::Config)?;
    let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
    let config = config.clone();
    LocalExecutorBuilder::new(placement)
        .name("shardlog-load")
        .spawn(move || async move { run_in_executor(config, progress).await })
        .map_err(|e| LoadError::Executor(e.to_string()))?
        .join()
        .map_err(|e| LoadError::Executor(format!("{e:?}")))?
}

/// Shared state of one run (lives on the executor).
pub(super) struct Run {
    pub(super) config: LoadConfig,
    channels: Vec<Channel>,
    pub(super) recorder: RefCell<Recorder>,
    pub(super) acks: RefCell<AckLog>,
    inflight: Cell<u32>,
    measure_from: Instant,
    pub(super) measure_until: Instant,
    pub(super) payload: Bytes,
    pub(super) progress: ProgressBar,
    /// Whether produce replies are the measured calls (not for Subscribe,
    /// which measures deliveries).
    record_produce: bool,
    /// Due time of each produced request (Subscribe shape only).
    due_by_request: RefCell<HashMap<u64, Instant>>,
}

impl Run {
    /// Whether a request due at `at` falls in the measured window.
    pub(super) fn measured(&self, at: Instant) -> bool {
        at >= self.measure_from && at < self.measure_until
    }

    fn channel(&self, index: u64) -> &Channel {
        &self.channels[(index % self.channels.len() as u64) as usize]
    }

    fn options(&self) -> CallOptions {
        CallOptions::default().with_timeout(Duration::from_millis(self.config.timeout_ms))
    }

    /// Records one produce reply of the request due at `due`, sent at `sent`.
    fn produce_done(&self, request: &Pending, result: Result<ProduceResponse, Status>) {
        let done = Instant::now();
        let measured = self.measured(request.due);
        match result {
            Ok(response) => {
                let ack = Ack {
                    request_id: request.request_id,
                    first_index: 0,
                    partition: response.partition,
                    base_offset: response.base_offset,
                    record_count: response.record_count,
                };
                self.acks.borrow_mut().push(ack, request.record_count);
                if response.partition != request.partition {
                    self.recorder.borrow_mut().error("WRONG_PARTITION");
                }
                if measured && self.record_produce {
                    let records = u64::from(request.record_count);
                    self.recorder.borrow_mut().ok(
                        request.due,
                        done - request.due,
                        done - request.sent,
                        records,
                    );
                    self.progress.inc(1);
                }
            }
            Err(status) => {
                self.acks.borrow_mut().ambiguous_records += u64::from(request.record_count);
                if measured && self.record_produce {
                    self.recorder.borrow_mut().error(code_name(&status));
                }
            }
        }
    }
}

fn code_name(status: &Status) -> &'static str {
    status.code().name().unwrap_or("UNKNOWN_CODE")
}

/// A request sent and not yet answered.
#[derive(Debug, Clone, Copy)]
struct Pending {
    request_id: u64,
    partition: u32,
    record_count: u32,
    due: Instant,
    sent: Instant,
}

async fn run_in_executor(config: LoadConfig, show_progress: bool) -> Result<RunReport, LoadError> {
    glommio::timer::sleep(TIMER_WARMUP).await;
    let channels = connect_all(&config).await?;
    let mut start_offsets = Vec::new();
    if config.shape != Shape::Empty {
        ensure_topic(&channels[0], &config).await?;
        start_offsets = verify::end_offsets(&channels[0], &config.topic)
            .await
            .map_err(|reason| LoadError::Topic {
                topic: config.topic.clone(),
                reason,
            })?;
    }
    let start = Instant::now() + SCHEDULE_LEAD;
    let measure_from = start + Duration::from_secs_f64(config.warmup_s);
    let measure_until = measure_from + Duration::from_secs_f64(config.duration_s);
    let record_produce = config.shape != Shape::Subscribe;
    let timeline = config.timeline_ms.map(|ms| {
        let window = Duration::from_secs_f64(ms / 1000.0);
        Timeline::new(measure_from, window, measure_until - measure_from)
    });
    let run = Rc::new(Run {
        payload: payload(config.record_bytes),
        progress: progress_bar(&config, show_progress),
        config,
        channels,
        recorder: RefCell::new(Recorder::new(timeline)),
        acks: RefCell::new(AckLog {
            start_offsets,
            ..AckLog::default()
        }),
        inflight: Cell::new(0),
        measure_from,
        measure_until,
        due_by_request: RefCell::new(HashMap::new()),
        record_produce,
    });
    let verification = drive(&run, start).await;
    run.progress.finish_and_clear();
    let measured = run.measure_until - run.measure_from;
    let recorder = run.recorder.borrow();
    Ok(RunReport::new(
        &run.config,
        &recorder,
        measured,
        verification,
    ))
}

fn progress_bar(config: &LoadConfig, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let expected = match config.closed_loop {
        Some(_) => 0,
        None => (config.rate * config.duration_s) as u64,
    };
    let bar = ProgressBar::new(expected);
    let style = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} replies {per_sec}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

async fn drive(run: &Rc<Run>, start: Instant) -> Verification {
    let shape = run.config.shape;
    if let Some(producers) = run.config.closed_loop {
        run_closed(run, producers).await;
        if shape == Shape::Empty {
            return Verification::default();
        }
        return verify_acks(run).await;
    }
    match shape {
        Shape::Produce => {
            run_open(run, start, issue_unary).await;
            verify_acks(run).await
        }
        Shape::ProduceStream => {
            let streams = open_produce_streams(run).await;
            run_open(run, start, move |run, pending| {
                enqueue(run, &streams, pending)
            })
            .await;
            verify_acks(run).await
        }
        Shape::Producer => super::producer::run_producer(run, start).await,
        Shape::Append => run_append(run, start).await,
        Shape::Fetch => run_fetch(run, start).await,
        Shape::Subscribe => run_subscribe(run, start).await,
        Shape::Empty => {
            run_open(run, start, issue_empty).await;
            Verification::default()
        }
    }
}

async fn connect_all(config: &LoadConfig) -> Result<Vec<Channel>, LoadError> {
    let mut channels = Vec::with_capacity(config.connections as usize);
    for _ in 0..config.connections {
        let connect_error = |reason: String| LoadError::Connect {
            target: config.target.clone(),
            reason,
        };
        let stream = TcpStream::connect(config.target.as_str())
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| connect_error(e.to_string()))?;
        let (channel, driver) = Channel::handshake(stream, &config.target)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        glommio::spawn_local(driver).detach();
        channels.push(channel);
    }
    Ok(channels)
}

/// Creates the topic; an existing one must have the asked partition count.
async fn ensure_topic(channel: &Channel, config: &LoadConfig) -> Result<(), LoadError> {
    let request = CreateTopicRequest {
        topic: config.topic.clone(),
        partition_count: config.partitions,
        retention: None,
    };
    let options = CallOptions::default().with_timeout(Duration::from_secs(30));
    let result = channel
        .unary::<_, CreateTopicResponse>(CREATE_TOPIC_PATH, &request, options)
        .await;
    let topic_error = |reason: String| LoadError::Topic {
        topic: config.topic.clone(),
        reason,
    };
    match result {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::ALREADY_EXISTS => {
            let offsets = verify::end_offsets(channel, &config.topic)
                .await
                .map_err(topic_error)?;
            if offsets.len() == config.partitions as usize {
                Ok(())
            } else {
                Err(topic_error(format!(
                    "exists with {} partitions, asked {}",
                    offsets.len(),
                    config.partitions
                )))
            }
        }
        Err(status) => Err(topic_error(format!("CreateTopic: {status}"))),
    }
}

/// A produce request of `record_count` records keyed by `request_id`.
fn build_produce(run: &Run, request_id: u64, partition: u32) -> ProduceRequest {
    let record_count = run.config.batch_records;
    let mut keys = BytesMut::with_capacity(record_count as usize * verify::RECORD_KEY_BYTES);
    for index in 0..record_count {
        encode_key(request_id, index, &mut keys);
    }
    let keys = keys.freeze();
    let records = (0..record_count as usize)
        .map(|i| Record {
            key: Some(keys.slice(i * verify::RECORD_KEY_BYTES..(i + 1) * verify::RECORD_KEY_BYTES)),
            value: run.payload.clone(),
            timestamp_ms: 0,
            headers: Vec::new(),
        })
        .collect();
    ProduceRequest {
        topic: run.config.topic.clone(),
        partition: Some(partition),
        records,
        producer_id: 0,
        sequence: None,
        ack: match run.config.ack {
            AckMode::Durable => AckLevel::Durable as i32,
            AckMode::Written => AckLevel::Written as i32,
        },
    }
}

/// The open-loop dispatcher: calls `issue` for each request at its due
/// time, whatever the replies; then waits for the outstanding ones.
async fn run_open<F>(run: &Rc<Run>, start: Instant, mut issue: F)
where
    F: FnMut(&Rc<Run>, Pending),
{
    let config = &run.config;
    let mut arrivals = Arrivals::new(config.schedule, config.rate, config.seed);
    let mut picker = PartitionPicker::new(config.keys, config.partitions, config.seed);
    let mut request_id = 0u64;
    let batch_bytes = u64::from(config.batch_records) * u64::from(config.record_bytes);
    let inflight_max = (INFLIGHT_PAYLOAD_BYTES_MAX / batch_bytes.max(1))
        .clamp(1, u64::from(config.inflight_max)) as u32;
    loop {
        let due = start + arrivals.next_due();
        if due >= run.measure_until {
            break;
        }
        let now = Instant::now();
        if due > now + SCHEDULE_SLACK {
            glommio::timer::sleep(due - now).await;
        }
        let sent = Instant::now();
        let pending = Pending {
            request_id,
            partition: picker.pick(),
            record_count: config.batch_records,
            // Sent early (within the slack): latency runs from the send.
            due: due.min(sent),
            sent,
        };
        request_id += 1;
        if run.inflight.get() >= inflight_max {
            if run.measured(due) {
                run.recorder.borrow_mut().overflowed += 1;
            }
            continue;
        }
        issue(run, pending);
    }
    drain(run).await;
}

async fn drain(run: &Run) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while run.inflight.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(DRAIN_POLL).await;
    }
}

/// Guard counting one request in flight.
struct InFlight(Rc<Run>);

impl InFlight {
    fn new(run: &Rc<Run>) -> InFlight {
        run.inflight.set(run.inflight.get() + 1);
        InFlight(run.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.set(self.0.inflight.get() - 1);
    }
}

/// `/grpc.testing.TestService/EmptyCall`.
pub const EMPTY_CALL_PATH: &str = "/grpc.testing.TestService/EmptyCall";

fn issue_empty(run: &Rc<Run>, pending: Pending) {
    let guard = InFlight::new(run);
    glommio::spawn_local(async move {
        let run = &guard.0;
        let sent = Instant::now();
        let result = run
            .channel(pending.request_id)
            .unary::<_, Empty>(EMPTY_CALL_PATH, &Empty {}, run.options())
            .await;
        let done = Instant::now();
        if run.measured(pending.due) {
            match result {
                Ok(_) => {
                    run.recorder
                        .borrow_mut()
                        .ok(pending.due, done - pending.due, done - sent, 0);
                    run.progress.inc(1);
                }
                Err(status) => run.recorder.borrow_mut().error(code_name(&status)),
            }
        }
    })
    .detach();
}

fn issue_unary(run: &Rc<Run>, pending: Pending) {
    let guard = InFlight::new(run);
    glommio::spawn_local(async move {
        let run = &guard.0;
        let result = unary_produce(run, &pending).await;
        run.produce_done(&pending, result);
    })
    .detach();
}

async fn unary_produce(run: &Run, pending: &Pending) -> Result<ProduceResponse, Status> {
    let request = build_produce(run, pending.request_id, pending.partition);
    run.channel(pending.request_id)
        .unary::<_, ProduceResponse>(PRODUCE_PATH, &request, run.options())
        .await
        .map(|r| r.into_inner())
}

/// Closed loop: `producers` tasks, each sending its next batch after the
/// previous ack, until the measured window ends.
async fn run_closed(run: &Rc<Run>, producers: u32) {
    let mut tasks = Vec::with_capacity(producers as usize);
    for producer in 0..producers {
        let run = run.clone();
        tasks.push(glommio::spawn_local(async move {
            closed_producer(&run, producer).await
        }));
    }
    for task in tasks {
        task.await;
    }
}

async fn closed_producer(run: &Rc<Run>, producer: u32) {
    if run.config.shape == Shape::Empty {
        return closed_empty_caller(run, producer).await;
    }
    let producers = u64::from(run.config.closed_loop.unwrap_or(1));
    let partition = producer % run.config.partitions;
    let stream = run.config.shape == Shape::ProduceStream;
    let channel = run.channel(u64::from(producer)).clone();
    let mut sink_and_responses = None;
    if stream {
        match channel
            .bidi_streaming::<ProduceRequest, ProduceResponse>(
                PRODUCE_STREAM_PATH,
                CallOptions::default(),
            )
            .await
        {
            Ok((sink, responses)) => match responses.response().await {
                Ok(response) => sink_and_responses = Some((sink, response.into_inner())),
                Err(status) => return run.recorder.borrow_mut().error(code_name(&status)),
            },
            Err(status) => return run.recorder.borrow_mut().error(code_name(&status)),
        }
    }
    for sequence in 0u64.. {
        let sent = Instant::now();
        if sent >= run.measure_until {
            break;
        }
        let pending = Pending {
            request_id: sequence * producers + u64::from(producer),
            partition,
            record_count: run.config.batch_records,
            due: sent,
            sent,
        };
        let result = match &mut sink_and_responses {
            None => unary_produce(run, &pending).await,
            Some((sink, responses)) => {
                let request = build_produce(run, pending.request_id, partition);
                match sink.send(&request).await {
                    Ok(()) => responses
                        .message()
                        .await
                        .and_then(|m| m.ok_or_else(|| Status::internal("stream ended"))),
                    Err(status) => Err(status),
                }
            }
        };
        let failed = result.is_err();
        run.produce_done(&pending, result);
        if failed {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }
    if let Some((mut sink, _)) = sink_and_responses {
        let _ = sink.finish();
    }
}

/// Closed-loop EmptyCall caller (the loopback floor).
async fn closed_empty_caller(run: &Rc<Run>, caller: u32) {
    let channel = run.channel(u64::from(caller)).clone();
    loop {
        let sent = Instant::now();
        if sent >= run.measure_until {
            break;
        }
        let result = channel
            .unary::<_, Empty>(EMPTY_CALL_PATH, &Empty {}, run.options())
            .await;
        let done = Instant::now();
        if run.measured(sent) {
            match result {
                Ok(_) => {
                    run.recorder
                        .borrow_mut()
                        .ok(sent, done - sent, done - sent, 0);
                    run.progress.inc(1);
                }
                Err(status) => run.recorder.borrow_mut().error(code_name(&status)),
            }
        }
    }
}

/// One long-lived ProduceStream: requests go in through the queue, replies
/// come back in order and are matched to the FIFO of pending requests.
struct ProduceStreamHandle {
    queue: LocalSender<(Pending, InFlight)>,
}

async fn open_produce_streams(run: &Rc<Run>) -> Rc<Vec<ProduceStreamHandle>> {
    let count = run.config.connections * run.config.streams;
    let mut handles = Vec::with_capacity(count as usize);
    for index in 0..count {
        let (queue, requests) =
            local_channel::new_bounded::<(Pending, InFlight)>(STREAM_QUEUE_DEPTH);
        let channel = run.channel(u64::from(index)).clone();
        let opened = channel
            .bidi_streaming::<ProduceRequest, ProduceResponse>(
                PRODUCE_STREAM_PATH,
                CallOptions::default(),
            )
            .await;
        let (mut sink, responses) = match opened {
            Ok(parts) => parts,
            Err(status) => {
                run.recorder.borrow_mut().error(code_name(&status));
                continue;
            }
        };
        let fifo: Rc<RefCell<std::collections::VecDeque<(Pending, InFlight)>>> = Rc::default();
        let sender_run = run.clone();
        let sender_fifo = fifo.clone();
        glommio::spawn_local(async move {
            while let Some((pending, guard)) = requests.recv().await {
                let request = build_produce(&sender_run, pending.request_id, pending.partition);
                let pending = Pending {
                    sent: Instant::now(),
                    ..pending
                };
                sender_fifo.borrow_mut().push_back((pending, guard));
                if let Err(status) = sink.send(&request).await {
                    sender_run.recorder.borrow_mut().error(code_name(&status));
                    break;
                }
            }
            let _ = sink.finish();
        })
        .detach();
        let receiver_run = run.clone();
        glommio::spawn_local(async move {
            let mut stream = match responses.response().await {
                Ok(response) => response.into_inner(),
                Err(status) => return receiver_run.recorder.borrow_mut().error(code_name(&status)),
            };
            loop {
                let result = stream.message().await;
                let Some((pending, _guard)) = fifo.borrow_mut().pop_front() else {
                    break;
                };
                match result {
                    Ok(Some(response)) => receiver_run.produce_done(&pending, Ok(response)),
                    Ok(None) => break,
                    Err(status) => {
                        receiver_run.produce_done(&pending, Err(status));
                        break;
                    }
                }
            }
            // Whatever is still queued will never be answered.
            fifo.borrow_mut().clear();
        })
        .detach();
        handles.push(ProduceStreamHandle { queue });
    }
    Rc::new(handles)
}

/// Hands a due request to its stream (counted in flight by the caller's guard).
fn enqueue(run: &Rc<Run>, streams: &Rc<Vec<ProduceStreamHandle>>, pending: Pending) {
    if streams.is_empty() {
        return;
    }
    let stream = &streams[(pending.request_id % streams.len() as u64) as usize];
    // Counted in flight from the moment it is queued; the bounded queue is
    // the overflow bound.
    let queued = stream.queue.try_send((pending, InFlight::new(run))).is_ok();
    if !queued && run.measured(pending.due) {
        run.recorder.borrow_mut().overflowed += 1;
    }
}

/// Append: fire-and-forget client streams; latency is the time until the
/// request is handed to HTTP/2; verification compares the summaries with
/// the partitions' end offsets.
async fn run_append(run: &Rc<Run>, start: Instant) -> Verification {
    let count = run.config.connections * run.config.streams;
    let mut queues = Vec::with_capacity(count as usize);
    let mut summaries = Vec::with_capacity(count as usize);
    for index in 0..count {
        let (queue, requests) = local_channel::new_bounded::<Pending>(STREAM_QUEUE_DEPTH);
        let channel = run.channel(u64::from(index)).clone();
        let Ok((mut sink, summary)) = channel
            .client_streaming::<ProduceRequest, AppendSummary>(APPEND_PATH, CallOptions::default())
            .await
        else {
            run.recorder.borrow_mut().error("APPEND_OPEN_FAILED");
            continue;
        };
        let sender_run = run.clone();
        let sent_records = Rc::new(Cell::new(0u64));
        let counter = sent_records.clone();
        let task = glommio::spawn_local(async move {
            while let Some(pending) = requests.recv().await {
                let sent = Instant::now();
                let request = build_produce(&sender_run, pending.request_id, pending.partition);
                if sink.send(&request).await.is_err() {
                    sender_run.recorder.borrow_mut().error("APPEND_SEND_FAILED");
                    break;
                }
                counter.set(counter.get() + u64::from(pending.record_count));
                let done = Instant::now();
                if sender_run.measured(pending.due) {
                    let records = u64::from(pending.record_count);
                    sender_run.recorder.borrow_mut().ok(
                        pending.due,
                        done - pending.due,
                        done - sent,
                        records,
                    );
                    sender_run.progress.inc(1);
                }
            }
            let _ = sink.finish();
            summary.response().await.map(|r| r.into_inner())
        });
        queues.push(queue);
        summaries.push((task, sent_records));
    }
    let queues = Rc::new(queues);
    let dispatch_queues = queues.clone();
    run_open(run, start, move |run, pending| {
        let Some(queue) = dispatch_queues
            .get((pending.request_id % dispatch_queues.len().max(1) as u64) as usize)
        else {
            return;
        };
        if queue.try_send(pending).is_err() && run.measured(pending.due) {
            run.recorder.borrow_mut().overflowed += 1;
        }
    })
    .await;
    drop(queues);
    let mut verification = Verification::default();
    let mut summarized_by_partition: HashMap<u32, u64> = HashMap::new();
    let mut sent_total = 0u64;
    for (task, sent_records) in summaries {
        let summary = task.await;
        sent_total += sent_records.get();
        match summary {
            Ok(summary) => {
                verification.acked_batches += summary.request_count;
                verification.acked_records += summary.record_count;
                for partition in summary.partitions {
                    *summarized_by_partition
                        .entry(partition.partition)
                        .or_default() += partition.record_count;
                }
            }
            Err(status) => verification
                .problems
                .push(format!("Append summary: {status}")),
        }
    }
    if sent_total != verification.acked_records {
        verification.problems.push(format!(
            "sent {sent_total} records, summaries say {}",
            verification.acked_records
        ));
    }
    check_end_offsets(run, &summarized_by_partition, &mut verification).await;
    verification
}

async fn check_end_offsets(
    run: &Run,
    records_by_partition: &HashMap<u32, u64>,
    verification: &mut Verification,
) {
    let end = match verify::end_offsets(&run.channels[0], &run.config.topic).await {
        Ok(end) => end,
        Err(error) => return verification.problems.push(error),
    };
    let start = &run.acks.borrow().start_offsets;
    for (partition, end_offset) in end.iter().enumerate() {
        let expected = start.get(partition).copied().unwrap_or(0)
            + records_by_partition
                .get(&(partition as u32))
                .copied()
                .unwrap_or(0);
        if expected == *end_offset {
            verification.partitions_ok += 1;
        } else {
            verification.problems.push(format!(
                "partition {partition}: end offset {end_offset}, expected {expected}"
            ));
        }
    }
}

/// Verifies the acks collected so far against the server (see `verify`).
pub(super) async fn verify_acks(run: &Rc<Run>) -> Verification {
    // A snapshot: late replies may still arrive while verification awaits.
    let snapshot = {
        let acks = run.acks.borrow();
        AckLog {
            start_offsets: acks.start_offsets.clone(),
            acks: acks.acks.clone(),
            count_mismatches: acks.count_mismatches,
            ambiguous_records: acks.ambiguous_records,
        }
    };
    verify::verify(
        &run.channels[0],
        &run.config.topic,
        &snapshot,
        run.config.read_back,
    )
    .await
}

/// Fetch: prefills every partition, then fetches random offsets open loop;
/// each reply must start at the asked offset with the record written there.
async fn run_fetch(run: &Rc<Run>, start: Instant) -> Verification {
    let prefill = FETCH_PREFILL_BATCHES_PER_PARTITION * run.config.partitions;
    for index in 0..prefill {
        let now = Instant::now();
        let pending = Pending {
            request_id: u64::from(index),
            partition: index % run.config.partitions,
            record_count: run.config.batch_records,
            due: now,
            sent: now,
        };
        let result = unary_produce(run, &pending).await;
        run.produce_done(&pending, result);
    }
    let verification = verify_acks(run).await;
    let acks = Rc::new(run.acks.borrow().acks.clone());
    let start = start.max(Instant::now());
    let mut rng = SmallRng::seed_from_u64(run.config.seed);
    let picks: Vec<u64> = (0..1024).map(|_| rng.random()).collect();
    run_open(run, start, move |run, pending| {
        if acks.is_empty() {
            return;
        }
        let ack = acks[(picks[(pending.request_id % 1024) as usize] % acks.len() as u64) as usize];
        let guard = InFlight::new(run);
        glommio::spawn_local(async move { fetch_one(&guard.0, pending, ack).await }).detach();
    })
    .await;
    verification
}

async fn fetch_one(run: &Run, pending: Pending, ack: Ack) {
    let request = FetchRequest {
        topic: run.config.topic.clone(),
        partition: ack.partition,
        offset: ack.base_offset,
        max_bytes: 0,
        max_records: ack.record_count,
        max_wait_ms: 0,
    };
    let sent = Instant::now();
    let result = run
        .channel(pending.request_id)
        .unary::<_, FetchResponse>(FETCH_PATH, &request, run.options())
        .await;
    let done = Instant::now();
    if !run.measured(pending.due) {
        return;
    }
    match result {
        Ok(response) => {
            let response = response.into_inner();
            let first = response.records.first();
            let right = first.is_some_and(|r| {
                r.offset == ack.base_offset
                    && r.key.as_deref().and_then(decode_key) == Some((ack.request_id, 0))
            });
            if right {
                let records = response.records.len() as u64;
                run.recorder
                    .borrow_mut()
                    .ok(pending.due, done - pending.due, done - sent, records);
                run.progress.inc(1);
            } else {
                run.recorder.borrow_mut().error("WRONG_RECORDS");
            }
        }
        Err(status) => run.recorder.borrow_mut().error(code_name(&status)),
    }
}

/// Subscribe fan-out: subscribers tail the partitions while batches are
/// produced open loop; latency is from a batch's due time to its delivery to
/// each subscriber, and each subscriber must see every acked record in order.
async fn run_subscribe(run: &Rc<Run>, start: Instant) -> Verification {
    let subscribers = run.config.subscribers;
    let mut tasks: Vec<glommio::Task<Result<(), String>>> =
        Vec::with_capacity(subscribers as usize);
    let delivered: Rc<RefCell<Vec<u64>>> = Rc::new(RefCell::new(vec![0; subscribers as usize]));
    let mut problems_out = Vec::new();
    for index in 0..subscribers {
        let partition = index % run.config.partitions;
        let from = run
            .acks
            .borrow()
            .start_offsets
            .get(partition as usize)
            .copied()
            .unwrap_or(0);
        let request = SubscribeRequest {
            topic: run.config.topic.clone(),
            partition,
            offset: from,
            max_bytes: 0,
        };
        let channel = run.channel(u64::from(index)).clone();
        let opened = channel
            .server_streaming::<_, FetchResponse>(SUBSCRIBE_PATH, &request, CallOptions::default())
            .await;
        let mut stream = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => {
                problems_out.push(format!("subscriber {index}: {status}"));
                continue;
            }
        };
        let sub_run = run.clone();
        let counts = delivered.clone();
        tasks.push(glommio::spawn_local(async move {
            let mut next = from;
            loop {
                let Ok(Some(batch)) = stream.message().await else {
                    return Err(format!("subscriber {index} stream ended at {next}"));
                };
                let now = Instant::now();
                for record in &batch.records {
                    if record.offset != next {
                        return Err(format!(
                            "subscriber {index}: offset {} after {next}",
                            record.offset
                        ));
                    }
                    next += 1;
                    let Some((request_id, 0)) = record.key.as_deref().and_then(decode_key) else {
                        continue;
                    };
                    let due = sub_run.due_by_request.borrow().get(&request_id).copied();
                    if let Some(due) = due.filter(|due| sub_run.measured(*due)) {
                        let records = u64::from(sub_run.config.batch_records);
                        sub_run
                            .recorder
                            .borrow_mut()
                            .ok(due, now - due, now - due, records);
                        sub_run.progress.inc(1);
                    }
                }
                counts.borrow_mut()[index as usize] = next - from;
            }
        }));
    }
    run_open(run, start, |run, pending| {
        run.due_by_request
            .borrow_mut()
            .insert(pending.request_id, pending.due);
        issue_unary(run, pending);
    })
    .await;
    // Let the subscribers catch up with the last acks.
    glommio::timer::sleep(Duration::from_millis(200)).await;
    let mut verification = verify_acks(run).await;
    let acks = run.acks.borrow();
    let mut acked_by_partition: HashMap<u32, u64> = HashMap::new();
    for ack in &acks.acks {
        *acked_by_partition.entry(ack.partition).or_default() += u64::from(ack.record_count);
    }
    for (index, count) in delivered.borrow().iter().enumerate() {
        let partition = index as u32 % run.config.partitions;
        let expected = acked_by_partition.get(&partition).copied().unwrap_or(0);
        if *count != expected {
            problems_out.push(format!(
                "subscriber {index} got {count} records, {expected} acked"
            ));
        }
    }
    drop(tasks);
    verification.problems.extend(problems_out);
    verification
}
