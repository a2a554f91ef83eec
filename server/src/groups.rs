//! Committed offsets of named consumer groups.
//!
//! A group belongs to one shard (`hash(group) mod shards`); that shard holds
//! its offsets in memory and persists the whole group to
//! `<data_dir>/meta/groups/<group>.toml` before acknowledging a commit.
//! Commits that arrive while a write is in flight are covered by the next
//! write (group commit), so a busy group costs one write per round trip.
//! A commit becomes visible (to `get`) only once a write holding it has
//! succeeded: memory never shows what the file does not hold.

use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;

use glommio::sync::{Semaphore, StaticPermit};
use serde::{Deserialize, Serialize};

use crate::meta_store::{self, MetaError};
use shardlog_wire::client::fnv1a_64;

/// Longest commit metadata string kept.
pub const COMMIT_METADATA_BYTES_MAX: usize = 4096;
/// Most (topic, partition) entries one group may hold.
pub const GROUP_ENTRIES_MAX: usize = 100_000;
/// Largest group file written: what `meta_store::read_all` reads back at
/// startup, so a stored group never stops the server from starting.
pub const GROUP_FILE_BYTES_MAX: u64 = meta_store::META_FILE_BYTES_MAX;

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

type Offsets = BTreeMap<(String, u32), (u64, String)>;

/// How the write holding a commit ended; shared by the commits it held.
type Outcome = Rc<OnceCell<Result<(), Rc<GroupError>>>>;

/// A commit recorded and not yet written.
struct PendingCommit {
    entry: CommittedOffset,
    outcome: Outcome,
}

struct GroupState {
    /// What the group's file holds: the offsets `get` answers.
    committed: Offsets,
    /// Commits waiting for a write, in arrival order.
    pending: Vec<PendingCommit>,
    /// One write of the group at a time.
    writer: Rc<Semaphore>,
}

impl GroupState {
    fn new(committed: Offsets) -> Self {
        Self {
            committed,
            pending: Vec::new(),
            writer: Rc::new(Semaphore::new(1)),
        }
    }

