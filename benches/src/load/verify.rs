//! Checks that what the server acknowledged is what it stored, so a fast
//! wrong server cannot look good: per partition the acknowledged ranges must
//! tile `[start, end)` exactly (no gap, no overlap) and end at the server's
//! end offset; optionally every record is read back and its key (request id
//! and index, written by the generator) must match the ack that covered it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use shardlog_wire::client::{CallOptions, Channel};
use shardlog_wire::proto::shardlog::v1::{
    DescribeTopicRequest, DescribeTopicResponse, FetchRequest, FetchResponse,
};

use super::stats::Verification;

/// Bytes of the key the generator writes into each record.
pub const RECORD_KEY_BYTES: usize = 12;
/// Records asked per read-back fetch.
const READ_BACK_RECORDS_PER_FETCH: u32 = 10_000;
/// Most fetches a read-back may issue (bounds a misbehaving server).
const READ_BACK_FETCHES_MAX: u64 = 10_000_000;
/// Deadline of verification calls.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most problems listed (the rest are counted).
const PROBLEMS_LISTED_MAX: usize = 20;

/// `/shardlog.v1.Log/DescribeTopic`.
pub const DESCRIBE_TOPIC_PATH: &str = "/shardlog.v1.Log/DescribeTopic";
/// `/shardlog.v1.Log/Fetch`.
pub const FETCH_PATH: &str = "/shardlog.v1.Log/Fetch";

/// The key of record `index` of request `request_id`.
pub fn encode_key(request_id: u64, index: u32, out: &mut BytesMut) {
    out.put_u64_le(request_id);
    out.put_u32_le(index);
}

/// Decodes a key written by [`encode_key`].
pub fn decode_key(key: &[u8]) -> Option<(u64, u32)> {
    if key.len() != RECORD_KEY_BYTES {
        return None;
    }
    let mut bytes = key;
    Some((bytes.get_u64_le(), bytes.get_u32_le()))
}

/// One acknowledged batch.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    /// Generator's id of the request.
    pub request_id: u64,
    /// Key index of the first record (0 for a request's batch; the producer shape merges
    /// consecutive single-record acks into one range starting at any index).
    pub first_index: u32,
    /// Partition the server says it wrote.
    pub partition: u32,
    /// First offset.
    pub base_offset: u64,
    /// Records in the batch (as sent; the server's count must match).
    pub record_count: u32,
}

/// Every acknowledged batch of a run, and the end offsets before it.
#[derive(Debug, Default)]
pub struct AckLog {
    /// Log end offset of each partition before the run.
    pub start_offsets: Vec<u64>,
    /// Acks in arrival order.
    pub acks: Vec<Ack>,
    /// Acks whose record count differed from what was sent.
    pub count_mismatches: u64,
    /// Records of requests that failed (deadline, transport, refusal): the server may have
    /// stored some of them without the generator seeing an ack, so up to this many stored
    /// records may lie outside every acked range (never inside one: overlaps are errors).
    pub ambiguous_records: u64,
}

impl AckLog {
    /// Records one ack; `sent_records` is what the request carried.
    pub fn push(&mut self, ack: Ack, acked_records: u32) {
        if ack.record_count != acked_records {
            self.count_mismatches += 1;
        }
        self.acks.push(ack);
    }
}

/// Log end offsets of every partition of `topic`.
pub async fn end_offsets(channel: &Channel, topic: &str) -> Result<Vec<u64>, String> {
    let request = DescribeTopicRequest {
        topic: topic.to_owned(),
    };
    let options = CallOptions::default().with_timeout(VERIFY_TIMEOUT);
    let response = channel
        .unary::<_, DescribeTopicResponse>(DESCRIBE_TOPIC_PATH, &request, options)
        .await
        .map_err(|status| format!("DescribeTopic: {status}"))?;
    let description = response
        .into_inner()
        .topic
        .ok_or("DescribeTopic: no topic in the reply")?;
    let mut offsets = vec![0; description.partitions.len()];
    for partition in &description.partitions {
        let slot = offsets
            .get_mut(partition.partition as usize)
            .ok_or("DescribeTopic: partition number out of range")?;
        *slot = partition.log_end_offset;
    }
    Ok(offsets)
}

/// Checks the acks against the server's end offsets (and reads back if asked).
pub async fn verify(channel: &Channel, topic: &str, log: &AckLog, read_back: bool) -> Verification {
    let mut verification = Verification {
        acked_batches: log.acks.len() as u64,
        acked_records: log.acks.iter().map(|a| u64::from(a.record_count)).sum(),
        ..Verification::default()
    };
    let mut problems = Vec::new();
    if log.count_mismatches > 0 {
        problems.push(format!(
            "{} acks with a wrong record count",
            log.count_mismatches
        ));
    }
    let end = match end_offsets(channel, topic).await {
        Ok(end) => end,
        Err(error) => {
            verification.problems = vec![error];
            return verification;
        }
    };
    let by_partition = group_by_partition(&log.acks);
    let mut unacked_stored = 0u64;
    for (partition, &end_offset) in end.iter().enumerate() {
        let start = log.start_offsets.get(partition).copied().unwrap_or(0);
        let acks = by_partition
            .get(&(partition as u32))
            .map_or(&[][..], Vec::as_slice);
        match check_tiling(start, end_offset, acks) {
            Ok(gaps) => {
                unacked_stored += gaps;
                verification.partitions_ok += 1;
            }
            Err(problem) => problems.push(format!("partition {partition}: {problem}")),
        }
        if read_back && !acks.is_empty() {
            match read_partition(channel, topic, partition as u32, acks).await {
                Ok(records) => verification.read_back_records += records,
                Err(problem) => {
                    problems.push(format!("partition {partition} read-back: {problem}"))
                }
            }
        }
    }
    verification.unacked_stored_records = unacked_stored;
    if unacked_stored > log.ambiguous_records {
        problems.push(format!(
            "{unacked_stored} stored records were never acknowledged, but only {} were in failed \
             requests (records stored without an ack)",
            log.ambiguous_records
        ));
    }
    if problems.len() > PROBLEMS_LISTED_MAX {
        let more = problems.len() - PROBLEMS_LISTED_MAX;
        problems.truncate(PROBLEMS_LISTED_MAX);
        problems.push(format!("... and {more} more"));
    }
    verification.problems = problems;
    verification
}

