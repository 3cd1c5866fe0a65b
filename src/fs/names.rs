//! Changes to names: create, mkdir, mknod, symlink, link, unlink and rmdir.
//!
//! A new object is made directly in the upper directory when no whiteout holds its name;
//! over a whiteout it is built in the work dir and swapped in with `RENAME_EXCHANGE`, so the
//! name goes from "deleted" to "new object" in one step. A removed name that a lower layer
//! also holds gets a whiteout, again in one step where the format allows. A new object takes
//! its directory's default ACL or, without one, the caller's umask, as on the kernel overlay.

use std::ffi::OsStr;
use std::fs::File;
use std::sync::Arc;

use super::acl::{self, Acl};
use super::copyup::CopyGuard;
use super::layer::{Layer, Probe};
use super::node::{ChainDir, Node};
use super::resolve::Resolved;
use super::upper::{self, MarkerFormat};
use super::{copyup, marker, owner_xattr, Attr, Caller, Overlay};
use crate::sys::{file, io_errno, rename_flags, Dir, Errno, FileKind, Stat};

/// The copy-up lock of an object and the lock of its directory, held together.
type ChildLocks<'a> = (CopyGuard<'a>, parking_lot::MutexGuard<'a, ()>);

/// What to make at a new name.
#[derive(Clone, Copy, Debug)]
pub enum NewObject<'a> {
    /// A regular file, left open (read-write) for the creator.
    File,
    /// A directory.
    Dir,
    /// A fifo, socket or device node: its `S_IFMT` type bits and device number.
    Node(u32, u64),
    /// A symlink to this target.
    Symlink(&'a [u8]),
}

/// The `S_IFMT` bits of what is made.
fn kind_bits(what: NewObject<'_>) -> u32 {
    match what {
        NewObject::File => libc::S_IFREG,
        NewObject::Dir => libc::S_IFDIR,
        NewObject::Node(kind, _) => kind & libc::S_IFMT,
        NewObject::Symlink(_) => libc::S_IFLNK,
    }
}

/// Names a user may not create through the mount: they would read back as markers.
fn refuse_marker_name(name: &OsStr) -> Result<(), Errno> {
    match marker::name_role(name) {
        marker::NameRole::Plain => Ok(()),
        _ => Err(Errno::EINVAL),
    }
}

