//! Changes to an object's attributes and xattrs: each copies a lower object up first.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

use super::idmap::OneMap;
use super::owner_xattr::{self, Owner};
use super::privs::{self, Privileges, Target};
use super::{acl, copyup, marker, Attr, Overlay};
use crate::sys::{io_errno, Dir, Errno, FileKind, SetTime};

/// The attributes a setattr request changes (`None`: leave as is).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

impl Overlay {
    /// Changes the attributes of `ino` as `set`, asked by `who`, says; `fh` is an open file of
    /// it, used for an unlinked file. Setuid and setgid bits go as the kernel's VFS rules say
    /// for the change ([`privs::cleared_bits`]): a request with nothing to set is the kernel
    /// asking for them to go after a write by `who`.
    pub fn setattr(
        &self,
        ino: u64,
        fh: Option<u64>,
        set: &SetAttr,
        who: &dyn Privileges,
    ) -> Result<Attr, Errno> {
        self.writable()?;
        let cleared = if privs::may_clear(set) {
            let now = self.getattr(ino, fh)?;
            let target = Target {
                kind: now.kind,
                perm: u32::from(now.perm),
                uid: now.uid,
                gid: now.gid,
            };
            let bits = privs::cleared_bits(&target, set, who);
            (bits != 0).then(|| set.mode.unwrap_or(target.perm) & !bits)
        } else {
            None
        };
        match cleared {
            Some(mode) => self.set_attributes(
                ino,
                fh,
                &SetAttr {
                    mode: Some(mode),
                    ..*set
                },
            ),
            None => self.set_attributes(ino, fh, set),
        }
    }

    /// Changes the attributes of `ino` exactly as `set` says.
    fn set_attributes(&self, ino: u64, fh: Option<u64>, set: &SetAttr) -> Result<Attr, Errno> {
        let set = &self.stored_owner(set)?;
        let node = self.nodes.get(ino)?;
        if node.is_unlinked() {
            return self.setattr_open(ino, fh, set);
        }
        if set.size.is_some() && node.kind == FileKind::Directory {
            return Err(Errno::EISDIR);
        }
        self.copy_up_with(&node, set.size == Some(0))?;
        let atime = set.atime.unwrap_or(SetTime::Omit);
        let mtime = set.mtime.unwrap_or(SetTime::Omit);
        let times = set.atime.is_some() || set.mtime.is_some();
        if node.kind == FileKind::Directory {
            // Copy-ups into this directory put its times back under this lock: a change of
            // them must not be undone by one.
            let _lock = self.dir_locks.lock(node.id);
            let dir = self.dir_of(&node)?;
            if !self.owner_in_xattr(&dir, None, set)? {
                if set.uid.is_some() || set.gid.is_some() {
                    self.owner_change(dir.chown(set.uid, set.gid))?;
                }
                if let Some(mode) = set.mode {
                    dir.chmod(mode)?;
                }
            }
            if times {
                dir.set_times(atime, mtime)?;
            }
        } else {
            let (dir, name) = self.locate(&node)?;
            if !self.owner_in_xattr(&dir, Some(&name), set)? {
                if set.uid.is_some() || set.gid.is_some() {
                    self.owner_change(dir.chown_child(&name, set.uid, set.gid))?;
                }
                if let Some(mode) = set.mode {
                    dir.chmod_child(&name, mode)?;
                }
            }
            if let Some(size) = set.size {
                match fh.and_then(|fh| self.writable_file(fh)) {
                    Some(f) => f.set_len(size).map_err(io_errno)?,
                    None => dir
                        .open_file(&name, libc::O_WRONLY)?
                        .set_len(size)
                        .map_err(io_errno)?,
                }
            }
            if times {
                dir.set_times_child(&name, atime, mtime)?;
            }
        }
        let st = self.stat_node(&node)?;
        Ok(self.attr(&node, &st))
    }

    /// With owner xattrs (`xattr_permissions=`), records the owner and mode `set` changes in
    /// the xattr of upper object `name` in `dir` (or of `dir`), leaving the object itself as
    /// it is (a symlink whose filesystem refuses the xattr gets its owner on the inode);
    /// false when the option is off.
    fn owner_in_xattr(
        &self,
        dir: &Dir,
        name: Option<&OsStr>,
        set: &SetAttr,
    ) -> Result<bool, Errno> {
        let Some(attr) = self.upper.as_ref().and_then(|up| up.owner_xattr) else {
            return Ok(false);
        };
        if set.uid.is_none() && set.gid.is_none() && set.mode.is_none() {
            return Ok(true);
        }
        self.change_owner_xattr(dir, name, attr, |current| Owner {
            uid: set.uid.unwrap_or(current.uid),
            gid: set.gid.unwrap_or(current.gid),
            perm: set.mode.map_or(current.perm, |m| m & 0o7777),
        })?;
        Ok(true)
    }

