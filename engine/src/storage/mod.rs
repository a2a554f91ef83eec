//! The storage I/O boundary: the only way the engine touches files, directories and the clock.
//!
//! The trait is deliberately narrow (open, aligned write, read, fdatasync, truncate, map,
//! rename, remove, list, directory sync, a random number) and async with static dispatch (a
//! type parameter, never `dyn`), so the production backend ([`DmaStorage`], O_DIRECT through
//! io_uring) and the simulator ([`SimStorage`], deterministic, crash- and fault-injecting) are
//! interchangeable. Everything here lives on one executor: nothing is `Send`.

use std::future::Future;
use std::io;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;

mod dma;
mod sim;

pub use dma::{DmaStorage, DmaStorageFile};
pub use sim::{SimBuffer, SimConfig, SimFileHandle, SimStorage};

/// Alignment of every write position and length (O_DIRECT, and the torn-write unit).
pub const IO_ALIGN_BYTES: usize = 4096;
/// Largest single write request (the device's max_sectors_kb).
pub const IO_REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;

const _: () = assert!(IO_REQUEST_BYTES_MAX % IO_ALIGN_BYTES == 0);

/// A write buffer the backend can hand to the device without copying (aligned memory).
pub trait IoBuffer: 'static {
    /// The buffer's bytes.
    fn as_bytes(&self) -> &[u8];
    /// The buffer's bytes, mutable.
    fn as_bytes_mut(&mut self) -> &mut [u8];
    /// Shortens the buffer (destructive; it cannot grow back).
    fn trim_to_size(&mut self, len: usize);
}

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create (or truncate to zero) for reading and writing.
    CreateTruncate,
    /// Open an existing file for reading and writing.
    ReadWrite,
    /// Open an existing file for reading.
    ReadOnly,
}

/// An open file.
#[allow(async_fn_in_trait)] // single-threaded by design: futures are never sent across threads
pub trait StorageFile: 'static {
    /// The aligned buffer type this file writes from.
    type Buffer: IoBuffer;
    /// Allocates a buffer of `bytes` (a multiple of [`IO_ALIGN_BYTES`]); contents unspecified.
    fn alloc_buffer(&self, bytes: usize) -> Self::Buffer;
    /// Writes the whole buffer at `pos`. Both are multiples of [`IO_ALIGN_BYTES`] and the
    /// buffer is at most [`IO_REQUEST_BYTES_MAX`]. A short write is an error.
    async fn write_at(&self, buf: Rc<Self::Buffer>, pos: u64) -> io::Result<()>;
    /// Reads up to `len` bytes at `pos` (fewer at end of file); any alignment.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes>;
    /// Makes every completed write durable.
    async fn fdatasync(&self) -> io::Result<()>;
    /// Sets the file length (durable after the next fdatasync).
    async fn truncate(&self, len: u64) -> io::Result<()>;
    /// Current file length.
    async fn size(&self) -> io::Result<u64>;
    /// The whole file as bytes (a memory map for the real backend, a snapshot for the
    /// simulator). Callers only rely on bytes that no longer change (durable data).
    fn map_readonly(&self) -> io::Result<Bytes>;
}

/// A file system plus the environment (clock, background work) the engine runs against.
#[allow(async_fn_in_trait)] // single-threaded by design
pub trait Storage: 'static {
    /// Open file type.
    type File: StorageFile;
    /// Opens a file.
    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Self::File>;
    /// Creates a directory and its parents.
    async fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory, sorted.
    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Whether a directory exists.
    async fn dir_exists(&self, path: &Path) -> io::Result<bool>;
    /// Removes a file.
    async fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    async fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Renames a file (atomically replacing `to`).
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    async fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Wall clock, milliseconds since the Unix epoch (virtual in the simulator).
    fn now_ms(&self) -> i64;
    /// Runs `work` off the hot path (a low-priority task queue for the real backend).
    fn spawn_background(&self, work: impl Future<Output = ()> + 'static);
    /// A random `u32` no client can predict (the OS source for the real backend; the seeded
    /// stream in the simulator). Seeds the CRCs of a recycled segment.
    fn random_u32(&self) -> io::Result<u32>;
}