impl Overlay {
    /// Creates `what` as `name` in directory `parent` with permission bits `mode`, owned by
    /// `caller`, whose file mode creation mask is `umask`. Returns its attributes and
    /// generation, and for a file the open handle.
    pub fn make(
        &self,
        parent: u64,
        name: &OsStr,
        what: NewObject<'_>,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<(Attr, u64, Option<u64>), Errno> {
        let up = self.writable()?;
        self.check_name(name)?;
        refuse_marker_name(name)?;
        if let NewObject::Node(kind, 0) = what {
            if kind & libc::S_IFMT == libc::S_IFCHR {
                // A 0/0 character device is a whiteout: not creatable (the kernel's EPERM).
                return Err(Errno::EPERM);
            }
        }
        let dir = self.dir_node(parent)?;
        if dir.is_unlinked() {
            return Err(Errno::ENOENT);
        }
        let updir = self.upper_dir(&dir)?;
        let _lock = self.dir_locks.lock(dir.id);
        // One look at the upper directory: an object there exists, a whiteout hides every
        // lower layer, and otherwise the lower layers decide.
        let over_whiteout = match Layer::probe(&updir, false, name)? {
            Probe::Object(_) => return Err(Errno::EEXIST),
            Probe::Whiteout => true,
            Probe::Absent if self.lower_has(&dir, name)? => return Err(Errno::EEXIST),
            Probe::Absent => false,
        };
        let real_parent = updir.stat()?;
        // The parent as shown: with owner xattrs its group and setgid bit live there.
        let mut parent_st = real_parent;
        if let Some(owner) = self.owner_xattr(&updir, None) {
            owner.apply(&mut parent_st);
        }
        let setgid_dir = parent_st.mode & libc::S_ISGID != 0;
        // The caller's ids as stored (the overflow id where the id mapping lacks them).
        let (uid, caller_gid) = self.view.ids.creator(caller.uid, caller.gid);
        let gid = if setgid_dir {
            parent_st.gid
        } else {
            caller_gid
        };
        let mut perm = mode & 0o7777;
        if setgid_dir && matches!(what, NewObject::Dir) {
            perm |= libc::S_ISGID;
        }
        let acls = self.new_object_acls(&updir, what, &mut perm, umask)?;
        // An object the daemon would create with another owner than the caller's is built
        // in the work dir and renamed in once it is owned right: a crash never leaves it
        // visible with the daemon's ids (and a setuid bit).
        let default_gid = if real_parent.mode & libc::S_ISGID != 0 {
            real_parent.gid
        } else {
            self.creds.1
        };
        let foreign = uid != self.creds.0 || gid != default_gid;
        // With owner xattrs the object is built in the work dir too: it appears with its
        // xattr already set.
        // So does one inheriting ACLs: it appears with them.
        let in_work = over_whiteout || foreign || up.owner_xattr.is_some() || !acls.is_empty();
        let (build_dir, build_name) = if in_work {
            (&up.work, up.temp_name())
        } else {
            (&*updir, name.to_owned())
        };
        let made = match up.owner_xattr {
            // Owner and mode go into the xattr; the object keeps the daemon's ids.
            Some(attr) => build(
                build_dir,
                &build_name,
                what,
                owner_xattr::on_disk_mode(kind_bits(what) | perm) & 0o7777,
                self.creds.0,
                default_gid,
            )
            .and_then(|(f, built)| {
                let st = Stat {
                    uid,
                    gid,
                    mode: kind_bits(what) | perm,
                    ..updir.stat()?
                };
                copyup::set_owner_xattr(build_dir, Some(&build_name), &st, attr)?;
                Ok((f, built))
            }),
            None => build(build_dir, &build_name, what, perm, uid, gid),
        };
        let made = made.and_then(|made| {
            for (attr, value) in &acls {
                build_dir.child_xattr_set(&build_name, OsStr::new(attr), value, 0)?;
            }
            Ok(made)
        });
        let (file, built) = match made {
            Ok(made) => made,
            Err(e) => {
                let _ = upper::remove_tree(build_dir, &build_name);
                return Err(e);
            }
        };
        if in_work && !over_whiteout {
            if let Err(e) = up
                .work
                .rename(&build_name, &updir, name, rename_flags::NOREPLACE)
            {
                let _ = upper::remove_tree(&up.work, &build_name);
                return Err(e);
            }
        }
        if over_whiteout {
            let swapped = (|| {
                if matches!(what, NewObject::Dir) {
                    // Whatever the whiteout hid must not merge into the new directory.
                    up.mark_opaque(&up.work.child_dir(&build_name)?)?;
                }
                self.replace_whiteout(&updir, name, &build_name)
            })();
            if let Err(e) = swapped {
                let _ = upper::remove_tree(&up.work, &build_name);
                return Err(e);
            }
        }
        // Moved in from the work dir, its status changed on the way.
        let st = if in_work {
            updir.stat_child(name)?
        } else {
            built
        };
        let id = self.inos.id(st.dev, st.ino);
        let kind = st.kind().ok_or(Errno::EIO)?;
        let chain = vec![ChainDir {
            layer: 0,
            xwhiteouts: false,
        }];
        let node = self.nodes.remember(id, kind, chain, None, &dir, name);
        let attr = self.attr(&node, &st);
        let generation = node.generation;
        let fh = file.map(|f| self.add_handle(node, f, true, true, true));
        Ok((attr, u64::from(generation), fh))
    }