    /// Rewrites owner xattr `attr` of upper object `name` in `dir` (or of `dir`) to what
    /// `change` makes of the owner and mode shown now (the inode's where it has no xattr).
    fn change_owner_xattr(
        &self,
        dir: &Dir,
        name: Option<&OsStr>,
        attr: &str,
        change: impl FnOnce(Owner) -> Owner,
    ) -> Result<(), Errno> {
        let real = match name {
            Some(n) => dir.stat_child(n)?,
            None => dir.stat()?,
        };
        let new = change(self.owner_xattr(dir, name).unwrap_or(Owner::of(&real)));
        let mut st = real;
        st.uid = new.uid;
        st.gid = new.gid;
        st.mode = (real.mode & libc::S_IFMT) | new.perm;
        // The inode's chmod to the mode kept on disk sets an ACL's mask and others' entries
        // from the shown mode too (its owner entry keeps the daemon's access).
        copyup::set_owner_xattr(dir, name, &st, attr)
    }

    /// With owner xattrs, the shown mode of upper object `name` in `dir` (or of `dir`) after
    /// its access ACL was set to `value`: the filesystem changed only the inode's mode, so
    /// the owner xattr takes the ACL's permission bits, as an inode's mode would.
    fn mode_after_acl(&self, dir: &Dir, name: Option<&OsStr>, value: &[u8]) -> Result<(), Errno> {
        let Some(attr) = self.upper.as_ref().and_then(|up| up.owner_xattr) else {
            return Ok(());
        };
        let bits = acl::Acl::parse(value)?.perm_bits();
        self.change_owner_xattr(dir, name, attr, |current| Owner {
            perm: (current.perm & !0o777) | bits,
            ..current
        })
    }

    /// `set` with its owner as stored in the layers. Under a squash option an owner that
    /// cannot be stored is dropped (what is shown would not change), as by fuse-overlayfs.
    fn stored_owner(&self, set: &SetAttr) -> Result<SetAttr, Errno> {
        let ids = &self.view.ids;
        let store = |id: Option<u32>, map: &OneMap| match id.map(|id| map.disk(id)).transpose() {
            Err(_) if ids.squashes() => Ok(None),
            stored => stored,
        };
        Ok(SetAttr {
            uid: store(set.uid, &ids.uids)?,
            gid: store(set.gid, &ids.gids)?,
            ..*set
        })
    }

    /// The outcome of an owner change: under a squash option one the layer refuses (a
    /// rootless daemon's `chown` to an id it has no mapping for) is ignored.
    fn owner_change(&self, done: Result<(), Errno>) -> Result<(), Errno> {
        match done {
            Err(Errno::EPERM | Errno::EINVAL) if self.view.ids.squashes() => Ok(()),
            done => done,
        }
    }

    /// setattr of an unlinked file through one of its open descriptors.
    fn setattr_open(&self, ino: u64, fh: Option<u64>, set: &SetAttr) -> Result<Attr, Errno> {
        let node = self.nodes.get(ino)?;
        let f = fh
            .and_then(|fh| self.writable_file(fh))
            .or_else(|| self.any_handle(ino).and_then(|h| h.writable()))
            .ok_or(Errno::ENOENT)?;
        let owner_attr = self.upper.as_ref().and_then(|up| up.owner_xattr);
        let changes_owner = set.uid.is_some() || set.gid.is_some() || set.mode.is_some();
        match owner_attr {
            Some(attr) if changes_owner => {
                let real = crate::sys::file::fstat(&f)?;
                let current = self
                    .owner_from(|a| crate::sys::file::xattr_get(&f, a))
                    .unwrap_or(Owner::of(&real));
                let new = Owner {
                    uid: set.uid.unwrap_or(current.uid),
                    gid: set.gid.unwrap_or(current.gid),
                    perm: set.mode.map_or(current.perm, |m| m & 0o7777),
                };
                crate::sys::file::xattr_set(&f, OsStr::new(attr), &new.encode())?;
                let disk = owner_xattr::on_disk_mode(real.mode & libc::S_IFMT | new.perm);
                f.set_permissions(std::fs::Permissions::from_mode(disk & 0o7777))
                    .map_err(io_errno)?;
            }
            _ => {
                if set.uid.is_some() || set.gid.is_some() {
                    self.owner_change(
                        std::os::unix::fs::fchown(&*f, set.uid, set.gid).map_err(io_errno),
                    )?;
                }
                if let Some(mode) = set.mode {
                    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
                        .map_err(io_errno)?;
                }
            }
        }
        if let Some(size) = set.size {
            f.set_len(size).map_err(io_errno)?;
        }
        let mut times = std::fs::FileTimes::new();
        if let Some(t) = set.atime.and_then(SetTime::system_time) {
            times = times.set_accessed(t);
        }
        if let Some(t) = set.mtime.and_then(SetTime::system_time) {
            times = times.set_modified(t);
        }
        f.set_times(times).map_err(io_errno)?;
        let mut st = crate::sys::file::fstat(&f)?;
        if let Some(owner) = self.owner_from(|a| crate::sys::file::xattr_get(&f, a)) {
            owner.apply(&mut st);
        }
        Ok(self.attr(&node, &st))
    }

