#![forbid(unsafe_code)]
//! The overlay core: merged lookup, attributes, listings, reads and xattrs over a stack of
//! layers, in plain Rust. It never imports fuser; the FUSE adapter (`crate::fuse`) and the
//! unit tests drive it alike. Every method returns `Result<_, Errno>`.

pub mod acl;
pub mod attr;
mod compact;
mod copyup;
pub mod diff;
mod dircache;
mod handle;
pub mod ident;
pub mod idmap;
pub mod layer;
pub mod marker;
pub mod merge;
mod names;
mod nameset;
pub mod node;
pub mod owner_xattr;
pub mod privs;
pub mod probe;
pub mod readahead;
mod rename;
pub mod resolve;
mod setattr;
mod stripes;
#[cfg(test)]
mod tests;
pub mod upper;

use std::ffi::{OsStr, OsString};
use std::ops::Deref;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use parking_lot::Mutex;

pub use attr::Attr;
pub use idmap::IdMap;
pub use layer::Layer;
pub use merge::DirEntry;
pub use names::NewObject;
pub use node::Bound;
pub use privs::Privileges;
pub use setattr::SetAttr;
pub use upper::{MarkerFormat, Upper};

use crate::sys::{Dir, Errno, FileKind, FsStat, Stat};
use handle::Handle;
use ident::{Inos, ROOT_ID};
use layer::LayerDir;
use node::{Chain, ChainDir, Node, NodeTable};
use owner_xattr::Owner;
use readahead::Readahead;
use resolve::Resolved;
use stripes::Stripes;

/// The user a request comes from: new objects are owned by these ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// fsuid of the calling process.
    pub uid: u32,
    /// fsgid of the calling process.
    pub gid: u32,
}

/// An open merged directory: the listing is snapshotted when reading starts at offset 0, so
/// offsets stay valid however small the reader's batches are.
#[derive(Debug)]
struct DirHandle {
    node: Arc<Node>,
    listing: Mutex<Option<Arc<Vec<DirEntry>>>>,
    /// The topmost real directory, kept once the merged one lost its name (rmdir, or a
    /// rename over it) so fstat of the open directory still answers, as on the kernel
    /// overlay (nlink 0 for a removed upper directory).
    remains: OnceLock<Arc<LayerDir>>,
}

/// A directory descriptor that is either one of the overlay's own or freshly opened.
enum DirRef<'a> {
    Borrowed(&'a Dir),
    Owned(Arc<LayerDir>),
}

impl Deref for DirRef<'_> {
    type Target = Dir;
    fn deref(&self) -> &Dir {
        match self {
            DirRef::Borrowed(d) => d,
            DirRef::Owned(d) => d,
        }
    }
}

/// A mounted overlay's state.
#[derive(Debug)]
pub struct Overlay {
    layers: Vec<Layer>,
    upper: Option<Upper>,
    inos: Inos,
    nodes: NodeTable,
    files: DashMap<u64, Arc<Handle>>,
    dirs: DashMap<u64, Arc<DirHandle>>,
    next_handle: AtomicU64,
    name_max: usize,
    /// One lock per object being copied up: concurrent copy-ups of one object happen once,
    /// and a long copy-up holds up nothing else.
    copying: DashMap<u64, Arc<Mutex<()>>>,
    /// Open upper directories of merged directories.
    upper_dirs: dircache::UpperDirs,
    /// Serializes changes of the upper directory of one merged directory.
    dir_locks: Stripes,
    /// Tells the kernel to drop its cached attributes of a node changed behind its back.
    invalidator: OnceLock<Invalidator>,
    /// Reads ahead of tree walks, once a thread for it is running.
    readahead: OnceLock<Readahead>,
    /// The daemon's effective uid and gid: the owner of what it creates.
    creds: (u32, u32),
    /// How objects are shown.
    view: View,
}

