//! The `shardlog.v1.Log` gRPC service: validates requests, routes each to the
//! shard owning its partition, and maps outcomes to gRPC statuses a client
//! can act on. One instance per shard, registered on that shard's router.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use shardlog_engine::format::RECORD_HEADERS_MAX;
use shardlog_engine::{
    AckLevel, AppendBatch, Header, ProducerSeq, ReadLimits, ReadResult, Record, StoredRecord,
};
use shardlog_wire::proto::shardlog::v1 as pb;
use shardlog_wire::server::Router;
use shardlog_wire::{CallContext, Code, Request, Response, ResponseSink, Status, Streaming};

use crate::catalog::{TopicMeta, TopicRetention};
use crate::groups::CommittedOffset;
use crate::mesh::NOTHING_WRITTEN;
use crate::ops::{Failure, Op, RETRY_AFTER_MS_TRAILER, Reply};
use crate::security::Operation;
use crate::security::quota::{QuotaKind, QuotaTicket};
use crate::shard::{CATALOG_SHARD, ShardContext};

/// How long one Subscribe long-poll waits before checking for shutdown.
pub const SUBSCRIBE_POLL_MS: u64 = 500;

/// Registers every Log method on `router`, served by `shard`. Call counts
/// and latencies are recorded by the server's [`crate::metrics`] observer.
pub fn register(router: &mut Router, shard: &Rc<ShardContext>) {
    macro_rules! unary {
        ($method:literal, $handler:ident) => {{
            let shard = shard.clone();
            router.unary(concat!("/shardlog.v1.Log/", $method), move |request| {
                let shard = shard.clone();
                async move { $handler(&shard, request).await.map(Response::new) }
            });
        }};
    }
    unary!("CreateTopic", create_topic);
    unary!("DeleteTopic", delete_topic);
    unary!("ListTopics", list_topics);
    unary!("DescribeTopic", describe_topic);
    unary!("Produce", produce);
    unary!("Fetch", fetch);
    unary!("CommitOffset", commit_offset);
    unary!("GetCommittedOffset", get_committed_offset);

    let streaming = shard.clone();
    router.bidi_streaming("/shardlog.v1.Log/ProduceStream", move |request, sink| {
        produce_stream(streaming.clone(), request, sink)
    });
    let appending = shard.clone();
    router.client_streaming("/shardlog.v1.Log/Append", move |request| {
        let shard = appending.clone();
        async move { append(&shard, request).await.map(Response::new) }
    });
    let subscribing = shard.clone();
    router.server_streaming("/shardlog.v1.Log/Subscribe", move |request, sink| {
        subscribe(subscribing.clone(), request, sink)
    });
}

/// Authorises `operation` on `topic` for the call's principal (before the
/// topic is looked up), counting refusals.
fn authorize(
    shard: &ShardContext,
    context: &CallContext,
    operation: Operation,
    topic: &str,
) -> Result<(), Status> {
    shard
        .security
        .authorize(context, operation, topic)
        .inspect_err(|_| shard.metrics.record_denied(operation))
}

/// Charges one request to the caller's requests/s quota on this shard (the
/// calls that do not go to a partition's owner).
fn charge_request(shard: &ShardContext, context: &CallContext) -> Result<(), Status> {
    let Some(principal) = shard.security.quota_principal(context) else {
        return Ok(());
    };
    let ticket = QuotaTicket {
        principal,
        counts_as_request: true,
    };
    shard.admit_quota(&ticket, &[(QuotaKind::Requests, 1)])?;
    Ok(())
}

/// The quota ticket a produce or fetch carries to the partition's owner.
fn quota_ticket(
    shard: &ShardContext,
    context: &CallContext,
    counts_as_request: bool,
) -> Option<QuotaTicket> {
    shard
        .security
        .quota_principal(context)
        .map(|principal| QuotaTicket {
            principal,
            counts_as_request,
        })
}

fn refuse_when_draining(shard: &ShardContext) -> Result<(), Status> {
    if shard.draining.get() {
        return Err(Status::new(
            Code::UNAVAILABLE,
            "server is shutting down; retry on another server",
        ));
    }
    Ok(())
}

async fn create_topic(
    shard: &Rc<ShardContext>,
    request: Request<pb::CreateTopicRequest>,
) -> Result<pb::CreateTopicResponse, Status> {
    refuse_when_draining(shard)?;
    let (context, request) = (request.context().clone(), request.into_inner());
    authorize(shard, &context, Operation::Create, &request.topic)?;
    charge_request(shard, &context)?;
    let retention = request.retention.unwrap_or_default();
    let op = Op::CreateTopic {
        name: request.topic,
        partition_count: request.partition_count,
        retention: TopicRetention {
            retention_bytes: retention.retention_bytes,
            retention_ms: retention.retention_ms,
            segment_bytes: retention.segment_bytes,
        },
    };
    match shard.call(CATALOG_SHARD, op, None).await? {
        Reply::Topic(meta) => {
            // The topic exists by now: a failed description must say so, or
            // a client retrying the create would meet ALREADY_EXISTS unwarned.
            let described = describe(shard, &meta).await.map_err(|status| {
                let (code, message, metadata) = status.into_parts();
                let message = format!(
                    "topic {:?} was created; {message}; DescribeTopic to see it",
                    meta.name
                );
                Status::new(code, message).with_metadata(metadata)
            })?;
            Ok(pb::CreateTopicResponse {
                topic: Some(described),
            })
        }
        _ => Err(Failure::unexpected_reply("CreateTopic").into()),
    }
}

