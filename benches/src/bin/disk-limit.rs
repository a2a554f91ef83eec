//! `disk-limit`: the physical floor of the data dir's device, measured with
//! raw io_uring (no server, no runtime): sequential O_DIRECT write bandwidth
//! (`--block-kib` blocks, `--depth` in flight, then one fdatasync) and the
//! latency of a 4 KiB O_DIRECT write + fdatasync (linked SQEs, one at a
//! time) into already-written blocks, as a log that pre-zeroes its segments
//! does. Prints a summary on stderr and one JSON line (`{"disk": ...}`).
//!
//! Usage: `disk-limit --dir DIR [--seq-mib 256] [--block-kib 1024] [--depth 8]
//! [--sync-ops 2000]`. The scratch file is removed at the end.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Instant;

use hdrhistogram::Histogram;
use io_uring::{IoUring, opcode, squeue, types};

/// Alignment O_DIRECT needs (logical block size of every device we run on).
const DIRECT_ALIGN_BYTES: usize = 4096;
/// Size of one latency-test write.
const SYNC_WRITE_BYTES: usize = 4096;
/// Largest block (one DMA request must stay under max_sectors_kb = 4 MiB).
const BLOCK_KIB_MAX: usize = 4096;
/// Most writes in flight.
const DEPTH_MAX: usize = 64;
/// Largest sequential test.
const SEQ_MIB_MAX: usize = 16 * 1024;
/// Most latency samples.
const SYNC_OPS_MAX: usize = 1_000_000;

struct Args {
    dir: PathBuf,
    seq_mib: usize,
    block_kib: usize,
    depth: usize,
    sync_ops: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: PathBuf::from("."),
        seq_mib: 256,
        block_kib: 1024,
        depth: 8,
        sync_ops: 2000,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value),
            "--seq-mib" => args.seq_mib = number(&value)?.clamp(1, SEQ_MIB_MAX),
            "--block-kib" => args.block_kib = number(&value)?.clamp(4, BLOCK_KIB_MAX) / 4 * 4,
            "--depth" => args.depth = number(&value)?.clamp(1, DEPTH_MAX),
            "--sync-ops" => args.sync_ops = number(&value)?.clamp(1, SYNC_OPS_MAX),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

/// A zeroed buffer aligned for O_DIRECT.
struct AlignedBuffer {
    pointer: *mut u8,
    layout: Layout,
}

impl AlignedBuffer {
    fn new(bytes: usize) -> Result<AlignedBuffer, String> {
        let layout =
            Layout::from_size_align(bytes, DIRECT_ALIGN_BYTES).map_err(|e| e.to_string())?;
        // SAFETY: the layout has a non-zero size (callers pass >= 4 KiB).
        let pointer = unsafe { alloc_zeroed(layout) };
        if pointer.is_null() {
            return Err("buffer allocation failed".into());
        }
        // Non-zero content so no layer can shortcut zero pages.
        // SAFETY: pointer is valid for `bytes` bytes, just allocated.
        unsafe { std::ptr::write_bytes(pointer, 0x5A, bytes) };
        Ok(AlignedBuffer { pointer, layout })
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.pointer, self.layout) };
    }
}

/// Results, in the JSON line.
#[derive(Debug, serde::Serialize)]
struct DiskReport {
    dir: String,
    seq_write_mb_per_s: f64,
    seq_bytes: u64,
    block_kib: usize,
    depth: usize,
    sync_write_bytes: usize,
    sync_ops: usize,
    sync_p50_us: u64,
    sync_p99_us: u64,
    sync_p999_us: u64,
    sync_max_us: u64,
}

fn push(ring: &mut IoUring, entry: &squeue::Entry) -> Result<(), String> {
    // SAFETY: every buffer an entry points to outlives its completion (the
    // callers wait for all completions before dropping buffers).
    unsafe { ring.submission().push(entry) }.map_err(|_| "submission queue full".to_owned())
}

/// Waits for one completion; fails on a negative result.
fn complete_one(ring: &mut IoUring) -> Result<u64, String> {
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring submit: {e}"))?;
    let cqe = ring.completion().next().ok_or("no completion")?;
    if cqe.result() < 0 {
        return Err(format!(
            "io_uring op {} failed: {}",
            cqe.user_data(),
            std::io::Error::from_raw_os_error(-cqe.result())
        ));
    }
    Ok(cqe.user_data())
}

