//! Directory listings of merged directories: the same merge rule as [`super::resolve`],
//! applied to whole directories, producing a snapshot with stable offsets.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::sync::Arc;

use super::ident::Inos;
use super::layer::{self, Layer, LayerDir};
use super::marker::{self, NameRole};
use super::node::ChainDir;
use super::upper::Upper;
use crate::sys::{Dir, Errno, FileKind, RawEntry};

/// One entry of a merged listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Name.
    pub name: OsString,
    /// `d_ino`: the merged inode number, equal to what `stat` shows.
    pub ino: u64,
    /// `d_type`.
    pub kind: FileKind,
}

/// Lists the merged directory at `path` made of `chain`, without `.` and `..`: each name
/// once, from the topmost layer that has it, whiteouts and markers left out. `upper`, given
/// when `layers[0]` is an upper layer, gives a copied-up entry its origin's number (read
/// only in directories it marked impure).
pub fn list(
    layers: &[Layer],
    inos: &Inos,
    open: &dyn Fn(usize) -> Result<Arc<LayerDir>, Errno>,
    chain: &[ChainDir],
    upper: Option<&Upper>,
) -> Result<Vec<DirEntry>, Errno> {
    let mut decided: HashSet<OsString> = HashSet::new();
    let mut out = Vec::new();
    for cd in chain {
        let layer = &layers[cd.layer];
        let dir = open(cd.layer)?;
        let origins = upper.filter(|up| cd.layer == 0 && up.is_impure(&dir));
        let mut whiteouts = Vec::new();
        for raw in dir.list()? {
            let name = raw.name.as_os_str();
            if name == "." || name == ".." {
                continue;
            }
            let Some(kind) = kind_of(&dir, &raw)? else {
                continue;
            };
            match marker::name_role(name) {
                NameRole::Whiteout(target) if kind == FileKind::Regular => {
                    whiteouts.push(target.to_owned());
                    continue;
                }
                NameRole::AufsMeta if kind == FileKind::Regular => continue,
                _ => {}
            }
            if decided.contains(name) {
                continue;
            }
            decided.insert(name.to_owned());
            if is_whiteout(&dir, cd.xwhiteouts, name, kind)? {
                continue;
            }
            let own = (layer.dev, raw.ino);
            let (dev, ino) = origins
                .and_then(|up| up.origin(&dir, Some(name), own))
                .unwrap_or(own);
            out.push(DirEntry {
                name: name.to_owned(),
                ino: inos.id(dev, ino),
                kind,
            });
        }
        // A `.wh.NAME` hides NAME in the layers below, not beside it.
        decided.extend(whiteouts);
    }
    Ok(out)
}

/// The entry's type, asking the filesystem when `d_type` is unknown; `None` if it vanished.
fn kind_of(dir: &Dir, raw: &RawEntry) -> Result<Option<FileKind>, Errno> {
    if let Some(kind) = FileKind::from_dtype(raw.dtype) {
        return Ok(Some(kind));
    }
    match dir.stat_child(&raw.name) {
        Ok(st) => Ok(st.kind()),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_whiteout(dir: &Dir, xwhiteouts: bool, name: &OsStr, kind: FileKind) -> Result<bool, Errno> {
    match kind {
        FileKind::CharDevice => match dir.stat_child(name) {
            Ok(st) => Ok(marker::is_device_whiteout(&st)),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        },
        FileKind::Regular if xwhiteouts => match dir.stat_child(name) {
            Ok(st) if marker::may_be_xwhiteout(&st) => layer::has_whiteout_xattr(dir, name),
            Ok(_) | Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        },
        _ => Ok(false),
    }
}
