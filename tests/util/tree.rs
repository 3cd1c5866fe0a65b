//! Snapshots of merged trees and their comparison: names, types, modes, owners, sizes,
//! contents, symlink targets, xattrs, link counts, device numbers, mtimes, hard-link
//! classes, and that every `d_ino`/`d_type` agrees with `lstat`.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What is compared of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size of non-directories (directory sizes are the layer filesystem's business).
    pub size: Option<u64>,
    pub nlink: u64,
    pub rdev: u64,
    pub mtime: (i64, i64),
    pub content: Option<Vec<u8>>,
    pub target: Option<PathBuf>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// `d_ino == st_ino` and `d_type` matches the `lstat` type.
    pub dirent_agrees: bool,
}

/// A whole tree.
#[derive(Debug)]
pub struct Tree {
    pub entries: BTreeMap<PathBuf, Entry>,
    /// Each path mapped to the first path (in order) with the same inode number.
    pub same_inode_as: BTreeMap<PathBuf, PathBuf>,
    /// Raw inode numbers, for checks within one tree.
    pub inos: BTreeMap<PathBuf, u64>,
}

fn kind(ft: std::fs::FileType) -> char {
    if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_file() {
        'f'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else if ft.is_char_device() {
        'c'
    } else {
        'b'
    }
}

/// The xattrs of `path` (not following a symlink).
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut list = vec![0u8; 65536];
    // SAFETY: test helper; buffer writable for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in list[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        // SAFETY: as above.
        let m = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        value.truncate(m.max(0) as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), value);
    }
    out
}

/// Walks the tree below `root` (the root itself is not an entry). Every listed name must
/// `lstat`, except where `kernel_quirk` is set: the kernel overlay passes the listing of a
/// directory that only one layer holds straight through, whiteouts included, while its lookup
/// says ENOENT for them. Those names are left out of the kernel's snapshot (ours never lists
/// a whiteout; see docs/semantics.md).
pub fn snapshot_with(root: &Path, kernel_quirk: bool) -> Tree {
    let mut entries = BTreeMap::new();
    let mut inos = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for de in std::fs::read_dir(&dir).unwrap() {
            let de = de.unwrap();
            let path = de.path();
            let rel = path.strip_prefix(root).unwrap().to_owned();
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if kernel_quirk && e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => panic!("{}: listed but lstat fails: {e}", path.display()),
            };
            let k = kind(meta.file_type());
            let dtype = kind(de.file_type().unwrap());
            if k == 'd' {
                todo.push(path.clone());
            }
            inos.insert(rel.clone(), meta.ino());
            entries.insert(
                rel,
                Entry {
                    kind: k,
                    mode: meta.mode(),
                    uid: meta.uid(),
                    gid: meta.gid(),
                    size: (k != 'd').then_some(meta.size()),
                    nlink: meta.nlink(),
                    rdev: meta.rdev(),
                    mtime: settled_time(meta.mtime(), meta.mtime_nsec()),
                    content: (k == 'f').then(|| std::fs::read(&path).unwrap()),
                    target: (k == 'l').then(|| std::fs::read_link(&path).unwrap()),
                    xattrs: xattrs(&path),
                    dirent_agrees: de.ino() == meta.ino() && dtype == k,
                },
            );
        }
    }
    let mut first: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut same_inode_as = BTreeMap::new();
    for (path, ino) in &inos {
        let canon = first.entry(*ino).or_insert_with(|| path.clone()).clone();
        same_inode_as.insert(path.clone(), canon);
    }
    Tree {
        entries,
        same_inode_as,
        inos,
    }
}

/// Fixture times are pinned years in the past; a time set by a test's own operations is
/// "now" and differs between two mounts by the moment each ran, so it compares as `(0, 0)`.
fn settled_time(sec: i64, nsec: i64) -> (i64, i64) {
    if sec > 1_700_000_000 {
        (0, 0)
    } else {
        (sec, nsec)
    }
}

/// Walks our tree: every listed name must `lstat`.
pub fn snapshot(root: &Path) -> Tree {
    snapshot_with(root, false)
}

/// Panics with every difference between `ours` and `kernel`.
pub fn assert_equal(ours: &Tree, kernel: &Tree) {
    let mut diffs = Vec::new();
    for (path, k) in &kernel.entries {
        match ours.entries.get(path) {
            None => diffs.push(format!(
                "{}: missing in ours (kernel: {k:?})",
                path.display()
            )),
            Some(o) if o != k => diffs.push(format!(
                "{}:\n   ours   {o:?}\n   kernel {k:?}",
                path.display()
            )),
            Some(_) => {}
        }
    }
    for path in ours.entries.keys() {
        if !kernel.entries.contains_key(path) {
            diffs.push(format!(
                "{}: only in ours {:?}",
                path.display(),
                ours.entries[path]
            ));
        }
    }
    if ours.same_inode_as != kernel.same_inode_as {
        for (path, o) in &ours.same_inode_as {
            if kernel.same_inode_as.get(path) != Some(o) {
                diffs.push(format!(
                    "{}: shares its inode with {} in ours, with {:?} in the kernel's",
                    path.display(),
                    o.display(),
                    kernel.same_inode_as.get(path)
                ));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "merged trees differ:\n{}",
        diffs.join("\n")
    );
    assert!(!kernel.entries.is_empty() || ours.entries.is_empty());
}

/// Sets every entry's atime and mtime below `root` (not following symlinks) to a value
/// derived from its relative path, so two separately written copies compare equal.
pub fn pin_times(root: &Path) {
    let mut todo = vec![root.to_owned()];
    let mut all = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for de in std::fs::read_dir(&dir).unwrap() {
            let de = de.unwrap();
            if de.file_type().unwrap().is_dir() {
                todo.push(de.path());
            }
            all.push(de.path());
        }
    }
    for path in all {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let seed = rel
            .iter()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(*b as u64));
        let t = libc::timespec {
            tv_sec: 1_600_000_000 + (seed % 1_000_000) as i64,
            tv_nsec: (seed % 999_999_999) as i64,
        };
        let times = [t, t];
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: test helper; NUL-terminated path and two timespecs.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(r, 0, "utimensat {}", path.display());
    }
}
