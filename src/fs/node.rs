//! The inode table: one [`Node`] per merged object the kernel holds a reference to.
//!
//! Invariants: a node is in the table exactly while the kernel's lookup count for it is
//! positive (the root always is); the count changes only under the table shard's lock, so a
//! `forget` racing a `lookup` either removes the node before the lookup re-inserts it or sees
//! the incremented count. A node knows its primary name through a parent pointer, so a path
//! inside a layer is rebuilt from the names, and a rename touches one node, not a subtree.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use parking_lot::RwLock;

use super::compact::{Name, StoredChain};
use super::ident::ROOT_ID;
use crate::sys::{Errno, FileKind};

/// One directory of a merged directory's stack, top-down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainDir {
    /// The layer holding it.
    pub layer: usize,
    /// Whether it is marked as holding xattr whiteouts (`overlay.opaque=x`).
    pub xwhiteouts: bool,
}

/// Where an object lives: the layers that make it up, topmost first. A non-directory has one
/// entry; a directory lists every layer merged into it (the merge stops at an opaque one).
pub type Chain = Vec<ChainDir>;

/// The names an object is known by: the primary one paths are built from, and the other
/// hard links the kernel has reached it by, which take over when the primary one goes.
#[derive(Debug)]
struct Link {
    parent: Option<Arc<Node>>,
    name: Name,
    /// What few objects have, out of line.
    rare: Option<Box<Rare>>,
}

/// The parts of a node's names only hard links have.
#[derive(Debug, Default)]
struct Rare {
    /// Other names the kernel has reached the object by.
    others: Vec<(Arc<Node>, OsString)>,
    /// The name in the upper's hard-link index that holds the object's data, when it is a
    /// copied-up lower hard link.
    index: Option<OsString>,
}

impl Link {
    fn new(parent: Option<&Arc<Node>>, name: &OsStr, index: Option<OsString>) -> Link {
        let mut link = Link {
            parent: parent.cloned(),
            name: Name::new(name),
            rare: None,
        };
        link.set_index(index);
        link
    }

    fn is(&self, parent: u64, name: &OsStr) -> bool {
        self.parent.as_ref().map(|p| p.id) == Some(parent) && self.name.as_os_str() == name
    }

    fn index(&self) -> Option<OsString> {
        self.rare.as_ref().and_then(|r| r.index.clone())
    }

    fn set_index(&mut self, index: Option<OsString>) {
        if index.is_some() || self.rare.is_some() {
            self.rare.get_or_insert_with(Box::default).index = index;
            self.tidy();
        }
    }

    /// Drops the out-of-line part once it holds nothing.
    fn tidy(&mut self) {
        if self
            .rare
            .as_ref()
            .is_some_and(|r| r.others.is_empty() && r.index.is_none())
        {
            self.rare = None;
        }
    }

    /// Makes `(parent, name)` the primary name, keeping the old one as another link.
    fn note(&mut self, parent: &Arc<Node>, name: &OsStr) {
        if self.is(parent.id, name) {
            return;
        }
        let rare = self.rare.get_or_insert_with(Box::default);
        rare.others
            .retain(|(p, n)| !(p.id == parent.id && n == name));
        let old_name = std::mem::replace(&mut self.name, Name::new(name));
        if let Some(old) = self.parent.replace(parent.clone()) {
            rare.others.push((old, old_name.as_os_str().to_owned()));
        }
        self.tidy();
    }

    /// Forgets the name `(parent, name)`; another known link becomes primary if it was.
    fn drop_name(&mut self, parent: u64, name: &OsStr) {
        if let Some(rare) = &mut self.rare {
            rare.others.retain(|(p, n)| !(p.id == parent && n == name));
        }
        if self.is(parent, name) {
            if let Some((p, n)) = self.rare.as_mut().and_then(|r| r.others.pop()) {
                self.parent = Some(p);
                self.name = Name::new(&n);
            }
        }
        self.tidy();
    }
}

