//! The real backend: glommio `DmaFile` (O_DIRECT, io_uring) for data, `memmap2` for sealed
//! segments, and a low-priority glommio task queue for background work.
//!
//! Directory listing and creation use `std::fs`: they are rare metadata calls (partition
//! create/open), microseconds on a local file system, and glommio has no async variant.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use glommio::{GlommioError, Latency, Shares, TaskQueueHandle};

use super::{IO_ALIGN_BYTES, IoBuffer, OpenMode, Storage, StorageFile};

/// Share of the background task queue (pre-zeroing, index writing) against the default 1000.
const BACKGROUND_SHARES: usize = 50;

/// The production storage backend. Must be used on a glommio executor.
#[derive(Debug, Default)]
pub struct DmaStorage {
    background: Cell<Option<TaskQueueHandle>>,
}

impl DmaStorage {
    /// Creates the backend (the background task queue is created on first use).
    pub fn new() -> Self {
        Self::default()
    }
}

fn to_io<T>(e: GlommioError<T>) -> io::Error {
    match e {
        GlommioError::IoError(e) => e,
        GlommioError::EnhancedIoError { source, .. } => source,
        other => other.into(),
    }
}

impl IoBuffer for DmaBuffer {
    fn as_bytes(&self) -> &[u8] {
        DmaBuffer::as_bytes(self)
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        DmaBuffer::as_bytes_mut(self)
    }
    fn trim_to_size(&mut self, len: usize) {
        DmaBuffer::trim_to_size(self, len)
    }
}

/// A file of [`DmaStorage`].
#[derive(Debug)]
pub struct DmaStorageFile {
    file: DmaFile,
}

impl StorageFile for DmaStorageFile {
    type Buffer = DmaBuffer;

    fn alloc_buffer(&self, bytes: usize) -> DmaBuffer {
        self.file.alloc_dma_buffer(bytes)
    }

    async fn write_at(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<()> {
        let len = buf.len();
        let written = self.file.write_rc_at(buf, pos).await.map_err(to_io)?;
        if written != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write {written}/{len}"),
            ));
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        // glommio 0.9's DMA reads fail with EOPNOTSUPP on this kernel (6.18, IOPOLL ring), so
        // reads use pread(2) into an aligned buffer. They are rare (recovery, metadata);
        // serving reads use memory maps.
        pread_aligned(self.file.as_raw_fd(), pos, len)
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(to_io)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await.map_err(to_io)
    }

    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(to_io)
    }

    /// Maps the whole file. The engine maps sealed segments and the durable part of the active
    /// one: durable bytes never change (the partial last page is rewritten with the same
    /// prefix, and O_DIRECT writes invalidate the page cache so later faults see them).
    fn map_readonly(&self) -> io::Result<Bytes> {
        let fd = self.file.as_raw_fd();
        // SAFETY: `fstat` only writes into the struct we pass.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if stat.st_size == 0 {
            return Ok(Bytes::new());
        }
        // SAFETY: the engine only reads mapped bytes below the durable point, which are never
        // changed and never truncated away while the file lives; a retired segment file is
        // overwritten for reuse only once no map of it is alive (`Segment::held_by_readers`).
        let map = unsafe { memmap2::MmapOptions::new().map(fd)? };
        Ok(Bytes::from_owner(map))
    }
}

/// An aligned heap buffer for O_DIRECT reads.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn zeroed(len: usize) -> io::Result<Self> {
        let layout = std::alloc::Layout::from_size_align(len.max(IO_ALIGN_BYTES), IO_ALIGN_BYTES)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(ptr)
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(AlignedBuf { ptr, layout })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised (zeroed) bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Reads up to `len` bytes at `pos` from an O_DIRECT fd (aligning the request internally).
fn pread_aligned(fd: i32, pos: u64, len: usize) -> io::Result<Bytes> {
    let align = IO_ALIGN_BYTES as u64;
    let start = pos - pos % align;
    let skip = (pos - start) as usize;
    let total = (skip + len).div_ceil(IO_ALIGN_BYTES) * IO_ALIGN_BYTES;
    let mut buf = AlignedBuf::zeroed(total)?;
    let bytes = buf.as_mut_slice();
    let mut done = 0usize;
    while done < total {
        let offset = libc::off_t::try_from(start + done as u64)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let rest = &mut bytes[done..total];
        // SAFETY: `rest` is a valid, writable, aligned region of `rest.len()` bytes.
        let n = unsafe { libc::pread(fd, rest.as_mut_ptr().cast(), rest.len(), offset) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    let end = done.min(skip + len);
    Ok(Bytes::copy_from_slice(bytes.get(skip..end).unwrap_or(&[])))
}

impl Storage for DmaStorage {
    type File = DmaStorageFile;

    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<DmaStorageFile> {
        let mut opts = OpenOptions::new();
        match mode {
            OpenMode::CreateTruncate => opts.read(true).write(true).create(true).truncate(true),
            OpenMode::ReadWrite => opts.read(true).write(true),
            OpenMode::ReadOnly => opts.read(true),
        };
        let file = opts.dma_open(path).await.map_err(to_io)?;
        Ok(DmaStorageFile { file })
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    async fn dir_exists(&self, path: &Path) -> io::Result<bool> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(m.is_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        glommio::io::remove(path).await.map_err(to_io)
    }

    async fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        glommio::io::rename(from, to).await.map_err(to_io)
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let dir = glommio::io::Directory::open(path).await.map_err(to_io)?;
        let synced = dir.sync().await.map_err(to_io);
        let closed = dir.close().await.map_err(to_io);
        synced.and(closed)
    }

    fn now_ms(&self) -> i64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    fn spawn_background(&self, work: impl Future<Output = ()> + 'static) {
        let queue = match self.background.get() {
            Some(q) => q,
            None => {
                let q = glommio::executor().create_task_queue(
                    Shares::Static(BACKGROUND_SHARES),
                    Latency::NotImportant,
                    "shardlog-background",
                );
                self.background.set(Some(q));
                q
            }
        };
        match glommio::spawn_local_into(work, queue) {
            Ok(task) => drop(task.detach()),
            Err(e) => tracing::warn!(error = %e, "cannot spawn background work"),
        }
    }

    fn random_u32(&self) -> io::Result<u32> {
        getrandom::u32().map_err(io::Error::from)
    }
}