    /// Whether `key` would be a new entry of the group.
    fn is_new(&self, key: &(String, u32)) -> bool {
        !self.committed.contains_key(key)
            && !self
                .pending
                .iter()
                .any(|p| p.entry.topic == key.0 && p.entry.partition == key.1)
    }
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

impl GroupError {
    /// The same error for another commit of the write that failed (an I/O
    /// error is not `Clone`: its kind and text are kept).
    fn replay(&self) -> GroupError {
        match self {
            GroupError::Limit { group, reason } => GroupError::Limit {
                group: group.clone(),
                reason: reason.clone(),
            },
            GroupError::Meta(MetaError::Io { op, path, source }) => {
                GroupError::Meta(MetaError::Io {
                    op,
                    path: path.clone(),
                    source: std::io::Error::new(source.kind(), source.to_string()),
                })
            }
            GroupError::Meta(MetaError::Corrupt { path, reason }) => {
                GroupError::Meta(MetaError::Corrupt {
                    path: path.clone(),
                    reason: reason.clone(),
                })
            }
        }
    }
}

/// The groups one shard owns.
pub struct GroupStore {
    dir: PathBuf,
    groups: RefCell<HashMap<String, Rc<RefCell<GroupState>>>>,
    /// [`GROUP_FILE_BYTES_MAX`]; smaller in tests.
    file_bytes_max: u64,
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
            let committed = file
                .offsets
                .into_iter()
                .map(|e| ((e.topic, e.partition), (e.offset, e.metadata)))
                .collect();
            let state = Rc::new(RefCell::new(GroupState::new(committed)));
            groups.insert(file.group, state);
        }
        Ok(Self {
            dir,
            groups: RefCell::new(groups),
            file_bytes_max: GROUP_FILE_BYTES_MAX,
        })
    }

    /// The committed offset of `group` for one partition: only what a
    /// successful write holds.
    pub fn get(&self, group: &str, topic: &str, partition: u32) -> Option<(u64, String)> {
        let groups = self.groups.borrow();
        let state = groups.get(group)?.borrow();
        state.committed.get(&(topic.to_owned(), partition)).cloned()
    }

    /// Records a commit and returns once it is durable; it becomes visible
    /// then, and never when its write failed.
    pub async fn commit(&self, group: &str, entry: CommittedOffset) -> Result<(), GroupError> {
        if entry.metadata.len() > COMMIT_METADATA_BYTES_MAX {
            return Err(GroupError::Limit {
                group: group.to_owned(),
                reason: format!("commit metadata over {COMMIT_METADATA_BYTES_MAX} bytes"),
            });
        }
        let (state, outcome) = self.record(group, entry)?;
        let writer = state.borrow().writer.clone();
        let permit = writer
            .acquire_static_permit(1)
            .await
            .map_err(|_| MetaError::Corrupt {
                path: self.dir.clone(),
                reason: "group writer closed".to_owned(),
            })?;
        if outcome.get().is_none() {
            // Detached: once its file write has started, the result is
            // applied (or every commit it holds failed) whatever happens to
            // this caller, so memory and file never disagree.
            let write = GroupWrite {
                state,
                group: group.to_owned(),
                dir: self.dir.clone(),
                file_bytes_max: self.file_bytes_max,
            };
            glommio::spawn_local(write.run(permit)).detach().await;
        }
        match outcome.get() {
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => Err(error.replay()),
            None => Err(GroupError::Meta(MetaError::Corrupt {
                path: self.dir.clone(),
                reason: format!("group {group}: the write was cancelled"),
            })),
        }
    }

    fn record(
        &self,
        group: &str,
        entry: CommittedOffset,
    ) -> Result<(Rc<RefCell<GroupState>>, Outcome), GroupError> {
        let state = self
            .groups
            .borrow_mut()
            .entry(group.to_owned())
            .or_insert_with(|| Rc::new(RefCell::new(GroupState::new(Offsets::new()))))
            .clone();
        let outcome = Outcome::default();
        {
            let mut st = state.borrow_mut();
            let key = (entry.topic.clone(), entry.partition);
            let entries = st.committed.len() + st.pending.len();
            if st.is_new(&key) && entries >= GROUP_ENTRIES_MAX {
                return Err(GroupError::Limit {
                    group: group.to_owned(),
                    reason: format!("more than {GROUP_ENTRIES_MAX} partitions committed"),
                });
            }
            let outcome = outcome.clone();
            st.pending.push(PendingCommit { entry, outcome });
        }
        Ok((state, outcome))
    }
}

/// One write of a group's file: every commit pending when it starts.
struct GroupWrite {
    state: Rc<RefCell<GroupState>>,
    group: String,
    dir: PathBuf,
    file_bytes_max: u64,
}

impl GroupWrite {
    /// Writes the committed offsets with the pending commits applied; on
    /// success they become the committed ones. Resolves every commit it
    /// took. Holds the group's writer permit throughout.
    async fn run(self, _permit: StaticPermit) {
        let (offsets, taken) = {
            let mut st = self.state.borrow_mut();
            let taken = std::mem::take(&mut st.pending);
            let mut offsets = st.committed.clone();
            for pending in &taken {
                let entry = &pending.entry;
                let key = (entry.topic.clone(), entry.partition);
                offsets.insert(key, (entry.offset, entry.metadata.clone()));
            }
            (offsets, taken)
        };
        let result = self.persist(&offsets).await;
        if result.is_ok() {
            self.state.borrow_mut().committed = offsets;
        }
        let result = result.map_err(Rc::new);
        for pending in taken {
            let _ = pending.outcome.set(result.clone());
        }
    }

