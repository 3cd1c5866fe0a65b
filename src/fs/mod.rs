#![forbid(unsafe_code)]
//! The overlay core: merged lookup, attributes, listings, reads and xattrs over a stack of
//! layers, in plain Rust. It never imports fuser; the FUSE adapter (`crate::fuse`) and the
//! unit tests drive it alike. Every method returns `Result<_, Errno>`.

pub mod attr;
pub mod ident;
pub mod layer;
pub mod marker;
pub mod merge;
pub mod node;
pub mod resolve;
#[cfg(test)]
mod tests;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;

pub use attr::Attr;
pub use layer::Layer;
pub use merge::DirEntry;

use crate::sys::{Errno, FileKind, FsStat, OpenedFile, Stat};
use ident::{Inos, ROOT_ID};
use node::{ChainDir, Node, NodeTable};

/// An open merged directory: the listing is snapshotted when reading starts at offset 0, so
/// offsets stay valid however small the reader's batches are.
#[derive(Debug)]
struct DirHandle {
    node: Arc<Node>,
    listing: Mutex<Option<Arc<Vec<DirEntry>>>>,
}

/// A mounted overlay's state.
#[derive(Debug)]
pub struct Overlay {
    layers: Vec<Layer>,
    inos: Inos,
    nodes: NodeTable,
    files: DashMap<u64, Arc<OpenedFile>>,
    dirs: DashMap<u64, Arc<DirHandle>>,
    next_handle: AtomicU64,
    name_max: usize,
}

impl Overlay {
    /// An overlay of `layers`, topmost first (read-only: there is no upper layer yet).
    pub fn new(layers: Vec<Layer>) -> Result<Overlay, Errno> {
        if layers.is_empty() {
            return Err(Errno::EINVAL);
        }
        let mut chain = Vec::with_capacity(layers.len());
        for layer in &layers {
            // Opaque marks on a layer root are ignored, as by the kernel: the root always
            // merges every layer.
            let marks = Layer::marks(&layer.root)?;
            chain.push(ChainDir {
                layer: layer.index,
                xwhiteouts: marks.xwhiteouts,
            });
        }
        let name_max = layers[0].root.statfs()?.namemax as usize;
        let inos = Inos::new(layers.iter().map(|l| l.dev));
        Ok(Overlay {
            layers,
            inos,
            nodes: NodeTable::new(Node::root(chain)),
            files: DashMap::new(),
            dirs: DashMap::new(),
            next_handle: AtomicU64::new(1),
            name_max,
        })
    }