async fn delete_topic(
    shard: &Rc<ShardContext>,
    request: Request<pb::DeleteTopicRequest>,
) -> Result<pb::DeleteTopicResponse, Status> {
    refuse_when_draining(shard)?;
    let (context, name) = (request.context().clone(), request.into_inner().topic);
    authorize(shard, &context, Operation::Delete, &name)?;
    charge_request(shard, &context)?;
    shard
        .call(CATALOG_SHARD, Op::DeleteTopic { name }, None)
        .await?;
    Ok(pb::DeleteTopicResponse {})
}

async fn list_topics(
    shard: &Rc<ShardContext>,
    request: Request<pb::ListTopicsRequest>,
) -> Result<pb::ListTopicsResponse, Status> {
    let context = request.context();
    charge_request(shard, context)?;
    // Only what the principal may describe is listed.
    let topics = shard
        .catalog
        .borrow()
        .topics()
        .filter(|meta| shard.security.may(context, Operation::Describe, &meta.name))
        .map(|meta| meta.name.clone())
        .collect();
    Ok(pb::ListTopicsResponse { topics })
}

async fn describe_topic(
    shard: &Rc<ShardContext>,
    request: Request<pb::DescribeTopicRequest>,
) -> Result<pb::DescribeTopicResponse, Status> {
    let (context, topic) = (request.context().clone(), request.into_inner().topic);
    authorize(shard, &context, Operation::Describe, &topic)?;
    charge_request(shard, &context)?;
    let meta = shard.topic(&topic)?;
    Ok(pb::DescribeTopicResponse {
        topic: Some(describe(shard, &meta).await?),
    })
}

/// One partition's description; a partition its owner has not open (files
/// gone at startup) is reported by its `fault`.
fn describe_partition(
    partition: u32,
    owner: usize,
    state: Result<crate::ops::PartitionState, Failure>,
) -> pb::PartitionDescription {
    let mut description = pb::PartitionDescription {
        partition,
        owner_shard: owner as u32,
        ..Default::default()
    };
    match state {
        Ok(state) => {
            description.log_start_offset = state.offsets.log_start;
            description.log_end_offset = state.offsets.log_end;
            description.durable_offset = state.offsets.durable;
            description.size_bytes = state.size_bytes;
            description.fault = state.fault.unwrap_or_default();
        }
        Err(failure) => description.fault = failure.message,
    }
    description
}

/// Describes a topic with one call per owner shard (at most one per shard,
/// however many partitions). A call that fails (a refused cross-core call
/// under load, say) fails the whole description with its code, UNAVAILABLE
/// for a refusal: an OK answer never carries made-up offsets.
async fn describe(
    shard: &Rc<ShardContext>,
    meta: &TopicMeta,
) -> Result<pb::TopicDescription, Status> {
    let mut by_owner: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for partition in 0..meta.partition_count {
        let owner = meta.owner(partition).unwrap_or(0);
        by_owner.entry(owner).or_default().push(partition);
    }
    let calls = by_owner.into_iter().map(|(owner, partitions)| {
        let op = Op::Describe {
            topic: meta.name.clone(),
            partitions,
        };
        async move { (owner, shard.call(owner, op, None).await) }
    });
    let mut partitions = Vec::with_capacity(meta.partition_count as usize);
    for (owner, result) in futures_util::future::join_all(calls).await {
        let states = match result {
            Ok(Reply::Described(states)) => states,
            Ok(_) => return Err(Failure::unexpected_reply("Describe").into()),
            Err(failure) => {
                let message = format!("describe {:?}: {}", meta.name, failure.message);
                return Err(Failure { message, ..failure }.into());
            }
        };
        for (partition, state) in states {
            partitions.push(describe_partition(partition, owner, state));
        }
    }
    partitions.sort_by_key(|description| description.partition);
    Ok(pb::TopicDescription {
        name: meta.name.clone(),
        partition_count: meta.partition_count,
        retention: Some(pb::RetentionPolicy {
            retention_bytes: meta.retention.retention_bytes,
            retention_ms: meta.retention.retention_ms,
            segment_bytes: meta.retention.segment_bytes,
        }),
        partitions,
    })
}