fn sequential(ring: &mut IoUring, fd: types::Fd, args: &Args) -> Result<(f64, u64), String> {
    let block_bytes = args.block_kib * 1024;
    let blocks = (args.seq_mib * 1024 * 1024 / block_bytes).max(1);
    let buffer = AlignedBuffer::new(block_bytes)?;
    let started = Instant::now();
    let (mut submitted, mut completed, mut inflight) = (0usize, 0usize, 0usize);
    while completed < blocks {
        while inflight < args.depth && submitted < blocks {
            let offset = (submitted * block_bytes) as u64;
            let write = opcode::Write::new(fd, buffer.pointer, block_bytes as u32)
                .offset(offset)
                .build()
                .user_data(submitted as u64);
            push(ring, &write)?;
            submitted += 1;
            inflight += 1;
        }
        complete_one(ring)?;
        completed += 1;
        inflight -= 1;
    }
    let sync = opcode::Fsync::new(fd)
        .flags(types::FsyncFlags::DATASYNC)
        .build();
    push(ring, &sync)?;
    complete_one(ring)?;
    let bytes = (blocks * block_bytes) as u64;
    Ok((bytes as f64 / started.elapsed().as_secs_f64() / 1e6, bytes))
}

fn sync_latency(
    ring: &mut IoUring,
    fd: types::Fd,
    args: &Args,
    file_bytes: u64,
) -> Result<Histogram<u64>, String> {
    let buffer = AlignedBuffer::new(SYNC_WRITE_BYTES)?;
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let slots = (file_bytes / SYNC_WRITE_BYTES as u64).max(1);
    for op in 0..args.sync_ops {
        let offset = (op as u64 % slots) * SYNC_WRITE_BYTES as u64;
        let write = opcode::Write::new(fd, buffer.pointer, SYNC_WRITE_BYTES as u32)
            .offset(offset)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(1);
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(2);
        let started = Instant::now();
        push(ring, &write)?;
        push(ring, &sync)?;
        complete_one(ring)?;
        complete_one(ring)?;
        histogram.saturating_record(started.elapsed().as_micros() as u64);
    }
    Ok(histogram)
}

fn run(args: &Args) -> Result<DiskReport, String> {
    let path = args
        .dir
        .join(format!("disk-limit-{}.tmp", std::process::id()));
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| format!("open {} with O_DIRECT: {e}", path.display()))?;
    let fd = types::Fd(file.as_raw_fd());
    let mut ring = IoUring::new((args.depth * 2).next_power_of_two() as u32)
        .map_err(|e| format!("io_uring: {e}"))?;
    let result = sequential(&mut ring, fd, args).and_then(|(mb_per_s, bytes)| {
        sync_latency(&mut ring, fd, args, bytes).map(|h| (mb_per_s, bytes, h))
    });
    drop(file);
    let _ = std::fs::remove_file(&path);
    let (seq_write_mb_per_s, seq_bytes, histogram) = result?;
    Ok(DiskReport {
        dir: args.dir.display().to_string(),
        seq_write_mb_per_s,
        seq_bytes,
        block_kib: args.block_kib,
        depth: args.depth,
        sync_write_bytes: SYNC_WRITE_BYTES,
        sync_ops: args.sync_ops,
        sync_p50_us: histogram.value_at_percentile(50.0),
        sync_p99_us: histogram.value_at_percentile(99.0),
        sync_p999_us: histogram.value_at_percentile(99.9),
        sync_max_us: histogram.max(),
    })
}

fn main() {
    let report = parse_args().and_then(|args| run(&args));
    match report {
        Ok(report) => {
            eprintln!(
                "disk {}: sequential O_DIRECT write {:.0} MB/s ({} KiB x {} deep); 4 KiB write+fdatasync p50 {} us, p99 {} us, p99.9 {} us ({} ops)",
                report.dir,
                report.seq_write_mb_per_s,
                report.block_kib,
                report.depth,
                report.sync_p50_us,
                report.sync_p99_us,
                report.sync_p999_us,
                report.sync_ops
            );
            println!("{}", serde_json::json!({ "disk": report }));
        }
        Err(error) => {
            eprintln!("disk-limit: {error}");
            std::process::exit(1);
        }
    }
}