    /// Sets xattr `name` of `ino` (`flags`: `XATTR_CREATE`/`XATTR_REPLACE`). The overlay's
    /// own xattrs cannot be set (`EOPNOTSUPP`, as on the kernel overlay). For an access ACL,
    /// `who` is asked whether the change keeps the setgid bit (see `drop_setgid_unless`).
    pub fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        who: &dyn Privileges,
    ) -> Result<(), Errno> {
        self.xattrs_served()?;
        if name == acl::ACCESS {
            self.drop_setgid_unless(ino, who)?;
        }
        self.change_xattr(ino, name, Some((value, flags)))
    }

    /// Removes xattr `name` of `ino`; `who` as for [`Overlay::setxattr`].
    pub fn removexattr(&self, ino: u64, name: &OsStr, who: &dyn Privileges) -> Result<(), Errno> {
        self.xattrs_served()?;
        if name == acl::ACCESS {
            self.drop_setgid_unless(ino, who)?;
        }
        self.change_xattr(ino, name, None)
    }

    /// Before a change of the access ACL of `ino`: clears its setgid bit unless
    /// `who` is in its group or holds `CAP_FSETID` over
    /// it, as the kernel overlay does. The kernel leaves this to a FUSE daemon (its flag for
    /// it needs `FUSE_SETXATTR_EXT`), and the layer's own ACL update would not do it, since
    /// the daemon holds `CAP_FSETID`.
    fn drop_setgid_unless(&self, ino: u64, who: &dyn Privileges) -> Result<(), Errno> {
        let attr = self.getattr(ino, None)?;
        let perm = u32::from(attr.perm);
        if perm & libc::S_ISGID == 0 || who.in_group_or_capable(attr.uid, attr.gid) {
            return Ok(());
        }
        let set = SetAttr {
            mode: Some(perm & !libc::S_ISGID),
            ..SetAttr::default()
        };
        self.set_attributes(ino, None, &set).map(drop)
    }

    fn change_xattr(&self, ino: u64, name: &OsStr, set: Option<(&[u8], i32)>) -> Result<(), Errno> {
        if marker::is_private_xattr(name.as_bytes()) {
            return Err(Errno::EOPNOTSUPP);
        }
        if self.view.owner_xattr.is_some() && owner_xattr::is_owner_xattr(name.as_bytes()) {
            // As fuse-overlayfs: the owner xattrs are the mount's to change.
            return Err(Errno::EPERM);
        }
        self.writable()?;
        let stored;
        let set = match set {
            Some((value, flags)) if acl::is_acl_xattr(name.as_bytes()) => {
                stored = acl::stored_value(&self.view.ids, value)?;
                Some((&stored[..], flags))
            }
            other => other,
        };
        let node = self.live_node(ino)?;
        if set.is_none() && !self.on_upper(&node) {
            // Removing an xattr the lower object lacks fails without a copy-up, as on the
            // kernel overlay.
            self.getxattr(ino, name)?;
        }
        self.copy_up(&node)?;
        let (dir, child) = if node.kind == FileKind::Directory {
            (self.dir_of(&node)?, None)
        } else {
            let (dir, child) = self.locate(&node)?;
            (dir, Some(child))
        };
        let child = child.as_deref();
        match (set, child) {
            (Some((value, flags)), Some(c)) => dir.child_xattr_set(c, name, value, flags)?,
            (Some((value, flags)), None) => dir.xattr_set(name, value, flags)?,
            (None, Some(c)) => return dir.child_xattr_remove(c, name),
            (None, None) => return dir.xattr_remove(name),
        }
        match set {
            Some((value, _)) if name == acl::ACCESS => self.mode_after_acl(&dir, child, value),
            _ => Ok(()),
        }
    }
}
