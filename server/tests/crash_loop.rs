//! kill -9 loop: producers on loopback (four partitions over both shards, two
//! of them idempotent), SIGKILL at a random moment, restart, repeat. A
//! checker then verifies every acknowledged record is present exactly once,
//! in order, byte-identical, and that nothing a consumer saw before a crash
//! went missing after it.
//!
//! Negative control: the same loop acknowledging before the sync (ack level
//! WRITTEN) must make the checker report loss; if it did not, the checker
//! would be broken.
//!
//! `SHARDLOG_CRASH_CYCLES` sets the cycle count (CI: 30; release checks: 1000).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Log, Rng, TestServer, block_on, produce_to};
use shardlog_wire::proto::shardlog::v1 as pb;

const PARTITIONS: u32 = 4;
/// Partitions whose producer is idempotent (retries its unacknowledged batch).
const IDEMPOTENT_PARTITIONS: u32 = 2;
const CI_CYCLES: usize = 30;
const NEGATIVE_CONTROL_CYCLES_MAX: usize = 20;

/// What the producers know: acknowledged records and the batch each
/// idempotent producer still has to retry.
#[derive(Default, Clone)]
struct Ledger {
    /// (partition) -> (offset -> value), acknowledged.
    acknowledged: BTreeMap<u32, BTreeMap<u64, Vec<u8>>>,
    /// (partition) -> the last (sequence, values) sent and not acknowledged.
    unacknowledged: BTreeMap<u32, (u64, Vec<Vec<u8>>)>,
    /// (partition) -> next sequence number.
    next_sequence: BTreeMap<u32, u64>,
    /// (partition) -> (offset -> value) a consumer has seen.
    consumed: BTreeMap<u32, BTreeMap<u64, Vec<u8>>>,
    next_value: u64,
}

fn batch_request(
    partition: u32,
    values: &[Vec<u8>],
    sequence: Option<u64>,
    ack: pb::AckLevel,
) -> pb::ProduceRequest {
    let records = values.iter().map(|value| common::record(value)).collect();
    pb::ProduceRequest {
        producer_id: if sequence.is_some() {
            1000 + u64::from(partition)
        } else {
            0
        },
        sequence,
        ack: ack as i32,
        ..produce_to("crash", partition, records)
    }
}

/// One producer: sends batches until the server dies.
async fn produce_until_killed(
    log: Log,
    partition: u32,
    ledger: std::rc::Rc<std::cell::RefCell<Ledger>>,
    ack: pb::AckLevel,
) {
    let idempotent = partition < IDEMPOTENT_PARTITIONS;
    loop {
        let (sequence, values) = {
            let mut ledger = ledger.borrow_mut();
            match ledger
                .unacknowledged
                .get(&partition)
                .cloned()
                .filter(|_| idempotent)
            {
                // A retry after a lost reply: same batch, same sequence.
                Some(retry) => (Some(retry.0), retry.1),
                None => {
                    let count = 1 + (ledger.next_value % 5) as usize;
                    let values: Vec<Vec<u8>> = (0..count)
                        .map(|i| format!("p{partition}-v{}-{i}", ledger.next_value).into_bytes())
                        .collect();
                    ledger.next_value += 1;
                    let sequence =
                        idempotent.then(|| *ledger.next_sequence.entry(partition).or_insert(0));
                    if let Some(sequence) = sequence {
                        ledger
                            .unacknowledged
                            .insert(partition, (sequence, values.clone()));
                    }
                    (sequence, values)
                }
            }
        };
        let Ok(response) = log
            .produce(batch_request(partition, &values, sequence, ack))
            .await
        else {
            return;
        };
        let mut ledger = ledger.borrow_mut();
        if let Some(sequence) = sequence {
            ledger.unacknowledged.remove(&partition);
            ledger
                .next_sequence
                .insert(partition, sequence + values.len() as u64);
        }
        let acknowledged = ledger.acknowledged.entry(partition).or_default();
        for (i, value) in values.into_iter().enumerate() {
            acknowledged.insert(response.base_offset + i as u64, value);
        }
    }
}

/// Reads every partition and records what a consumer saw.
async fn consume_all(log: &Log, ledger: &mut Ledger) -> BTreeMap<u32, Vec<pb::FetchedRecord>> {
    let mut stored = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let records = log.fetch_all("crash", partition, 0).await;
        let seen = ledger.consumed.entry(partition).or_default();
        for record in &records {
            seen.entry(record.offset)
                .or_insert_with(|| record.value.to_vec());
        }
        stored.insert(partition, records);
    }
    stored
}

