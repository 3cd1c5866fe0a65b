//! Copy-up: before the first change to a lower object, a copy of it is built in the work
//! dir (type, data with its holes, owner, mode, xattrs, times), fsynced, and renamed into the
//! upper layer in one step, parents first. A crash leaves either no copy or a whole one.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use parking_lot::Mutex;

use super::node::ChainDir;
use super::owner_xattr::{self, Owner};
use super::upper::{self, Upper};
use super::{marker, Overlay};
use crate::sys::{file, io_errno, rename_flags, Dir, Errno, FileKind, SetTime, Stat};

/// Bytes moved per copy_file_range or read/write call.
const CHUNK: usize = 1 << 20;

impl Overlay {
    /// Makes sure the object of `node` exists in the upper layer, copying it (and its
    /// parents) up if needed. Concurrent calls for one object copy it once.
    pub(super) fn copy_up(&self, node: &Arc<super::Node>) -> Result<(), Errno> {
        self.copy_up_with(node, false)
    }

    /// As [`Overlay::copy_up`]; with `truncate`, a regular file's data is not copied (it is
    /// about to be truncated to zero).
    pub(super) fn copy_up_with(
        &self,
        node: &Arc<super::Node>,
        truncate: bool,
    ) -> Result<(), Errno> {
        self.writable()?;
        if self.name_on_upper(node) {
            return Ok(());
        }
        let (parent, _) = node.parent_and_name();
        self.copy_up(&parent)?;
        let _once = self.copy_guard(node.id);
        self.copy_up_locked(node, truncate)
    }

