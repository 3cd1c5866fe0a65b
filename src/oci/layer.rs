//! An upper layer as an OCI layer tarball: the changes [`crate::fs::diff::changes`] finds,
//! each written as the image format says (changed and added objects whole, deletions as
//! `.wh.NAME`, directories made anew as the directory and its `.wh..wh..opq`).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::tar::{Header, Kind, Writer};
use crate::fs::diff::{changes, ChangeKind, DirRule};
use crate::fs::owner_xattr::{self, Owner};
use crate::fs::{marker, Layer};
use crate::sys::{Dir, Errno, FileKind, Stat};

/// What went into a layer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Entries written, whiteouts and opaque markers included.
    pub entries: usize,
    /// Sockets left out: an archive cannot hold them.
    pub sockets: usize,
}

/// Why a layer could not be written.
#[derive(Debug)]
pub enum LayerError {
    /// Reading the layers failed at `path` (`""`: listing the changes).
    Read(String, Errno),
    /// Writing the archive failed.
    Write(io::Error),
}

impl From<io::Error> for LayerError {
    fn from(e: io::Error) -> LayerError {
        LayerError::Write(e)
    }
}

/// Writes the changes `upper` makes to `lowers` to `out` as an uncompressed layer tarball,
/// entries in path order, so the same layers always give the same bytes.
pub fn write_layer(
    upper: &Layer,
    lowers: &[Layer],
    out: impl Write,
) -> Result<Written, LayerError> {
    let found =
        changes(upper, lowers, DirRule::Exact).map_err(|e| LayerError::Read(String::new(), e))?;
    let mut w = Writer::new(out);
    let mut done = Written::default();
    // Hard links within the layer: (dev, ino) of a file with links → the first path written.
    let mut first_path: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    // Directories written: every entry's parents go first, so the layer unpacks to the same
    // directories even where nothing else of them changed.
    let mut dirs_written: HashSet<PathBuf> = HashSet::new();
    for change in &found {
        let rel = change.path.strip_prefix("/").unwrap_or(&change.path);
        let read_err = |e| LayerError::Read(rel.display().to_string(), e);
        let (parent, name) = split(rel);
        let missing: Vec<&Path> = parent
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty() && !dirs_written.contains(*a))
            .collect();
        for dir_rel in missing.into_iter().rev() {
            let (p, n) = split(dir_rel);
            let pdir = upper.root.open_beneath(p).map_err(read_err)?;
            let st = pdir.stat_child(n).map_err(read_err)?;
            if let Some(h) = header(&pdir, n, dir_rel, &st).map_err(read_err)? {
                w.append(&h, None).map_err(LayerError::Write)?;
                done.entries += 1;
            }
            dirs_written.insert(dir_rel.to_owned());
        }
        if change.kind != ChangeKind::Deleted {
            dirs_written.insert(rel.to_owned());
        }
        match change.kind {
            ChangeKind::Deleted => {
                let mut wh = parent_prefix(parent);
                wh.extend_from_slice(marker::WHITEOUT_PREFIX);
                wh.extend_from_slice(name.as_bytes());
                w.append(&marker_header(wh), None)
                    .map_err(LayerError::Write)?;
                done.entries += 1;
            }
            ChangeKind::Added | ChangeKind::Changed | ChangeKind::Remade => {
                let dir = upper.root.open_beneath(parent).map_err(read_err)?;
                let st = dir.stat_child(name).map_err(read_err)?;
                let Some(mut h) = header(&dir, name, rel, &st).map_err(read_err)? else {
                    done.sockets += 1;
                    continue;
                };
                if let Kind::File(_) = h.kind {
                    if st.nlink > 1 {
                        match first_path.get(&(st.dev, st.ino)) {
                            Some(first) => {
                                h.kind = Kind::HardLink(first.clone());
                                h.xattrs.clear();
                            }
                            None => {
                                first_path.insert((st.dev, st.ino), h.path.clone());
                            }
                        }
                    }
                }
                match h.kind {
                    Kind::File(_) => {
                        let mut f = dir.open_file(name, libc::O_RDONLY).map_err(read_err)?;
                        w.append(&h, Some(&mut f)).map_err(LayerError::Write)?;
                    }
                    _ => w.append(&h, None).map_err(LayerError::Write)?,
                }
                done.entries += 1;
                if change.kind == ChangeKind::Remade {
                    let mut opq = h.path.clone();
                    opq.push(b'/');
                    opq.extend_from_slice(marker::OPAQUE_FILE);
                    w.append(&marker_header(opq), None)
                        .map_err(LayerError::Write)?;
                    done.entries += 1;
                }
            }
        }
    }
    w.finish().map_err(LayerError::Write)?;
    Ok(done)
}

/// `rel` as its parent and its last name (`rel` is never empty: the root is no change).
fn split(rel: &Path) -> (&Path, &OsStr) {
    (
        rel.parent().unwrap_or(Path::new("")),
        rel.file_name().unwrap_or_default(),
    )
}

/// `parent` with a `/` after it, or nothing for the root.
fn parent_prefix(parent: &Path) -> Vec<u8> {
    let mut p = parent.as_os_str().as_bytes().to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p
}

/// The header of a whiteout or opaque marker: an empty file, root's, of no time.
fn marker_header(path: Vec<u8>) -> Header {
    Header {
        path,
        kind: Kind::File(0),
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: Vec::new(),
    }
}

/// The header of upper object `name` of `dir` (at `rel`, status `st`): its owner and mode
/// (from an owner xattr where it has one), mtime and the xattrs that are not the overlay's
/// own, sorted; `None` for a socket.
fn header(dir: &Dir, name: &OsStr, rel: &Path, st: &Stat) -> Result<Option<Header>, Errno> {
    let mut st = *st;
    let mut xattrs = Vec::new();
    let mut all = dir.xattrs(Some(name), |x| !marker::is_private_xattr(x))?;
    all.sort();
    for (x, value) in all {
        if owner_xattr::is_owner_xattr(&x) {
            if let Some(owner) = Owner::parse(&value) {
                owner.apply(&mut st);
            }
            continue;
        }
        if x.contains(&b'=') {
            // A PAX record splits at the first `=`: no reader would get the name back.
            log::warn!(
                "xattr '{}' of '/{}' left out: a name with '=' cannot be archived",
                String::from_utf8_lossy(&x),
                rel.display()
            );
        } else {
            xattrs.push((x, value));
        }
    }
    let (major, minor) = (libc::major(st.rdev), libc::minor(st.rdev));
    let kind = match st.kind() {
        Some(FileKind::Regular) => Kind::File(st.size),
        Some(FileKind::Directory) => Kind::Dir,
        Some(FileKind::Symlink) => Kind::Symlink(dir.readlink_child(name)?),
        Some(FileKind::Fifo) => Kind::Fifo,
        Some(FileKind::CharDevice) => Kind::Char(major, minor),
        Some(FileKind::BlockDevice) => Kind::Block(major, minor),
        Some(FileKind::Socket) | None => return Ok(None),
    };
    // Seconds rounded down, nanoseconds up from there (also before the epoch).
    let (mtime, mtime_nsec) = match st.mtime.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-(d.as_secs() as i64), 0),
                n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
            }
        }
    };
    Ok(Some(Header {
        path: rel.as_os_str().as_bytes().to_vec(),
        kind,
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        mtime,
        mtime_nsec,
        xattrs,
    }))
}
