//! The simulated backend: an in-memory file system that knows, per file, what is written and
//! what is durable, and can crash, fail fdatasync, run out of space and flip bits.
//!
//! Deterministic from a seed: every random choice comes from one splitmix64 stream and all
//! maps are ordered. A crash (`crash()`) keeps, per file, a random prefix of the writes issued
//! since its last fdatasync, the last one possibly torn at a 512 B or 4 KiB boundary with the
//! rest left old, zeroed or garbage (bytes a write rewrites with identical content are never
//! damaged, as on a sector-atomic device); and a random prefix of the directory operations issued
//! since the last directory sync. Simplification: `sync_dir` makes every pending directory
//! operation durable (not only that directory's). A failed fdatasync (`fail_fsync_in`) loses
//! the writes pending on that file, as Linux may: a later successful fdatasync makes only
//! writes issued after the failure durable.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use super::{IoBuffer, OpenMode, Storage, StorageFile};

/// Torn-write granules a crash may cut at.
const TORN_GRANULES_BYTES: [usize; 2] = [512, 4096];

/// Settings of a [`SimStorage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Total bytes of file data the file system holds (ENOSPC beyond it).
    pub capacity_bytes: Option<u64>,
    /// Virtual clock start, milliseconds.
    pub start_ms: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            capacity_bytes: None,
            start_ms: 1_700_000_000_000,
        }
    }
}

#[derive(Debug, Clone)]
enum FileOp {
    Write { pos: u64, data: Vec<u8> },
    Truncate(u64),
}

#[derive(Debug, Clone, Default)]
struct SimFile {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<FileOp>,
}

#[derive(Debug, Clone)]
enum NameOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

#[derive(Debug)]
struct SimState {
    rng: u64,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    pending_names: Vec<NameOp>,
    dirs: BTreeMap<PathBuf, ()>,
    files: BTreeMap<u64, SimFile>,
    next_file_id: u64,
    ops: u64,
    crash_at_op: Option<u64>,
    crashed: bool,
    fsyncs: u64,
    fail_fsync_at: Option<u64>,
    capacity_bytes: Option<u64>,
    now_ms: i64,
    slow_writes: Option<SlowWrites>,
}

/// A slow region of one file (see [`SimStorage::slow_writes_from`]).
#[derive(Debug, Clone, Copy)]
struct SlowWrites {
    file_id: u64,
    from_pos: u64,
    yields: u32,
}

impl SimState {
    fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Counts an operation; fails it (and every later one) once the crash point is reached.
    fn op(&mut self) -> io::Result<()> {
        self.ops += 1;
        if self.crash_at_op.is_some_and(|at| self.ops >= at) {
            self.crashed = true;
        }
        if self.crashed {
            return Err(io::Error::other("simulated crash"));
        }
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        self.names
            .values()
            .filter_map(|id| self.files.get(id))
            .map(|f| f.current.len() as u64)
            .sum()
    }