/// A validated produce, ready to send to its owner.
struct PreparedProduce {
    owner: usize,
    topic: String,
    partition: u32,
    op: Op,
    _admission: ProduceAdmission,
}

/// A produce's share of the shard's in-flight budgets (one request, the memory
/// it holds), returned when the produce is answered (or dropped).
struct ProduceAdmission {
    shard: Rc<ShardContext>,
    bytes: usize,
}

impl ProduceAdmission {
    /// Takes one request and `bytes` of the budgets, or refuses UNAVAILABLE with
    /// nothing written: load is shed at once rather than queued until the
    /// client's deadline expires.
    fn take(shard: &Rc<ShardContext>, bytes: usize) -> Result<Self, Status> {
        let limits = &shard.config.limits;
        let inflight_bytes = shard.produce_inflight_bytes.get();
        let inflight_requests = shard.produce_inflight_requests.get();
        let over = if inflight_requests >= limits.produce_inflight_requests_max {
            Some(format!(
                "{inflight_requests} produce requests in flight (limit {})",
                limits.produce_inflight_requests_max
            ))
        } else if inflight_bytes > 0 && inflight_bytes + bytes > limits.produce_inflight_bytes_max {
            Some(format!(
                "{inflight_bytes} bytes of produce in flight (limit {})",
                limits.produce_inflight_bytes_max
            ))
        } else {
            None
        };
        if let Some(over) = over {
            shard
                .produce_shed_total
                .set(shard.produce_shed_total.get() + 1);
            return Err(Status::new(
                Code::UNAVAILABLE,
                format!(
                    "shard {} is overloaded: {over}; {NOTHING_WRITTEN}, retry",
                    shard.id
                ),
            ));
        }
        shard.produce_inflight_bytes.set(inflight_bytes + bytes);
        shard.produce_inflight_requests.set(inflight_requests + 1);
        Ok(Self {
            shard: shard.clone(),
            bytes,
        })
    }
}

impl Drop for ProduceAdmission {
    fn drop(&mut self) {
        let inflight_bytes = self.shard.produce_inflight_bytes.get();
        let inflight_requests = self.shard.produce_inflight_requests.get();
        assert!(
            inflight_bytes >= self.bytes && inflight_requests >= 1,
            "produce budget returned twice"
        );
        self.shard
            .produce_inflight_bytes
            .set(inflight_bytes - self.bytes);
        self.shard
            .produce_inflight_requests
            .set(inflight_requests - 1);
    }
}

fn prepare_produce(
    shard: &Rc<ShardContext>,
    context: &CallContext,
    request: pb::ProduceRequest,
) -> Result<PreparedProduce, Status> {
    refuse_when_draining(shard)?;
    authorize(shard, context, Operation::Produce, &request.topic)?;
    // One catalog lookup routes the batch: explicit partition, else the first
    // record's key hash, else round robin.
    let key = request
        .records
        .first()
        .and_then(|record| record.key.as_deref());
    let (partition_count, partition, owner) = shard.with_topic(&request.topic, |meta| {
        let partition = request
            .partition
            .unwrap_or_else(|| shard.choose_partition(&meta.name, meta.partition_count, key));
        (meta.partition_count, partition, meta.owner(partition))
    })?;
    let topic = request.topic;
    let limits = &shard.config.limits;
    if request.records.is_empty() {
        return Err(Status::new(
            Code::INVALID_ARGUMENT,
            format!("produce to {topic:?}: empty batch"),
        ));
    }
    if request.records.len() > limits.batch_records_max {
        return Err(Status::new(
            Code::RESOURCE_EXHAUSTED,
            format!(
                "produce to {topic:?}: {} records, more than the limit of {}",
                request.records.len(),
                limits.batch_records_max
            ),
        ));
    }
    let Some(owner) = owner else {
        return Err(Status::new(
            Code::NOT_FOUND,
            format!(
                "partition {partition} out of range: topic {topic:?} has {partition_count} partitions"
            ),
        ));
    };
    let producer = producer_identity(request.producer_id, request.sequence, &topic)?;
    let ack = match pb::AckLevel::try_from(request.ack) {
        Ok(pb::AckLevel::Durable) => AckLevel::Durable,
        Ok(pb::AckLevel::Written) => AckLevel::Written,
        Err(_) => {
            return Err(Status::new(
                Code::INVALID_ARGUMENT,
                format!("unknown ack level {}", request.ack),
            ));
        }
    };
    let ConvertedRecords {
        records,
        record_bytes,
        held_bytes,
    } = convert_records(request.records, limits.record_bytes_max, &topic, partition)?;
    let admission = ProduceAdmission::take(shard, held_bytes)?;
    Ok(PreparedProduce {
        owner,
        topic: topic.clone(),
        partition,
        op: Op::Append {
            topic,
            partition,
            batch: AppendBatch { records, producer },
            ack,
            quota: quota_ticket(shard, context, true),
            record_bytes,
        },
        _admission: admission,
    })
}