/// Every violation of "acknowledged means stored, once, in order, intact".
fn check(ledger: &Ledger, stored: &BTreeMap<u32, Vec<pb::FetchedRecord>>) -> Vec<String> {
    let mut violations = Vec::new();
    for partition in 0..PARTITIONS {
        let records = stored
            .get(&partition)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let by_offset: BTreeMap<u64, &[u8]> =
            records.iter().map(|r| (r.offset, &r.value[..])).collect();
        for (offset, record) in records.iter().enumerate() {
            if record.offset != offset as u64 {
                violations.push(format!("{partition}: offsets not contiguous at {offset}"));
                break;
            }
        }
        let mut seen_values = std::collections::HashSet::new();
        for record in records {
            if !seen_values.insert(&record.value[..]) {
                violations.push(format!("{partition}/{}: duplicate value", record.offset));
            }
        }
        for (kind, expected) in [
            ("acknowledged", &ledger.acknowledged),
            ("consumed", &ledger.consumed),
        ] {
            for (offset, value) in expected.get(&partition).into_iter().flatten() {
                if by_offset.get(offset).copied() != Some(value.as_slice()) {
                    violations.push(format!(
                        "{partition}/{offset}: {kind} record lost or changed"
                    ));
                }
            }
        }
    }
    violations
}

/// Runs `cycles` produce/SIGKILL/restart cycles and returns the checker's
/// verdict. Stops early once `stop_at_first_violation` and one is found.
fn crash_loop(
    cycles: usize,
    ack: pb::AckLevel,
    seed: u64,
    stop_at_first_violation: bool,
) -> (usize, Vec<String>) {
    let mut rng = Rng(seed);
    let mut server = TestServer::start(2);
    let addr = server.addr;
    block_on(move || async move {
        Log::connect(addr)
            .await
            .create_topic("crash", PARTITIONS)
            .await
            .expect("create");
    });
    let mut ledger = Ledger::default();
    let mut records_checked = 0;
    for cycle in 0..cycles {
        let run_ms = 30 + rng.below(250);
        let addr = server.addr;
        let pid = server.pid();
        let before = ledger.clone();
        ledger = block_on(move || async move {
            let shared = std::rc::Rc::new(std::cell::RefCell::new(before));
            let log = Log::connect(addr).await;
            // Verify the previous cycles' records survived this restart.
            let mut ledger_now = shared.borrow().clone();
            consume_all(&log, &mut ledger_now).await;
            *shared.borrow_mut() = ledger_now;
            let producers: Vec<_> = (0..PARTITIONS)
                .map(|partition| {
                    glommio::spawn_local(produce_until_killed(
                        log.clone(),
                        partition,
                        shared.clone(),
                        ack,
                    ))
                    .detach()
                })
                .collect();
            glommio::timer::sleep(Duration::from_millis(run_ms)).await;
            // SAFETY: SIGKILL to the server child process this test owns.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            for producer in producers {
                producer.await;
            }
            std::rc::Rc::try_unwrap(shared)
                .ok()
                .expect("producers done")
                .into_inner()
        });
        server.kill();
        server.restart_after_kill();
        let addr = server.addr;
        let (next, violations) = block_on(move || async move {
            let mut ledger = ledger;
            let log = Log::connect(addr).await;
            let stored = consume_all(&log, &mut ledger).await;
            let violations = check(&ledger, &stored);
            (ledger, violations)
        });
        ledger = next;
        records_checked = ledger.acknowledged.values().map(BTreeMap::len).sum();
        if !violations.is_empty() && (stop_at_first_violation || cycle + 1 == cycles) {
            return (records_checked, violations);
        }
        assert!(
            violations.is_empty() || stop_at_first_violation,
            "cycle {cycle}: {violations:?}"
        );
    }
    (records_checked, Vec::new())
}

fn cycles_from_env() -> usize {
    std::env::var("SHARDLOG_CRASH_CYCLES")
        .ok()
        .and_then(|cycles| cycles.parse().ok())
        .unwrap_or(CI_CYCLES)
}

#[test]
fn kill_9_loop_loses_no_acknowledged_record() {
    let cycles = cycles_from_env();
    let (records_checked, violations) =
        crash_loop(cycles, pb::AckLevel::Durable, 0x5eed_1234, false);
    assert!(
        violations.is_empty(),
        "acknowledged data lost: {violations:?}"
    );
    assert!(records_checked > 0, "the producers got acknowledgments");
    eprintln!(
        "kill -9 loop: {cycles} cycles, {records_checked} acknowledged records checked, nothing lost"
    );
}

#[test]
fn negative_control_ack_before_sync_is_caught_losing_data() {
    let (_, violations) = crash_loop(
        NEGATIVE_CONTROL_CYCLES_MAX,
        pb::AckLevel::Written,
        0xbad_5eed,
        true,
    );
    assert!(
        !violations.is_empty(),
        "acknowledging before the sync lost nothing in {NEGATIVE_CONTROL_CYCLES_MAX} crashes: the checker cannot see loss"
    );
}
