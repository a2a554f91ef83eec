//! The storage backend the server hands the engine: the real io_uring
//! backend ([`DmaStorage`]), optionally wrapped with test-only fault
//! injection.
//!
//! io_uring operations are not syscalls of the process, so ptrace-based
//! injection (`strace -e inject`) and LD_PRELOAD shims never reach the
//! engine's fdatasync. Faults are injected here instead, at the engine's
//! storage boundary, selected by the `[testing]` config section. With no
//! fault configured every call goes straight through.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use shardlog_engine::{DmaStorage, OpenMode, Storage, StorageFile};

use crate::config::TestingConfig;

/// Faults to inject, shared by every file of one shard.
#[derive(Debug, Default)]
struct Faults {
    /// Only files whose path contains this string are affected.
    fdatasync_eio_path: Option<String>,
    /// The Nth fdatasync (1-based, counted over affected files) and every
    /// later one fail with EIO.
    fdatasync_eio_nth: Option<u64>,
    fdatasyncs: Cell<u64>,
}

impl Faults {
    fn fdatasync_fails(&self, path: &Path) -> bool {
        let Some(nth) = self.fdatasync_eio_nth else {
            return false;
        };
        let affected = match &self.fdatasync_eio_path {
            Some(fragment) => path.to_string_lossy().contains(fragment.as_str()),
            None => true,
        };
        if !affected {
            return false;
        }
        let count = self.fdatasyncs.get() + 1;
        self.fdatasyncs.set(count);
        count >= nth
    }
}

/// The server's storage: [`DmaStorage`] plus optional injected faults.
pub struct ServerStorage {
    inner: DmaStorage,
    faults: Rc<Faults>,
}

impl ServerStorage {
    /// The real backend with the faults `testing` asks for (none by default).
    pub fn new(testing: &TestingConfig) -> Self {
        Self {
            inner: DmaStorage::new(),
            faults: Rc::new(Faults {
                fdatasync_eio_path: testing.fdatasync_eio_path.clone(),
                fdatasync_eio_nth: testing.fdatasync_eio_nth,
                fdatasyncs: Cell::new(0),
            }),
        }
    }
}

/// A file of [`ServerStorage`].
pub struct ServerFile {
    inner: <DmaStorage as Storage>::File,
    path: PathBuf,
    faults: Rc<Faults>,
}

impl StorageFile for ServerFile {
    type Buffer = <<DmaStorage as Storage>::File as StorageFile>::Buffer;

    fn alloc_buffer(&self, bytes: usize) -> Self::Buffer {
        self.inner.alloc_buffer(bytes)
    }

    async fn write_at(&self, buf: Rc<Self::Buffer>, pos: u64) -> io::Result<()> {
        self.inner.write_at(buf, pos).await
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        self.inner.read_at(pos, len).await
    }

    async fn fdatasync(&self) -> io::Result<()> {
        if self.faults.fdatasync_fails(&self.path) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.fdatasync().await
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.inner.truncate(len).await
    }

    async fn size(&self) -> io::Result<u64> {
        self.inner.size().await
    }

    fn map_readonly(&self) -> io::Result<Bytes> {
        self.inner.map_readonly()
    }
}

impl Storage for ServerStorage {
    type File = ServerFile;

    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Self::File> {
        Ok(ServerFile {
            inner: self.inner.open(path, mode).await?,
            path: path.to_owned(),
            faults: self.faults.clone(),
        })
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path).await
    }

    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path).await
    }

    async fn dir_exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.dir_exists(path).await
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path).await
    }

    async fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir(path).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to).await
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path).await
    }

    fn now_ms(&self) -> i64 {
        self.inner.now_ms()
    }

    fn spawn_background(&self, work: impl Future<Output = ()> + 'static) {
        self.inner.spawn_background(work)
    }

    fn random_u32(&self) -> io::Result<u32> {
        self.inner.random_u32()
    }
}