fn producer_identity(
    producer_id: u64,
    sequence: Option<u64>,
    topic: &str,
) -> Result<Option<ProducerSeq>, Status> {
    match (producer_id, sequence) {
        (0, None) => Ok(None),
        (0, Some(_)) => Err(Status::new(
            Code::INVALID_ARGUMENT,
            format!("produce to {topic:?}: a sequence needs a non-zero producer_id"),
        )),
        (_, None) => Err(Status::new(
            Code::INVALID_ARGUMENT,
            format!("produce to {topic:?}: producer_id {producer_id} needs a sequence"),
        )),
        (producer_id, Some(sequence)) => Ok(Some(ProducerSeq {
            producer_id,
            sequence,
        })),
    }
}

/// A produce's records in the engine's form, with what they weigh.
struct ConvertedRecords {
    records: Vec<Record>,
    /// Keys, values and headers.
    record_bytes: usize,
    /// Memory held until the produce is answered: `record_bytes` plus the record and header
    /// structs (a batch of many empty records holds megabytes its record bytes would not show).
    held_bytes: usize,
}

/// Converts the request's records to the engine's (same `Bytes`, no copy),
/// checking each against the size and header-count limits, and weighs them
/// in the same pass.
fn convert_records(
    records: Vec<pb::Record>,
    record_bytes_max: usize,
    topic: &str,
    partition: u32,
) -> Result<ConvertedRecords, Status> {
    let append_time_ms = crate::unix_now_ms();
    let mut total_bytes = 0;
    let mut held_bytes = records.len() * std::mem::size_of::<Record>();
    let mut converted = Vec::with_capacity(records.len());
    for (index, record) in records.into_iter().enumerate() {
        // The engine refuses it too; checked here so the client learns which record.
        if record.headers.len() > RECORD_HEADERS_MAX {
            return Err(Status::new(
                Code::INVALID_ARGUMENT,
                format!(
                    "produce to {topic}/{partition}: record {index} has {} headers, more than the limit of {RECORD_HEADERS_MAX}",
                    record.headers.len()
                ),
            ));
        }
        let headers_bytes: usize = record
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.len())
            .sum();
        let record_bytes =
            record.key.as_ref().map_or(0, Bytes::len) + record.value.len() + headers_bytes;
        if record_bytes > record_bytes_max {
            return Err(Status::new(
                Code::RESOURCE_EXHAUSTED,
                format!(
                    "produce to {topic}/{partition}: record {index} is {record_bytes} bytes, over the limit of {record_bytes_max}"
                ),
            ));
        }
        total_bytes += record_bytes;
        held_bytes += record_bytes + record.headers.len() * std::mem::size_of::<Header>();
        converted.push(Record {
            key: record.key,
            value: record.value,
            timestamp_ms: if record.timestamp_ms == 0 {
                append_time_ms
            } else {
                record.timestamp_ms
            },
            headers: record
                .headers
                .into_iter()
                .map(|header| Header {
                    key: Bytes::from(header.key),
                    value: header.value,
                })
                .collect(),
        });
    }
    Ok(ConvertedRecords {
        records: converted,
        record_bytes: total_bytes,
        held_bytes,
    })
}

async fn run_produce(
    shard: Rc<ShardContext>,
    prepared: PreparedProduce,
    deadline: Option<Instant>,
) -> Result<pb::ProduceResponse, Status> {
    let partition = prepared.partition;
    match shard.call(prepared.owner, prepared.op, deadline).await? {
        Reply::Appended(appended) => Ok(pb::ProduceResponse {
            partition,
            base_offset: appended.base_offset,
            record_count: appended.record_count,
            duplicate: appended.duplicate,
        }),
        _ => Err(Failure::unexpected_reply("Produce").into()),
    }
}

async fn produce(
    shard: &Rc<ShardContext>,
    request: Request<pb::ProduceRequest>,
) -> Result<pb::ProduceResponse, Status> {
    let (context, request) = (request.context().clone(), request.into_inner());
    let prepared = prepare_produce(shard, &context, request)?;
    let deadline = context.deadline();
    run_produce(shard.clone(), prepared, deadline).await
}

/// One request of a stream, in request order: its produce task, or the
/// refusal (or read error) that ended reading.
enum StreamStep {
    Started(
        String,
        glommio::task::JoinHandle<Result<pb::ProduceResponse, Status>>,
    ),
    Refused(Status),
}

impl StreamStep {
    /// The produce's response (with its topic) or why there is none.
    async fn outcome(self) -> Result<(String, pb::ProduceResponse), Status> {
        match self {
            StreamStep::Started(topic, task) => {
                let cancelled = || Err(Status::new(Code::UNAVAILABLE, "produce task cancelled"));
                task.await.unwrap_or_else(cancelled).map(|r| (topic, r))
            }
            StreamStep::Refused(status) => Err(status),
        }
    }
}

