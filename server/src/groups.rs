//! Committed offsets of named consumer groups.
//!
//! A group belongs to one shard (`hash(group) mod shards`); that shard holds
//! its offsets in memory and persists the whole group to
//! `<data_dir>/meta/groups/<group>.toml` before acknowledging a commit.
//! Commits that arrive while a write is in flight are covered by the next
//! write (group commit), so a busy group costs one write per round trip.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;

use glommio::sync::Semaphore;
use serde::{Deserialize, Serialize};

use crate::meta_store::{self, MetaError};
use shardlog_wire::client::fnv1a_64;

/// Longest commit metadata string kept.
pub const COMMIT_METADATA_BYTES_MAX: usize = 4096;
/// Most (topic, partition) entries one group may hold.
pub const GROUP_ENTRIES_MAX: usize = 100_000;

/// The shard owning `group`'s offsets.
pub fn group_owner(group: &str, shards: usize) -> usize {
    assert!(shards > 0);
    (fnv1a_64(group.as_bytes()) % shards as u64) as usize
}

/// One committed position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// Next offset the group will consume.
    pub offset: u64,
    /// Free-form client metadata.
    pub metadata: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct GroupFile {
    group: String,
    offsets: Vec<CommittedOffset>,
}

#[derive(Default)]
struct GroupState {
    offsets: BTreeMap<(String, u32), (u64, String)>,
    /// Bumped by every commit.
    changes: u64,
    /// `changes` value the file on disk reflects.
    persisted: Cell<u64>,
    writer: Option<Rc<Semaphore>>,
}

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// Too many entries or too much metadata.
    #[error("group {group}: {reason}")]
    Limit {
        /// The group.
        group: String,
        /// Which limit.
        reason: String,
    },
    /// The offsets could not be persisted.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// The groups one shard owns.
pub struct GroupStore {
    dir: PathBuf,
    groups: RefCell<HashMap<String, GroupState>>,
}

impl GroupStore {
    /// Loads the groups this shard owns (blocking: call at startup).
    pub fn load(
        data_dir: &std::path::Path,
        shard: usize,
        shards: usize,
    ) -> Result<Self, MetaError> {
        let dir = data_dir.join("meta").join("groups");
        let mut groups = HashMap::new();
        for (file_name, bytes) in meta_store::read_all(&dir, "toml")? {
            let corrupt = |reason: String| MetaError::Corrupt {
                path: dir.join(&file_name),
                reason,
            };
            let text = String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8".into()))?;
            let file: GroupFile = toml::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
            if group_owner(&file.group, shards) != shard {
                continue;
            }
            let mut state = GroupState::default();
            for entry in file.offsets {
                state.offsets.insert(
                    (entry.topic, entry.partition),
                    (entry.offset, entry.metadata),
                );
            }
            groups.insert(file.group, state);
        }
        Ok(Self {
            dir,
            groups: RefCell::new(groups),
        })
    }

    /// The committed offset of `group` for one partition.
    pub fn get(&self, group: &str, topic: &str, partition: u32) -> Option<(u64, String)> {
        let groups = self.groups.borrow();
        let state = groups.get(group)?;
        state.offsets.get(&(topic.to_owned(), partition)).cloned()
    }

    /// Records a commit and returns once it is durable.
    pub async fn commit(&self, group: &str, entry: CommittedOffset) -> Result<(), GroupError> {
        if entry.metadata.len() > COMMIT_METADATA_BYTES_MAX {
            return Err(GroupError::Limit {
                group: group.to_owned(),
                reason: format!("commit metadata over {COMMIT_METADATA_BYTES_MAX} bytes"),
            });
        }
        let (change, writer) = self.record(group, entry)?;
        // One writer per group at a time; a writer's file covers every change
        // recorded before it took its snapshot.
        let _permit = writer
            .acquire_permit(1)
            .await
            .map_err(|_| MetaError::Corrupt {
                path: self.dir.clone(),
                reason: "group writer closed".to_owned(),
            })?;
        if self.persisted(group) >= change {
            return Ok(());
        }
        let (snapshot, covered) = self.snapshot(group);
        let dir = self.dir.clone();
        let name = format!("{group}.toml");
        glommio::executor()
            .spawn_blocking(move || meta_store::write_atomic(&dir, &name, snapshot.as_bytes()))
            .await?;
        if let Some(state) = self.groups.borrow().get(group) {
            state.persisted.set(state.persisted.get().max(covered));
        }
        Ok(())
    }

    fn record(
        &self,
        group: &str,
        entry: CommittedOffset,
    ) -> Result<(u64, Rc<Semaphore>), GroupError> {
        let mut groups = self.groups.borrow_mut();
        let state = groups.entry(group.to_owned()).or_default();
        let key = (entry.topic, entry.partition);
        if !state.offsets.contains_key(&key) && state.offsets.len() >= GROUP_ENTRIES_MAX {
            return Err(GroupError::Limit {
                group: group.to_owned(),
                reason: format!("more than {GROUP_ENTRIES_MAX} partitions committed"),
            });
        }
        state.offsets.insert(key, (entry.offset, entry.metadata));
        state.changes += 1;
        let writer = state
            .writer
            .get_or_insert_with(|| Rc::new(Semaphore::new(1)))
            .clone();
        Ok((state.changes, writer))
    }

    fn persisted(&self, group: &str) -> u64 {
        self.groups
            .borrow()
            .get(group)
            .map_or(0, |state| state.persisted.get())
    }

    fn snapshot(&self, group: &str) -> (String, u64) {
        let groups = self.groups.borrow();
        let Some(state) = groups.get(group) else {
            return (String::new(), 0);
        };
        let file = GroupFile {
            group: group.to_owned(),
            offsets: state
                .offsets
                .iter()
                .map(|((topic, partition), (offset, metadata))| CommittedOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    metadata: metadata.clone(),
                })
                .collect(),
        };
        let text = toml::to_string(&file).expect("group offsets always serialize");
        (text, state.changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};

    #[test]
    fn commits_survive_reload() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_owned();
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(move || async move {
                let store = GroupStore::load(&path, 0, 1).expect("load");
                let commit = |offset| CommittedOffset {
                    topic: "t".into(),
                    partition: 2,
                    offset,
                    metadata: "m".into(),
                };
                let (a, b) = futures_lite::future::zip(
                    store.commit("g", commit(5)),
                    store.commit("g", commit(9)),
                )
                .await;
                a.expect("commit");
                b.expect("commit");
                assert_eq!(store.get("g", "t", 2), Some((9, "m".into())));
                let reloaded = GroupStore::load(&path, 0, 1).expect("reload");
                assert_eq!(reloaded.get("g", "t", 2), Some((9, "m".into())));
                assert_eq!(reloaded.get("g", "t", 3), None);
            })
            .expect("spawn")
            .join()
            .expect("join");
    }
}
