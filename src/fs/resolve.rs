//! The merge rule for one name, in one function: walk the parent's layers top-down and stop
//! at a whiteout, at a non-directory, or after an opaque directory.

use std::ffi::OsStr;
use std::sync::Arc;

use super::layer::{Layer, LayerDir, Probe};
use super::node::{Chain, ChainDir};
use crate::sys::{Errno, FileKind, Stat};

/// What a name resolves to in a merged directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The type of the visible object.
    pub kind: FileKind,
    /// Status of the topmost object (what `stat` shows, before the overlay's own fields).
    pub top: Stat,
    /// The layers making it up, topmost first.
    pub chain: Chain,
    /// `(dev, ino)` of the object whose number the merged object takes: the topmost one for
    /// a non-directory, the topmost lower one for a directory (as the kernel overlay does).
    pub origin: (u64, u64),
}

/// Resolves `name` in the merged directory made of `parent_chain`, whose directory in layer
/// `i` is `open(i)`. `Ok(None)` means the name does not exist in the merged view.
pub fn resolve_child(
    layers: &[Layer],
    open: &dyn Fn(usize) -> Result<Arc<LayerDir>, Errno>,
    parent_chain: &[ChainDir],
    name: &OsStr,
) -> Result<Option<Resolved>, Errno> {
    let mut found: Option<Resolved> = None;
    for (i, pd) in parent_chain.iter().enumerate() {
        let layer = &layers[pd.layer];
        let dir = open(pd.layer)?;
        let st = match dir.probe(pd.xwhiteouts, name)? {
            Probe::Absent => continue,
            Probe::Whiteout => break,
            Probe::Object(st) => st,
        };
        let kind = st.kind().ok_or(Errno::EIO)?;
        let Some(merged) = found.as_mut() else {
            if kind != FileKind::Directory {
                let chain = vec![ChainDir {
                    layer: pd.layer,
                    xwhiteouts: false,
                }];
                return Ok(Some(Resolved {
                    kind,
                    top: st,
                    chain,
                    origin: (st.dev, st.ino),
                }));
            }
            found = Some(Resolved {
                kind,
                top: st,
                chain: Vec::new(),
                origin: (st.dev, st.ino),
            });
            let merged = found.as_mut().ok_or(Errno::EIO)?;
            if extend(merged, layer, &dir, name, i + 1 == parent_chain.len())? {
                break;
            }
            continue;
        };
        if kind != FileKind::Directory {
            // A lower non-directory under a directory ends the merge.
            break;
        }
        if extend(merged, layer, &dir, name, i + 1 == parent_chain.len())? {
            break;
        }
    }
    Ok(found)
}

/// Adds the directory `name` of `dir` (in `layer`) to a merged directory's chain; returns
/// true when it hides the layers below (opaque, or whited out next to itself).
fn extend(
    merged: &mut Resolved,
    layer: &Layer,
    dir: &LayerDir,
    name: &OsStr,
    last: bool,
) -> Result<bool, Errno> {
    let child = dir.child_dir(name)?;
    let marks = Layer::marks(&child)?;
    merged.chain.push(ChainDir {
        layer: layer.index,
        xwhiteouts: marks.xwhiteouts,
    });
    if last {
        return Ok(true);
    }
    // An AUFS layer records "deleted, then re-created" as `.wh.NAME` beside `NAME/`.
    Ok(marks.opaque || dir.has_aufs_whiteout(name)?)
}