/// What a stream's writer has seen so far.
#[derive(Default)]
struct StreamProgress {
    /// Responses delivered (`on_done` succeeded), all before any failure.
    acknowledged: AppendTally,
    failure: Option<StreamFailure>,
    /// Position of the next request, from 0.
    index: u64,
}

impl StreamProgress {
    fn fail(&mut self, status: Status) {
        self.failure = Some(StreamFailure {
            index: self.index,
            status,
            written_after: AppendTally::default(),
        });
    }

    fn written_after_failure(&mut self, topic: String, response: &pb::ProduceResponse) {
        if let Some(failed) = &mut self.failure {
            failed.written_after.add(topic, response);
        }
    }

    fn into_result(self) -> Result<(), Status> {
        match self.failure {
            None => Ok(()),
            Some(failed) => Err(failed.into_status(&self.acknowledged)),
        }
    }
}

/// The first failure of a stream, and what the produces started before it
/// was known (and after it in request order) did.
struct StreamFailure {
    /// Position of the failed request in the stream, from 0.
    index: u64,
    status: Status,
    /// Produces after the failed one that were written anyway.
    written_after: AppendTally,
}

impl StreamFailure {
    /// The status that ends the stream: the failed request's own, with what
    /// the stream did write spelled out, so that no client takes it for "the
    /// stream wrote nothing" and resends written records.
    fn into_status(self, acknowledged: &AppendTally) -> Status {
        let (code, message, metadata) = self.status.into_parts();
        if acknowledged.request_count == 0 && self.written_after.request_count == 0 {
            return Status::new(code, message).with_metadata(metadata);
        }
        // The phrase speaks for the failed request only, not for the stream.
        let message = message.replace(NOTHING_WRITTEN, "this request was not written");
        let mut text = format!(
            "request {} of the stream failed: {message}; written and acknowledged before it: {}",
            self.index,
            acknowledged.describe()
        );
        if self.written_after.request_count > 0 {
            text.push_str(&format!(
                "; started before the failure was known and written too: {}",
                self.written_after.describe()
            ));
        }
        Status::new(code, text).with_metadata(metadata)
    }
}

/// Starts every produce of a stream in arrival order (so offsets follow the
/// request order) and hands their responses, in order, to `on_done`. At most
/// `stream_inflight_max` produces are in flight; reading waits beyond that.
///
/// The first failure (a refused request, a failed produce, a broken input
/// or `on_done` failing) stops reading new requests; every response before
/// it is still delivered in order, the produces started after it are
/// awaited (they are written or not regardless), and the stream ends with
/// that failure, naming what was written.
async fn pipeline(
    shard: Rc<ShardContext>,
    mut input: Streaming<pb::ProduceRequest>,
    context: CallContext,
    mut on_done: impl AsyncFnMut(String, pb::ProduceResponse) -> Result<(), Status>,
) -> Result<(), Status> {
    let window = shard.config.limits.stream_inflight_max;
    let deadline = context.deadline();
    let (steps_tx, steps_rx) = glommio::channels::local_channel::new_bounded::<StreamStep>(window);
    // Fired by the writer at the first failure: reading stops at once, even
    // while it waits for a request the client may never send.
    let (stop_tx, mut stop_rx) = futures_channel::oneshot::channel::<()>();
    let reader = async {
        loop {
            let stopped = async {
                let _ = (&mut stop_rx).await;
                None
            };
            let step = match futures_lite::future::or(stopped, async {
                Some(input.message().await)
            })
            .await
            {
                None | Some(Ok(None)) => break,
                Some(Ok(Some(request))) => start_produce(&shard, &context, request, deadline),
                Some(Err(status)) => StreamStep::Refused(status),
            };
            let refused = matches!(step, StreamStep::Refused(_));
            if steps_tx.send(step).await.is_err() || refused {
                break;
            }
        }
        drop(steps_tx);
    };
    let writer = async {
        let mut stop = Some(stop_tx);
        let mut progress = StreamProgress::default();
        while let Some(step) = steps_rx.recv().await {
            match (&mut progress.failure, step.outcome().await) {
                (Some(failed), Ok((topic, response))) => failed.written_after.add(topic, &response),
                (Some(_), Err(_)) => {}
                (None, Ok((topic, response))) => match on_done(topic.clone(), response).await {
                    Ok(()) => progress.acknowledged.add(topic, &response),
                    Err(status) => {
                        progress.fail(status);
                        progress.written_after_failure(topic, &response);
                    }
                },
                (None, Err(status)) => progress.fail(status),
            }
            if progress.failure.is_some()
                && let Some(stop) = stop.take()
            {
                let _ = stop.send(());
            }
            progress.index += 1;
        }
        progress.into_result()
    };
    let ((), result) = futures_lite::future::zip(reader, writer).await;
    result
}

