//! One shard: the state a pinned executor owns (its engine partitions, its
//! copy of the catalog, the consumer groups it owns) and the execution of
//! [`Op`]s, whether they come from this shard's connections or across the
//! mesh from another shard.
//!
//! Lives on exactly one core; nothing in here is shared with another thread.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardlog_engine::{PartitionConfig, PartitionId, Shard as EngineShard};

use crate::storage::ServerStorage;
use shardlog_wire::Code;
use tracing::{error, info, warn};

use crate::catalog::{self, Catalog, TopicMeta, TopicRetention};
use crate::config::Config;
use crate::groups::{CommittedOffset, GroupStore, group_owner};
use crate::mesh::{Admission, CallerGone, Mesh};
use crate::metrics::ShardMetrics;
use crate::ops::{Failure, Op, PartitionState, Reply, engine_error_code};
use crate::security::quota::{QuotaKind, QuotaTicket};
use crate::security::{SecurityPolicy, ShardSecurity};

/// Shard that owns the catalog and executes topic creation and deletion.
pub const CATALOG_SHARD: usize = 0;

/// Everything one shard owns.
pub struct ShardContext {
    /// This shard's index (also its mesh peer id).
    pub id: usize,
    /// Number of shards in the process.
    pub shard_count: usize,
    /// The server configuration (read-only).
    pub config: Arc<Config>,
    /// The storage engine's partitions owned here.
    pub engine: EngineShard<ServerStorage>,
    /// This shard's copy of the catalog.
    pub catalog: RefCell<Catalog>,
    /// Consumer groups owned here.
    pub groups: GroupStore,
    /// Cross-core calls.
    pub mesh: Rc<Mesh>,
    /// Metrics of this shard.
    pub metrics: ShardMetrics,
    /// Next partition for round-robin produce, per topic.
    round_robin: RefCell<HashMap<String, u32>>,
    /// Topics shard 0 is creating or deleting right now.
    catalog_busy: RefCell<Vec<String>>,
    /// Why each owned partition that failed to open at startup did (served as INTERNAL,
    /// not as a missing partition).
    open_failures: RefCell<HashMap<PartitionId, String>>,
    /// Set once shutdown starts.
    pub draining: Cell<bool>,
    /// Record bytes of produces accepted here and not yet answered.
    pub produce_inflight_bytes: Cell<usize>,
    /// Produces accepted here and not yet answered.
    pub produce_inflight_requests: Cell<usize>,
    /// Produces refused UNAVAILABLE by the two bounds above.
    pub produce_shed_total: Cell<u64>,
    /// This shard's gRPC server, once it serves (for connection metrics).
    pub server: std::cell::OnceCell<shardlog_wire::server::Server>,
    /// Authentication, ACLs and this shard's quota buckets.
    pub security: ShardSecurity,
}

type OpFuture = Pin<Box<dyn Future<Output = Result<Reply, Failure>>>>;

impl ShardContext {
    /// Assembles a shard's state.
    pub fn new(
        id: usize,
        config: Arc<Config>,
        engine: EngineShard<ServerStorage>,
        catalog: Catalog,
        groups: GroupStore,
        mesh: Rc<Mesh>,
        security: Arc<SecurityPolicy>,
    ) -> Rc<Self> {
        Rc::new(Self {
            id,
            shard_count: config.shards,
            config,
            engine,
            catalog: RefCell::new(catalog),
            groups,
            mesh,
            metrics: ShardMetrics::default(),
            round_robin: RefCell::new(HashMap::new()),
            catalog_busy: RefCell::new(Vec::new()),
            open_failures: RefCell::new(HashMap::new()),
            draining: Cell::new(false),
            produce_inflight_bytes: Cell::new(0),
            produce_inflight_requests: Cell::new(0),
            produce_shed_total: Cell::new(0),
            server: std::cell::OnceCell::new(),
            security: ShardSecurity::new(security),
        })
    }