/// [`Node::impurity`] not read yet.
const IMPURITY_UNKNOWN: u8 = 0;
/// The upper directory holds no entry with an origin.
const PURE: u8 = 1;
/// The upper directory may hold entries with an origin.
const IMPURE: u8 = 2;

fn next_serial() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A merged object the kernel knows by its node id.
#[derive(Debug)]
pub struct Node {
    /// Node id, `st_ino` and `d_ino` alike.
    pub id: u64,
    /// Unique among all nodes ever made (ids and generations can repeat): keys caches of
    /// what belongs to this very node.
    pub serial: u64,
    /// Its type.
    pub kind: FileKind,
    /// Told to the kernel with the id: a new object reusing a live id gets a new generation,
    /// so the kernel never mistakes it for the old one.
    pub generation: u32,
    unlinked: AtomicBool,
    /// For a directory: whether its upper directory may hold entries with an origin, once
    /// known ([`IMPURITY_UNKNOWN`], [`PURE`] or [`IMPURE`]).
    impurity: AtomicU8,
    lookups: AtomicU64,
    /// Open handles that can change the data (and, through a shared mapping the daemon never
    /// sees, the times).
    writers: AtomicU32,
    link: RwLock<Link>,
    chain: RwLock<StoredChain>,
}

impl Node {
    /// The root of the merged tree.
    pub fn root(chain: Chain) -> Node {
        Node {
            id: ROOT_ID,
            serial: next_serial(),
            kind: FileKind::Directory,
            generation: 0,
            unlinked: AtomicBool::new(false),
            impurity: AtomicU8::new(IMPURITY_UNKNOWN),
            lookups: AtomicU64::new(1),
            writers: AtomicU32::new(0),
            link: RwLock::new(Link::new(None, OsStr::new(""), None)),
            chain: RwLock::new(StoredChain::new(chain)),
        }
    }

    /// The path of the object inside each layer, relative to the layer root (`""` for the
    /// root), built from the primary name and its parents.
    pub fn path(&self) -> PathBuf {
        let mut names = Vec::new();
        let mut link = self.link.read().parent.clone();
        names.push(self.link.read().name.clone());
        while let Some(node) = link {
            let l = node.link.read();
            names.push(l.name.clone());
            link = l.parent.clone();
        }
        let names: Vec<&OsStr> = names.iter().map(Name::as_os_str).collect();
        names.iter().rev().collect()
    }

    /// The parent node (the root is its own parent) and this node's primary name.
    pub fn parent_and_name(self: &Arc<Self>) -> (Arc<Node>, OsString) {
        let l = self.link.read();
        match &l.parent {
            Some(p) => (p.clone(), l.name.as_os_str().to_owned()),
            None => (self.clone(), l.name.as_os_str().to_owned()),
        }
    }

    /// The layers that make up the object, topmost first.
    pub fn chain(&self) -> Chain {
        self.chain.read().as_slice().to_vec()
    }

    /// The topmost layer holding the object.
    pub fn top_layer(&self) -> usize {
        self.chain.read().as_slice().first().map_or(0, |c| c.layer)
    }

    /// Replaces the layers the object is made of (after a copy-up or a rename).
    pub fn set_chain(&self, chain: Chain) {
        *self.chain.write() = StoredChain::new(chain);
    }

    /// Records that the object's name `old` (parent id, name) is now `name` in `parent`.
    pub fn moved(&self, old: (u64, &OsStr), parent: &Arc<Node>, name: &OsStr) {
        let mut l = self.link.write();
        l.drop_name(old.0, old.1);
        l.note(parent, name);
    }

    /// Records that the object's name `name` in directory `parent` is gone; another known
    /// hard link becomes the primary name.
    pub fn name_removed(&self, parent: u64, name: &OsStr) {
        self.link.write().drop_name(parent, name);
    }

    /// The hard-link index entry holding the object's data, if any.
    pub fn index(&self) -> Option<OsString> {
        self.link.read().index()
    }

    /// Records that the object's data lives in the index entry `key`.
    pub fn set_index(&self, key: Option<OsString>) {
        self.link.write().set_index(key);
    }

