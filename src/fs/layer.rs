//! Layers: the read-only lower directories (and, with core II, the upper), each held by the
//! root descriptor every path inside it is resolved from.

use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use lru::LruCache;
use parking_lot::Mutex;

use super::marker::{self, DirMarks, NameRole};
use super::nameset::NameSet;
use crate::sys::{Dir, Errno, RawEntry, Stat};

/// One layer of the stack.
#[derive(Debug)]
pub struct Layer {
    /// Position in the stack, 0 = top.
    pub index: usize,
    /// Where the user said it is (for messages and the demo).
    pub path: PathBuf,
    /// The root descriptor; every access inside the layer starts here.
    pub root: Dir,
    /// `st_dev` of the root.
    pub dev: u64,
    /// Open directories by path, for a layer that never changes (a lower one).
    dirs: Option<Mutex<LruCache<PathBuf, Arc<LayerDir>>>>,
    /// Names the open directories of all frozen layers may still keep.
    budget: Arc<AtomicUsize>,
}

/// How many names the kept name sets of all lower directories may hold together.
pub const NAME_BUDGET: usize = 1 << 18;

/// Directories with more entries than this are not kept as a name set.
const MAX_SCANNED: usize = 8192;

/// A directory of one layer, as lookups use it. In a frozen layer it also keeps the names it
/// holds (read once, on the first probe), so a name it does not hold costs no system call.
#[derive(Debug)]
pub struct LayerDir {
    dir: Dir,
    /// `None` in a layer that can change; inside, `None` for a directory too big to keep.
    names: Option<OnceLock<Option<NameSet>>>,
    /// The shared budget its names count against, given back when it is dropped.
    budget: Arc<AtomicUsize>,
}

impl Drop for LayerDir {
    fn drop(&mut self) {
        if let Some(Some(names)) = self.names.as_ref().and_then(|c| c.get()) {
            self.budget.fetch_add(names.len(), Ordering::Relaxed);
        }
    }
}

impl std::ops::Deref for LayerDir {
    type Target = Dir;
    fn deref(&self) -> &Dir {
        &self.dir
    }
}

impl LayerDir {
    /// `dir` of a layer that can change: every probe asks the filesystem.
    pub fn live(dir: Dir) -> LayerDir {
        LayerDir {
            dir,
            names: None,
            budget: Arc::default(),
        }
    }

    /// The `d_type` of every entry, if this directory keeps them (listed on first use).
    fn names(&self) -> Option<&NameSet> {
        let cell = self.names.as_ref()?;
        cell.get_or_init(|| self.keep(&self.dir.entries(true).ok()?))
            .as_ref()
    }

    /// Every entry of this directory, `.` and `..` included, in on-disk order. A directory
    /// of a frozen layer keeps their names from this listing if it has not yet, so the
    /// lookups that follow a listing do not list it again.
    pub fn list(&self) -> Result<Vec<RawEntry>, Errno> {
        // A frozen layer's directory is never touched; an upper one's access time is its
        // filesystem's to keep.
        let entries = self.dir.entries(self.names.is_some())?;
        if let Some(cell) = &self.names {
            cell.get_or_init(|| self.keep(&entries));
        }
        Ok(entries)
    }

    /// The name set of `entries`, if the shared budget has room for it.
    fn keep(&self, entries: &[RawEntry]) -> Option<NameSet> {
        let n = entries.len();
        if n > MAX_SCANNED {
            return None;
        }
        self.budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(n)
            })
            .ok()?;
        let set = NameSet::new(entries.iter().map(|e| (e.name.as_os_str(), e.dtype)));
        if set.is_none() {
            self.budget.fetch_add(n, Ordering::Relaxed);
        }
        set
    }

    /// [`Layer::probe`] of `name` here, answered from the name set where it can be.
    pub fn probe(&self, xwhiteouts: bool, name: &OsStr) -> Result<Probe, Errno> {
        match self.names() {
            Some(names) if names.get(name).is_none() => {
                if self.has_aufs_whiteout(name)? {
                    Ok(Probe::Whiteout)
                } else {
                    Ok(Probe::Absent)
                }
            }
            _ => Layer::probe(&self.dir, xwhiteouts, name),
        }
    }

    /// [`Layer::has_aufs_whiteout`] of `name` here, answered from the name set where it can be.
    pub fn has_aufs_whiteout(&self, name: &OsStr) -> Result<bool, Errno> {
        let Some(names) = self.names() else {
            return Layer::has_aufs_whiteout(&self.dir, name);
        };
        if name.as_bytes().starts_with(marker::WHITEOUT_PREFIX) {
            return Ok(false);
        }
        match names.get(aufs_whiteout_name(name).as_os_str()) {
            None => Ok(false),
            Some(libc::DT_REG) => Ok(true),
            Some(libc::DT_UNKNOWN) => Layer::has_aufs_whiteout(&self.dir, name),
            Some(_) => Ok(false),
        }
    }
}

/// What one layer's directory holds under one name, as lookup sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Nothing by that name in this layer: look further down.
    Absent,
    /// A whiteout: the name is deleted here and in every layer below.
    Whiteout,
    /// An object.
    Object(Stat),
}

impl Layer {
    /// Opens the layer rooted at `path` as position `index`.
    pub fn open(index: usize, path: &Path) -> Result<Layer, Errno> {
        Layer::with_root(index, path, Dir::open_root(path)?)
    }