    async fn persist(&self, offsets: &Offsets) -> Result<(), GroupError> {
        let file = GroupFile {
            group: self.group.clone(),
            offsets: offsets
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
        // Refused rather than written: a larger file would be refused when
        // read back, and the server would not start.
        if text.len() as u64 > self.file_bytes_max {
            return Err(GroupError::Limit {
                group: self.group.clone(),
                reason: format!(
                    "its committed offsets would take {} bytes, over the {} bytes a group file may hold; commit fewer partitions or shorter metadata",
                    text.len(),
                    self.file_bytes_max
                ),
            });
        }
        let dir = self.dir.clone();
        let name = format!("{}.toml", self.group);
        glommio::executor()
            .spawn_blocking(move || meta_store::write_atomic(&dir, &name, text.as_bytes()))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};

    fn commit_of(offset: u64) -> CommittedOffset {
        CommittedOffset {
            topic: "t".into(),
            partition: 2,
            offset,
            metadata: "m".into(),
        }
    }

    /// A commit whose write fails is not visible, and neither is any other commit that
    /// write held; a later successful write makes only its own commits visible.
    #[test]
    fn a_commit_whose_write_failed_is_not_visible() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_owned();
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(move || async move {
                let store = GroupStore::load(&path, 0, 1).expect("load");
                store.commit("g", commit_of(5)).await.expect("commit");
                // The groups directory becomes a file: the next writes fail.
                let groups_dir = path.join("meta").join("groups");
                std::fs::remove_dir_all(&groups_dir).expect("remove dir");
                std::fs::write(&groups_dir, b"in the way").expect("block dir");
                let (a, b) = futures_lite::future::zip(
                    store.commit("g", commit_of(9)),
                    store.commit(
                        "g",
                        CommittedOffset {
                            partition: 3,
                            ..commit_of(1)
                        },
                    ),
                )
                .await;
                assert!(matches!(a, Err(GroupError::Meta(_))), "{a:?}");
                assert!(matches!(b, Err(GroupError::Meta(_))), "{b:?}");
                assert_eq!(store.get("g", "t", 2), Some((5, "m".into())));
                assert_eq!(store.get("g", "t", 3), None);
                std::fs::remove_file(&groups_dir).expect("unblock dir");
                store.commit("g", commit_of(7)).await.expect("commit");
                assert_eq!(store.get("g", "t", 2), Some((7, "m".into())));
                assert_eq!(store.get("g", "t", 3), None, "failed commits stay dropped");
                let reloaded = GroupStore::load(&path, 0, 1).expect("reload");
                assert_eq!(reloaded.get("g", "t", 2), Some((7, "m".into())));
                assert_eq!(reloaded.get("g", "t", 3), None);
            })
            .expect("spawn")
            .join()
            .expect("join");
    }

    /// A commit that would grow the group's file past its bound is refused (RESOURCE_EXHAUSTED
    /// on the wire) and not visible; the stored file stays within the bound, so it always
    /// reads back, and commits that do not grow it still succeed.
    #[test]
    fn a_commit_growing_the_group_file_past_its_bound_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_owned();
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(move || async move {
                let mut store = GroupStore::load(&path, 0, 1).expect("load");
                store.file_bytes_max = 2048;
                let entry = |partition: u32| CommittedOffset {
                    partition,
                    metadata: "x".repeat(200),
                    ..commit_of(1)
                };
                let mut stored = 0;
                let refused = loop {
                    match store.commit("g", entry(stored)).await {
                        Ok(()) => stored += 1,
                        Err(error) => break error,
                    }
                    assert!(stored < 100, "the bound never applied");
                };
                let GroupError::Limit { reason, .. } = &refused else {
                    panic!("{refused:?}");
                };
                assert!(
                    reason.contains("2048 bytes a group file may hold"),
                    "{reason}"
                );
                assert!(stored > 0);
                assert_eq!(store.get("g", "t", stored), None, "the refused commit");
                let replaced = CommittedOffset {
                    offset: 9,
                    ..entry(0)
                };
                store.commit("g", replaced).await.expect("same size");
                let file = path.join("meta").join("groups").join("g.toml");
                let file_bytes = std::fs::metadata(file).expect("group file").len();
                assert!(file_bytes <= 2048, "{file_bytes}");
                let reloaded = GroupStore::load(&path, 0, 1).expect("reload");
                assert_eq!(reloaded.get("g", "t", 0).map(|(o, _)| o), Some(9));
                assert_eq!(reloaded.get("g", "t", stored), None);
            })
            .expect("spawn")
            .join()
            .expect("join");
    }

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