    /// Holds the copy-up lock of object `id` until dropped: copy-ups of it, and removals of
    /// its name, wait for each other.
    pub(super) fn copy_guard(&self, id: u64) -> CopyGuard<'_> {
        let guard = self.copy_lock(id).lock_arc();
        CopyGuard {
            overlay: self,
            id,
            guard: Some(guard),
        }
    }

    /// [`Overlay::copy_guard`] if nobody holds it now.
    pub(super) fn try_copy_guard(&self, id: u64) -> Option<CopyGuard<'_>> {
        let guard = self.copy_lock(id).try_lock_arc();
        let Some(guard) = guard else {
            // The holder's guard may have seen this clone: drop the entry if it was the last.
            self.copying
                .remove_if(&id, |_, l| Arc::strong_count(l) == 1);
            return None;
        };
        Some(CopyGuard {
            overlay: self,
            id,
            guard: Some(guard),
        })
    }

    fn copy_lock(&self, id: u64) -> Arc<Mutex<()>> {
        self.copying
            .entry(id)
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone()
    }

    /// The copy-up of `node` itself, its parent already up, with its copy-up lock held.
    pub(super) fn copy_up_locked(
        &self,
        node: &Arc<super::Node>,
        truncate: bool,
    ) -> Result<(), Errno> {
        let up = self.writable()?;
        if self.name_on_upper(node) {
            return Ok(());
        }
        if node.is_unlinked() {
            return Err(Errno::ENOENT);
        }
        let (parent, name) = node.parent_and_name();
        let path = parent.path();
        if let Some(key) = node.index() {
            // The group is in the index already (its node's layers may be another name's).
            let updir = self.layer_dir(&parent, &path, 0)?;
            return self.link_up(up, node, &key, &parent, &updir, &name);
        }
        let src_dir = self.layer_dir(&parent, &path, node.top_layer())?;
        let mut st = src_dir.stat_child(&name)?;
        if let Some(owner) = self.owner_xattr(&src_dir, Some(&name)) {
            owner.apply(&mut st);
        }
        let updir = self.layer_dir(&parent, &path, 0)?;
        if node.kind == FileKind::Directory {
            let tmp = up.temp_name();
            let built = (|| {
                up.work.mkdir(&tmp, 0o700)?;
                let d = up.work.child_dir(&tmp)?;
                copy_xattrs(up, &src_dir.child_dir(&name)?, None, &d, None)?;
                up.set_origin(&d, None, (st.dev, st.ino));
                set_meta(up, &d, None, &st)
            })();
            self.publish(up, built, &tmp, &parent, &updir, &name)?;
            let mut chain = node.chain();
            chain.insert(
                0,
                ChainDir {
                    layer: 0,
                    xwhiteouts: false,
                },
            );
            node.set_chain(chain);
            self.invalidate(node.id);
            return Ok(());
        }
        if st.nlink > 1 {
            // A lower hard link: the copy goes to the index first, so every alias of the
            // group finds it there and they stay one object.
            let key = self.ensure_index(up, &src_dir, &name, &st, truncate)?;
            return self.link_up(up, node, &key, &parent, &updir, &name);
        }
        let tmp = up.temp_name();
        let built = copy_object(up, &src_dir, &name, &st, &up.work, &tmp, truncate, true);
        self.publish(up, built, &tmp, &parent, &updir, &name)?;
        node.set_chain(vec![ChainDir {
            layer: 0,
            xwhiteouts: false,
        }]);
        self.invalidate(node.id);
        Ok(())
    }

    /// Links `name` of `parent` (upper directory `updir`), a name of the lower hard-link
    /// group in index entry `key`, up from the entry; `node` then lives there.
    fn link_up(
        &self,
        up: &Upper,
        node: &Arc<super::Node>,
        key: &OsStr,
        parent: &Arc<super::Node>,
        updir: &Dir,
        name: &OsStr,
    ) -> Result<(), Errno> {
        {
            let _dir = self.dir_locks.lock(parent.id);
            let times = updir.stat()?;
            self.mark_impure(up, parent, updir);
            up.index.link(key, updir, name)?;
            // The alias was counted already: its new upper link is not a new name.
            up.add_nlink_diff(key, -1);
            restore_times(updir, &times);
        }
        node.set_index(Some(key.to_owned()));
        node.set_chain(vec![ChainDir {
            layer: 0,
            xwhiteouts: false,
        }]);
        self.invalidate(node.id);
        Ok(())
    }

    /// The index entry of the lower hard-link group of `name` in `src_dir` (status `st`),
    /// copied there first if this is the group's first copy-up.
    pub(super) fn ensure_index(
        &self,
        up: &Upper,
        src_dir: &Dir,
        name: &OsStr,
        st: &Stat,
        truncate: bool,
    ) -> Result<std::ffi::OsString, Errno> {
        let key = upper::index_key(st);
        match up.index.stat_child(&key) {
            Ok(_) => return Ok(key),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let tmp = up.temp_name();
        let built = copy_object(up, src_dir, name, st, &up.work, &tmp, truncate, true);
        // The group has the lower's names; the entry, once `tmp` is gone, one link.
        let diff = i64::try_from(st.nlink).unwrap_or(i64::MAX) - 1;
        let built = built.map(|()| up.set_nlink_diff(&up.work, &tmp, diff));
        let linked = built.and_then(|()| match up.work.link(&tmp, &up.index, &key) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(e),
        });
        let _ = up.work.unlink(&tmp);
        linked.map(|()| key)
    }

    /// Renames the finished `tmp` from the work dir to `name` in the upper directory `updir`
    /// of merged directory `parent`, keeping `updir`'s times (a copy-up is not a change of
    /// the parent); on failure the partial copy is removed.
    fn publish(
        &self,
        up: &Upper,
        built: Result<(), Errno>,
        tmp: &OsStr,
        parent: &super::Node,
        updir: &Dir,
        name: &OsStr,
    ) -> Result<(), Errno> {
        let done = built.and_then(|()| {
            let _dir = self.dir_locks.lock(parent.id);
            let times = updir.stat()?;
            self.mark_impure(up, parent, updir);
            up.work.rename(tmp, updir, name, rename_flags::NOREPLACE)?;
            restore_times(updir, &times);
            Ok(())
        });
        if done.is_err() {
            let _ = upper::remove_tree(&up.work, tmp);
        }
        done
    }
}

/// The copy-up lock of one object, held; the map entry goes when nobody else wants it.
pub(super) struct CopyGuard<'a> {
    overlay: &'a Overlay,
    id: u64,
    guard: Option<parking_lot::ArcMutexGuard<parking_lot::RawMutex, ()>>,
}

impl Drop for CopyGuard<'_> {
    fn drop(&mut self) {
        self.guard = None;
        // Entries are cloned under the map's shard lock, so a count of one here is exact.
        self.overlay
            .copying
            .remove_if(&self.id, |_, l| Arc::strong_count(l) == 1);
    }
}

/// Puts back the access and modification times `st` on `dir`.
pub(super) fn restore_times(dir: &Dir, st: &Stat) {
    let _ = dir.set_times(SetTime::from(st.atime), SetTime::from(st.mtime));
}

