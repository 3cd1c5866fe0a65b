//! rename(2), with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`, between any layers.
//!
//! Files are copied up and renamed in the upper layer; a whiteout is left at the source
//! when a lower layer still holds the name (atomically with `RENAME_WHITEOUT` where the
//! format is the kernel's). A directory that merges lower layers first has everything in it
//! copied up and is marked opaque, so the kernel's `EXDEV` for such renames never reaches
//! the user.

use std::ffi::OsStr;
use std::sync::Arc;

use super::copyup::{copy_object, restore_times};
use super::layer::{Layer, Probe};
use super::node::{ChainDir, Node};
use super::upper::MarkerFormat;
use super::{marker, Overlay};
use crate::sys::{rename_flags, Dir, Errno, FileKind};

fn upper_only() -> Vec<ChainDir> {
    vec![ChainDir {
        layer: 0,
        xwhiteouts: false,
    }]
}

impl Overlay {
    /// Renames `name` in `parent` to `newname` in `newparent`; `flags` are renameat2's
    /// `RENAME_NOREPLACE` or `RENAME_EXCHANGE`.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        let up = self.writable()?;
        let exchange = flags & rename_flags::EXCHANGE != 0;
        let noreplace = flags & rename_flags::NOREPLACE != 0;
        if flags & !(rename_flags::EXCHANGE | rename_flags::NOREPLACE) != 0
            || (exchange && noreplace)
        {
            return Err(Errno::EINVAL);
        }
        self.check_name(name)?;
        self.check_name(newname)?;
        if marker::name_role(newname) != marker::NameRole::Plain
            || (exchange && marker::name_role(name) != marker::NameRole::Plain)
        {
            return Err(Errno::EINVAL);
        }
        let sdir = self.dir_node(parent)?;
        let ddir = self.dir_node(newparent)?;
        let src = self.resolve(&sdir, name)?.ok_or(Errno::ENOENT)?;
        let dst = self.resolve(&ddir, newname)?;
        match (&dst, exchange, noreplace) {
            (None, true, _) => return Err(Errno::ENOENT),
            (Some(_), _, true) => return Err(Errno::EEXIST),
            _ => {}
        }
        let snode = self.child_node(&sdir, name, src.clone())?;
        let dnode = match dst.clone() {
            Some(d) => Some(self.child_node(&ddir, newname, d)?),
            None => None,
        };
        let s_is_dir = src.kind == FileKind::Directory;
        if let (Some(d), false) = (&dnode, exchange) {
            if d.id == snode.id {
                // Two names of one object: rename(2) does nothing.
                return Ok(());
            }
            match (s_is_dir, d.kind == FileKind::Directory) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.list(d)?.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        let s_up = self.upper_dir(&sdir)?;
        let d_up = self.upper_dir(&ddir)?;
        self.bring_up_whole(&snode)?;
        if exchange {
            if let Some(d) = &dnode {
                self.bring_up_whole(d)?;
            }
        }
        let _locks = self.dir_locks.lock_two(sdir.id, ddir.id);
        if sdir.id != ddir.id {
            // Objects with an origin may arrive in either directory.
            self.mark_impure(up, &ddir, &d_up);
            if exchange {
                self.mark_impure(up, &sdir, &s_up);
            }
        }
        // Whether the replaced object loses its last name.
        let d_last = match (&dnode, &dst) {
            (Some(d), Some(r)) if !exchange => {
                d.kind == FileKind::Directory
                    || r.top.nlink <= 1
                    || self.identify(&ddir, newname, r)?.2.nlink <= 1
            }
            _ => false,
        };
        let d_merged = !self.lower_chain(&ddir.chain()).is_empty();
        let s_merged = !self.lower_chain(&sdir.chain()).is_empty();
        if s_is_dir && d_merged {
            // Arriving in a merged directory: a lower directory of the new name must not
            // merge into it.
            up.mark_opaque(&s_up.child_dir(name)?)?;
        }
        let mut remains = None;
        if exchange {
            if let Some(d) = &dnode {
                if d.kind == FileKind::Directory && s_merged {
                    up.mark_opaque(&d_up.child_dir(newname)?)?;
                }
            }
            s_up.rename(name, &d_up, newname, rename_flags::EXCHANGE)?;
        } else {
            // A lower hard link replaced loses a name of its group (kept in the index).
            let replaced_group = match (&dst, &dnode) {
                (Some(r), Some(d))
                    if r.kind != FileKind::Directory
                        && r.top.nlink > 1
                        && !self.is_upper_layer(r.chain[0].layer) =>
                {
                    Some(self.index_group(&ddir, newname, r, d)?)
                }
                _ => None,
            };
            remains = dnode.as_ref().and_then(|d| self.open_remains(d));
            let src_whiteout = self.lower_has(&sdir, name)?;
            self.move_over(&s_up, name, &d_up, newname, src_whiteout)?;
            if let Some(key) = replaced_group {
                up.add_nlink_diff(&key, -1);
            }
        }
        snode.moved((sdir.id, name), &ddir, newname);
        snode.set_chain(upper_only());
        self.invalidate(snode.id);
        match (dnode, exchange) {
            (Some(d), true) => {
                d.moved((ddir.id, newname), &sdir, name);
                d.set_chain(upper_only());
                self.invalidate(d.id);
            }
            (Some(d), false) => {
                d.name_removed(ddir.id, newname);
                if d_last {
                    d.mark_unlinked();
                }
                if let Some(dir) = remains {
                    self.keep_remains(&d, dir);
                }
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// Moves upper `name` of `s_up` to `newname` of `d_up`, replacing what is there
    /// (nothing, an object, an emptied directory, or a whiteout), and leaves a whiteout at
    /// the source if `src_whiteout`.
    fn move_over(
        &self,
        s_up: &Dir,
        name: &OsStr,
        d_up: &Dir,
        newname: &OsStr,
        src_whiteout: bool,
    ) -> Result<(), Errno> {
        let up = self.writable()?;
        let target = d_up.stat_child(newname);
        match target {
            Ok(st) if marker::is_device_whiteout(&st) => {
                // Swap with the whiteout: the source name then holds it, as it may need.
                s_up.rename(name, d_up, newname, rename_flags::EXCHANGE)?;
                if !src_whiteout {
                    s_up.unlink(name)?;
                }
                return Ok(());
            }
            Ok(st)
                if st.is_dir()
                    && (up.format == MarkerFormat::Aufs || !up.features.rename_exchange) =>
            {
                // AUFS markers (also wherever RENAME_EXCHANGE is missing: device whiteouts
                // need it): an opaque directory is never empty (`.wh..wh..opq`), so no swap
                // makes the target replaceable. A whiteout of the new name hides any lower
                // one while the emptied directory leaves for the work dir; it goes last,
                // below.
                up.write_aufs_whiteout(d_up, newname)?;
                let tmp = up.temp_name();
                d_up.rename(newname, &up.work, &tmp, rename_flags::NOREPLACE)?;
                super::upper::remove_tree(&up.work, &tmp)?;
            }
            Ok(st) if st.is_dir() => {
                // An upper directory holding only markers: first swap it for an empty opaque
                // one (the merged view does not change), so the rename below replaces an
                // empty directory in one step, as the kernel's ovl_clear_empty does.
                let tmp = up.temp_name();
                up.work.mkdir(&tmp, st.mode & 0o7777)?;
                let swapped = up
                    .mark_opaque(&up.work.child_dir(&tmp)?)
                    .and_then(|()| up.work.rename(&tmp, d_up, newname, rename_flags::EXCHANGE));
                let cleaned = super::upper::remove_tree(&up.work, &tmp);
                swapped?;
                cleaned?;
            }
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        if !src_whiteout {
            s_up.rename(name, d_up, newname, 0)?;
        } else if up.format == MarkerFormat::Aufs || !up.features.rename_whiteout {
            // An AUFS whiteout written first hides the lower name from the moment the object
            // leaves, so no crash can resurrect it (also where RENAME_WHITEOUT is missing).
            up.write_aufs_whiteout(s_up, name)?;
            s_up.rename(name, d_up, newname, 0)?;
        } else {
            s_up.rename(name, d_up, newname, rename_flags::WHITEOUT)?;
        }
        // An AUFS whiteout of the new name, if any, goes last.
        up.remove_aufs_whiteout(d_up, newname)
    }

    /// Makes `node` wholly upper: a non-directory is copied up; a directory merging lower
    /// layers gets every lower object inside it copied up, then is marked opaque. Lower
    /// files are first copied into the work dir, flushed with one syncfs, then renamed into
    /// place one by one: each rename changes nothing in the merged view, so a crash at any
    /// point leaves the tree as it was.
    fn bring_up_whole(&self, node: &Arc<Node>) -> Result<(), Errno> {
        if node.kind != FileKind::Directory {
            return self.copy_up(node);
        }
        if self.pure_upper(&node.chain()) {
            return Ok(());
        }
        let up = self.writable()?;
        let mut staged = Vec::new();
        let mut dirs = Vec::new();
        let result = self
            .stage_tree(node, &mut staged, &mut dirs)
            .and_then(|()| {
                if up.fsync && !staged.is_empty() {
                    up.work.syncfs()?;
                }
                Ok(())
            })
            .and_then(|()| {
                for s in staged.drain(..) {
                    self.place_staged(up, s)?;
                }
                Ok(())
            });
        for s in staged {
            let _ = drop_staged(up, &s);
        }
        result?;
        up.mark_opaque(&*self.upper_dir(node)?)?;
        // Under an opaque top nothing below merges any more: every directory is upper only.
        for d in dirs {
            d.set_chain(upper_only());
            self.invalidate(d.id);
        }
        Ok(())
    }

    fn pure_upper(&self, chain: &[ChainDir]) -> bool {
        chain.len() == 1 && self.is_upper_layer(chain[0].layer)
    }

    /// Copies up the directories of the merged tree under `dir` and stages a copy of each of
    /// its lower non-directories in the work dir.
    fn stage_tree(
        &self,
        dir: &Arc<Node>,
        staged: &mut Vec<Staged>,
        dirs: &mut Vec<Arc<Node>>,
    ) -> Result<(), Errno> {
        let up = self.writable()?;
        self.copy_up(dir)?;
        dirs.push(dir.clone());
        let path = dir.path();
        for entry in self.list(dir)? {
            let name = entry.name.as_os_str();
            let Some(r) = self.resolve(dir, name)? else {
                continue;
            };
            if r.kind == FileKind::Directory {
                if !self.pure_upper(&r.chain) {
                    let child = self.child_node(dir, name, r)?;
                    self.stage_tree(&child, staged, dirs)?;
                }
                continue;
            }
            let top = r.chain[0].layer;
            if self.is_upper_layer(top) {
                continue;
            }
            let src_dir = self.layer_dir(dir, &path, top)?;
            let (id, _, _) = self.identify(dir, name, &r)?;
            let tmp = up.temp_name();
            let mut st = r.top;
            if let Some(owner) = self.owner_xattr(&src_dir, Some(name)) {
                owner.apply(&mut st);
            }
            let index = if st.nlink > 1 {
                let key = self.ensure_index(up, &src_dir, name, &st, false)?;
                up.index.link(&key, &up.work, &tmp)?;
                // Counted already; given back if the copy is dropped (`drop_staged`).
                up.add_nlink_diff(&key, -1);
                Some(key)
            } else {
                copy_object(up, &src_dir, name, &st, &up.work, &tmp, false, false)?;
                None
            };
            staged.push(Staged {
                tmp,
                dir: dir.clone(),
                name: name.to_owned(),
                id,
                index,
            });
        }
        Ok(())
    }

    /// Renames one staged copy into its upper directory and points its live node at it.
    fn place_staged(&self, up: &super::Upper, s: Staged) -> Result<(), Errno> {
        let updir = self.layer_dir(&s.dir, &s.dir.path(), 0)?;
        {
            let _copy = self.copy_guard(s.id);
            let _lock = self.dir_locks.lock(s.dir.id);
            if Layer::probe(&updir, false, &s.name)? != Probe::Absent {
                // Copied up, deleted or replaced meanwhile: what is there now wins.
                return drop_staged(up, &s);
            }
            let times = updir.stat()?;
            self.mark_impure(up, &s.dir, &updir);
            up.work
                .rename(&s.tmp, &updir, &s.name, rename_flags::NOREPLACE)?;
            restore_times(&updir, &times);
        }
        if let Ok(node) = self.nodes.get(s.id) {
            node.set_chain(upper_only());
            if s.index.is_some() {
                node.set_index(s.index);
            }
            self.invalidate(s.id);
        }
        Ok(())
    }
}

/// A lower object copied into the work dir, waiting to be renamed into the upper layer.
struct Staged {
    tmp: std::ffi::OsString,
    dir: Arc<Node>,
    name: std::ffi::OsString,
    id: u64,
    index: Option<std::ffi::OsString>,
}

/// Removes a staged copy that will not be placed, giving its index group back the link the
/// staging took from its count.
fn drop_staged(up: &super::Upper, s: &Staged) -> Result<(), Errno> {
    up.work.unlink(&s.tmp)?;
    if let Some(key) = &s.index {
        up.add_nlink_diff(key, 1);
    }
    Ok(())
}