fn group_by_partition(acks: &[Ack]) -> BTreeMap<u32, Vec<Ack>> {
    let mut by_partition: BTreeMap<u32, Vec<Ack>> = BTreeMap::new();
    for ack in acks {
        by_partition.entry(ack.partition).or_default().push(*ack);
    }
    for acks in by_partition.values_mut() {
        acks.sort_by_key(|a| a.base_offset);
    }
    by_partition
}

/// `acks` (sorted by base offset) must lie in `[start, end)` without overlapping; returns the
/// records of that range no ack covers (stored by requests whose reply the generator never
/// saw; the caller compares them with the failed requests).
pub fn check_tiling(start: u64, end: u64, acks: &[Ack]) -> Result<u64, String> {
    let mut next = start;
    let mut gaps = 0u64;
    for ack in acks {
        if ack.base_offset < next {
            return Err(format!(
                "ack of request {} at offset {} overlaps the previous one (ends at {next})",
                ack.request_id, ack.base_offset
            ));
        }
        gaps += ack.base_offset - next;
        next = ack.base_offset + u64::from(ack.record_count);
    }
    if next > end {
        return Err(format!("acks end at {next} but the log ends at {end}"));
    }
    Ok(gaps + (end - next))
}

/// Fetches every acked offset of one partition and checks each record's key.
async fn read_partition(
    channel: &Channel,
    topic: &str,
    partition: u32,
    acks: &[Ack],
) -> Result<u64, String> {
    let (Some(first), Some(last)) = (acks.first(), acks.last()) else {
        return Ok(0);
    };
    let end = last.base_offset + u64::from(last.record_count);
    let mut offset = first.base_offset;
    let mut ack_index = 0usize;
    let mut checked = 0u64;
    for _ in 0..READ_BACK_FETCHES_MAX {
        if offset >= end {
            return Ok(checked);
        }
        let response = fetch(channel, topic, partition, offset).await?;
        if response.records.is_empty() {
            return Err(format!("empty fetch at offset {offset} below end {end}"));
        }
        for record in &response.records {
            if record.offset != offset || offset >= end {
                break;
            }
            while acks[ack_index].base_offset + u64::from(acks[ack_index].record_count) <= offset {
                ack_index += 1;
            }
            let ack = acks[ack_index];
            if offset < ack.base_offset {
                // Stored by a request that failed: no ack to check it against.
                offset += 1;
                continue;
            }
            let index = ack
                .first_index
                .wrapping_add((offset - ack.base_offset) as u32);
            let expected = (ack.request_id, index);
            let found = record.key.as_deref().and_then(decode_key);
            if found != Some(expected) {
                return Err(format!(
                    "offset {offset}: key {found:?}, acked as {expected:?}"
                ));
            }
            offset += 1;
            checked += 1;
        }
    }
    Err("read-back fetch bound reached".to_owned())
}

async fn fetch(
    channel: &Channel,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<FetchResponse, String> {
    let request = FetchRequest {
        topic: topic.to_owned(),
        partition,
        offset,
        max_bytes: 0,
        max_records: READ_BACK_RECORDS_PER_FETCH,
        max_wait_ms: 0,
    };
    let options = CallOptions::default().with_timeout(VERIFY_TIMEOUT);
    channel
        .unary::<_, FetchResponse>(FETCH_PATH, &request, options)
        .await
        .map(|r| r.into_inner())
        .map_err(|status| format!("Fetch at {offset}: {status}"))
}

/// A value payload shared by every record (zero-copy clones).
pub fn payload(record_bytes: u32) -> Bytes {
    Bytes::from(vec![0xA5; record_bytes as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(request_id: u64, base_offset: u64, record_count: u32) -> Ack {
        Ack {
            request_id,
            first_index: 0,
            partition: 0,
            base_offset,
            record_count,
        }
    }

    #[test]
    fn tiling_accepts_exact_cover_and_rejects_gaps_overlaps_and_short_ends() {
        let acks = [ack(1, 5, 3), ack(2, 8, 2)];
        assert_eq!(check_tiling(5, 10, &acks), Ok(0));
        // Records no ack covers are counted (verify compares them with failed requests).
        assert_eq!(check_tiling(5, 11, &acks), Ok(1));
        assert_eq!(check_tiling(4, 10, &acks), Ok(1));
        assert_eq!(check_tiling(5, 12, &[ack(1, 5, 3), ack(2, 9, 2)]), Ok(2));
        assert!(check_tiling(5, 9, &acks).is_err());
        assert!(check_tiling(5, 10, &[ack(1, 5, 3), ack(2, 7, 3)]).is_err());
        assert_eq!(check_tiling(0, 0, &[]), Ok(0));
    }

    #[test]
    fn keys_round_trip() {
        let mut buffer = BytesMut::new();
        encode_key(0xDEAD_BEEF, 7, &mut buffer);
        assert_eq!(decode_key(&buffer), Some((0xDEAD_BEEF, 7)));
        assert_eq!(decode_key(&buffer[1..]), None);
    }
}