    fn file(&mut self, id: u64) -> io::Result<&mut SimFile> {
        self.files
            .get_mut(&id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn apply_crash(&mut self) {
        let ids: Vec<u64> = self.files.keys().copied().collect();
        for id in ids {
            let Some(mut file) = self.files.remove(&id) else {
                continue;
            };
            let keep = self.below(file.pending.len() as u64 + 1) as usize;
            let mut image = std::mem::take(&mut file.durable);
            for (i, op) in file.pending.iter().enumerate().take(keep) {
                let torn = i + 1 == keep && self.below(3) == 0;
                self.apply_op(&mut image, op, torn);
            }
            file.current = image.clone();
            file.durable = image;
            file.pending.clear();
            self.files.insert(id, file);
        }
        let keep = self.below(self.pending_names.len() as u64 + 1) as usize;
        let mut names = self.durable_names.clone();
        for op in self.pending_names.iter().take(keep) {
            apply_name_op(&mut names, op);
        }
        self.pending_names.clear();
        self.durable_names = names.clone();
        self.names = names;
        self.crashed = false;
        self.crash_at_op = None;
        self.fail_fsync_at = None;
    }

    fn apply_op(&mut self, image: &mut Vec<u8>, op: &FileOp, torn: bool) {
        match op {
            FileOp::Truncate(len) => image.resize(*len as usize, 0),
            FileOp::Write { pos, data } => {
                let pos = *pos as usize;
                let granule = TORN_GRANULES_BYTES[self.below(2) as usize];
                let granules = data.len().div_ceil(granule) as u64;
                let cut = if torn {
                    (self.below(granules) as usize * granule).min(data.len())
                } else {
                    data.len()
                };
                // Bytes rewritten with identical content are never damaged by a tear (a
                // sector-atomic device leaves an unchanged sector as it was).
                let unchanged = data
                    .iter()
                    .zip(image.get(pos..).unwrap_or(&[]))
                    .take_while(|(new, old)| new == old)
                    .count();
                if image.len() < pos + cut {
                    image.resize(pos + cut, 0);
                }
                image[pos..pos + cut].copy_from_slice(&data[..cut]);
                let tear_from = cut.max(unchanged);
                if tear_from < data.len() {
                    self.tear_tail(image, pos + tear_from, data.len() - tear_from);
                }
            }
        }
    }

    /// After a torn write, the unwritten part is old content, zeros or garbage.
    fn tear_tail(&mut self, image: &mut Vec<u8>, from: usize, len: usize) {
        match self.below(3) {
            0 => {}
            choice => {
                if image.len() < from + len {
                    image.resize(from + len, 0);
                }
                for byte in &mut image[from..from + len] {
                    *byte = if choice == 1 {
                        0
                    } else {
                        self.next_u64() as u8
                    };
                }
            }
        }
    }
}

/// Applies a file operation completely (no tear).
fn apply_whole_op(image: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Truncate(len) => image.resize(*len as usize, 0),
        FileOp::Write { pos, data } => {
            let (start, end) = (*pos as usize, *pos as usize + data.len());
            if image.len() < end {
                image.resize(end, 0);
            }
            image[start..end].copy_from_slice(data);
        }
    }
}

fn apply_name_op(names: &mut BTreeMap<PathBuf, u64>, op: &NameOp) {
    match op {
        NameOp::Link(path, id) => {
            names.insert(path.clone(), *id);
        }
        NameOp::Unlink(path) => {
            names.remove(path);
        }
        NameOp::Rename(from, to) => {
            if let Some(id) = names.remove(from) {
                names.insert(to.clone(), id);
            }
        }
    }
}

/// The simulated storage backend (cheap to clone; clones share one file system).
#[derive(Debug, Clone)]
pub struct SimStorage {
    state: Rc<RefCell<SimState>>,
}

impl SimStorage {
    /// Creates an empty file system.
    pub fn new(config: SimConfig) -> Self {
        let state = SimState {
            rng: config.seed,
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            pending_names: Vec::new(),
            dirs: BTreeMap::new(),
            files: BTreeMap::new(),
            next_file_id: 1,
            ops: 0,
            crash_at_op: None,
            crashed: false,
            fsyncs: 0,
            fail_fsync_at: None,
            capacity_bytes: config.capacity_bytes,
            now_ms: config.start_ms,
            slow_writes: None,
        };
        SimStorage {
            state: Rc::new(RefCell::new(state)),
        }
    }

    /// Operations performed so far.
    pub fn op_count(&self) -> u64 {
        self.state.borrow().ops
    }

    /// From operation number `op` on (1-based, counting from the start), every operation fails
    /// as if the process died; call [`SimStorage::crash`] to restart from the durable image.
    pub fn crash_at_op(&self, op: u64) {
        self.state.borrow_mut().crash_at_op = Some(op);
    }

    /// True once the crash point has been reached.
    pub fn has_crashed(&self) -> bool {
        self.state.borrow().crashed
    }

