//! A shard: the partitions one core owns, all on one glommio executor.
//!
//! Every method runs on the owning executor; a shard is `!Send` by construction (it holds
//! `Rc`s). Partitions live at `<data_dir>/topics/<topic>/<partition>/`; topic names are
//! validated so nothing outside the data directory is ever touched.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::error::{EngineError, Result};
use crate::notify::Notify;
use crate::partition::{
    Partition, SyncRoundRecorder, SyncRoundStats, ZeroFillBudget, ZeroFillStats,
};
use crate::storage::{DmaStorage, Storage};
use crate::types::{PartitionConfig, PartitionId};
use crate::validate_topic_name;

/// Directory under the data directory holding one directory per topic.
pub const TOPICS_DIR: &str = "topics";

/// The partitions owned by one core. Create it on the executor that will use it.
pub struct Shard<S: Storage = DmaStorage> {
    data_dir: PathBuf,
    storage: Rc<S>,
    /// Bounds the background zero-fill of all this shard's partitions together.
    zero_fill: Rc<ZeroFillBudget>,
    /// Histograms of all this shard's partitions' sync rounds.
    rounds: Rc<SyncRoundRecorder>,
    partitions: RefCell<BTreeMap<PartitionId, Rc<Partition<S>>>>,
    opening: RefCell<BTreeSet<PartitionId>>,
    opened: Notify,
    closed: Cell<bool>,
}

impl<S: Storage> Shard<S> {
    /// A shard storing its partitions under `data_dir`.
    pub fn new(data_dir: PathBuf, storage: S) -> Self {
        Shard {
            data_dir,
            storage: Rc::new(storage),
            zero_fill: Rc::default(),
            rounds: Rc::default(),
            partitions: RefCell::default(),
            opening: RefCell::default(),
            opened: Notify::default(),
            closed: Cell::new(false),
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The storage backend.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Counters of the shard's background zero-fill (bounded by
    /// [`crate::ZERO_FILLS_PER_SHARD_MAX`] fills at once).
    pub fn zero_fill_stats(&self) -> ZeroFillStats {
        self.zero_fill.stats()
    }

    /// Histograms of the sync rounds of all this shard's partitions: how long appends waited
    /// for a round, how long its writes and its fdatasync took.
    pub fn sync_round_stats(&self) -> SyncRoundStats {
        self.rounds.stats()
    }

    /// Directory of a partition.
    pub fn partition_dir(&self, id: &PartitionId) -> PathBuf {
        self.data_dir
            .join(TOPICS_DIR)
            .join(&*id.topic)
            .join(id.partition.to_string())
    }

    /// Creates (`create = true`) or opens and recovers the partition; returns the open one if
    /// it is already open. A partition whose recovery found corruption is returned faulted
    /// (see [`Partition::fault`]); it refuses appends and reads.
    pub async fn open_partition(
        &self,
        id: PartitionId,
        config: PartitionConfig,
        create: bool,
    ) -> Result<Rc<Partition<S>>> {
        validate_topic_name(&id.topic)?;
        loop {
            if self.closed.get() {
                return Err(EngineError::Closed { partition: id });
            }
            if let Some(p) = self.partition(&id) {
                return Ok(p);
            }
            let wait = self.opened.wait();
            if !self.opening.borrow().contains(&id) {
                break;
            }
            wait.await;
        }
        self.opening.borrow_mut().insert(id.clone());
        let dir = self.partition_dir(&id);
        let opened = Partition::open(
            id.clone(),
            dir,
            config,
            self.storage.clone(),
            self.zero_fill.clone(),
            self.rounds.clone(),
            create,
        )
        .await;
        self.opening.borrow_mut().remove(&id);
        if let Ok(p) = &opened {
            self.partitions.borrow_mut().insert(id, p.clone());
        }
        self.opened.notify_all();
        opened
    }

    /// An open partition.
    pub fn partition(&self, id: &PartitionId) -> Option<Rc<Partition<S>>> {
        self.partitions.borrow().get(id).cloned()
    }

    /// Every open partition, in id order.
    pub fn partitions(&self) -> Vec<Rc<Partition<S>>> {
        self.partitions.borrow().values().cloned().collect()
    }

    /// Closes the partition and deletes its files and directory.
    pub async fn remove_partition(&self, id: &PartitionId) -> Result<()> {
        let partition = self.partitions.borrow_mut().remove(id);
        match partition {
            Some(p) => p.destroy().await,
            None => Err(EngineError::PartitionNotFound {
                partition: id.clone(),
            }),
        }
    }

    /// Syncs every partition, writes their checkpoints and refuses further work. Returns the
    /// first error; every partition is closed regardless.
    pub async fn close(&self) -> Result<()> {
        self.closed.set(true);
        let mut first_error = None;
        for p in self.partitions() {
            if let Err(e) = p.close().await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