    /// The ACL xattrs (name, value) a new object `what` in upper directory `updir` starts
    /// with, its permission bits `perm` masked as the kernel overlay's upper filesystem
    /// would: by the directory's default ACL where it has one, else by the caller's `umask`.
    /// A symlink gets neither.
    fn new_object_acls(
        &self,
        updir: &Dir,
        what: NewObject<'_>,
        perm: &mut u32,
        umask: u32,
    ) -> Result<Vec<(&'static str, Vec<u8>)>, Errno> {
        if matches!(what, NewObject::Symlink(_)) {
            return Ok(Vec::new());
        }
        let default = if self.view.no_acl || self.view.no_xattrs {
            None
        } else {
            match updir.xattr_get(OsStr::new(acl::DEFAULT)) {
                Ok(value) => Some(value),
                Err(Errno::ENODATA | Errno::EOPNOTSUPP) => None,
                Err(e) => return Err(e),
            }
        };
        let Some(value) = default else {
            *perm &= !(umask & 0o777);
            return Ok(Vec::new());
        };
        let (access, masked) = Acl::parse(&value).map_err(|_| Errno::EIO)?.inherit(*perm)?;
        *perm = masked;
        let mut acls = Vec::new();
        if let Some(access) = access {
            acls.push((acl::ACCESS, access.to_bytes()));
        }
        if matches!(what, NewObject::Dir) {
            acls.push((acl::DEFAULT, value));
        }
        Ok(acls)
    }

    /// Moves the finished object `tmp` from the work dir to `name` in `updir`, where a
    /// whiteout is, removing the whiteout.
    fn replace_whiteout(&self, updir: &Dir, name: &OsStr, tmp: &OsStr) -> Result<(), Errno> {
        let up = self.writable()?;
        match updir.stat_child(name) {
            Ok(st) if marker::is_device_whiteout(&st) => {
                up.work.rename(tmp, updir, name, rename_flags::EXCHANGE)?;
                up.work.unlink(tmp)?;
            }
            _ => {
                up.work.rename(tmp, updir, name, rename_flags::NOREPLACE)?;
            }
        }
        // An AUFS whiteout sits beside the name; gone last, so a crash leaves it hidden.
        up.remove_whiteout(updir, name)
    }