    /// Ends a process death (see [`SimStorage::crash_at_op`]) without power loss: the kernel
    /// kept everything the dead process wrote, so the next one sees its writes and directory
    /// changes, synced or not, while a later [`SimStorage::crash`] keeps only what was made
    /// durable. Clears the crash point.
    pub fn restart_process(&self) {
        let mut s = self.state.borrow_mut();
        s.crashed = false;
        s.crash_at_op = None;
    }

    /// Simulates power loss: keeps only durable data plus a random, possibly torn, prefix of
    /// unsynced writes and directory operations. Clears the crash point and injected faults.
    pub fn crash(&self) {
        self.state.borrow_mut().apply_crash();
    }

    /// Makes the `n`-th fdatasync from now (1-based) fail with EIO. The writes pending on that
    /// file at that point are lost (reads still see them until a crash): no later fdatasync
    /// makes them durable.
    pub fn fail_fsync_in(&self, n: u64) {
        let mut s = self.state.borrow_mut();
        s.fail_fsync_at = Some(s.fsyncs + n);
    }

    /// Makes every write to `path` that starts at or past byte `from_pos` wait `yields` extra
    /// executor turns before it lands (a slow region of the device), so a test can order a
    /// background write after later foreground work. One region at a time; `yields == 0`
    /// removes it. Returns false if the file does not exist.
    pub fn slow_writes_from(&self, path: &Path, from_pos: u64, yields: u32) -> bool {
        let mut s = self.state.borrow_mut();
        let Some(file_id) = s.names.get(path).copied() else {
            return false;
        };
        s.slow_writes = (yields > 0).then_some(SlowWrites {
            file_id,
            from_pos,
            yields,
        });
        true
    }

    /// Sets the file system's capacity in bytes (`None`: unlimited).
    pub fn set_capacity_bytes(&self, capacity: Option<u64>) {
        self.state.borrow_mut().capacity_bytes = capacity;
    }

    /// Flips one bit of a file, in both its current and durable contents. Returns false if the
    /// file or byte does not exist.
    pub fn flip_bit(&self, path: &Path, byte: u64, bit: u8) -> bool {
        let mut s = self.state.borrow_mut();
        let Some(id) = s.names.get(path).copied() else {
            return false;
        };
        let Ok(file) = s.file(id) else { return false };
        let byte = byte as usize;
        if byte >= file.current.len() {
            return false;
        }
        file.current[byte] ^= 1 << (bit % 8);
        if byte < file.durable.len() {
            file.durable[byte] ^= 1 << (bit % 8);
        }
        true
    }

    /// A file's current contents.
    pub fn file_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.state.borrow();
        let id = s.names.get(path)?;
        s.files.get(id).map(|f| f.current.clone())
    }

    /// Replaces a file's contents, durably (test helper for damaging metadata files).
    pub fn set_file_contents(&self, path: &Path, data: Vec<u8>) -> bool {
        let mut s = self.state.borrow_mut();
        let Some(id) = s.names.get(path).copied() else {
            return false;
        };
        let Ok(file) = s.file(id) else { return false };
        file.current = data.clone();
        file.durable = data;
        file.pending.clear();
        true
    }

    /// Names of every file, sorted.
    pub fn file_names(&self) -> Vec<PathBuf> {
        self.state.borrow().names.keys().cloned().collect()
    }

    /// Removes a file immediately and durably (test helper).
    pub fn remove_durably(&self, path: &Path) -> bool {
        let mut s = self.state.borrow_mut();
        s.durable_names.remove(path);
        s.names.remove(path).is_some()
    }

    /// Advances the virtual clock.
    pub fn advance_clock_ms(&self, ms: i64) {
        self.state.borrow_mut().now_ms += ms;
    }
}

/// A buffer of the simulated backend.
#[derive(Debug)]
pub struct SimBuffer(Vec<u8>);