/// Builds at `dst_name` in `dst_dir` a copy of the non-directory `name` of `src_dir` whose
/// status is `st`: same type, data (holes kept), xattrs, owner, mode and times. With
/// `truncate` a regular file's data is left out; with `sync`, it is fsynced (unless the
/// mount is volatile).
#[allow(clippy::too_many_arguments)]
pub(super) fn copy_object(
    up: &Upper,
    src_dir: &Dir,
    name: &OsStr,
    st: &Stat,
    dst_dir: &Dir,
    dst_name: &OsStr,
    truncate: bool,
    sync: bool,
) -> Result<(), Errno> {
    let kind = st.kind().ok_or(Errno::EIO)?;
    let mut data = None;
    match kind {
        FileKind::Regular => {
            let dst = dst_dir.create_file(dst_name, libc::O_WRONLY, 0o600)?;
            if !truncate {
                let src = src_dir.open_file_atime(name, libc::O_RDONLY, true)?;
                copy_data(&src, &dst, st.size, up.features.reflink)?;
            }
            data = Some(dst);
        }
        FileKind::Symlink => dst_dir.symlink(dst_name, &src_dir.readlink_child(name)?)?,
        FileKind::Directory => return Err(Errno::EISDIR),
        _ => dst_dir.mknod(dst_name, (st.mode & libc::S_IFMT) | 0o600, st.rdev)?,
    }
    copy_xattrs(up, src_dir, Some(name), dst_dir, Some(dst_name))?;
    up.set_origin(dst_dir, Some(dst_name), (st.dev, st.ino));
    set_meta(up, dst_dir, Some(dst_name), st)?;
    if let Some(f) = data {
        if sync && up.fsync {
            f.sync_all().map_err(io_errno)?;
        }
    }
    Ok(())
}

/// Owner, mode and times of `st` onto `name` in `dir` (or `dir` itself). Owner first: a
/// chown clears setuid bits the chmod then restores. An owner the daemon cannot give
/// (rootless, unmapped id) fails with `EOVERFLOW` rather than leave the wrong owner. With
/// owner xattrs the owner and mode go into the xattr instead.
pub(super) fn set_meta(
    up: &Upper,
    dir: &Dir,
    name: Option<&OsStr>,
    st: &Stat,
) -> Result<(), Errno> {
    if let Some(attr) = up.owner_xattr {
        set_owner_xattr(dir, name, st, attr)?;
    } else {
        set_owner(dir, name, st)?;
    }
    let (a, m) = (SetTime::from(st.atime), SetTime::from(st.mtime));
    match name {
        Some(n) => dir.set_times_child(n, a, m),
        None => dir.set_times(a, m),
    }
}

/// Records the owner and mode of `st` in xattr `attr` of `name` in `dir` (or `dir`), and
/// gives the object the mode the daemon keeps on disk.
pub(super) fn set_owner_xattr(
    dir: &Dir,
    name: Option<&OsStr>,
    st: &Stat,
    attr: &str,
) -> Result<(), Errno> {
    let symlink = st.kind() == Some(FileKind::Symlink);
    if !symlink {
        let mode = owner_xattr::on_disk_mode(st.mode);
        match name {
            Some(n) => dir.chmod_child(n, mode)?,
            None => dir.chmod(mode)?,
        }
    }
    let value = Owner::of(st).encode();
    let attr = OsStr::new(attr);
    let set = match name {
        Some(n) => dir.child_xattr_set(n, attr, &value, 0),
        None => dir.xattr_set(attr, &value, 0),
    };
    match set {
        // User xattrs are refused on symlinks: the owner goes on the inode where the daemon
        // may give it, and otherwise stays the daemon's (as with fuse-overlayfs).
        Err(Errno::EPERM | Errno::EOPNOTSUPP) if symlink => match set_owner(dir, name, st) {
            Err(Errno::EOVERFLOW) => Ok(()),
            other => other,
        },
        other => other,
    }
}