    /// The layer rooted at `path`, opened as `root` (through a private copy of its mount,
    /// see [`crate::sys::mount`]), as position `index`.
    pub fn with_root(index: usize, path: &Path, root: Dir) -> Result<Layer, Errno> {
        let dev = root.stat()?.dev;
        Ok(Layer {
            index,
            path: path.to_owned(),
            root,
            dev,
            dirs: None,
            budget: Arc::default(),
        })
    }

    /// Declares the layer frozen for the mount's life (a lower layer): up to `capacity` of
    /// its directories stay open, so a lookup does not resolve its parent's path again.
    /// `budget` bounds the names they keep, shared with the other frozen layers.
    pub fn freeze(&mut self, capacity: usize, budget: Arc<AtomicUsize>) {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        self.dirs = Some(Mutex::new(LruCache::new(capacity)));
        self.budget = budget;
    }

    /// The directory at `rel` inside this layer.
    pub fn dir(&self, rel: &Path) -> Result<Arc<LayerDir>, Errno> {
        let Some(cache) = &self.dirs else {
            return Ok(Arc::new(LayerDir::live(self.root.open_beneath(rel)?)));
        };
        if let Some(dir) = cache.lock().get(rel) {
            return Ok(dir.clone());
        }
        // Opened outside the lock: two threads may both open it; either copy is right.
        let dir = Arc::new(LayerDir {
            dir: self.root.open_beneath(rel)?,
            names: Some(OnceLock::new()),
            budget: self.budget.clone(),
        });
        cache.lock().put(rel.to_owned(), dir.clone());
        Ok(dir)
    }

    /// The opaque/xwhiteout marks of `dir` (a directory of this layer).
    pub fn marks(dir: &Dir) -> Result<DirMarks, Errno> {
        let mut marks = DirMarks::default();
        let list = match dir.xattr_list() {
            Ok(list) => list,
            Err(Errno::ENOTSUP) => Vec::new(),
            Err(e) => return Err(e),
        };
        if marker::list_has_any(&list, &marker::OPAQUE_XATTRS) {
            for name in marker::OPAQUE_XATTRS {
                match dir.xattr_get(OsStr::new(name)) {
                    Ok(value) => marks.add_xattr_value(&value),
                    Err(Errno::ENODATA) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !marks.opaque {
            marks.opaque = is_regular(dir.stat_child(OsStr::from_bytes(marker::OPAQUE_FILE)))?;
        }
        Ok(marks)
    }

    /// Looks `name` up in `dir`, a directory of this layer whose marks allow xwhiteouts or not.
    pub fn probe(dir: &Dir, xwhiteouts: bool, name: &OsStr) -> Result<Probe, Errno> {
        match dir.stat_child(name) {
            Ok(st) if marker::is_device_whiteout(&st) => Ok(Probe::Whiteout),
            Ok(st)
                if xwhiteouts
                    && marker::may_be_xwhiteout(&st)
                    && has_whiteout_xattr(dir, name)? =>
            {
                Ok(Probe::Whiteout)
            }
            Ok(st) => match marker::name_role(name) {
                NameRole::Plain => Ok(Probe::Object(st)),
                // A marker file is not an object; a directory that merely has such a name is.
                _ if st.kind() == Some(crate::sys::FileKind::Regular) => Ok(Probe::Absent),
                _ => Ok(Probe::Object(st)),
            },
            Err(Errno::ENOENT) if Self::has_aufs_whiteout(dir, name)? => Ok(Probe::Whiteout),
            Err(Errno::ENOENT) => Ok(Probe::Absent),
            Err(e) => Err(e),
        }
    }

    /// True when `dir` holds a regular file `.wh.NAME`. A name that itself starts with
    /// `.wh.` is never whited out this way: `.wh..wh.*` names are AUFS bookkeeping, and
    /// readdir treats them so.
    pub fn has_aufs_whiteout(dir: &Dir, name: &OsStr) -> Result<bool, Errno> {
        if name.as_bytes().starts_with(marker::WHITEOUT_PREFIX) {
            return Ok(false);
        }
        is_regular(dir.stat_child(&aufs_whiteout_name(name)))
    }
}

/// `.wh.` + `name`.
pub fn aufs_whiteout_name(name: &OsStr) -> OsString {
    let mut bytes = marker::WHITEOUT_PREFIX.to_vec();
    bytes.extend_from_slice(name.as_bytes());
    OsString::from_vec(bytes)
}

/// True when the child `name` of `dir` carries a whiteout xattr.
pub fn has_whiteout_xattr(dir: &Dir, name: &OsStr) -> Result<bool, Errno> {
    match dir.child_xattr_list(name) {
        Ok(list) => Ok(marker::list_has_any(&list, &marker::WHITEOUT_XATTRS)),
        Err(Errno::ENOTSUP) | Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a stat result is a regular file; a missing (or impossible, too long) name is not.
pub(super) fn is_regular(result: Result<Stat, Errno>) -> Result<bool, Errno> {
    match result {
        Ok(st) => Ok(st.kind() == Some(crate::sys::FileKind::Regular)),
        Err(Errno::ENOENT) | Err(Errno::ENAMETOOLONG) | Err(Errno::ENOTDIR) => Ok(false),
        Err(e) => Err(e),
    }
}