/// Validates one request of a stream and starts its produce (detached: once
/// started it is written whatever happens to the stream).
fn start_produce(
    shard: &Rc<ShardContext>,
    context: &CallContext,
    request: pb::ProduceRequest,
    deadline: Option<Instant>,
) -> StreamStep {
    match prepare_produce(shard, context, request) {
        Ok(prepared) => {
            let topic = prepared.topic.clone();
            let task = glommio::spawn_local(run_produce(shard.clone(), prepared, deadline));
            StreamStep::Started(topic, task.detach())
        }
        Err(status) => StreamStep::Refused(status),
    }
}

async fn produce_stream(
    shard: Rc<ShardContext>,
    request: Request<Streaming<pb::ProduceRequest>>,
    sink: ResponseSink<pb::ProduceResponse>,
) -> Result<(), Status> {
    let context = request.context().clone();
    let input = request.into_inner();
    let mut sink = sink;
    pipeline(shard, input, context, async |_topic, response| {
        sink.send(response).await
    })
    .await
}

/// What an Append call reports when the client half-closes.
#[derive(Default)]
struct AppendTally {
    request_count: u64,
    record_count: u64,
    partitions: BTreeMap<(String, u32), pb::PartitionSummary>,
}

impl AppendTally {
    fn add(&mut self, topic: String, response: &pb::ProduceResponse) {
        let records = u64::from(response.record_count);
        self.request_count += 1;
        self.record_count += records;
        let first = response.base_offset;
        let last = first + records.saturating_sub(1);
        let entry = self
            .partitions
            .entry((topic.clone(), response.partition))
            .or_insert_with(|| pb::PartitionSummary {
                topic,
                partition: response.partition,
                first_offset: first,
                last_offset: last,
                record_count: 0,
            });
        entry.first_offset = entry.first_offset.min(first);
        entry.last_offset = entry.last_offset.max(last);
        entry.record_count += records;
    }

    /// "N requests (M records): topic/p offsets a-b, ..." for a status message,
    /// naming at most [`TALLY_PARTITIONS_NAMED_MAX`] partitions.
    fn describe(&self) -> String {
        let mut text = format!(
            "{} requests ({} records)",
            self.request_count, self.record_count
        );
        for (i, summary) in self.partitions.values().enumerate() {
            if i == TALLY_PARTITIONS_NAMED_MAX {
                let more = self.partitions.len() - i;
                text.push_str(&format!(", and {more} more partitions"));
                break;
            }
            text.push_str(if i == 0 { ": " } else { ", " });
            text.push_str(&format!(
                "{}/{} offsets {}-{}",
                summary.topic, summary.partition, summary.first_offset, summary.last_offset
            ));
        }
        text
    }
}

/// Partitions a stream's failure status names (its message stays short).
const TALLY_PARTITIONS_NAMED_MAX: usize = 8;

async fn append(
    shard: &Rc<ShardContext>,
    request: Request<Streaming<pb::ProduceRequest>>,
) -> Result<pb::AppendSummary, Status> {
    let context = request.context().clone();
    let input = request.into_inner();
    let mut tally = AppendTally::default();
    pipeline(shard.clone(), input, context, async |topic, response| {
        tally.add(topic, &response);
        Ok(())
    })
    .await?;
    Ok(pb::AppendSummary {
        request_count: tally.request_count,
        record_count: tally.record_count,
        partitions: tally.partitions.into_values().collect(),
    })
}

/// Validates a (topic, partition) for reading; returns the owner.
fn read_target(shard: &ShardContext, topic: &str, partition: u32) -> Result<usize, Status> {
    let (owner, partition_count) =
        shard.with_topic(topic, |meta| (meta.owner(partition), meta.partition_count))?;
    owner.ok_or_else(|| {
        Status::new(
            Code::NOT_FOUND,
            format!(
                "partition {partition} out of range: topic {topic:?} has {partition_count} partitions"
            ),
        )
    })
}

fn read_limits(shard: &ShardContext, max_bytes: u32, max_records: u32) -> ReadLimits {
    let bytes_max = shard.config.limits.fetch_bytes_max;
    ReadLimits {
        max_bytes: if max_bytes == 0 {
            bytes_max
        } else {
            (max_bytes as usize).min(bytes_max)
        },
        max_records: if max_records == 0 {
            usize::MAX
        } else {
            max_records as usize
        },
    }
}

/// A partition to read and how much per response.
struct ReadTarget<'a> {
    owner: usize,
    topic: &'a str,
    partition: u32,
    limits: ReadLimits,
    quota: Option<QuotaTicket>,
}

