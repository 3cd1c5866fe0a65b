//! Open directories of the layers, so an operation does not resolve its directory's path in
//! every layer again. Lower layers cache by path (they are frozen: see [`Layer::freeze`]).
//! Upper directories cache by node: a descriptor follows its directory through renames, and
//! a merged directory's upper directory never changes once made (a directory replaced by
//! another one is a new node), so the node's descriptor stays right for the node's life.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

#[cfg(doc)]
use super::layer::Layer;
use super::layer::LayerDir;
use super::node::Node;
use super::Overlay;
use crate::sys::Errno;

const SHARDS: usize = 16;
/// Upper directories kept open, all shards together.
const OPEN_UPPER_DIRS: usize = 2048;

/// Open upper directories by node serial, sharded so request threads rarely share a lock.
#[derive(Debug)]
pub(super) struct UpperDirs {
    shards: Vec<Mutex<LruCache<u64, Arc<LayerDir>>>>,
}

impl UpperDirs {
    pub(super) fn new() -> UpperDirs {
        let per = NonZeroUsize::new(OPEN_UPPER_DIRS / SHARDS).unwrap_or(NonZeroUsize::MIN);
        UpperDirs {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per)))
                .collect(),
        }
    }

    fn shard(&self, serial: u64) -> &Mutex<LruCache<u64, Arc<LayerDir>>> {
        &self.shards[(serial % SHARDS as u64) as usize]
    }
}

impl Overlay {
    /// The directory of merged directory `node` (at `path`) in `layer`.
    pub(super) fn layer_dir(
        &self,
        node: &Node,
        path: &Path,
        layer: usize,
    ) -> Result<Arc<LayerDir>, Errno> {
        if !self.is_upper_layer(layer) {
            return self.layers[layer].dir(path);
        }
        let shard = self.upper_dirs.shard(node.serial);
        if let Some(dir) = shard.lock().get(&node.serial) {
            return Ok(dir.clone());
        }
        let dir = self.layers[layer].dir(path)?;
        shard.lock().put(node.serial, dir.clone());
        Ok(dir)
    }
}
