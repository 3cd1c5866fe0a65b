//! Directory listings of merged directories: the same merge rule as [`super::resolve`],
//! applied to whole directories, producing a snapshot with stable offsets.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
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

/// Summed [`listing_bytes`] of a merged directory's layer directories from which they are
/// listed on two threads (on ext4 about 3,000 entries): below it a thread costs more than it
/// saves.
pub(super) const PARALLEL_BYTES: u64 = 64 * 1024;

/// The size of a directory that holds next to nothing: ext4 gives one block at creation.
const EMPTY_DIR_BYTES: u64 = 4096;

/// What a layer directory of `st_size` bytes counts toward [`PARALLEL_BYTES`]: its size past
/// the first block, so a stack of many nearly empty directories (one per layer) is not
/// taken for a big one.
pub(super) fn listing_bytes(st_size: u64) -> u64 {
    st_size.saturating_sub(EMPTY_DIR_BYTES)
}

/// Lists the merged directory made of `chain`, without `.` and `..`: each name once, from
/// the topmost layer that has it, whiteouts and markers left out. `upper`, given when
/// `layers[0]` is an upper layer, gives a copied-up entry its origin's number (read only in
/// directories it marked impure).
pub fn list(
    layers: &[Layer],
    inos: &Inos,
    open: &dyn Fn(usize) -> Result<Arc<LayerDir>, Errno>,
    chain: &[ChainDir],
    upper: Option<&Upper>,
) -> Result<Vec<DirEntry>, Errno> {
    let dirs = chain
        .iter()
        .map(|cd| open(cd.layer))
        .collect::<Result<Vec<_>, Errno>>()?;
    let mut listings = list_layers(&dirs)?;
    let total = listings.iter().map(Vec::len).sum();
    // (layer position, entry position, number, type) of each entry shown; the names are
    // moved out of the listings at the end, so each is allocated once.
    let mut shown = Vec::with_capacity(total);
    {
        let mut decided: HashSet<&[u8]> = HashSet::with_capacity(total);
        for (c, ((cd, dir), listing)) in chain.iter().zip(&dirs).zip(&listings).enumerate() {
            let layer = &layers[cd.layer];
            let origins = upper.filter(|up| cd.layer == 0 && up.is_impure(dir));
            let mut whiteouts = Vec::new();
            for (i, raw) in listing.iter().enumerate() {
                let name = raw.name.as_os_str();
                if name == "." || name == ".." {
                    continue;
                }
                let Some(kind) = kind_of(dir, raw)? else {
                    continue;
                };
                match marker::name_role(name) {
                    NameRole::Whiteout(target) if kind == FileKind::Regular => {
                        whiteouts.push(target.as_bytes());
                        continue;
                    }
                    NameRole::AufsMeta if kind == FileKind::Regular => continue,
                    _ => {}
                }
                if !decided.insert(name.as_bytes()) {
                    continue;
                }
                if is_whiteout(dir, cd.xwhiteouts, name, kind)? {
                    continue;
                }
                let own = (layer.dev, raw.ino);
                let (dev, ino) = origins
                    .and_then(|up| up.origin(dir, Some(name), own))
                    .unwrap_or(own);
                shown.push((c, i, inos.id(dev, ino), kind));
            }
            // A `.wh.NAME` hides NAME in the layers below, not beside it.
            decided.extend(whiteouts);
        }
    }
    Ok(shown
        .into_iter()
        .map(|(c, i, ino, kind)| DirEntry {
            name: std::mem::take(&mut listings[c][i].name),
            ino,
            kind,
        })
        .collect())
}

/// The entries of each of `dirs`, in order. Big ones are split between this thread and
/// one more, biggest first to the less loaded; if that thread cannot start, this one
/// lists them all.
fn list_layers(dirs: &[Arc<LayerDir>]) -> Result<Vec<Vec<RawEntry>>, Errno> {
    let sizes: Vec<u64> = if dirs.len() > 1 {
        dirs.iter()
            .map(|d| d.stat().map_or(0, |st| listing_bytes(st.size)))
            .collect()
    } else {
        Vec::new()
    };
    if sizes.iter().sum::<u64>() < PARALLEL_BYTES {
        return dirs.iter().map(|d| d.list()).collect();
    }
    let mut order: Vec<usize> = (0..dirs.len()).collect();
    order.sort_unstable_by_key(|&i| std::cmp::Reverse(sizes[i]));
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    let (mut my_load, mut their_load) = (0, 0);
    for i in order {
        if my_load <= their_load {
            my_load += sizes[i];
            mine.push(i);
        } else {
            their_load += sizes[i];
            theirs.push(i);
        }
    }
    let list = |part: &[usize]| -> Vec<(usize, Result<Vec<RawEntry>, Errno>)> {
        part.iter().map(|&i| (i, dirs[i].list())).collect()
    };
    let mut done = std::thread::scope(|s| {
        let helper = std::thread::Builder::new()
            .name("list".into())
            .spawn_scoped(s, || list(&theirs));
        let mut done = list(&mine);
        match helper.map(|h| h.join()) {
            Ok(Ok(theirs)) => done.extend(theirs),
            _ => done.extend(list(&theirs)),
        }
        done
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, listing)| listing).collect()
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