    /// Records that the object's last name is gone (it may still be open).
    pub fn mark_unlinked(&self) {
        self.unlinked.store(true, Ordering::Release);
    }

    /// For a directory: whether its upper directory may hold entries with an origin, if
    /// known. Being marked is the only change it sees, so a known answer stays true.
    pub fn impurity(&self) -> Option<bool> {
        match self.impurity.load(Ordering::SeqCst) {
            PURE => Some(false),
            IMPURE => Some(true),
            _ => None,
        }
    }

    /// Records what the upper directory's marker said, unless a marking got there first.
    pub fn learn_impurity(&self, impure: bool) {
        let seen = if impure { IMPURE } else { PURE };
        let _ = self.impurity.compare_exchange(
            IMPURITY_UNKNOWN,
            seen,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// Records that the upper directory was just marked as holding entries with an origin.
    pub fn note_impure(&self) {
        self.impurity.store(IMPURE, Ordering::SeqCst);
    }

    /// True once the object has no name left in the merged tree.
    pub fn is_unlinked(&self) -> bool {
        self.unlinked.load(Ordering::Acquire)
    }

    /// Counts an open handle that can change the object.
    pub fn add_writer(&self) {
        self.writers.fetch_add(1, Ordering::AcqRel);
    }

    /// Uncounts one; true when it was the last.
    pub fn drop_writer(&self) -> bool {
        self.writers.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// True while a handle that can change the object is open.
    pub fn has_writers(&self) -> bool {
        self.writers.load(Ordering::Acquire) > 0
    }
}

/// A bound on the table: past `limit` nodes it calls `on_full`, whose job is to have the
/// kernel drop the inodes [`NodeTable::prune_candidates`] names.
pub struct Bound {
    /// Nodes held beyond which the oldest are offered to the kernel to drop.
    pub limit: usize,
    /// Called when a pruning round is due.
    pub on_full: Box<dyn Fn() + Send + Sync>,
}

/// The concurrent table of live nodes.
pub struct NodeTable {
    nodes: DashMap<u64, Arc<Node>>,
    root: Arc<Node>,
    /// Layer 0 is a writable upper layer.
    upper: bool,
    /// Nodes in the table.
    live: AtomicUsize,
    /// Nodes ever inserted.
    inserted: AtomicUsize,
    /// `inserted` at which the next pruning round may start (`usize::MAX`: one is running).
    next_round: AtomicUsize,
    bound: OnceLock<Bound>,
}

impl std::fmt::Debug for NodeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTable")
            .field("live", &self.live)
            .field("limit", &self.bound.get().map(|b| b.limit))
            .finish_non_exhaustive()
    }
}

impl NodeTable {
    /// A table holding only `root`; `upper` says layer 0 is a writable upper layer.
    pub fn new(root: Node, upper: bool) -> NodeTable {
        let root = Arc::new(root);
        let nodes = DashMap::new();
        nodes.insert(ROOT_ID, root.clone());
        NodeTable {
            nodes,
            root,
            upper,
            live: AtomicUsize::new(1),
            inserted: AtomicUsize::new(0),
            next_round: AtomicUsize::new(0),
            bound: OnceLock::new(),
        }
    }

    /// Bounds the table: from now on it calls `bound.on_full` whenever it holds more than
    /// `bound.limit` nodes, at most once per quarter of the limit in insertions, counted
    /// from the last [`NodeTable::prune_candidates`]. A second bound is ignored.
    pub fn set_bound(&self, bound: Bound) {
        let _ = self.bound.set(bound);
    }

    /// The oldest nodes the table should shed to get back to three quarters of its limit
    /// (never the root), for the kernel to drop if nothing uses them; each one it drops
    /// comes back as a `forget`.
    pub fn prune_candidates(&self) -> Vec<u64> {
        let Some(limit) = self.bound.get().map(|b| b.limit) else {
            return Vec::new();
        };
        let inserted = self.inserted.load(Ordering::Relaxed);
        self.next_round
            .store(inserted + (limit / 4).max(1), Ordering::Relaxed);
        let excess = self.len().saturating_sub(limit - limit / 4);
        let mut serials: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.id != ROOT_ID)
            .map(|n| n.serial)
            .collect();
        if excess == 0 || serials.is_empty() {
            return Vec::new();
        }
        let nth = excess.min(serials.len()) - 1;
        let cutoff = *serials.select_nth_unstable(nth).1;
        drop(serials);
        self.nodes
            .iter()
            .filter(|n| n.id != ROOT_ID && n.serial <= cutoff)
            .map(|n| n.id)
            .collect()
    }

