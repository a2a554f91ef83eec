//! The topic catalog: which topics exist, their partition counts, retention,
//! and which shard owns each partition.
//!
//! Every shard holds a full copy, so routing a request is a local lookup
//! (no lock shared across cores). Shard 0 is the only writer: it persists a
//! change to `<data_dir>/meta/topics/<topic>.toml` (write temp, fsync,
//! rename, fsync directory) and then broadcasts it to the other shards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use shardlog_wire::client::fnv1a_64;

use crate::meta_store::{self, MetaError};

/// Retention and segment settings of one topic; zero means "server default"
/// for `segment_bytes` and "unlimited" for the two retention limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRetention {
    /// Delete sealed segments beyond this many bytes per partition.
    pub retention_bytes: u64,
    /// Delete sealed segments whose newest record is older than this.
    pub retention_ms: u64,
    /// Roll segments at this size.
    pub segment_bytes: u64,
}

/// What the catalog records about one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// The topic's name (validated by the engine's rules).
    pub name: String,
    /// Partition count, fixed at creation.
    pub partition_count: u32,
    /// Retention settings.
    pub retention: TopicRetention,
    /// Shard count the placement below was computed for.
    pub shard_count: u32,
    /// Owning shard of each partition, indexed by partition.
    pub owners: Vec<u32>,
}

impl TopicMeta {
    /// A new topic's metadata with deterministic placement.
    pub fn new(name: String, partition_count: u32, retention: TopicRetention, shards: u32) -> Self {
        let owners = (0..partition_count)
            .map(|partition| place_partition(&name, partition, shards))
            .collect();
        Self {
            name,
            partition_count,
            retention,
            shard_count: shards,
            owners,
        }
    }

    /// The shard owning `partition`, if the partition exists.
    pub fn owner(&self, partition: u32) -> Option<usize> {
        self.owners
            .get(partition as usize)
            .map(|&shard| shard as usize)
    }

    /// True when the stored placement fits a server with `shards` shards.
    fn placement_fits(&self, shards: u32) -> bool {
        self.shard_count == shards
            && self.owners.len() == self.partition_count as usize
            && self.owners.iter().all(|&owner| owner < shards)
    }
}

/// Deterministic placement (FNV-1a: stable across releases and platforms,
/// and the hash clients use for keys): a topic's partitions go round robin over the
/// shards, starting at a shard chosen by the topic name's hash, so small
/// topics do not all pile onto shard 0.
pub fn place_partition(topic: &str, partition: u32, shards: u32) -> u32 {
    assert!(shards > 0, "placement needs at least one shard");
    let start = fnv1a_64(topic.as_bytes()) % u64::from(shards);
    ((start + u64::from(partition)) % u64::from(shards)) as u32
}

/// One shard's copy of the catalog.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    topics: BTreeMap<String, TopicMeta>,
}

impl Catalog {
    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    /// Every topic, by name.
    pub fn topics(&self) -> impl Iterator<Item = &TopicMeta> {
        self.topics.values()
    }

    /// Adds or replaces a topic.
    pub fn upsert(&mut self, meta: TopicMeta) {
        self.topics.insert(meta.name.clone(), meta);
    }

    /// Removes a topic; returns whether it existed.
    pub fn remove(&mut self, name: &str) -> bool {
        self.topics.remove(name).is_some()
    }
}

/// Where the catalog lives on disk.
pub fn catalog_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("topics")
}

fn topic_file_name(topic: &str) -> String {
    format!("{topic}.toml")
}

/// Loads every topic file. A topic whose placement was computed for another
/// shard count is re-placed (deterministically) and rewritten.
pub fn load(data_dir: &Path, shards: u32) -> Result<Catalog, MetaError> {
    let dir = catalog_dir(data_dir);
    let mut catalog = Catalog::default();
    for (file_name, bytes) in meta_store::read_all(&dir, "toml")? {
        let text = String::from_utf8(bytes).map_err(|_| MetaError::Corrupt {
            path: dir.join(&file_name),
            reason: "not UTF-8".to_owned(),
        })?;
        let mut meta: TopicMeta = toml::from_str(&text).map_err(|error| MetaError::Corrupt {
            path: dir.join(&file_name),
            reason: error.to_string(),
        })?;
        if topic_file_name(&meta.name) != file_name {
            return Err(MetaError::Corrupt {
                path: dir.join(&file_name),
                reason: format!("names topic {:?}", meta.name),
            });
        }
        if !meta.placement_fits(shards) {
            meta = TopicMeta::new(meta.name, meta.partition_count, meta.retention, shards);
            store_blocking(data_dir, &meta)?;
        }
        catalog.upsert(meta);
    }
    Ok(catalog)
}

/// Persists one topic's metadata durably (blocking: call from a blocking
/// thread or at startup).
pub fn store_blocking(data_dir: &Path, meta: &TopicMeta) -> Result<(), MetaError> {
    let text = toml::to_string(meta).map_err(|error| MetaError::Corrupt {
        path: catalog_dir(data_dir),
        reason: error.to_string(),
    })?;
    meta_store::write_atomic(
        &catalog_dir(data_dir),
        &topic_file_name(&meta.name),
        text.as_bytes(),
    )
}

/// Removes one topic's metadata durably (blocking).
pub fn remove_blocking(data_dir: &Path, topic: &str) -> Result<(), MetaError> {
    meta_store::remove_durable(&catalog_dir(data_dir), &topic_file_name(topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_deterministic_and_spread() {
        let owners: Vec<u32> = (0..8).map(|p| place_partition("orders", p, 4)).collect();
        assert_eq!(
            owners,
            (0..8)
                .map(|p| place_partition("orders", p, 4))
                .collect::<Vec<_>>()
        );
        for shard in 0..4 {
            assert_eq!(owners.iter().filter(|&&o| o == shard).count(), 2);
        }
    }

    #[test]
    fn catalog_round_trips_and_replaces_on_shard_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let meta = TopicMeta::new("t.1".into(), 5, TopicRetention::default(), 2);
        store_blocking(dir.path(), &meta).expect("store");
        assert_eq!(load(dir.path(), 2).expect("load").topic("t.1"), Some(&meta));

        let replaced = load(dir.path(), 3).expect("load with 3 shards");
        let topic = replaced.topic("t.1").expect("still there");
        assert_eq!(topic.shard_count, 3);
        assert!(topic.owners.iter().all(|&o| o < 3));
        assert_eq!(
            load(dir.path(), 3).expect("reload").topic("t.1"),
            Some(topic)
        );

        remove_blocking(dir.path(), "t.1").expect("remove");
        assert!(load(dir.path(), 3).expect("load").topic("t.1").is_none());
    }
}