    /// Makes `newname` in directory `newparent` another name of object `ino`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<(Attr, u64), Errno> {
        let up = self.writable()?;
        self.check_name(newname)?;
        refuse_marker_name(newname)?;
        let node = self.nodes.get(ino)?;
        if node.kind == FileKind::Directory {
            return Err(Errno::EPERM);
        }
        let dir = self.dir_node(newparent)?;
        self.copy_up(&node)?;
        let updir = self.upper_dir(&dir)?;
        let _lock = self.dir_locks.lock(dir.id);
        if self.resolve(&dir, newname)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let (src_dir, src_name) = self.locate(&node)?;
        self.mark_impure(up, &dir, &updir);
        if Layer::probe(&updir, false, newname)? == Probe::Whiteout {
            let tmp = up.temp_name();
            src_dir.link(&src_name, &up.work, &tmp)?;
            if let Err(e) = self.replace_whiteout(&updir, newname, &tmp) {
                let _ = up.work.unlink(&tmp);
                return Err(e);
            }
        } else {
            src_dir.link(&src_name, &updir, newname)?;
        }
        let st = self.stat_node(&node)?;
        let node = self.nodes.remember(
            node.id,
            node.kind,
            node.chain(),
            node.index(),
            &dir,
            newname,
        );
        Ok((self.attr(&node, &st), u64::from(node.generation)))
    }

    /// Removes the non-directory `name` from directory `parent`.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.remove(parent, name, false)
    }

    /// Removes the directory `name` from directory `parent`; it must look empty (whiteouts
    /// left in it do not count).
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let up = self.writable()?;
        self.check_name(name)?;
        let dir = self.dir_node(parent)?;
        if !self.name_on_upper(&dir) {
            // The parent is copied up for the whiteout, but never for a name that is not there.
            self.resolve(&dir, name)?.ok_or(Errno::ENOENT)?;
        }
        let updir = self.upper_dir(&dir)?;
        let (node, resolved, _held) = self.hold_child(&dir, name)?;
        let is_dir = resolved.kind == FileKind::Directory;
        match (want_dir, is_dir) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            _ => {}
        }
        if is_dir
            && !self
                .list_at(&dir.path().join(name), &resolved.chain)?
                .is_empty()
        {
            return Err(Errno::ENOTEMPTY);
        }
        let in_upper = self.is_upper_layer(resolved.chain[0].layer);
        // Whether removing an upper object must leave a whiteout (a lower one always does).
        let whiteout = in_upper && self.lower_has(&dir, name)?;
        // The object loses its last name only if its merged link count says so (a lower
        // hard-link group counts every alias, copied up or not).
        let linked_elsewhere = !is_dir && resolved.top.nlink > 1;
        let last_link = !linked_elsewhere || self.identify(&dir, name, &resolved)?.2.nlink <= 1;
        let remains = self.open_remains(&node);
        if !in_upper {
            // A lower hard link's group keeps its count in the index, as the kernel's does
            // with index=on: the group is indexed first (its data copied there) if need be.
            let group = match linked_elsewhere {
                true => Some(self.index_group(&dir, name, &resolved, &node)?),
                false => None,
            };
            up.write_whiteout(&updir, name)?;
            if let Some(key) = group {
                up.add_nlink_diff(&key, -1);
            }
        } else if is_dir {
            self.remove_upper_dir(&updir, name, whiteout)?;
        } else if whiteout {
            match up.format {
                MarkerFormat::Aufs => {
                    up.write_whiteout(&updir, name)?;
                    updir.unlink(name)?;
                }
                _ => {
                    let tmp = up.temp_name();
                    up.write_whiteout(&up.work, &tmp)?;
                    if let Err(e) = up.work.rename(&tmp, &updir, name, rename_flags::EXCHANGE) {
                        let _ = up.work.unlink(&tmp);
                        return Err(e);
                    }
                    up.work.unlink(&tmp)?;
                }
            }
        } else {
            updir.unlink(name)?;
        }
        node.name_removed(dir.id, name);
        if last_link {
            node.mark_unlinked();
        }
        if let Some(dir) = remains {
            self.keep_remains(&node, dir);
        }
        Ok(())
    }

    /// The index entry of the lower hard-link group of the lower non-directory `name` of
    /// `dir` (resolved as `r`, known as `node`), made if this is the group's first change.
    /// `node` stands for every alias of the group: from now on it is served from the entry.
    pub(super) fn index_group(
        &self,
        dir: &Arc<Node>,
        name: &OsStr,
        r: &Resolved,
        node: &Node,
    ) -> Result<std::ffi::OsString, Errno> {
        let up = self.writable()?;
        let src_dir = self.layer_dir(dir, &dir.path(), r.chain[0].layer)?;
        let mut st = src_dir.stat_child(name)?;
        if let Some(owner) = self.owner_xattr(&src_dir, Some(name)) {
            owner.apply(&mut st);
        }
        let key = self.ensure_index(up, &src_dir, name, &st, false)?;
        node.set_index(Some(key.clone()));
        self.invalidate(node.id);
        Ok(key)
    }

    /// Resolves `name` in `dir` holding the directory's lock and the copy-up lock of its
    /// object, so what is acted on is what is there: no copy-up of it publishes meanwhile.
    /// The copy-up lock comes first elsewhere, so it is only tried here; on a copy-up under
    /// way, both are let go, the copy-up is waited for, and the name resolved again.
    fn hold_child(
        &self,
        dir: &Arc<Node>,
        name: &OsStr,
    ) -> Result<(Arc<Node>, Resolved, ChildLocks<'_>), Errno> {
        loop {
            let lock = self.dir_locks.lock(dir.id);
            let resolved = self.resolve(dir, name)?.ok_or(Errno::ENOENT)?;
            let node = self.child_node(dir, name, resolved.clone())?;
            if let Some(copy) = self.try_copy_guard(node.id) {
                return Ok((node, resolved, (copy, lock)));
            }
            drop(lock);
            drop(self.copy_guard(node.id));
        }
    }

    /// Removes the upper directory `name` of `updir` (holding at most markers), leaving a
    /// whiteout if `whiteout`: the directory leaves the tree in one rename, then is emptied
    /// in the work dir.
    pub(super) fn remove_upper_dir(
        &self,
        updir: &Dir,
        name: &OsStr,
        whiteout: bool,
    ) -> Result<(), Errno> {
        let up = self.writable()?;
        let tmp = up.temp_name();
        match (whiteout, up.format) {
            (true, MarkerFormat::Aufs) => {
                up.write_whiteout(updir, name)?;
                updir.rename(name, &up.work, &tmp, rename_flags::NOREPLACE)?;
            }
            (true, _) => {
                up.write_whiteout(&up.work, &tmp)?;
                if let Err(e) = up.work.rename(&tmp, updir, name, rename_flags::EXCHANGE) {
                    let _ = up.work.unlink(&tmp);
                    return Err(e);
                }
            }
            (false, _) => updir.rename(name, &up.work, &tmp, rename_flags::NOREPLACE)?,
        }
        upper::remove_tree(&up.work, &tmp)
    }

    /// The node the kernel knows `ino` by, for operations that must not see a stale one.
    pub(super) fn live_node(&self, ino: u64) -> Result<Arc<Node>, Errno> {
        let node = self.nodes.get(ino)?;
        if node.is_unlinked() {
            return Err(Errno::ENOENT);
        }
        Ok(node)
    }
}