/// How the merged view shows objects: options that change nothing stored in the layers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Owners as shown versus as stored (`uidmapping=`, `gidmapping=`, `squash_to_*`).
    pub ids: IdMap,
    /// Every directory reports one link (`static_nlink`), as merged directories always do.
    pub static_nlink: bool,
    /// Every inode number fits in 32 bits (`ino32_t`), for programs built without large
    /// file support.
    pub ino32: bool,
    /// Xattrs are not served (`noxattrs`).
    pub no_xattrs: bool,
    /// POSIX ACLs are neither checked nor inherited, only kept as xattrs (`noacl`).
    pub no_acl: bool,
    /// Owners and modes are kept in this xattr of the upper layer's objects and read from
    /// the owner xattrs of every layer (`xattr_permissions=1|2`; `None`: off).
    pub owner_xattr: Option<&'static str>,
    /// Every change is refused with `EROFS`, upper layer or not (`ro`).
    pub read_only: bool,
    /// When reads update access times (`relatime`, `strictatime`, `noatime`).
    pub atime: Atime,
}

/// When a read of an upper object updates its access time: the rule of the private mount
/// copy the upper layer is read through (see `crate::sys::mount`). Lower objects never
/// change, whatever the rule (a `noatime` copy, and `O_NOATIME` opens).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Atime {
    /// The first read after a change, or a day after the last (`relatime`).
    #[default]
    Relative,
    /// Every read (`strictatime`); pages are then not kept from one open to the next.
    Strict,
    /// Never (`noatime`): upper objects are opened with `O_NOATIME` too.
    Never,
}

/// A callback dropping the kernel's cached attributes of a node id.
pub struct Invalidator(pub Box<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Invalidator")
    }
}

/// How many directories of the lower layers stay open, all layers together.
const OPEN_LOWER_DIRS: usize = 4096;

/// Entries past which a directory counts as big for [`Overlay::readdirplus`].
const BIG_DIR: usize = 1024;

/// Entries with attributes in the first reply for a big directory.
const PLUS_IN_BIG_DIR: usize = 8;