    /// The partition config a topic's partitions get.
    pub fn partition_config(&self, retention: &TopicRetention) -> PartitionConfig {
        let storage = &self.config.storage;
        let non_zero = |value: u64| (value > 0).then_some(value);
        PartitionConfig {
            segment_bytes_max: non_zero(retention.segment_bytes)
                .unwrap_or(storage.segment_bytes_max),
            segment_age_ms_max: storage.segment_age_ms_max,
            retention_bytes_max: non_zero(retention.retention_bytes)
                .or(non_zero(storage.retention_bytes_max)),
            retention_age_ms_max: non_zero(retention.retention_ms)
                .or(non_zero(storage.retention_age_ms_max)),
            prezero_segments: storage.prezero_segments,
            recycle_segments: storage.recycle_segments,
            ..PartitionConfig::default()
        }
    }

    /// Opens (and recovers) every partition the catalog places on this shard
    /// (startup). A cataloged partition whose files are gone is reported, not
    /// silently recreated empty: its clients get NOT_FOUND naming it.
    pub async fn open_owned_partitions(&self) {
        let owned: Vec<(TopicMeta, Vec<u32>)> = self
            .catalog
            .borrow()
            .topics()
            .map(|meta| (meta.clone(), self.owned_partitions(meta)))
            .collect();
        for (meta, partitions) in owned {
            let config = self.partition_config(&meta.retention);
            for partition in partitions {
                let id = PartitionId::new(&meta.name, partition);
                match self
                    .engine
                    .open_partition(id.clone(), config.clone(), false)
                    .await
                {
                    Ok(opened) => {
                        if let Some(fault) = opened.fault() {
                            error!(topic = %meta.name, partition, %fault, "partition refuses service");
                        }
                    }
                    Err(error) => {
                        error!(topic = %meta.name, partition, %error, "partition failed to open");
                        self.open_failures
                            .borrow_mut()
                            .insert(id, error.to_string());
                    }
                }
            }
        }
        info!(
            shard = self.id,
            partitions = self.engine.partitions().len(),
            "partitions open"
        );
    }

    fn owned_partitions(&self, meta: &TopicMeta) -> Vec<u32> {
        (0..meta.partition_count)
            .filter(|&partition| meta.owner(partition) == Some(self.id))
            .collect()
    }

    /// Runs `op` on shard `target`: directly when it is this shard, across
    /// the mesh otherwise.
    pub async fn call(
        self: &Rc<Self>,
        target: usize,
        op: Op,
        deadline: Option<Instant>,
    ) -> Result<Reply, Failure> {
        if target == self.id {
            if runs_to_completion(&op) {
                return self.clone().run_detached(op, deadline).await;
            }
            return self.clone().run(op, deadline, CallerGone::never()).await;
        }
        let admission = if op.is_control_plane() {
            Admission::Wait
        } else {
            Admission::Shed
        };
        self.mesh.call(target, op, deadline, admission).await
    }