/// Makes `what` at `name` in `dir` with `perm`, owned by `uid`/`gid`. On error the caller
/// removes whatever was made.
fn build(
    dir: &Dir,
    name: &OsStr,
    what: NewObject<'_>,
    perm: u32,
    uid: u32,
    gid: u32,
) -> Result<(Option<File>, Stat), Errno> {
    let mut file = None;
    match what {
        // Read-write whatever the caller asked for (the kernel checks each request against
        // the caller's own open mode): the descriptor can then back passthrough I/O as it is.
        NewObject::File => file = Some(dir.create_file(name, libc::O_RDWR, perm)?),
        NewObject::Dir => dir.mkdir(name, perm)?,
        NewObject::Node(kind, rdev) => dir.mknod(name, (kind & libc::S_IFMT) | perm, rdev)?,
        NewObject::Symlink(target) => dir.symlink(name, target)?,
    }
    let stat = |file: &Option<File>| match file {
        Some(f) => file::fstat(f),
        None => dir.stat_child(name),
    };
    let st = stat(&file)?;
    let own = (st.uid != uid).then_some(uid);
    let grp = (st.gid != gid).then_some(gid);
    if own.is_some() || grp.is_some() {
        dir.chown_child(name, own, grp)?;
    }
    let chowned = own.is_some() || grp.is_some();
    let lost = st.mode & 0o7777 != perm || (chowned && perm & 0o6000 != 0);
    let chmodded = !matches!(what, NewObject::Symlink(_)) && lost;
    if chmodded {
        // A chown clears setuid/setgid and mkdir drops setgid: the creator asked for them.
        match &file {
            Some(f) => f
                .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(perm))
                .map_err(io_errno)?,
            None => dir.chmod_child(name, perm)?,
        }
    }
    let st = if chowned || chmodded {
        stat(&file)?
    } else {
        st
    };
    Ok((file, st))
}
