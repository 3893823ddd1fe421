//! Reading the files the watcher follows: only regular files are opened (a
//! FIFO or a device never blocks a reader), each read comes with the
//! fingerprint of the file it came from, and a file a writer may be at is
//! read until two reads agree.

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{MAX_READS, SETTLE};

/// What identifies a version of a file without reading it: its device,
/// inode, size, modification and change times (links followed). `None`:
/// no file there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Option<(u64, u64, u64, Option<SystemTime>, i64, i64)>);

impl Fingerprint {
    /// The file at `path` now.
    pub fn of(path: &Path) -> Fingerprint {
        std::fs::metadata(path).map_or(Fingerprint(None), |m| Fingerprint::from_metadata(&m))
    }

    /// From metadata already read (links followed).
    pub fn from_metadata(m: &std::fs::Metadata) -> Fingerprint {
        use std::os::unix::fs::MetadataExt;
        Fingerprint(Some((
            m.dev(),
            m.ino(),
            m.len(),
            m.modified().ok(),
            m.ctime(),
            m.ctime_nsec(),
        )))
    }
}

/// Why a path that should be a file is not read: what it is instead.
pub fn not_a_file(path: &Path) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let link = std::fs::symlink_metadata(path).ok()?;
    let followed = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if link.file_type().is_symlink() => {
            return Some(if e.raw_os_error() == Some(libc::ELOOP) {
                "a symlink loop".to_owned()
            } else {
                "a dangling symlink".to_owned()
            });
        }
        Err(_) => return None,
    };
    let kind = followed.file_type();
    let what = if kind.is_file() {
        return None;
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Some(what.to_owned())
}

/// Opens and reads `path` only if it is a regular file (links followed), so
/// a FIFO or a device never blocks the reader. Returns the bytes and the
/// fingerprint of the file they were read from (taken before the read, or
/// after it when the file changed meanwhile).
pub fn read_file(path: &Path) -> io::Result<(Vec<u8>, Fingerprint)> {
    use std::io::Read;
    if let Some(what) = not_a_file(path) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file: {what}"),
        ));
    }
    let mut file = std::fs::File::open(path)?;
    let print = Fingerprint::from_metadata(&file.metadata()?);
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    // Written to while it was read: the later fingerprint (changed just
    // now, so a second read must agree).
    let after = Fingerprint::from_metadata(&file.metadata()?);
    Ok((bytes, if after == print { print } else { after }))
}

/// Reads `path` until two reads agree, or until a read comes from a file
/// renamed into place since the read before it: a rename-over (editors,
/// `corsd entries`, Kubernetes) only ever shows a whole file, so while
/// writers keep renaming new versions in, each is taken as it comes. Only a
/// file changing in place must settle. Blocking: run off the async workers.
pub fn read_stable(path: &Path) -> io::Result<(Vec<u8>, Fingerprint)> {
    let first = read_file(path)?;
    settle_read(path, first)
}

/// [`read_stable`] after a first read already made: reads again after
/// [`SETTLE`] until two agree.
pub fn settle_read(path: &Path, first: (Vec<u8>, Fingerprint)) -> io::Result<(Vec<u8>, Fingerprint)> {
    let (mut previous, mut print) = first;
    for _ in 0..MAX_READS {
        std::thread::sleep(SETTLE);
        let (bytes, now) = read_file(path)?;
        if bytes == previous || same_inode(&now, &print).is_some_and(|same| !same) {
            return Ok((bytes, now));
        }
        (previous, print) = (bytes, now);
    }
    Err(io::Error::other("the file kept changing while it was read"))
}

/// Whether the file a read came from had not changed for [`SETTLE`] when
/// `print` was taken (its change time is older): no writer is at it, so one
/// read is whole and a second is not needed.
pub fn settled_before(print: &Fingerprint, read_at: SystemTime) -> bool {
    let Some((.., ctime, ctime_nsec)) = print.0 else {
        return false;
    };
    let (Ok(secs), Ok(nanos)) = (u64::try_from(ctime), u32::try_from(ctime_nsec)) else {
        return false;
    };
    let changed = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
    read_at.duration_since(changed).is_ok_and(|age| age >= SETTLE)
}

/// A second read of a file already read once, `SETTLE` later: the bytes if
/// they agree with `first` (or come from a file renamed in since), else
/// `None` (read again).
pub fn agrees(path: &Path, first: &[u8], print: &Fingerprint) -> io::Result<Option<(Vec<u8>, Fingerprint)>> {
    let (bytes, now) = read_file(path)?;
    if bytes == first || same_inode(&now, print).is_some_and(|same| !same) {
        Ok(Some((bytes, now)))
    } else {
        Ok(None)
    }
}

fn same_inode(a: &Fingerprint, b: &Fingerprint) -> Option<bool> {
    match (&a.0, &b.0) {
        (Some(a), Some(b)) => Some(a.0 == b.0 && a.1 == b.1),
        _ => None,
    }
}
