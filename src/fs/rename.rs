//! rename(2), with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`, between any layers.
//!
//! Files are copied up and renamed in the upper layer; a whiteout is left at the source
//! when a lower layer still holds the name (atomically with `RENAME_WHITEOUT` where the
//! format is the kernel's). A directory that merges lower layers is first replaced by a
//! complete, opaque upper copy built in the work dir (data of lower files copied, upper files
//! hard-linked), so the kernel's `EXDEV` for such renames never reaches the user.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use super::copyup::{copy_object, copy_xattrs, restore_times, set_meta};
use super::node::{ChainDir, Node};
use super::upper::{self, MarkerFormat};
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
        let d_merged = !self.lower_chain(&ddir.chain()).is_empty();
        let s_merged = !self.lower_chain(&sdir.chain()).is_empty();
        if s_is_dir && d_merged {
            // Arriving in a merged directory: a lower directory of the new name must not
            // merge into it.
            up.mark_opaque(&s_up.child_dir(name)?)?;
        }
        if exchange {
            if let Some(d) = &dnode {
                if d.kind == FileKind::Directory && s_merged {
                    up.mark_opaque(&d_up.child_dir(newname)?)?;
                }
            }
            s_up.rename(name, &d_up, newname, rename_flags::EXCHANGE)?;
        } else {
            let src_whiteout = self.lower_has(&sdir, name)?;
            self.move_over(&s_up, name, &d_up, newname, src_whiteout)?;
        }
        snode.set_link(&ddir, newname);
        snode.set_chain(upper_only());
        self.invalidate(snode.id);
        match (dnode, exchange) {
            (Some(d), true) => {
                d.set_link(&sdir, name);
                d.set_chain(upper_only());
                self.invalidate(d.id);
            }
            (Some(d), false) => {
                let gone = d.kind == FileKind::Directory || self.stat_node(&d).is_err();
                if gone {
                    d.mark_unlinked();
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
            Ok(st) if st.is_dir() => {
                // An upper directory holding only markers: swap, then remove it.
                s_up.rename(name, d_up, newname, rename_flags::EXCHANGE)?;
                return self.remove_upper_dir(s_up, name, src_whiteout);
            }
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        if !src_whiteout {
            s_up.rename(name, d_up, newname, 0)?;
        } else if up.format == MarkerFormat::Aufs {
            up.write_whiteout(s_up, name)?;
            s_up.rename(name, d_up, newname, 0)?;
        } else {
            match s_up.rename(name, d_up, newname, rename_flags::WHITEOUT) {
                Ok(()) => {}
                Err(Errno::EINVAL | Errno::EPERM) => {
                    s_up.rename(name, d_up, newname, 0)?;
                    up.write_whiteout(s_up, name)?;
                }
                Err(e) => return Err(e),
            }
        }
        // An AUFS whiteout of the new name, if any, goes last.
        match d_up.unlink(&super::layer::aufs_whiteout_name(newname)) {
            Ok(()) | Err(Errno::ENOENT) | Err(Errno::ENAMETOOLONG) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Makes `node` wholly upper: a non-directory is copied up; a directory merging lower
    /// layers is replaced by a complete opaque copy.
    fn bring_up_whole(&self, node: &Arc<Node>) -> Result<(), Errno> {
        if node.kind != FileKind::Directory {
            return self.copy_up(node);
        }
        let chain = node.chain();
        if chain.len() == 1 && self.is_upper_layer(chain[0].layer) {
            return Ok(());
        }
        let up = self.writable()?;
        let (parent, name) = node.parent_and_name();
        let updir = self.upper_dir(&parent)?;
        let path = node.path();
        let top = &self.layers[chain[0].layer];
        let top_dir = top.dir(&path)?;
        let top_st = top_dir.stat()?;
        let origin = if self.is_upper_layer(chain[0].layer) {
            up.origin(&top_dir, None, (top_st.dev, top_st.ino))
        } else {
            Some((top_st.dev, top_st.ino))
        };
        let tmp = up.temp_name();
        let built = (|| {
            up.work.mkdir(&tmp, 0o700)?;
            let d = up.work.child_dir(&tmp)?;
            self.clone_tree(&path, &chain, &d)?;
            copy_xattrs(&top_dir, None, &d, None)?;
            if let Some(o) = origin {
                up.set_origin(&d, None, o);
            }
            up.mark_opaque(&d)?;
            set_meta(&d, None, &top_st)?;
            if up.fsync {
                up.work.syncfs()?;
            }
            Ok(())
        })();
        let swapped = built.and_then(|()| {
            let _lock = self.dir_locks.lock(parent.id);
            let times = updir.stat()?;
            if self.is_upper_layer(chain[0].layer) {
                up.work
                    .rename(&tmp, &updir, &name, rename_flags::EXCHANGE)?;
            } else {
                up.work
                    .rename(&tmp, &updir, &name, rename_flags::NOREPLACE)?;
            }
            restore_times(&updir, &times);
            Ok(())
        });
        let _ = upper::remove_tree(&up.work, &tmp);
        swapped?;
        node.set_chain(upper_only());
        self.invalidate(node.id);
        Ok(())
    }

    /// Fills the empty directory `dst` with a copy of the merged directory at `path` made of
    /// `chain`: subdirectories recreated, upper non-directories hard-linked (same object),
    /// lower ones copied. Live nodes of the copied objects are pointed at the upper layer.
    fn clone_tree(&self, path: &Path, chain: &[ChainDir], dst: &Dir) -> Result<(), Errno> {
        let up = self.writable()?;
        for entry in self.list_at(path, chain)? {
            let name = entry.name.as_os_str();
            let Some(r) = super::resolve::resolve_child(&self.layers, path, chain, name)? else {
                continue;
            };
            let top = r.chain[0].layer;
            let src_dir = self.layers[top].dir(path)?;
            let (id, _, _) = self.identify(path, name, &r)?;
            let mut index = None;
            if r.kind == FileKind::Directory {
                dst.mkdir(name, 0o700)?;
                let sub = dst.child_dir(name)?;
                self.clone_tree(&path.join(name), &r.chain, &sub)?;
                let src_sub = src_dir.child_dir(name)?;
                copy_xattrs(&src_sub, None, &sub, None)?;
                let origin = if self.is_upper_layer(top) {
                    up.origin(&src_sub, None, (r.top.dev, r.top.ino))
                } else {
                    Some((r.top.dev, r.top.ino))
                };
                if let Some(o) = origin {
                    up.set_origin(&sub, None, o);
                }
                set_meta(&sub, None, &r.top)?;
            } else if self.is_upper_layer(top) {
                src_dir.link(name, dst, name)?;
            } else if r.top.nlink > 1 {
                let key = self.ensure_index(up, &src_dir, name, &r.top, false)?;
                up.index.link(&key, dst, name)?;
                index = Some(key);
            } else {
                copy_object(up, &src_dir, name, &r.top, dst, name, false, false)?;
            }
            if let Ok(node) = self.nodes.get(id) {
                node.set_chain(upper_only());
                if index.is_some() {
                    node.set_index(index);
                }
                self.invalidate(id);
            }
        }
        Ok(())
    }
}
