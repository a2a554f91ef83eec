//! Small metadata files (topic catalog, consumer-group offsets), written
//! crash-safely: write a temp file, fsync it, rename it over the old one,
//! fsync the directory.
//!
//! These calls block; shards run them through `spawn_blocking` so an executor
//! never waits on the disk. The write-ahead log itself never comes here.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest metadata file read back; anything bigger is corruption.
pub const META_FILE_BYTES_MAX: u64 = 16 << 20;
/// Most metadata files one directory may hold.
pub const META_FILES_PER_DIR_MAX: usize = 1 << 20;

const TEMP_SUFFIX: &str = ".tmp";

/// The temp file a write of `name` goes through: `name` with its extension
/// replaced by `tmp`. No longer than `name` when its extension has at least 3
/// characters (`.toml` here), so every name that fits the file system's
/// limit (255 bytes; names are up to 249 characters plus `.toml`) has a temp
/// name that fits too; one temp name per final name in a directory whose files
/// share an extension; never a name [`read_all`] takes for data.
fn temp_name(name: &str) -> String {
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    format!("{stem}{TEMP_SUFFIX}")
}

/// A metadata file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// An I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation ("write", "fsync", "rename", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A metadata file is unreadable or inconsistent.
    #[error("corrupt metadata file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MetaError + 'a {
    move |source| MetaError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Replaces `dir/name` with `bytes` atomically and durably.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), MetaError> {
    assert!(!name.contains('/'), "metadata file names are plain names");
    fs::create_dir_all(dir).map_err(io_error("create_dir_all", dir))?;
    let final_path = dir.join(name);
    assert!(
        !name.ends_with(TEMP_SUFFIX),
        "temp names are never final names"
    );
    let temp_path = dir.join(temp_name(name));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp_path)
        .map_err(io_error("create", &temp_path))?;
    file.write_all(bytes)
        .map_err(io_error("write", &temp_path))?;
    file.sync_all().map_err(io_error("fsync", &temp_path))?;
    drop(file);
    fs::rename(&temp_path, &final_path).map_err(io_error("rename", &final_path))?;
    sync_dir(dir)
}

/// Removes `dir/name` durably; a missing file is not an error.
pub fn remove_durable(dir: &Path, name: &str) -> Result<(), MetaError> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(MetaError::Io {
            op: "remove",
            path,
            source,
        }),
    }
}

/// Fsyncs a directory so renames and removals in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), MetaError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("fsync directory", dir))
}

/// Reads every `*.{extension}` file of `dir` (none if `dir` is missing),
/// sorted by name. Leftover temp files from an interrupted write are removed.
pub fn read_all(dir: &Path, extension: &str) -> Result<Vec<(String, Vec<u8>)>, MetaError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io_error("read_dir", dir)(source)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("read_dir", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.ends_with(TEMP_SUFFIX) {
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
            continue;
        }
        if path.extension().is_none_or(|ext| ext != extension) {
            continue;
        }
        if files.len() == META_FILES_PER_DIR_MAX {
            return Err(MetaError::Corrupt {
                path: dir.to_owned(),
                reason: format!("more than {META_FILES_PER_DIR_MAX} files"),
            });
        }
        let size = entry.metadata().map_err(io_error("stat", &path))?.len();
        if size > META_FILE_BYTES_MAX {
            return Err(MetaError::Corrupt {
                path,
                reason: format!("{size} bytes, more than {META_FILE_BYTES_MAX}"),
            });
        }
        let bytes = fs::read(&path).map_err(io_error("read", &path))?;
        files.push((name, bytes));
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_names_write_through_a_temp_name_that_fits() {
        let dir = tempfile::tempdir().expect("temp dir");
        // 249 characters (the longest topic or group name) plus ".toml": 254 bytes.
        let longest = format!("{}.toml", "n".repeat(249));
        write_atomic(dir.path(), &longest, b"kept").expect("write");
        assert_eq!(temp_name(&longest).len(), 253);
        assert_eq!(temp_name("a.b.toml"), "a.b.tmp");
        let files = read_all(dir.path(), "toml").expect("read");
        assert_eq!(files, vec![(longest, b"kept".to_vec())]);
    }

    #[test]
    fn write_replace_read_remove() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sub = dir.path().join("a");
        write_atomic(&sub, "x.toml", b"one").expect("write");
        write_atomic(&sub, "x.toml", b"two").expect("overwrite");
        fs::write(sub.join("y.tmp"), b"torn").expect("leftover");
        fs::write(sub.join("w.toml.tmp"), b"older leftover").expect("leftover");
        fs::write(sub.join("z.txt"), b"other").expect("other");
        let files = read_all(&sub, "toml").expect("read");
        assert_eq!(files, vec![("x.toml".to_owned(), b"two".to_vec())]);
        assert!(
            !sub.join("y.tmp").exists() && !sub.join("w.toml.tmp").exists(),
            "temp leftovers are cleaned"
        );
        remove_durable(&sub, "x.toml").expect("remove");
        remove_durable(&sub, "x.toml").expect("remove twice");
        assert!(read_all(&sub, "toml").expect("read").is_empty());
        assert!(
            read_all(&dir.path().join("missing"), "toml")
                .expect("read")
                .is_empty()
        );
    }
}