async fn read(
    shard: &Rc<ShardContext>,
    target: &ReadTarget<'_>,
    offset: u64,
    wait_ms: u64,
    deadline: Option<Instant>,
) -> Result<pb::FetchResponse, Status> {
    let (topic, partition) = (target.topic, target.partition);
    let op = Op::Read {
        topic: topic.to_owned(),
        partition,
        offset,
        limits: target.limits,
        wait_ms,
        quota: target.quota.clone(),
    };
    let (result, offsets) = match shard.call(target.owner, op, deadline).await? {
        Reply::Read(result, offsets) => (result, offsets),
        _ => return Err(Failure::unexpected_reply("Fetch").into()),
    };
    let (records, next_offset) = fetched_records(result, target.limits.max_bytes);
    Ok(pb::FetchResponse {
        topic: topic.to_owned(),
        partition,
        records,
        next_offset,
        log_start_offset: offsets.log_start,
        durable_offset: offsets.durable,
    })
}

/// The response's records and the offset to read next. The engine bounds a
/// read by the records' stored size; this bounds it by their encoded size in
/// the response, framing included, with the same rule: records are added
/// while the total is below `max_bytes` (at least one), so the answer stays
/// under `max_bytes` plus one record, which the configuration guarantees fits
/// in a message (`Config::validate`).
fn fetched_records(result: ReadResult, max_bytes: usize) -> (Vec<pb::FetchedRecord>, u64) {
    let mut records = Vec::with_capacity(result.records.len());
    let mut bytes = 0usize;
    for record in result.records {
        if !records.is_empty() && bytes >= max_bytes {
            return (records, record.offset);
        }
        let fetched = fetched_record(record);
        let len = prost::Message::encoded_len(&fetched);
        // The field's tag (one byte: field 3) and length prefix.
        bytes += 1 + prost::length_delimiter_len(len) + len;
        records.push(fetched);
    }
    (records, result.next_offset)
}

fn fetched_record(record: StoredRecord) -> pb::FetchedRecord {
    pb::FetchedRecord {
        offset: record.offset,
        key: record.key,
        value: record.value,
        timestamp_ms: record.timestamp_ms,
        headers: record
            .headers
            .into_iter()
            .map(|header| pb::Header {
                key: String::from_utf8_lossy(&header.key).into_owned(),
                value: header.value,
            })
            .collect(),
    }
}

/// The long-poll wait a fetch may take: what it asked, within the server's
/// bound and the call's deadline.
fn bounded_wait_ms(shard: &ShardContext, asked_ms: u32, deadline: Option<Instant>) -> u64 {
    let mut wait_ms = u64::from(asked_ms).min(shard.config.limits.fetch_wait_ms_max);
    if let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        wait_ms = wait_ms.min(left.as_millis() as u64);
    }
    wait_ms
}

async fn fetch(
    shard: &Rc<ShardContext>,
    request: Request<pb::FetchRequest>,
) -> Result<pb::FetchResponse, Status> {
    let (context, request) = (request.context().clone(), request.into_inner());
    let deadline = context.deadline();
    authorize(shard, &context, Operation::Fetch, &request.topic)?;
    let target = ReadTarget {
        owner: read_target(shard, &request.topic, request.partition)?,
        topic: &request.topic,
        partition: request.partition,
        limits: read_limits(shard, request.max_bytes, request.max_records),
        quota: quota_ticket(shard, &context, true),
    };
    let wait_ms = bounded_wait_ms(shard, request.max_wait_ms, deadline);
    read(shard, &target, request.offset, wait_ms, deadline).await
}

async fn subscribe(
    shard: Rc<ShardContext>,
    request: Request<pb::SubscribeRequest>,
    mut sink: ResponseSink<pb::FetchResponse>,
) -> Result<(), Status> {
    let (context, request) = (request.context().clone(), request.into_inner());
    authorize(&shard, &context, Operation::Fetch, &request.topic)?;
    // The subscription is one request; its reads count only as bytes.
    charge_request(&shard, &context)?;
    let target = ReadTarget {
        owner: read_target(&shard, &request.topic, request.partition)?,
        topic: &request.topic,
        partition: request.partition,
        limits: read_limits(&shard, request.max_bytes, 0),
        quota: quota_ticket(&shard, &context, false),
    };
    let mut offset = request.offset;
    // Headers now, so the client sees the subscription established before
    // the first record exists.
    sink.send_headers(shardlog_wire::Metadata::new())?;
    loop {
        refuse_when_draining(&shard)?;
        let polled_at = Instant::now();
        let response = match read(&shard, &target, offset, SUBSCRIBE_POLL_MS, None).await {
            // Over its fetch quota, a subscription is paced, not ended: no
            // read happens until the hinted time (nothing is buffered).
            Err(status) if let Some(wait_ms) = throttled_for_ms(&status) => {
                glommio::timer::sleep(std::time::Duration::from_millis(wait_ms)).await;
                continue;
            }
            other => other?,
        };
        if response.records.is_empty() {
            pace_empty_poll(polled_at).await;
            continue;
        }
        offset = response.next_offset;
        // Awaiting the send is the flow control: nothing more is read for
        // this subscriber until the client has taken the last message.
        sink.send(response).await?;
    }
}