    /// The layers, topmost first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Number of nodes the kernel currently holds (the root included).
    pub fn live_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Looks `name` up in directory `parent`, counting one kernel reference to the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        if name.len() > self.name_max {
            return Err(Errno::ENAMETOOLONG);
        }
        let dir = self.nodes.get(parent)?;
        if dir.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        let path = dir.path();
        let resolved = resolve::resolve_child(&self.layers, &path, &dir.chain(), name)?
            .ok_or(Errno::ENOENT)?;
        let id = self.inos.id(resolved.origin.0, resolved.origin.1);
        let merged_dir = resolved.kind == FileKind::Directory && resolved.chain.len() > 1;
        let node = self
            .nodes
            .remember(id, resolved.kind, resolved.chain, &dir, name);
        Ok(Attr::new(node.id, node.kind, &resolved.top, merged_dir))
    }

    /// Drops `count` kernel references to `ino`.
    pub fn forget(&self, ino: u64, count: u64) {
        self.nodes.forget(ino, count);
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        let node = self.nodes.get(ino)?;
        let st = self.stat_node(&node)?;
        let merged_dir = node.kind == FileKind::Directory && node.chain().len() > 1;
        Ok(Attr::new(node.id, node.kind, &st, merged_dir))
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let node = self.nodes.get(ino)?;
        if node.kind != FileKind::Symlink {
            return Err(Errno::EINVAL);
        }
        let (parent, name) = node.parent_and_name();
        self.layers[node.top_layer()]
            .dir(&parent.path())?
            .readlink_child(&name)
    }

    /// Opens regular file `ino` with open(2) `flags`; returns a handle for [`Overlay::read`].
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64, Errno> {
        let node = self.nodes.get(ino)?;
        match node.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(Errno::EROFS);
        }
        let (parent, name) = node.parent_and_name();
        let file = self.layers[node.top_layer()]
            .dir(&parent.path())?
            .open_file(&name, libc::O_RDONLY)?;
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.files.insert(fh, Arc::new(file));
        Ok(fh)
    }

    /// Reads up to `size` bytes at `offset` from open file `fh` (short only at end of file).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let file = self.files.get(&fh).map(|f| f.clone()).ok_or(Errno::EBADF)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let at = offset.checked_add(done as u64).ok_or(Errno::EINVAL)?;
            match file.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Closes open file `fh`.
    pub fn release(&self, fh: u64) {
        self.files.remove(&fh);
    }

    /// Opens directory `ino` for listing.
    pub fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        let node = self.nodes.get(ino)?;
        if node.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.dirs.insert(
            fh,
            Arc::new(DirHandle {
                node,
                listing: Mutex::new(None),
            }),
        );
        Ok(fh)
    }

    /// Feeds `emit(entry, next_offset)` the entries of open directory `fh` from `offset` on,
    /// `.` and `..` first, until `emit` returns true (its buffer is full). Offset 0 takes a
    /// fresh snapshot (a rewind sees changes); other offsets index the current one.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut emit: impl FnMut(&DirEntry, u64) -> bool,
    ) -> Result<(), Errno> {
        let handle = self.dirs.get(&fh).map(|h| h.clone()).ok_or(Errno::EBADF)?;
        let listing = {
            let mut slot = handle.listing.lock();
            match slot.as_ref() {
                Some(l) if offset != 0 => l.clone(),
                _ => {
                    let l = Arc::new(self.snapshot(&handle.node)?);
                    *slot = Some(l.clone());
                    l
                }
            }
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(listing.len());
        for (i, entry) in listing.iter().enumerate().skip(start) {
            if emit(entry, i as u64 + 1) {
                break;
            }
        }
        Ok(())
    }

    fn snapshot(&self, dir: &Arc<Node>) -> Result<Vec<DirEntry>, Errno> {
        let entries = merge::list(&self.layers, &self.inos, &dir.path(), &dir.chain())?;
        let (parent, _) = dir.parent_and_name();
        let mut out = Vec::with_capacity(entries.len() + 2);
        out.push(DirEntry {
            name: ".".into(),
            ino: dir.id,
            kind: FileKind::Directory,
        });
        out.push(DirEntry {
            name: "..".into(),
            ino: parent.id,
            kind: FileKind::Directory,
        });
        out.extend(entries);
        Ok(out)
    }

    /// Closes open directory `fh`.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(&fh);
    }

    /// The value of xattr `name` of `ino`; the overlay's own xattrs do not exist here.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, Errno> {
        if marker::is_private_xattr(name.as_bytes()) {
            return Err(Errno::ENODATA);
        }
        let node = self.nodes.get(ino)?;
        let layer = &self.layers[node.top_layer()];
        if node.kind == FileKind::Directory {
            return layer.dir(&node.path())?.xattr_get(name);
        }
        let (parent, child) = node.parent_and_name();
        layer.dir(&parent.path())?.child_xattr_get(&child, name)
    }

    /// The NUL-separated xattr names of `ino`, the overlay's own left out.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let node = self.nodes.get(ino)?;
        let layer = &self.layers[node.top_layer()];
        let list = if node.kind == FileKind::Directory {
            layer.dir(&node.path())?.xattr_list()?
        } else {
            let (parent, child) = node.parent_and_name();
            layer.dir(&parent.path())?.child_xattr_list(&child)?
        };
        Ok(marker::visible_xattr_list(&list))
    }

    /// Usage of the filesystem writes would go to (the top layer's).
    pub fn statfs(&self) -> Result<FsStat, Errno> {
        self.layers[0].root.statfs()
    }

    /// The error for every operation that would change the merged tree: `EROFS`, as this
    /// overlay has no upper layer.
    pub fn refuse_change(&self) -> Errno {
        Errno::EROFS
    }

    /// access(2) on `ino`: the kernel checks permissions (`default_permissions`); this
    /// answers existence and that nothing is writable.
    pub fn access(&self, ino: u64, mask: i32) -> Result<(), Errno> {
        self.nodes.get(ino)?;
        if mask & libc::W_OK != 0 {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    fn stat_node(&self, node: &Arc<Node>) -> Result<Stat, Errno> {
        let layer = &self.layers[node.top_layer()];
        if node.id == ROOT_ID {
            return layer.root.stat();
        }
        let (parent, name) = node.parent_and_name();
        layer.dir(&parent.path())?.stat_child(&name)
    }
}