impl Overlay {
    /// An overlay of `layers`, topmost first. With `upper`, `layers[0]` is the writable
    /// upper layer and `upper` its work area; without, every change is refused (`EROFS`).
    pub fn new(mut layers: Vec<Layer>, upper: Option<Upper>) -> Result<Overlay, Errno> {
        if layers.is_empty() {
            return Err(Errno::EINVAL);
        }
        let lowers = layers.len() - usize::from(upper.is_some());
        let budget = Arc::new(std::sync::atomic::AtomicUsize::new(layer::NAME_BUDGET));
        for layer in layers.iter_mut().skip(usize::from(upper.is_some())) {
            layer.freeze((OPEN_LOWER_DIRS / lowers).max(16), budget.clone());
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
        let mut name_max = layers[0].root.statfs()?.namemax as usize;
        if upper.as_ref().map(|u| u.format) == Some(MarkerFormat::Aufs) {
            // Room for the `.wh.` of a whiteout of any name.
            name_max = name_max.saturating_sub(marker::WHITEOUT_PREFIX.len());
        }
        let inos = Inos::new(layers.iter().map(|l| l.dev));
        let writable = upper.is_some();
        Ok(Overlay {
            layers,
            upper,
            inos,
            nodes: NodeTable::new(Node::root(chain), writable),
            files: DashMap::new(),
            dirs: DashMap::new(),
            next_handle: AtomicU64::new(1),
            name_max,
            copying: DashMap::new(),
            upper_dirs: dircache::UpperDirs::new(),
            dir_locks: Stripes::new(),
            invalidator: OnceLock::new(),
            readahead: OnceLock::new(),
            creds: (crate::sys::process::euid(), crate::sys::process::egid()),
            view: View::default(),
        })
    }

    /// The same overlay shown as `view` says. Call before the first lookup.
    pub fn with_view(mut self, view: View) -> Overlay {
        if view.ino32 {
            self.inos.limit_to_32_bits();
        }
        if let Some(up) = self.upper.as_mut() {
            up.owner_xattr = view.owner_xattr;
        }
        self.view = view;
        self
    }

    /// Installs the callback that drops the kernel's cached attributes of a node whose
    /// attributes changed without a request for it (a copy-up turns a directory into a
    /// merged one, a directory rename replaces one). Set once, when the mount is live.
    pub fn set_invalidator(&self, f: Invalidator) {
        let _ = self.invalidator.set(f);
    }

    /// Starts reading ahead of tree walks ([`readahead`]). Set once, when the mount is live.
    pub fn set_readahead(&self, readahead: Readahead) {
        let _ = self.readahead.set(readahead);
    }

    fn invalidate(&self, id: u64) {
        if let Some(f) = self.invalidator.get() {
            (f.0)(id);
        }
    }

    /// Bounds the node table, and with it the inodes the kernel keeps cached: past
    /// `bound.limit` nodes, `bound.on_full` is called to have the kernel drop the inodes
    /// [`Overlay::prune_candidates`] names. Set once, when the mount is live.
    pub fn set_bound(&self, bound: Bound) {
        self.nodes.set_bound(bound);
    }

    /// The oldest nodes to shed once the table is full (see [`Overlay::set_bound`]).
    pub fn prune_candidates(&self) -> Vec<u64> {
        self.nodes.prune_candidates()
    }

    /// The layers, topmost first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The upper layer's settings, if the overlay is writable.
    pub fn upper(&self) -> Option<&Upper> {
        self.upper.as_ref()
    }

    /// Number of nodes the kernel currently holds (the root included).
    pub fn live_nodes(&self) -> usize {
        self.nodes.len()
    }

    fn writable(&self) -> Result<&Upper, Errno> {
        match &self.upper {
            Some(up) if !self.view.read_only => Ok(up),
            _ => Err(Errno::EROFS),
        }
    }

    /// Whether the mount has an upper layer (so lower files can be copied up).
    pub fn has_upper(&self) -> bool {
        self.upper.is_some()
    }

    /// True when `layer` is the writable upper layer.
    fn is_upper_layer(&self, layer: usize) -> bool {
        self.upper.is_some() && layer == 0
    }

    /// True when the object's data and attributes already live in the upper filesystem
    /// (its primary name there, or the hard-link index).
    fn on_upper(&self, node: &Node) -> bool {
        self.upper.is_some() && (node.top_layer() == 0 || node.index().is_some())
    }

    /// True when the object's primary name exists in the upper layer (a lower hard link
    /// whose data is in the index still needs its name linked there). The node of a lower
    /// hard-link group stands for all its names, and its layers are those of whichever name
    /// was resolved last: for it the name itself is looked for, as a link of the entry.
    fn name_on_upper(&self, node: &Arc<Node>) -> bool {
        let Some(up) = &self.upper else {
            return false;
        };
        let Some(key) = node.index() else {
            return node.top_layer() == 0;
        };
        let (parent, name) = node.parent_and_name();
        let Ok(updir) = self.layer_dir(&parent, &parent.path(), 0) else {
            return false;
        };
        match (updir.stat_child(&name), up.index.stat_child(&key)) {
            (Ok(a), Ok(b)) => (a.dev, a.ino) == (b.dev, b.ino),
            _ => false,
        }
    }

    fn check_name(&self, name: &OsStr) -> Result<(), Errno> {
        if name.len() > self.name_max {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(())
    }

    fn dir_node(&self, ino: u64) -> Result<Arc<Node>, Errno> {
        let dir = self.nodes.get(ino)?;
        if dir.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok(dir)
    }

    /// Resolves `name` in the merged directory `dir`.
    fn resolve(&self, dir: &Node, name: &OsStr) -> Result<Option<Resolved>, Errno> {
        self.resolve_in(dir, &dir.chain(), name)
    }

    /// Resolves `name` in the layers `chain` of merged directory `dir`.
    fn resolve_in(
        &self,
        dir: &Node,
        chain: &[ChainDir],
        name: &OsStr,
    ) -> Result<Option<Resolved>, Errno> {
        let path = dir.path();
        let open = |layer: usize| self.layer_dir(dir, &path, layer);
        resolve::resolve_child(&self.layers, &open, chain, name)
    }

    /// The merged number, hard-link index entry and shown status of a resolved child of the
    /// directory at `parent_path`: a copied-up object keeps its origin's number, and a lower
    /// hard link whose group was copied up shows the index entry.
    fn identify(
        &self,
        parent: &Node,
        name: &OsStr,
        r: &Resolved,
    ) -> Result<(u64, Option<OsString>, Stat), Errno> {
        let mut origin = r.origin;
        let mut st = r.top;
        let mut index = None;
        if let Some(up) = &self.upper {
            if r.chain[0].layer == 0 {
                let impure = self.holds_origins(up, parent)?;
                if impure || (st.nlink > 1 && r.kind != FileKind::Directory) {
                    let dir = self.layer_dir(parent, &parent.path(), 0)?;
                    if impure {
                        if let Some(o) = up.origin(&dir, Some(name), (st.dev, st.ino)) {
                            origin = o;
                        }
                    }
                    if r.kind != FileKind::Directory {
                        let real = st.nlink;
                        st.nlink = up.merged_nlink(&dir, name, &st, false);
                        // An upper alias of a copied-up lower hard link: the node keeps its
                        // index entry, which serves every alias, upper or lower.
                        let key = upper::index_key_of(origin);
                        if real > 1
                            && origin != (st.dev, st.ino)
                            && up
                                .index
                                .stat_child(&key)
                                .is_ok_and(|i| (i.dev, i.ino) == (st.dev, st.ino))
                        {
                            index = Some(key);
                        }
                    }
                }
            } else if r.kind != FileKind::Directory && st.nlink > 1 {
                let key = upper::index_key(&st);
                match up.index.stat_child(&key) {
                    Ok(ist) => {
                        st = ist;
                        st.nlink = up.merged_nlink(&up.index, &key, &ist, true);
                        index = Some(key);
                    }
                    Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok((self.inos.id(origin.0, origin.1), index, st))
    }

    /// Whether the upper directory of merged directory `dir` may hold entries with an
    /// origin (as listings decide it): its marker is read once, then kept on the node.
    fn holds_origins(&self, up: &Upper, dir: &Node) -> Result<bool, Errno> {
        if let Some(known) = dir.impurity() {
            return Ok(known);
        }
        let updir = self.layer_dir(dir, &dir.path(), 0)?;
        let impure = up.is_impure(&updir);
        dir.learn_impurity(impure);
        Ok(impure)
    }

    /// Marks `updir`, the upper directory of merged directory `dir`, as holding (or about to
    /// hold) an entry with an origin. Called before the entry arrives.
    fn mark_impure(&self, up: &Upper, dir: &Node, updir: &Dir) {
        up.mark_impure(updir);
        dir.note_impure();
    }

    /// Records a kernel reference to the resolved child `name` of `dir`.
    fn remember(
        &self,
        dir: &Arc<Node>,
        name: &OsStr,
        r: Resolved,
    ) -> Result<(Arc<Node>, Stat), Errno> {
        let (id, index, st) = self.identify(dir, name, &r)?;
        let node = self.nodes.remember(id, r.kind, r.chain, index, dir, name);
        Ok((node, st))
    }

    /// The node of the resolved child `name` of `dir` without keeping a kernel reference
    /// (the kernel already holds one when it asks to change it).
    fn child_node(&self, dir: &Arc<Node>, name: &OsStr, r: Resolved) -> Result<Arc<Node>, Errno> {
        let (node, _) = self.remember(dir, name, r)?;
        self.nodes.forget(node.id, 1);
        Ok(node)
    }

    fn attr(&self, node: &Node, st: &Stat) -> Attr {
        let one_link =
            node.kind == FileKind::Directory && (node.chain().len() > 1 || self.view.static_nlink);
        let mut st = *st;
        if let Some(owner) = self.node_owner_xattr(node) {
            owner.apply(&mut st);
        }
        let st = &st;
        let mut a = Attr::new(node.id, node.kind, st, one_link);
        a.uid = self.view.ids.uids.shown(st.uid);
        a.gid = self.view.ids.gids.shown(st.gid);
        // A removed directory shows what its real one says (0 once an upper one is gone),
        // or 1 if merged, as on the kernel overlay.
        if node.is_unlinked() && node.kind != FileKind::Directory {
            a.nlink = 0;
        }
        a
    }

    /// Looks `name` up in directory `parent`, counting one kernel reference to the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<(Attr, u64), Errno> {
        self.check_name(name)?;
        let dir = self.dir_node(parent)?;
        let resolved = self.resolve(&dir, name)?.ok_or(Errno::ENOENT)?;
        let (node, st) = self.remember(&dir, name, resolved)?;
        Ok((self.attr(&node, &st), u64::from(node.generation)))
    }

    /// Drops `count` kernel references to `ino`.
    pub fn forget(&self, ino: u64, count: u64) {
        self.nodes.forget(ino, count);
    }

    /// Attributes of `ino`; `fh`, an open file of it, answers for an unlinked file.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr, Errno> {
        let node = self.nodes.get(ino)?;
        if node.is_unlinked() && node.kind == FileKind::Directory {
            let kept = self.dirs.iter().find_map(|h| match h.remains.get() {
                Some(dir) if h.node.serial == node.serial => Some(dir.clone()),
                _ => None,
            });
            return Ok(self.attr(&node, &kept.ok_or(Errno::ENOENT)?.stat()?));
        }
        if node.is_unlinked() {
            let handle = match fh.and_then(|fh| self.files.get(&fh).map(|h| h.clone())) {
                Some(h) => h,
                None => self.any_handle(ino).ok_or(Errno::ENOENT)?,
            };
            return Ok(self.attr(&node, &self.open_stat(&handle)?));
        }
        let st = match self.stat_node(&node) {
            // The only name this node knew is gone, though other links remain (never looked
            // up): an open descriptor still answers.
            Err(Errno::ENOENT) => match fh.and_then(|fh| self.files.get(&fh).map(|h| h.clone())) {
                Some(h) => self.open_stat(&h)?,
                None => return Err(Errno::ENOENT),
            },
            r => r?,
        };
        Ok(self.attr(&node, &st))
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let node = self.nodes.get(ino)?;
        if node.kind != FileKind::Symlink {
            return Err(Errno::EINVAL);
        }
        let (dir, name) = self.locate(&node)?;
        dir.readlink_child(&name)
    }

    /// Opens directory `ino` for listing.
    pub fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        let node = self.dir_node(ino)?;
        if let Some(readahead) = self.readahead.get() {
            readahead.entered(&node);
        }
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.dirs.insert(
            fh,
            Arc::new(DirHandle {
                node,
                listing: Mutex::new(None),
                remains: OnceLock::new(),
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
        let (_, listing) = self.listing(fh, offset)?;
        for (i, entry) in Self::from_offset(&listing, offset) {
            if emit(entry, i as u64 + 1) {
                break;
            }
        }
        Ok(())
    }

    /// Like [`Overlay::readdir`], with each entry looked up: `emit(entry, next_offset,
    /// (attr, generation))`. Every entry but `.` and `..` counts as a lookup of its node
    /// when `emit` accepts it; one it refuses (buffer full) is forgotten again. A name that
    /// vanished since the snapshot is left out. The first reply for a directory of more
    /// than 1,024 entries stops after 8: the kernel asks for the rest without attributes,
    /// so a plain listing does not wait for hundreds of lookups it never needed, while a
    /// walk that stats entries gets them by lookup as it would past the first reply anyway.
    pub fn readdirplus(
        &self,
        fh: u64,
        offset: u64,
        mut emit: impl FnMut(&DirEntry, u64, &(Attr, u64)) -> bool,
    ) -> Result<(), Errno> {
        let (dir, listing) = self.listing(fh, offset)?;
        let most = if offset == 0 && listing.len() > BIG_DIR {
            PLUS_IN_BIG_DIR
        } else {
            usize::MAX
        };
        let mut failed = None;
        let mut sent = 0usize;
        for (i, entry) in Self::from_offset(&listing, offset) {
            if sent == most {
                break;
            }
            let dot = entry.name == "." || entry.name == "..";
            let found = if dot {
                self.getattr(entry.ino, None).map(|a| (a, 0))
            } else {
                self.lookup(dir.id, &entry.name)
            };
            match found {
                Ok(found) => {
                    let full = emit(entry, i as u64 + 1, &found);
                    if full {
                        if !dot {
                            self.forget(found.0.ino, 1);
                        }
                        break;
                    }
                    sent += 1;
                }
                Err(Errno::ENOENT) => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            // What was sent is counted by the kernel: end the chunk there, error next time.
            Some(e) if sent == 0 => Err(e),
            _ => Ok(()),
        }
    }

    /// The node and listing of open directory `fh`: a fresh snapshot at offset 0 (a rewind
    /// sees changes), the current one at other offsets.
    fn listing(&self, fh: u64, offset: u64) -> Result<(Arc<Node>, Arc<Vec<DirEntry>>), Errno> {
        let handle = self.dirs.get(&fh).map(|h| h.clone()).ok_or(Errno::EBADF)?;
        let mut slot = handle.listing.lock();
        let listing = match slot.as_ref() {
            Some(l) if offset != 0 => l.clone(),
            _ => {
                let l = Arc::new(self.snapshot(&handle.node)?);
                *slot = Some(l.clone());
                if let Some(readahead) = self.readahead.get() {
                    readahead.listed(handle.node.id, &l);
                }
                l
            }
        };
        drop(slot);
        Ok((handle.node.clone(), listing))
    }

    /// The entries of `listing` from `offset` on, with their indices.
    fn from_offset(listing: &[DirEntry], offset: u64) -> impl Iterator<Item = (usize, &DirEntry)> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(listing.len());
        listing.iter().enumerate().skip(start)
    }

    /// The merged entries of directory node `dir`, `.` and `..` left out.
    fn list(&self, dir: &Node) -> Result<Vec<DirEntry>, Errno> {
        let path = dir.path();
        let open = |layer: usize| self.layer_dir(dir, &path, layer);
        merge::list(
            &self.layers,
            &self.inos,
            &open,
            &dir.chain(),
            self.upper.as_ref(),
        )
    }

    /// The merged entries of the directory at `path` made of `chain`, for one no node
    /// stands for yet.
    fn list_at(&self, path: &Path, chain: &[ChainDir]) -> Result<Vec<DirEntry>, Errno> {
        let open = |layer: usize| self.layers[layer].dir(path);
        merge::list(&self.layers, &self.inos, &open, chain, self.upper.as_ref())
    }

    fn snapshot(&self, dir: &Arc<Node>) -> Result<Vec<DirEntry>, Errno> {
        let entries = self.list(dir)?;
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

    /// The owner xattr `get` finds while `xattr_permissions=` is on: the mount's own name
    /// first, then the others.
    pub(super) fn owner_from(
        &self,
        get: impl Fn(&OsStr) -> Result<Vec<u8>, Errno>,
    ) -> Option<Owner> {
        let own = self.view.owner_xattr?;
        std::iter::once(own)
            .chain(owner_xattr::NAMES.into_iter().filter(|n| *n != own))
            .find_map(|attr| get(OsStr::new(attr)).ok())
            .and_then(|v| Owner::parse(&v))
    }

    /// The owner xattr of `name` in `dir` (or of `dir` itself).
    pub(super) fn owner_xattr(&self, dir: &Dir, name: Option<&OsStr>) -> Option<Owner> {
        self.owner_from(|attr| match name {
            Some(n) => dir.child_xattr_get(n, attr),
            None => dir.xattr_get(attr),
        })
    }

    /// `st` of an open file, with the owner xattr read through the same descriptor.
    fn open_stat(&self, handle: &Handle) -> Result<Stat, Errno> {
        let mut st = handle.stat()?;
        if let Some(owner) = self.owner_from(|attr| handle.xattr_get(attr)) {
            owner.apply(&mut st);
        }
        Ok(st)
    }

    /// The owner xattr of a linked node, where it lies now (an unlinked one is read through
    /// an open descriptor, by `open_stat`).
    fn node_owner_xattr(&self, node: &Node) -> Option<Owner> {
        self.view.owner_xattr?;
        if node.is_unlinked() {
            return None;
        }
        if node.kind == FileKind::Directory {
            return self.owner_xattr(&*self.dir_of(node).ok()?, None);
        }
        let node = self.nodes.get(node.id).ok()?;
        let (dir, name) = self.locate(&node).ok()?;
        self.owner_xattr(&dir, Some(&name))
    }

    /// True for an xattr name clients may not see or change: the overlay's own, and the
    /// owner xattrs while `xattr_permissions=` uses them.
    fn hidden_xattr(&self, name: &[u8]) -> bool {
        marker::is_private_xattr(name)
            || (self.view.owner_xattr.is_some() && owner_xattr::is_owner_xattr(name))
    }

    /// The value of xattr `name` of `ino`; the overlay's own xattrs do not exist here. The
    /// ids in an ACL are shown as the owners are.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, Errno> {
        self.xattrs_served()?;
        if self.hidden_xattr(name.as_bytes()) {
            return Err(Errno::ENODATA);
        }
        let node = self.nodes.get(ino)?;
        // With owner xattrs, the owner's bits of an access ACL follow the shown mode.
        let owner_perm = |dir: &Dir, child: Option<&OsStr>| {
            (name == acl::ACCESS)
                .then(|| self.owner_xattr(dir, child))
                .flatten()
                .map(|owner| owner.perm)
        };
        let (value, owner_perm) = if node.kind == FileKind::Directory {
            let dir = self.dir_of(&node)?;
            (dir.xattr_get(name)?, owner_perm(&dir, None))
        } else {
            let (dir, child) = self.locate(&node)?;
            (
                dir.child_xattr_get(&child, name)?,
                owner_perm(&dir, Some(&child)),
            )
        };
        if acl::is_acl_xattr(name.as_bytes()) {
            return Ok(acl::shown_value(&self.view.ids, value, owner_perm));
        }
        Ok(value)
    }

    /// Whether the kernel is to check POSIX ACLs: they are served (not `noacl`, not
    /// `noxattrs`).
    pub fn enforces_acls(&self) -> bool {
        !self.view.no_acl && !self.view.no_xattrs
    }

    /// The NUL-separated xattr names of `ino`, the overlay's own left out.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        self.xattrs_served()?;
        let node = self.nodes.get(ino)?;
        let list = if node.kind == FileKind::Directory {
            self.dir_of(&node)?.xattr_list()?
        } else {
            let (dir, child) = self.locate(&node)?;
            dir.child_xattr_list(&child)?
        };
        let list = marker::visible_xattr_list(&list);
        if self.view.owner_xattr.is_none() {
            return Ok(list);
        }
        let mut out = Vec::with_capacity(list.len());
        for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            if !owner_xattr::is_owner_xattr(name) {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// With `noxattrs`, `ENOSYS` for every xattr request: the kernel then answers
    /// `EOPNOTSUPP` to programs itself, without asking again.
    fn xattrs_served(&self) -> Result<(), Errno> {
        if self.view.no_xattrs {
            return Err(Errno::ENOSYS);
        }
        Ok(())
    }

    /// Usage of the filesystem writes go to (the top layer's).
    pub fn statfs(&self) -> Result<FsStat, Errno> {
        let mut st = self.layers[0].root.statfs()?;
        st.namemax = st.namemax.min(self.name_max as u32);
        Ok(st)
    }

    /// access(2) on `ino`: the kernel checks permissions (`default_permissions`); this
    /// answers existence and, without an upper layer, that nothing is writable.
    pub fn access(&self, ino: u64, mask: i32) -> Result<(), Errno> {
        self.nodes.get(ino)?;
        if mask & libc::W_OK != 0 && self.upper.is_none() {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    /// The directory node `node` (a directory) in its topmost layer.
    fn dir_of(&self, node: &Node) -> Result<DirRef<'_>, Errno> {
        if node.id == ROOT_ID {
            return Ok(DirRef::Borrowed(&self.layers[node.top_layer()].root));
        }
        Ok(DirRef::Owned(self.layer_dir(
            node,
            &node.path(),
            node.top_layer(),
        )?))
    }

    /// Before directory `node` loses its last name: its topmost real directory, if it has
    /// open handles, for [`Overlay::keep_remains`] once the name is gone.
    fn open_remains(&self, node: &Node) -> Option<Arc<LayerDir>> {
        if node.kind != FileKind::Directory
            || !self.dirs.iter().any(|h| h.node.serial == node.serial)
        {
            return None;
        }
        self.layer_dir(node, &node.path(), node.top_layer()).ok()
    }

    /// After directory `node` lost its last name: keeps `dir` (from
    /// [`Overlay::open_remains`]) in each of its open handles (see [`DirHandle::remains`])
    /// and has the kernel drop the attributes it holds (it counts the links as 0 itself,
    /// where the kernel overlay shows a lower directory's own count, or 1 for a merged one).
    fn keep_remains(&self, node: &Node, dir: Arc<LayerDir>) {
        for h in self.dirs.iter().filter(|h| h.node.serial == node.serial) {
            let _ = h.remains.set(dir.clone());
        }
        self.invalidate(node.id);
    }

    /// Where a non-root object lives: a directory holding it and its name there (the index
    /// entry for a copied-up lower hard link).
    fn locate(&self, node: &Arc<Node>) -> Result<(DirRef<'_>, OsString), Errno> {
        if let (Some(key), Some(up)) = (node.index(), self.upper.as_ref()) {
            return Ok((DirRef::Borrowed(&up.index), key));
        }
        let (parent, name) = node.parent_and_name();
        let dir = self.layer_dir(&parent, &parent.path(), node.top_layer())?;
        Ok((DirRef::Owned(dir), name))
    }

    fn stat_node(&self, node: &Arc<Node>) -> Result<Stat, Errno> {
        if node.kind == FileKind::Directory {
            return self.dir_of(node)?.stat();
        }
        let (dir, name) = self.locate(node)?;
        let mut st = dir.stat_child(&name)?;
        if let Some(up) = self.upper.as_ref().filter(|_| self.on_upper(node)) {
            st.nlink = up.merged_nlink(&dir, &name, &st, node.index().is_some());
        }
        Ok(st)
    }

    /// The upper directory of merged directory `dir`, copied up first if needed.
    fn upper_dir(&self, dir: &Arc<Node>) -> Result<DirRef<'_>, Errno> {
        self.copy_up(dir)?;
        if dir.id == ROOT_ID {
            return Ok(DirRef::Borrowed(&self.layers[0].root));
        }
        Ok(DirRef::Owned(self.layer_dir(dir, &dir.path(), 0)?))
    }

    /// The chain of `dir` without its upper directory: the layers a whiteout must hide.
    fn lower_chain(&self, chain: &[ChainDir]) -> Chain {
        chain
            .iter()
            .filter(|c| !self.is_upper_layer(c.layer))
            .copied()
            .collect()
    }

    /// True when a lower layer of merged directory `dir` shows `name`: removing or moving
    /// the upper object of that name must leave a whiteout.
    fn lower_has(&self, dir: &Node, name: &OsStr) -> Result<bool, Errno> {
        let lower = self.lower_chain(&dir.chain());
        if lower.is_empty() {
            return Ok(false);
        }
        Ok(self.resolve_in(dir, &lower, name)?.is_some())
    }
}