fn set_owner(dir: &Dir, name: Option<&OsStr>, st: &Stat) -> Result<(), Errno> {
    let chown = match name {
        Some(n) => dir.chown_child(n, Some(st.uid), Some(st.gid)),
        None => dir.chown(Some(st.uid), Some(st.gid)),
    };
    match chown {
        Ok(()) => {}
        Err(Errno::EPERM) | Err(Errno::EINVAL) => return Err(Errno::EOVERFLOW),
        Err(e) => return Err(e),
    }
    if st.kind() != Some(FileKind::Symlink) {
        match name {
            Some(n) => dir.chmod_child(n, st.mode)?,
            None => dir.chmod(st.mode)?,
        }
    }
    Ok(())
}

/// Copies the xattrs of `src` (child `src_name` of `src_dir`, or the dir itself) to `dst`
/// (without owner xattrs when the upper writes its own),
/// leaving out the overlay's own. Xattrs the upper filesystem refuses for this type or this
/// user (user xattrs on special files, `security.*` unprivileged) are skipped.
pub(super) fn copy_xattrs(
    up: &Upper,
    src_dir: &Dir,
    src_name: Option<&OsStr>,
    dst_dir: &Dir,
    dst_name: Option<&OsStr>,
) -> Result<(), Errno> {
    let keep = |attr: &[u8]| {
        let owner = up.owner_xattr.is_some() && owner_xattr::is_owner_xattr(attr);
        !marker::is_private_xattr(attr) && !owner
    };
    for (attr, value) in src_dir.xattrs(src_name, keep)? {
        let attr = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&attr);
        let set = match dst_name {
            Some(n) => dst_dir.child_xattr_set(n, attr, &value, 0),
            None => dst_dir.xattr_set(attr, &value, 0),
        };
        match set {
            Ok(()) => {}
            Err(e @ (Errno::EPERM | Errno::ENOTSUP | Errno::EACCES)) => {
                log::debug!("copy-up skips xattr {}: {e}", attr.to_string_lossy());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies `size` bytes of `src` into the empty `dst`: a reflink where the filesystem can
/// (`reflink`: the upper filesystem was found to clone; the lower may still be another
/// one), else each data extent by copy_file_range (read/write where that is refused),
/// leaving holes as holes.
pub(super) fn copy_data(src: &File, dst: &File, size: u64, reflink: bool) -> Result<(), Errno> {
    if size == 0 || (reflink && file::clone_file(dst, src).is_ok()) {
        return Ok(());
    }
    let mut pos = 0;
    while pos < size {
        let start = match file::next_data(src, pos) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            // No hole support: everything is data.
            Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => pos,
            Err(e) => return Err(e),
        };
        let end = match file::next_hole(src, start) {
            Ok(Some(e)) => e.min(size),
            Ok(None) => size,
            Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => size,
            Err(e) => return Err(e),
        };
        copy_range(src, start, dst, start, end - start).map_err(|stop| stop.errno)?;
        pos = end.max(start + 1);
    }
    dst.set_len(size).map_err(io_errno)
}

/// A copy that failed: the error, and how many bytes were copied before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CopyStopped {
    /// Bytes copied before the error.
    pub done: u64,
    /// The error.
    pub errno: Errno,
}

/// Copies up to `len` bytes from `src` at `from` to `dst` at `to`, in the kernel where the
/// filesystems allow it and through a buffer where they do not; returns the bytes copied,
/// short only where `src` ends.
pub(super) fn copy_range(
    src: &File,
    mut from: u64,
    dst: &File,
    mut to: u64,
    len: u64,
) -> Result<u64, CopyStopped> {
    let mut kernel_copy = true;
    let mut buf = Vec::new();
    let mut done = 0;
    let stop = |done, errno| CopyStopped { done, errno };
    while done < len {
        let want = ((len - done) as usize).min(CHUNK);
        let n = if kernel_copy {
            match file::copy_range(src, from, dst, to, want) {
                Ok(n) => n,
                Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                    kernel_copy = false;
                    continue;
                }
                Err(e) => return Err(stop(done, e)),
            }
        } else {
            buf.resize(want, 0);
            let n = src
                .read_at(&mut buf, from)
                .map_err(|e| stop(done, io_errno(e)))?;
            let mut written = 0;
            while written < n {
                match dst.write_at(&buf[written..n], to + written as u64) {
                    Ok(0) => return Err(stop(done + written as u64, Errno::EIO)),
                    Ok(m) => written += m,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(stop(done + written as u64, io_errno(e))),
                }
            }
            n
        };
        if n == 0 {
            break;
        }
        from += n as u64;
        to += n as u64;
        done += n as u64;
    }
    Ok(done)
}
