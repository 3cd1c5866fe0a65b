//! Directory readahead for tree walks. `find`, `du`, `os.walk`, `rm -r`, `tar` and `cp -r`
//! enter the subdirectories of a directory in the order its listing gave them. On cold
//! caches each one costs the layers' filesystems disk reads (its entries and their inodes)
//! that the walk waits for, one directory after the other. Once a walk is seen entering a
//! subdirectory of a listed directory, the next few subdirectories of that listing are read
//! by a background thread ([`Overlay::read_ahead`]): their lower layer directories listed,
//! their entries stat'ed. The disk reads then overlap the walk's own work, as the page cache's
//! readahead does for file data. Nothing the walk sees changes: only caches are warmed.

use std::ffi::OsString;
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use super::merge::DirEntry;
use super::node::Node;
use super::{resolve, Overlay};
use crate::sys::FileKind;

/// Listed directories whose subdirectories a walk may be following, at once.
const WALKS: usize = 32;

/// Listings with more subdirectories than this are not followed: a walk's state holds
/// their names (about 1 MiB at most for each of the [`WALKS`]).
const MAX_SUBDIRS: usize = 1 << 14;

/// How far past the subdirectory entered last the next one is looked for. A walk in
/// listing order finds it at once; one in another order (`ls -R` sorts) is no walk to read
/// ahead of, and must not cost a search of the whole listing at each step.
const SEARCH: usize = 64;

/// Work for the readahead thread: subdirectories of `parent`, by name, in walk order.
#[derive(Debug)]
pub struct Job {
    /// The directory listed.
    pub parent: Arc<Node>,
    /// The names of the subdirectories to read.
    pub names: Vec<OsString>,
}

/// Hands a job to the readahead thread (dropping it when the thread is behind).
pub type Queue = Box<dyn Fn(Job) + Send + Sync>;

/// One listed directory: its subdirectories, and how far the walk and readahead have got.
#[derive(Debug)]
struct Walk {
    /// The names of its subdirectories in listing order (`.` and `..` left out).
    subdirs: Vec<OsString>,
    /// The subdirectory (index into `subdirs`) entered last: where finding the next starts.
    entered: usize,
    /// Subdirectories before this index are read or queued.
    queued: usize,
}

impl Walk {
    /// The index into `subdirs` of the subdirectory `name`, if it is the one entered last
    /// or one of the [`SEARCH`] after it (a walk goes forward).
    fn find(&self, name: &OsString) -> Option<usize> {
        let end = (self.entered + SEARCH).min(self.subdirs.len());
        (self.entered..end).find(|&k| self.subdirs[k] == *name)
    }
}

/// The readahead state of a mount: recent listings and the queue of the reading thread.
pub struct Readahead {
    /// Subdirectories read ahead of the one a walk enters.
    window: usize,
    walks: Mutex<LruCache<u64, Walk>>,
    queue: Queue,
}

impl std::fmt::Debug for Readahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readahead")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Readahead {
    /// Reads `window` subdirectories ahead of a walk, handing the work to `queue`.
    pub fn new(window: usize, queue: Queue) -> Readahead {
        Readahead {
            window,
            walks: Mutex::new(LruCache::new(
                NonZeroUsize::new(WALKS).unwrap_or(NonZeroUsize::MIN),
            )),
            queue,
        }
    }

    /// Records the listing just taken of directory `dir` (by node id): a walk may follow it.
    pub fn listed(&self, dir: u64, listing: &[DirEntry]) {
        let subdirs = listing
            .iter()
            .filter(|e| e.kind == FileKind::Directory && e.name != "." && e.name != "..");
        if !(2..=MAX_SUBDIRS).contains(&subdirs.clone().count()) {
            // Nothing to read ahead of a single subdirectory, too many to follow; an older
            // listing is stale.
            self.walks.lock().pop(&dir);
            return;
        }
        let walk = Walk {
            subdirs: subdirs.map(|e| e.name.clone()).collect(),
            entered: 0,
            queued: 0,
        };
        self.walks.lock().put(dir, walk);
    }

    /// Notes that directory `node` is being opened: if it is a subdirectory of a recent
    /// listing, the ones after it, up to the window, are queued for reading (each once).
    pub fn entered(&self, node: &Arc<Node>) {
        let (parent, name) = node.parent_and_name();
        if parent.id == node.id {
            return;
        }
        let names = {
            let mut walks = self.walks.lock();
            let Some(walk) = walks.get_mut(&parent.id) else {
                return;
            };
            let Some(at) = walk.find(&name) else {
                return;
            };
            walk.entered = at;
            let from = walk.queued.max(at + 1);
            let to = (at + 1 + self.window).min(walk.subdirs.len());
            if from >= to {
                return;
            }
            walk.queued = to;
            walk.subdirs[from..to].to_vec()
        };
        (self.queue)(Job { parent, names });
    }
}