    /// Calls every shard with the op `make(shard)` builds, concurrently.
    pub async fn call_all(
        self: &Rc<Self>,
        make: impl Fn(usize) -> Option<Op>,
    ) -> Result<(), Failure> {
        let calls: Vec<_> = (0..self.shard_count)
            .filter_map(|shard| make(shard).map(|op| self.call(shard, op, None)))
            .collect();
        let mut first_error = None;
        for result in futures_util::future::join_all(calls).await {
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Runs `op` here as a detached task and awaits its reply: dropping the
    /// returned future (the caller's deadline, RST_STREAM or disconnect) only
    /// stops the wait, never the op, as for an op that came over the mesh.
    async fn run_detached(
        self: Rc<Self>,
        op: Op,
        deadline: Option<Instant>,
    ) -> Result<Reply, Failure> {
        let task = glommio::spawn_local(self.run(op, deadline, CallerGone::never())).detach();
        task.await.unwrap_or_else(|| {
            Err(Failure::new(
                Code::UNAVAILABLE,
                "the shard stopped before the operation finished",
            ))
        })
    }

    /// Executes an op on this shard, boxed so the mesh can spawn it.
    /// `caller_gone` cuts a long-poll read short once the caller has gone.
    pub fn execute(
        self: Rc<Self>,
        op: Op,
        deadline: Option<Instant>,
        caller_gone: CallerGone,
    ) -> OpFuture {
        Box::pin(self.run(op, deadline, caller_gone))
    }

    /// Executes an op on this shard.
    async fn run(
        self: Rc<Self>,
        op: Op,
        deadline: Option<Instant>,
        caller_gone: CallerGone,
    ) -> Result<Reply, Failure> {
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(Failure::new(
                Code::DEADLINE_EXCEEDED,
                "deadline expired before the owning shard ran the call",
            ));
        }
        match op {
            Op::Append {
                topic,
                partition,
                batch,
                ack,
                quota,
                record_bytes,
            } => {
                let target = self.local_partition(&topic, partition)?;
                if let Some(ticket) = &quota {
                    let cost = [
                        (QuotaKind::Requests, 1),
                        (QuotaKind::ProduceBytes, record_bytes as u64),
                    ];
                    self.admit_quota(ticket, &cost)?;
                }
                let appended = target.append(batch, ack).await?;
                Ok(Reply::Appended(appended))
            }
            Op::Read {
                topic,
                partition,
                offset,
                limits,
                wait_ms,
                quota,
            } => {
                let wait = RecordsWait {
                    offset,
                    wait_ms,
                    caller_gone,
                };
                self.read(&topic, partition, limits, wait, quota.as_ref())
                    .await
            }
            Op::Describe { topic, partitions } => Ok(Reply::Described(
                partitions
                    .into_iter()
                    .map(|partition| (partition, self.partition_state(&topic, partition)))
                    .collect(),
            )),
            Op::OpenPartitions {
                topic,
                partitions,
                config,
            } => {
                for partition in partitions {
                    let id = PartitionId::new(&topic, partition);
                    self.engine.open_partition(id, config.clone(), true).await?;
                }
                Ok(Reply::Done)
            }
            Op::RemovePartitions { topic, partitions } => {
                for partition in partitions {
                    let id = PartitionId::new(&topic, partition);
                    self.open_failures.borrow_mut().remove(&id);
                    if self.engine.partition(&id).is_some() {
                        self.engine.remove_partition(&id).await?;
                    }
                }
                Ok(Reply::Done)
            }
            Op::CatalogUpsert(meta) => {
                self.catalog.borrow_mut().upsert(meta);
                Ok(Reply::Done)
            }
            Op::CatalogRemove(name) => {
                self.catalog.borrow_mut().remove(&name);
                Ok(Reply::Done)
            }
            Op::CreateTopic {
                name,
                partition_count,
                retention,
            } => self.create_topic(name, partition_count, retention).await,
            Op::DeleteTopic { name } => self.delete_topic(name).await,
            Op::CommitOffset { group, entry } => {
                assert_eq!(group_owner(&group, self.shard_count), self.id);
                self.groups.commit(&group, entry).await?;
                Ok(Reply::Done)
            }
            Op::GetCommitted {
                group,
                topic,
                partition,
            } => Ok(Reply::Committed(self.groups.get(&group, &topic, partition))),
            Op::Metrics => Ok(Reply::Metrics(crate::metrics::render_shard(&self))),
        }
    }

    /// Offsets, size and fault of a partition owned here.
    fn partition_state(&self, topic: &str, partition: u32) -> Result<PartitionState, Failure> {
        let target = self.local_partition(topic, partition)?;
        Ok(PartitionState {
            offsets: target.offsets(),
            size_bytes: target.size_bytes(),
            fault: target.fault(),
        })
    }

    /// A partition owned here. A faulted partition is still returned: the
    /// engine decides what it refuses (writes after a storage failure, with
    /// RESOURCE_EXHAUSTED for a full disk and INTERNAL otherwise; reads only
    /// after detected corruption).
    fn local_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Rc<shardlog_engine::Partition<ServerStorage>>, Failure> {
        let id = PartitionId::new(topic, partition);
        if let Some(reason) = self.open_failures.borrow().get(&id) {
            return Err(Failure::new(
                Code::INTERNAL,
                format!(
                    "partition {topic}/{partition} failed to open on shard {}: {reason}",
                    self.id
                ),
            ));
        }
        self.engine.partition(&id).ok_or_else(|| {
            Failure::new(
                Code::NOT_FOUND,
                format!(
                    "partition {topic}/{partition} is not open on shard {}",
                    self.id
                ),
            )
        })
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        limits: shardlog_engine::ReadLimits,
        wait: RecordsWait,
        quota: Option<&QuotaTicket>,
    ) -> Result<Reply, Failure> {
        let offset = wait.offset;
        let target = self.local_partition(topic, partition)?;
        if let Some(ticket) = quota {
            // The answer's size is unknown until read: admit unless in debt,
            // then charge what was served.
            let request = u64::from(ticket.counts_as_request);
            self.admit_quota(
                ticket,
                &[(QuotaKind::Requests, request), (QuotaKind::FetchBytes, 0)],
            )?;
        }
        let offsets = target.offsets();
        if offset > offsets.log_end {
            return Err(Failure::new(
                Code::OUT_OF_RANGE,
                format!(
                    "offset {offset} of {topic}/{partition} is past the log end {}",
                    offsets.log_end
                ),
            ));
        }
        if wait.wait_ms > 0 && offset >= offsets.durable {
            wait.until_durable(&target, topic, partition).await?;
        }
        let result = target.read(offset, limits).await?;
        if let Some(ticket) = quota {
            let served: usize = result.records.iter().map(stored_record_bytes).sum();
            self.security
                .quotas
                .charge(&ticket.principal, QuotaKind::FetchBytes, served as u64);
        }
        // Counted here, on the owner, where /metrics reports the partition.
        let bytes: usize = result.records.iter().map(|r| r.value.len()).sum();
        self.metrics
            .record_fetch(topic, partition, result.records.len(), bytes);
        Ok(Reply::Read(result, target.offsets()))
    }

    /// Takes `cost` from the ticket holder's buckets on this shard, or
    /// refuses RESOURCE_EXHAUSTED with a retry hint (nothing taken).
    pub fn admit_quota(
        &self,
        ticket: &QuotaTicket,
        cost: crate::security::quota::QuotaCost<'_>,
    ) -> Result<(), Failure> {
        let principal = &*ticket.principal;
        self.security
            .quotas
            .admit(principal, cost, Instant::now())
            .map_err(|throttled| {
                self.metrics.record_throttled(throttled.kind);
                Failure {
                    retry_after_ms: Some(throttled.retry_after_ms),
                    ..Failure::new(
                        Code::RESOURCE_EXHAUSTED,
                        throttled.message(principal, self.id),
                    )
                }
            })
    }

    /// Picks the partition for a produce without one: the first record's
    /// key hash, else round robin.
    pub fn choose_partition(&self, topic: &str, partition_count: u32, key: Option<&[u8]>) -> u32 {
        assert!(partition_count > 0);
        if let Some(key) = key {
            return (shardlog_wire::client::fnv1a_64(key) % u64::from(partition_count)) as u32;
        }
        let mut round_robin = self.round_robin.borrow_mut();
        let next = round_robin
            .entry(topic.to_owned())
            .or_insert(self.id as u32);
        let chosen = *next % partition_count;
        *next = next.wrapping_add(1);
        chosen
    }

    async fn create_topic(
        self: &Rc<Self>,
        name: String,
        partition_count: u32,
        retention: TopicRetention,
    ) -> Result<Reply, Failure> {
        assert_eq!(self.id, CATALOG_SHARD);
        shardlog_engine::validate_topic_name(&name).map_err(Failure::from)?;
        let partitions_max = self.config.storage.topic_partitions_max;
        if partition_count == 0 || partition_count > partitions_max {
            return Err(Failure::new(
                Code::INVALID_ARGUMENT,
                format!(
                    "topic {name:?}: partition_count must be between 1 and {partitions_max}, got {partition_count}"
                ),
            ));
        }
        validate_retention(&name, &retention)?;
        if self.catalog.borrow().topic(&name).is_some()
            || self.catalog_busy.borrow().contains(&name)
        {
            return Err(Failure::new(
                Code::ALREADY_EXISTS,
                format!("topic {name:?} already exists"),
            ));
        }
        let _busy = BusyGuard::new(self, &name);
        let meta = TopicMeta::new(
            name.clone(),
            partition_count,
            retention,
            self.shard_count as u32,
        );
        let config = self.partition_config(&retention);
        let by_shard = partitions_by_shard(&meta);
        let opened = self
            .call_all(|shard| {
                by_shard.get(&shard).map(|partitions| Op::OpenPartitions {
                    topic: name.clone(),
                    partitions: partitions.clone(),
                    config: config.clone(),
                })
            })
            .await;
        if let Err(error) = opened {
            self.remove_partitions_everywhere(&meta).await;
            return Err(error);
        }
        // The catalog file is the commit point: partition directories without
        // one are removed at the next startup.
        let data_dir = self.config.data_dir.clone();
        let stored = meta.clone();
        let persisted = glommio::executor()
            .spawn_blocking(move || catalog::store_blocking(&data_dir, &stored))
            .await;
        if let Err(error) = persisted {
            self.remove_partitions_everywhere(&meta).await;
            return Err(Failure::new(
                Code::INTERNAL,
                format!("topic {name:?}: {error}"),
            ));
        }
        self.call_all(|_| Some(Op::CatalogUpsert(meta.clone())))
            .await?;
        info!(topic = %name, partition_count, "topic created");
        Ok(Reply::Topic(meta))
    }

    async fn delete_topic(self: &Rc<Self>, name: String) -> Result<Reply, Failure> {
        assert_eq!(self.id, CATALOG_SHARD);
        let Some(meta) = self.catalog.borrow().topic(&name).cloned() else {
            return Err(Failure::unknown_topic(&name));
        };
        if self.catalog_busy.borrow().contains(&name) {
            return Err(Failure::new(
                Code::ABORTED,
                format!("topic {name:?} is being changed; retry"),
            ));
        }
        let _busy = BusyGuard::new(self, &name);
        let data_dir = self.config.data_dir.clone();
        let topic = name.clone();
        glommio::executor()
            .spawn_blocking(move || catalog::remove_blocking(&data_dir, &topic))
            .await
            .map_err(|error| Failure::new(Code::INTERNAL, format!("topic {name:?}: {error}")))?;
        self.call_all(|_| Some(Op::CatalogRemove(name.clone())))
            .await?;
        self.remove_partitions_everywhere(&meta).await;
        info!(topic = %name, "topic deleted");
        Ok(Reply::Done)
    }

    async fn remove_partitions_everywhere(self: &Rc<Self>, meta: &TopicMeta) {
        let by_shard = partitions_by_shard(meta);
        let removed = self
            .call_all(|shard| {
                by_shard.get(&shard).map(|partitions| Op::RemovePartitions {
                    topic: meta.name.clone(),
                    partitions: partitions.clone(),
                })
            })
            .await;
        if let Err(error) = removed {
            // Leftover directories are removed at the next startup.
            warn!(topic = %meta.name, message = %error.message, "partition removal incomplete");
        }
    }

    /// Looks up a topic in this shard's catalog copy.
    /// A malformed name is INVALID_ARGUMENT (the client must fix it), a
    /// well-formed unknown one NOT_FOUND.
    pub fn topic(&self, name: &str) -> Result<TopicMeta, Failure> {
        self.with_topic(name, TopicMeta::clone)
    }

    /// Runs `read` on a topic's metadata in place (the request path: no copy
    /// of the placement table per call). Name errors as for [`Self::topic`].
    pub fn with_topic<T>(
        &self,
        name: &str,
        read: impl FnOnce(&TopicMeta) -> T,
    ) -> Result<T, Failure> {
        shardlog_engine::validate_topic_name(name).map_err(Failure::from)?;
        let catalog = self.catalog.borrow();
        let meta = catalog
            .topic(name)
            .ok_or_else(|| Failure::unknown_topic(name))?;
        Ok(read(meta))
    }

    /// Commits a group offset on the group's owner.
    pub async fn commit_offset(
        self: &Rc<Self>,
        group: String,
        entry: CommittedOffset,
    ) -> Result<(), Failure> {
        let owner = group_owner(&group, self.shard_count);
        self.call(owner, Op::CommitOffset { group, entry }, None)
            .await
            .map(|_| ())
    }
}

/// How long a read may wait for records at `offset`, and for whom.
struct RecordsWait {
    offset: u64,
    wait_ms: u64,
    caller_gone: CallerGone,
}

impl RecordsWait {
    /// Waits until a record at `offset` is durable, `wait_ms` passed, or the
    /// caller went away (a cancelled long poll from another shard must not
    /// hold a task and a timer here for the rest of its wait).
    async fn until_durable(
        mut self,
        target: &shardlog_engine::Partition<ServerStorage>,
        topic: &str,
        partition: u32,
    ) -> Result<(), Failure> {
        let offset = self.offset;
        let durable = target.wait_for_durable_beyond(offset);
        let timeout = glommio::timer::sleep(Duration::from_millis(self.wait_ms));
        // A faulted or closed partition ends the wait with an error: nothing will become
        // durable there, and answering "no records yet" would make a tailing reader
        // retry at once, forever.
        let waited = futures_lite::future::or(durable, async {
            timeout.await;
            Ok(())
        });
        let gone = async {
            self.caller_gone.wait().await;
            Err(Failure::new(
                Code::CANCELLED,
                format!("read of {topic}/{partition} at offset {offset}: the caller went away"),
            ))
        };
        let waited = async {
            waited.await.map_err(|error| {
                Failure::new(
                    engine_error_code(&error),
                    format!("waiting for records at offset {offset}: {error}"),
                )
            })
        };
        futures_lite::future::or(waited, gone).await
    }
}

/// A topic's own segment size must be 0 (the server default) or within the
/// bounds the server's default is held to. Its retention values need none:
/// 0 means the server default, and any other size or age is meaningful.
fn validate_retention(name: &str, retention: &TopicRetention) -> Result<(), Failure> {
    if retention.segment_bytes == 0 {
        return Ok(());
    }
    crate::config::validate_segment_bytes(retention.segment_bytes).map_err(|reason| {
        Failure::new(
            Code::INVALID_ARGUMENT,
            format!("topic {name:?}: retention.segment_bytes {reason} (or 0: the server default)"),
        )
    })
}

/// Ops that change the catalog or create or remove partitions: interrupted
/// half-way they would leave the catalog file, the shards' catalogs and the
/// partition directories disagreeing (a deleted catalog file with the topic
/// still served, whose data the next startup then removes), so a local call
/// runs them to completion whatever happens to its caller.
fn runs_to_completion(op: &Op) -> bool {
    matches!(
        op,
        Op::CreateTopic { .. }
            | Op::DeleteTopic { .. }
            | Op::OpenPartitions { .. }
            | Op::RemovePartitions { .. }
            | Op::CatalogUpsert(_)
            | Op::CatalogRemove(_)
    )
}

fn partitions_by_shard(meta: &TopicMeta) -> BTreeMap<usize, Vec<u32>> {
    let mut by_shard: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for partition in 0..meta.partition_count {
        if let Some(owner) = meta.owner(partition) {
            by_shard.entry(owner).or_default().push(partition);
        }
    }
    by_shard
}

/// Marks a topic as being created or deleted for the guard's lifetime.
struct BusyGuard<'a> {
    shard: &'a ShardContext,
    name: String,
}

impl<'a> BusyGuard<'a> {
    fn new(shard: &'a ShardContext, name: &str) -> Self {
        shard.catalog_busy.borrow_mut().push(name.to_owned());
        Self {
            shard,
            name: name.to_owned(),
        }
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.shard
            .catalog_busy
            .borrow_mut()
            .retain(|busy| busy != &self.name);
    }
}

/// Bytes a served record counts for against fetch quotas: key, value and
/// headers, as produce quotas count them.
fn stored_record_bytes(record: &shardlog_engine::StoredRecord) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|h| h.key.len() + h.value.len())
        .sum();
    record.key.as_ref().map_or(0, |key| key.len()) + record.value.len() + headers
}