impl IoBuffer for SimBuffer {
    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn trim_to_size(&mut self, len: usize) {
        assert!(len <= self.0.len());
        self.0.truncate(len);
    }
}

/// An open file of [`SimStorage`] (it keeps working after an unlink, like an inode).
#[derive(Debug)]
pub struct SimFileHandle {
    state: Rc<RefCell<SimState>>,
    id: u64,
    writable: bool,
}

impl StorageFile for SimFileHandle {
    type Buffer = SimBuffer;

    fn alloc_buffer(&self, bytes: usize) -> SimBuffer {
        SimBuffer(vec![0xa5; bytes])
    }

    async fn write_at(&self, buf: Rc<SimBuffer>, pos: u64) -> io::Result<()> {
        crate::notify::yield_once().await;
        let slow = self.state.borrow().slow_writes;
        if let Some(slow) = slow.filter(|w| w.file_id == self.id && pos >= w.from_pos) {
            for _ in 0..slow.yields {
                crate::notify::yield_once().await;
            }
        }
        let mut s = self.state.borrow_mut();
        s.op()?;
        assert!(self.writable, "write to a read-only sim file");
        assert!(
            pos % 512 == 0 && buf.0.len() % 512 == 0,
            "unaligned sim write"
        );
        let end = pos as usize + buf.0.len();
        let grow = end.saturating_sub(s.file(self.id)?.current.len()) as u64;
        if s.capacity_bytes
            .is_some_and(|cap| s.used_bytes() + grow > cap)
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let file = s.file(self.id)?;
        if file.current.len() < end {
            file.current.resize(end, 0);
        }
        file.current[pos as usize..end].copy_from_slice(&buf.0);
        file.pending.push(FileOp::Write {
            pos,
            data: buf.0.clone(),
        });
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        let mut s = self.state.borrow_mut();
        s.op()?;
        let file = s.file(self.id)?;
        let start = (pos as usize).min(file.current.len());
        let end = start.saturating_add(len).min(file.current.len());
        Ok(Bytes::copy_from_slice(&file.current[start..end]))
    }

