//! The load generator against an in-process fake `shardlog.v1.Log` on
//! shardlog-wire: an honest fake passes verification (counts, offsets,
//! read-back of every record), and fakes that lie about offsets or drop
//! records are caught, so a fast wrong server cannot look good.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use shardlog_benches::load::{LoadConfig, RunReport, Shape, run_load};
use shardlog_wire::proto::shardlog::v1::{
    CreateTopicRequest, CreateTopicResponse, DescribeTopicRequest, DescribeTopicResponse,
    FetchRequest, FetchResponse, FetchedRecord, PartitionDescription, ProduceRequest,
    ProduceResponse, Record, TopicDescription,
};
use shardlog_wire::server::{Router, Server, ServerConfig};
use shardlog_wire::{Request, Response, ResponseSink, Status, Streaming};

/// How long a fake server lives at most (the test process ends first).
const FAKE_SERVER_LIFETIME: Duration = Duration::from_secs(120);

/// How the fake misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Acks every batch at offset 0 (overlapping ranges).
    LieAboutOffsets,
    /// Acks every other batch without storing it.
    DropRecords,
    /// Stores every third batch but answers DEADLINE_EXCEEDED (an ambiguous failure).
    StoreThenFail,
}

#[derive(Default)]
struct Log {
    partitions: Vec<Vec<Record>>,
    produced: u64,
}

type Shared = Rc<RefCell<HashMap<String, Log>>>;

fn create(state: &Shared, request: CreateTopicRequest) -> CreateTopicResponse {
    let log = Log {
        partitions: vec![Vec::new(); request.partition_count as usize],
        produced: 0,
    };
    state.borrow_mut().insert(request.topic, log);
    CreateTopicResponse { topic: None }
}

fn describe(
    state: &Shared,
    request: DescribeTopicRequest,
) -> Result<DescribeTopicResponse, Status> {
    let topics = state.borrow();
    let log = topics
        .get(&request.topic)
        .ok_or_else(|| Status::not_found("topic"))?;
    let partitions = log
        .partitions
        .iter()
        .enumerate()
        .map(|(number, records)| PartitionDescription {
            partition: number as u32,
            log_end_offset: records.len() as u64,
            durable_offset: records.len() as u64,
            ..PartitionDescription::default()
        })
        .collect();
    Ok(DescribeTopicResponse {
        topic: Some(TopicDescription {
            name: request.topic,
            partition_count: log.partitions.len() as u32,
            retention: None,
            partitions,
        }),
    })
}

fn produce(
    state: &Shared,
    fault: Fault,
    request: ProduceRequest,
) -> Result<ProduceResponse, Status> {
    let mut topics = state.borrow_mut();
    let log = topics
        .get_mut(&request.topic)
        .ok_or_else(|| Status::not_found("topic"))?;
    log.produced += 1;
    let partition = request.partition.unwrap_or(0);
    let records = log
        .partitions
        .get_mut(partition as usize)
        .ok_or_else(|| Status::not_found("partition"))?;
    let record_count = request.records.len() as u32;
    let mut base_offset = records.len() as u64;
    let skip = fault == Fault::DropRecords && log.produced % 2 == 0;
    if !skip {
        records.extend(request.records);
    }
    if fault == Fault::LieAboutOffsets {
        base_offset = 0;
    }
    if fault == Fault::StoreThenFail && log.produced % 3 == 0 {
        return Err(Status::new(
            shardlog_wire::Code::DEADLINE_EXCEEDED,
            "stored, but the reply came too late",
        ));
    }
    Ok(ProduceResponse {
        partition,
        base_offset,
        record_count,
        duplicate: false,
    })
}

fn fetch(state: &Shared, request: FetchRequest) -> Result<FetchResponse, Status> {
    let topics = state.borrow();
    let log = topics
        .get(&request.topic)
        .ok_or_else(|| Status::not_found("topic"))?;
    let records = log
        .partitions
        .get(request.partition as usize)
        .ok_or_else(|| Status::not_found("partition"))?;
    let limit = match request.max_records {
        0 => usize::MAX,
        n => n as usize,
    };
    let fetched: Vec<FetchedRecord> = records
        .iter()
        .enumerate()
        .skip(request.offset as usize)
        .take(limit)
        .map(|(offset, record)| FetchedRecord {
            offset: offset as u64,
            key: record.key.clone(),
            value: record.value.clone(),
            timestamp_ms: record.timestamp_ms,
            headers: Vec::new(),
        })
        .collect();
    Ok(FetchResponse {
        topic: request.topic,
        partition: request.partition,
        next_offset: request.offset + fetched.len() as u64,
        records: fetched,
        log_start_offset: 0,
        durable_offset: records.len() as u64,
    })
}