    /// Notes one more node in the table; calls `on_full` when a pruning round is due.
    fn inserted_one(&self) {
        let live = self.live.fetch_add(1, Ordering::Relaxed) + 1;
        let inserted = self.inserted.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(bound) = self.bound.get() else {
            return;
        };
        if live <= bound.limit {
            return;
        }
        let due = self.next_round.load(Ordering::Relaxed);
        if inserted >= due
            && self
                .next_round
                .compare_exchange(due, usize::MAX, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            (bound.on_full)();
        }
    }

    /// The root node.
    pub fn root(&self) -> &Arc<Node> {
        &self.root
    }

    /// The node with id `id`; `ESTALE` if the kernel asks for one it has forgotten.
    pub fn get(&self, id: u64) -> Result<Arc<Node>, Errno> {
        self.nodes.get(&id).map(|n| n.clone()).ok_or(Errno::ESTALE)
    }

    /// Records one more kernel reference to the object `id` reached as `name` in `parent`,
    /// creating or refreshing its node.
    pub fn remember(
        &self,
        id: u64,
        kind: FileKind,
        chain: Chain,
        index: Option<OsString>,
        parent: &Arc<Node>,
        name: &OsStr,
    ) -> Arc<Node> {
        let node = |generation: u32, lookups: u64, chain: Chain, index: Option<OsString>| {
            Arc::new(Node {
                id,
                serial: next_serial(),
                kind,
                generation,
                unlinked: AtomicBool::new(false),
                impurity: AtomicU8::new(IMPURITY_UNKNOWN),
                lookups: AtomicU64::new(lookups),
                writers: AtomicU32::new(0),
                link: RwLock::new(Link::new(Some(parent), name, index)),
                chain: RwLock::new(StoredChain::new(chain)),
            })
        };
        let mut fresh = false;
        let mut entry = self.nodes.entry(id).or_insert_with(|| {
            fresh = true;
            node(0, 0, chain.clone(), index.clone())
        });
        if entry.kind != kind || entry.is_unlinked() {
            // The number now names another object: the upper filesystem reused the inode
            // of a deleted one the kernel still holds. The new object gets a new generation;
            // it inherits the old one's lookup count so the kernel's forgets of both add up.
            let lookups = entry.lookups.load(Ordering::Acquire);
            *entry = node(entry.generation.wrapping_add(1), lookups, chain, index);
        } else if id != ROOT_ID {
            // Objects only move up: a resolution that found this very name below the upper
            // layer while a copy-up raced it is stale, and must not undo the copy-up.
            let same_name = entry.link.read().is(parent.id, name);
            let stale = same_name
                && self.upper
                && entry.top_layer() == 0
                && chain.first().map(|c| c.layer) != Some(0);
            let mut link = entry.link.write();
            link.note(parent, name);
            if !stale {
                *entry.chain.write() = StoredChain::new(chain);
                link.set_index(index);
            }
        }
        entry.lookups.fetch_add(1, Ordering::AcqRel);
        let node = entry.clone();
        drop(entry);
        if fresh {
            self.inserted_one();
        }
        node
    }