    async fn fdatasync(&self) -> io::Result<()> {
        crate::notify::yield_once().await;
        let mut s = self.state.borrow_mut();
        s.op()?;
        s.fsyncs += 1;
        let failed = s.fail_fsync_at.is_some_and(|at| s.fsyncs >= at);
        if failed {
            s.fail_fsync_at = None;
        }
        let file = s.file(self.id)?;
        let pending = std::mem::take(&mut file.pending);
        if failed {
            // Linux marks the pages of a failed writeback clean: no later fsync writes them
            // again. The worst case is modelled: every write pending here is lost, though
            // reads still see it (`current`) until a crash.
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        for op in &pending {
            apply_whole_op(&mut file.durable, op);
        }
        Ok(())
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.op()?;
        let file = s.file(self.id)?;
        file.current.resize(len as usize, 0);
        file.pending.push(FileOp::Truncate(len));
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        let mut s = self.state.borrow_mut();
        s.op()?;
        Ok(s.file(self.id)?.current.len() as u64)
    }

    fn map_readonly(&self) -> io::Result<Bytes> {
        let mut s = self.state.borrow_mut();
        s.op()?;
        Ok(Bytes::from(s.file(self.id)?.current.clone()))
    }
}

fn parent_exists(s: &SimState, path: &Path) -> bool {
    path.parent()
        .is_none_or(|p| p.as_os_str().is_empty() || s.dirs.contains_key(p))
}

impl Storage for SimStorage {
    type File = SimFileHandle;

    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<SimFileHandle> {
        let mut s = self.state.borrow_mut();
        s.op()?;
        let id = match (mode, s.names.get(path).copied()) {
            (OpenMode::CreateTruncate, Some(id)) => {
                let file = s.file(id)?;
                file.current.clear();
                file.pending.push(FileOp::Truncate(0));
                id
            }
            (OpenMode::CreateTruncate, None) => {
                if !parent_exists(&s, path) {
                    return Err(io::Error::from(io::ErrorKind::NotFound));
                }
                let id = s.next_file_id;
                s.next_file_id += 1;
                s.files.insert(id, SimFile::default());
                s.names.insert(path.to_path_buf(), id);
                s.pending_names.push(NameOp::Link(path.to_path_buf(), id));
                id
            }
            (_, Some(id)) => id,
            (_, None) => return Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        let writable = mode != OpenMode::ReadOnly;
        Ok(SimFileHandle {
            state: self.state.clone(),
            id,
            writable,
        })
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.op()?;
        for dir in path.ancestors() {
            if !dir.as_os_str().is_empty() {
                s.dirs.insert(dir.to_path_buf(), ());
            }
        }
        Ok(())
    }

    async fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut s = self.state.borrow_mut();
        s.op()?;
        if !s.dirs.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let files = s.names.keys().filter(|p| p.parent() == Some(path));
        let dirs = s.dirs.keys().filter(|p| p.parent() == Some(path));
        let mut names: Vec<String> = files
            .chain(dirs)
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn dir_exists(&self, path: &Path) -> io::Result<bool> {
        let mut s = self.state.borrow_mut();
        s.op()?;
        Ok(s.dirs.contains_key(path))
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.op()?;
        if s.names.remove(path).is_none() {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        s.pending_names.push(NameOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    async fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.op()?;
        let busy = s
            .names
            .keys()
            .chain(s.dirs.keys())
            .any(|p| p.parent() == Some(path));
        if busy {
            return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY));
        }
        s.dirs.remove(path);
        Ok(())
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.op()?;
        let id = s
            .names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        s.names.insert(to.to_path_buf(), id);
        s.pending_names
            .push(NameOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    async fn sync_dir(&self, _path: &Path) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.op()?;
        s.durable_names = s.names.clone();
        s.pending_names.clear();
        Ok(())
    }

    fn now_ms(&self) -> i64 {
        self.state.borrow().now_ms
    }

    fn spawn_background(&self, work: impl Future<Output = ()> + 'static) {
        // Same task queue as the caller: FIFO order keeps the simulation deterministic.
        glommio::spawn_local(work).detach();
    }

    fn random_u32(&self) -> io::Result<u32> {
        Ok(self.state.borrow_mut().next_u64() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(byte: u8) -> Rc<SimBuffer> {
        Rc::new(SimBuffer(vec![byte; 4096]))
    }

    #[test]
    fn writes_pending_at_a_failed_fdatasync_never_become_durable() {
        let sim = SimStorage::new(SimConfig::default());
        let path = Path::new("/d/f");
        futures_lite::future::block_on(async {
            sim.create_dir_all(Path::new("/d")).await.unwrap();
            let f = sim.open(path, OpenMode::CreateTruncate).await.unwrap();
            sim.sync_dir(Path::new("/d")).await.unwrap();
            f.write_at(page(1), 0).await.unwrap();
            f.fdatasync().await.unwrap();
            f.write_at(page(2), 4096).await.unwrap();
            sim.fail_fsync_in(1);
            assert!(f.fdatasync().await.is_err());
            f.write_at(page(3), 8192).await.unwrap();
            f.fdatasync().await.unwrap();
        });
        let seen = sim.file_contents(path).unwrap();
        assert_eq!(
            seen[4096], 2,
            "reads still see the lost write before a crash"
        );
        sim.crash();
        let kept = sim.file_contents(path).unwrap();
        assert_eq!(kept.len(), 3 * 4096);
        assert!(kept[..4096].iter().all(|b| *b == 1));
        assert!(
            kept[4096..8192].iter().all(|b| *b == 0),
            "lost at the failed sync"
        );
        assert!(
            kept[8192..].iter().all(|b| *b == 3),
            "durable after the later sync"
        );
    }
}