fn router(fault: Fault) -> Router {
    let state: Shared = Rc::default();
    let mut router = Router::new();
    let (s1, s2, s3, s4) = (state.clone(), state.clone(), state.clone(), state.clone());
    let s5 = state;
    router
        .unary(
            "/shardlog.v1.Log/CreateTopic",
            move |r: Request<CreateTopicRequest>| {
                let reply = create(&s1, r.into_inner());
                async move { Ok(Response::new(reply)) }
            },
        )
        .unary(
            "/shardlog.v1.Log/DescribeTopic",
            move |r: Request<DescribeTopicRequest>| {
                let reply = describe(&s2, r.into_inner());
                async move { reply.map(Response::new) }
            },
        )
        .unary(
            "/shardlog.v1.Log/Produce",
            move |r: Request<ProduceRequest>| {
                let reply = produce(&s3, fault, r.into_inner());
                async move { reply.map(Response::new) }
            },
        )
        .unary("/shardlog.v1.Log/Fetch", move |r: Request<FetchRequest>| {
            let reply = fetch(&s4, r.into_inner());
            async move { reply.map(Response::new) }
        })
        .bidi_streaming(
            "/shardlog.v1.Log/ProduceStream",
            move |r: Request<Streaming<ProduceRequest>>,
                  mut sink: ResponseSink<ProduceResponse>| {
                let state = s5.clone();
                async move {
                    let mut requests = r.into_inner();
                    while let Some(request) = requests.message().await? {
                        let reply = produce(&state, fault, request)?;
                        sink.send(reply).await?;
                    }
                    Ok(())
                }
            },
        );
    router
}

/// Starts a fake on its own (unpinned) executor thread; returns its address.
fn start_fake(fault: Fault) -> String {
    let (address_tx, address_rx) = mpsc::channel();
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("fake-log")
        .spawn(move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            let address = listener.local_addr().expect("local address");
            address_tx.send(address.to_string()).expect("send address");
            let server = Server::new(router(fault), ServerConfig::default());
            let serving = async {
                let _ = server.serve(listener).await;
            };
            futures_lite::future::or(serving, glommio::timer::sleep(FAKE_SERVER_LIFETIME)).await;
        })
        .expect("spawn the fake server");
    address_rx.recv().expect("fake server address")
}

fn config(target: String, shape: Shape) -> LoadConfig {
    LoadConfig {
        target,
        topic: "verify".to_owned(),
        partitions: 3,
        shape,
        rate: 300.0,
        schedule: shardlog_benches::load::ScheduleKind::Poisson,
        duration_s: 0.3,
        warmup_s: 0.1,
        connections: 2,
        streams: 1,
        batch_records: 5,
        record_bytes: 20,
        keys: shardlog_benches::load::KeyDistribution::Uniform,
        ack: shardlog_benches::load::AckMode::Durable,
        closed_loop: None,
        subscribers: 1,
        linger_ms: 2.0,
        read_back: true,
        inflight_max: 1000,
        timeout_ms: 10_000,
        seed: 3,
        timeline_ms: None,
    }
}

fn run(config: &LoadConfig) -> RunReport {
    run_load(config, None, false).expect("the run completes")
}

#[test]
fn honest_server_passes_open_and_closed_loop_with_read_back() {
    let target = start_fake(Fault::None);
    let mut open = config(target.clone(), Shape::Produce);
    open.timeline_ms = Some(100.0);
    let open = run(&open);
    assert!(open.is_clean(), "{}", open.summary());
    assert!(open.ok_requests > 0);
    // The timeline cuts the 0.3 s measured window in three and holds every answered request.
    assert_eq!(open.timeline.len(), 3);
    let in_windows: u64 = open.timeline.iter().map(|w| w.requests).sum();
    assert_eq!(in_windows, open.ok_requests);
    assert_eq!(open.verification.partitions_ok, 3);
    assert_eq!(
        open.verification.read_back_records,
        open.verification.acked_records
    );
    // A second run on the same topic starts from the current end offsets.
    let mut closed = config(target, Shape::Produce);
    closed.closed_loop = Some(2);
    let closed = run(&closed);
    assert!(closed.is_clean(), "{}", closed.summary());
    assert!(closed.ok_requests > 0);
}

#[test]
fn honest_server_passes_fetch() {
    let target = start_fake(Fault::None);
    let report = run(&config(target, Shape::Fetch));
    assert!(report.is_clean(), "{}", report.summary());
    assert!(report.ok_requests > 0);
}

#[test]
fn lying_offsets_are_caught() {
    let target = start_fake(Fault::LieAboutOffsets);
    let report = run(&config(target, Shape::Produce));
    assert!(!report.is_clean());
    assert!(!report.verification.problems.is_empty());
}

#[test]
fn dropped_records_are_caught() {
    let target = start_fake(Fault::DropRecords);
    let report = run(&config(target, Shape::Produce));
    assert!(!report.is_clean());
    assert!(!report.verification.problems.is_empty());
}

#[test]
fn honest_server_passes_the_client_producer_shape_with_read_back() {
    let target = start_fake(Fault::None);
    let mut producer = config(target, Shape::Producer);
    producer.rate = 3000.0;
    let report = run(&producer);
    assert!(report.is_clean(), "{}", report.summary());
    assert!(report.ok_requests > 0);
    assert_eq!(report.verification.partitions_ok, 3);
    assert_eq!(
        report.verification.read_back_records,
        report.verification.acked_records
    );
}

#[test]
fn dropped_records_are_caught_in_the_client_producer_shape() {
    let target = start_fake(Fault::DropRecords);
    let mut producer = config(target, Shape::Producer);
    producer.rate = 3000.0;
    let report = run(&producer);
    assert!(!report.is_clean());
    assert!(!report.verification.problems.is_empty());
}

#[test]
fn records_stored_by_failed_requests_are_counted_not_flagged() {
    let target = start_fake(Fault::StoreThenFail);
    let report = run(&config(target, Shape::Produce));
    assert!(
        report.verification.problems.is_empty(),
        "{}",
        report.summary()
    );
    assert!(report.verification.unacked_stored_records > 0);
    assert_eq!(report.verification.partitions_ok, 3);
}