impl Overlay {
    /// Reads the subdirectories `job` names as a walk entering them would: resolves each,
    /// lists its directory in every lower layer it is made of and stats every entry there.
    /// Errors are ignored: the walk itself meets and reports them.
    pub fn read_ahead(&self, job: &Job) {
        let path = job.parent.path();
        let chain = job.parent.chain();
        let open = |layer: usize| self.layer_dir(&job.parent, &path, layer);
        for name in &job.names {
            let Ok(Some(found)) = resolve::resolve_child(&self.layers, &open, &chain, name) else {
                continue;
            };
            if found.kind != FileKind::Directory {
                continue;
            }
            let dir_path = path.join(name);
            // The upper layer is left out: what it holds was mostly written through this
            // mount and is still cached, and reading it again costs the walk a CPU.
            for cd in found
                .chain
                .iter()
                .filter(|cd| !self.is_upper_layer(cd.layer))
            {
                let Ok(dir) = self.layers[cd.layer].dir(&dir_path) else {
                    continue;
                };
                for entry in dir.list().unwrap_or_default() {
                    if entry.name != "." && entry.name != ".." {
                        let _ = dir.stat_child(&entry.name);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::node::NodeTable;
    use super::*;
    use std::ffi::OsStr;
    use std::sync::mpsc;

    fn entry(name: &str, kind: FileKind) -> DirEntry {
        DirEntry {
            name: name.into(),
            ino: 0,
            kind,
        }
    }

    fn names(job: Job) -> Vec<String> {
        job.names
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn reads_the_window_ahead_of_a_walk_each_subdirectory_once() {
        let table = NodeTable::new(Node::root(Vec::new()), false);
        let root = table.root().clone();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let ra = Readahead::new(
            2,
            Box::new(move |job| {
                let _ = tx.lock().send(job);
            }),
        );
        let mut listing = vec![
            entry(".", FileKind::Directory),
            entry("..", FileKind::Directory),
        ];
        for i in 0..6 {
            listing.push(entry(&format!("d{i}"), FileKind::Directory));
            listing.push(entry(&format!("f{i}"), FileKind::Regular));
        }
        ra.listed(root.id, &listing);
        let mut next_id = 100;
        let mut child = |name: &str| {
            next_id += 1;
            let kind = FileKind::Directory;
            table.remember(next_id, kind, Vec::new(), None, &root, OsStr::new(name))
        };
        ra.entered(&child("d0"));
        assert_eq!(names(rx.try_recv().unwrap()), ["d1", "d2"]);
        ra.entered(&child("d1"));
        assert_eq!(
            names(rx.try_recv().unwrap()),
            ["d3"],
            "d2 was queued already"
        );
        ra.entered(&child("d1"));
        assert!(rx.try_recv().is_err(), "entering again queues nothing new");
        ra.entered(&child("d4"));
        assert_eq!(
            names(rx.try_recv().unwrap()),
            ["d5"],
            "a skip ahead goes on from there"
        );
        ra.entered(&child("f0"));
        ra.entered(&child("nope"));
        assert!(
            rx.try_recv().is_err(),
            "names that are not listed subdirectories"
        );
        ra.entered(&child("d0"));
        assert!(rx.try_recv().is_err(), "a walk going back is not followed");

        // A new listing of the directory starts over; one without two subdirectories ends it.
        ra.listed(root.id, &listing);
        ra.entered(&child("d2"));
        assert_eq!(names(rx.try_recv().unwrap()), ["d3", "d4"]);
        ra.listed(root.id, &[entry("d0", FileKind::Directory)]);
        ra.entered(&child("d0"));
        assert!(rx.try_recv().is_err());

        // A walk in another order than the listing's is not searched for far.
        let many: Vec<DirEntry> = (0..SEARCH * 3)
            .map(|i| entry(&format!("d{i}"), FileKind::Directory))
            .collect();
        ra.listed(root.id, &many);
        ra.entered(&child(&format!("d{}", SEARCH * 2)));
        assert!(rx.try_recv().is_err(), "too far past the last one entered");
        ra.entered(&child(&format!("d{}", SEARCH - 1)));
        let next = [format!("d{SEARCH}"), format!("d{}", SEARCH + 1)];
        assert_eq!(names(rx.try_recv().unwrap()), next);

        // A listing with too many subdirectories to keep is not followed.
        let huge: Vec<DirEntry> = (0..=MAX_SUBDIRS)
            .map(|i| entry(&format!("d{i}"), FileKind::Directory))
            .collect();
        ra.listed(root.id, &huge);
        ra.entered(&child("d0"));
        assert!(
            rx.try_recv().is_err(),
            "more than {MAX_SUBDIRS} subdirectories"
        );
    }
}