    /// Drops `count` kernel references to `id`, freeing the node at zero.
    pub fn forget(&self, id: u64, count: u64) {
        if id == ROOT_ID {
            return;
        }
        // Counts only change under the shard lock `remove_if` holds, so load-then-store is exact.
        let removed = self.nodes.remove_if(&id, |_, node| {
            let left = node.lookups.load(Ordering::Acquire).saturating_sub(count);
            node.lookups.store(left, Ordering::Release);
            left == 0
        });
        if removed.is_some() {
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Number of live nodes (the root included).
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Always false: the root is never forgotten.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Chain {
        vec![ChainDir {
            layer: 0,
            xwhiteouts: false,
        }]
    }

    #[test]
    fn paths_are_built_from_parent_names() {
        let table = NodeTable::new(Node::root(chain()), false);
        let root = table.root().clone();
        let a = table.remember(
            10,
            FileKind::Directory,
            chain(),
            None,
            &root,
            OsStr::new("a"),
        );
        let b = table.remember(11, FileKind::Regular, chain(), None, &a, OsStr::new("b"));
        assert_eq!(root.path(), PathBuf::from(""));
        assert_eq!(b.path(), PathBuf::from("a/b"));
    }

    #[test]
    fn forget_frees_a_node_only_at_zero_lookups() {
        let table = NodeTable::new(Node::root(chain()), false);
        let root = table.root().clone();
        table.remember(10, FileKind::Regular, chain(), None, &root, OsStr::new("a"));
        table.remember(10, FileKind::Regular, chain(), None, &root, OsStr::new("a"));
        assert_eq!(table.len(), 2);
        table.forget(10, 1);
        assert!(table.get(10).is_ok());
        table.forget(10, 1);
        assert_eq!(table.get(10).unwrap_err(), Errno::ESTALE);
        table.forget(ROOT_ID, 5);
        assert!(table.get(ROOT_ID).is_ok());
    }

    #[test]
    fn a_full_table_offers_its_oldest_nodes_once_per_quarter_of_its_limit() {
        let table = NodeTable::new(Node::root(chain()), false);
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        table.set_bound(Bound {
            limit: 8,
            on_full: Box::new(move || {
                counter.fetch_add(1, Ordering::Relaxed);
            }),
        });
        let root = table.root().clone();
        let add = |id: u64| {
            let name = format!("f{id}");
            table.remember(
                id,
                FileKind::Regular,
                chain(),
                None,
                &root,
                OsStr::new(&name),
            );
        };
        let calls = || calls.load(Ordering::Relaxed);
        (10..17).for_each(add);
        assert_eq!((table.len(), calls()), (8, 0), "at the limit: not full yet");
        add(17);
        assert_eq!(calls(), 1);
        add(18);
        assert_eq!(calls(), 1, "one round at a time");
        let mut victims = table.prune_candidates();
        victims.sort_unstable();
        assert_eq!(
            victims,
            [10, 11, 12, 13],
            "the oldest, down to 3/4 of the limit"
        );
        for id in victims {
            table.forget(id, 1);
        }
        assert_eq!(table.len(), 6);
        (19..21).for_each(add);
        assert_eq!(calls(), 1, "not over the limit");
        add(21);
        assert_eq!(calls(), 2, "over it again, a quarter of the limit later");
        assert!(table.get(ROOT_ID).is_ok());
    }

    #[test]
    fn removing_the_primary_name_falls_back_to_another_known_link() {
        let table = NodeTable::new(Node::root(chain()), false);
        let root = table.root().clone();
        table.remember(10, FileKind::Regular, chain(), None, &root, OsStr::new("x"));
        let n = table.remember(10, FileKind::Regular, chain(), None, &root, OsStr::new("y"));
        n.name_removed(ROOT_ID, OsStr::new("y"));
        assert_eq!(n.path(), PathBuf::from("x"));
        n.moved((ROOT_ID, OsStr::new("x")), &root, OsStr::new("z"));
        assert_eq!(n.path(), PathBuf::from("z"));
    }

    #[test]
    fn a_hard_link_reached_by_another_name_moves_its_primary_name() {
        let table = NodeTable::new(Node::root(chain()), false);
        let root = table.root().clone();
        table.remember(10, FileKind::Regular, chain(), None, &root, OsStr::new("x"));
        let n = table.remember(10, FileKind::Regular, chain(), None, &root, OsStr::new("y"));
        assert_eq!(n.path(), PathBuf::from("y"));
    }
}