/// An empty answer normally ends a whole long poll; one that came back sooner
/// (a read with nothing to wait for) must not turn the Subscribe loop into a
/// spin that never yields the core: wait out the rest of the poll interval.
async fn pace_empty_poll(polled_at: Instant) {
    let poll = std::time::Duration::from_millis(SUBSCRIBE_POLL_MS);
    let left = poll.saturating_sub(polled_at.elapsed());
    if !left.is_zero() {
        glommio::timer::sleep(left).await;
    }
}

/// The retry hint of a quota refusal, if `status` is one.
fn throttled_for_ms(status: &Status) -> Option<u64> {
    if status.code() != Code::RESOURCE_EXHAUSTED {
        return None;
    }
    status.metadata().get(RETRY_AFTER_MS_TRAILER)?.parse().ok()
}

async fn commit_offset(
    shard: &Rc<ShardContext>,
    request: Request<pb::CommitOffsetRequest>,
) -> Result<pb::CommitOffsetResponse, Status> {
    refuse_when_draining(shard)?;
    let (context, request) = (request.context().clone(), request.into_inner());
    authorize(shard, &context, Operation::Commit, &request.topic)?;
    charge_request(shard, &context)?;
    validate_group(&request.group)?;
    read_target(shard, &request.topic, request.partition)?;
    let entry = CommittedOffset {
        topic: request.topic,
        partition: request.partition,
        offset: request.offset,
        metadata: request.metadata,
    };
    shard.commit_offset(request.group, entry).await?;
    Ok(pb::CommitOffsetResponse {})
}

async fn get_committed_offset(
    shard: &Rc<ShardContext>,
    request: Request<pb::GetCommittedOffsetRequest>,
) -> Result<pb::GetCommittedOffsetResponse, Status> {
    let (context, request) = (request.context().clone(), request.into_inner());
    authorize(shard, &context, Operation::Commit, &request.topic)?;
    charge_request(shard, &context)?;
    validate_group(&request.group)?;
    read_target(shard, &request.topic, request.partition)?;
    let owner = crate::groups::group_owner(&request.group, shard.shard_count);
    let op = Op::GetCommitted {
        group: request.group,
        topic: request.topic,
        partition: request.partition,
    };
    match shard.call(owner, op, None).await? {
        Reply::Committed(committed) => Ok(pb::GetCommittedOffsetResponse {
            offset: committed.as_ref().map(|(offset, _)| *offset),
            metadata: committed.map(|(_, metadata)| metadata).unwrap_or_default(),
        }),
        _ => Err(Failure::unexpected_reply("GetCommittedOffset").into()),
    }
}

/// Group names follow topic-name rules: they become file names.
fn validate_group(group: &str) -> Result<(), Status> {
    shardlog_engine::validate_topic_name(group).map_err(|_| {
        Status::new(
            Code::INVALID_ARGUMENT,
            format!(
                "invalid group name {group:?}: use 1-249 of [a-zA-Z0-9._-], not \".\" or \"..\""
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(offset: u64, value_bytes: usize) -> StoredRecord {
        StoredRecord {
            offset,
            key: None,
            value: Bytes::from(vec![b'v'; value_bytes]),
            timestamp_ms: 1,
            headers: vec![Header {
                key: Bytes::from_static(b"h"),
                value: Bytes::from(vec![b'h'; value_bytes]),
            }],
        }
    }

    #[test]
    fn a_produce_of_empty_records_is_charged_for_their_structs() {
        let empty = pb::Record::default();
        let records = vec![empty; 1000];
        let converted = convert_records(records, 1024, "t", 0).expect("valid");
        assert_eq!(converted.record_bytes, 0);
        let held = converted.held_bytes;
        assert!(held >= 1000 * std::mem::size_of::<Record>(), "{held}");
    }

    #[test]
    fn fetched_records_stop_once_the_encoded_budget_is_reached_and_keep_one() {
        let result = || ReadResult {
            records: (10..13).map(|offset| stored(offset, 100)).collect(),
            next_offset: 13,
        };
        // Each record encodes to a little over 200 bytes (value and header value).
        let (records, next) = fetched_records(result(), 300);
        assert_eq!(
            (records.len(), next),
            (2, 12),
            "the second one crosses the budget"
        );
        let (records, next) = fetched_records(result(), 1);
        assert_eq!((records.len(), next), (1, 11), "at least one");
        let (records, next) = fetched_records(result(), 1 << 20);
        assert_eq!((records.len(), next), (3, 13));
        let answer = pb::FetchResponse {
            records: fetched_records(result(), 300).0,
            ..Default::default()
        };
        assert!(prost::Message::encoded_len(&answer) < 300 + 250);
    }
}
