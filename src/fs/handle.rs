//! Open files: reads, writes and syncs through a descriptor of the object's current copy.
//! A descriptor opened on a lower file before its copy-up is switched to the upper copy at
//! its next read, so it sees the data written since.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::node::Node;
use super::{Atime, Overlay};
use crate::sys::{file, io_errno, Errno, FileKind, Stat};

/// An open merged file.
#[derive(Debug)]
pub(super) struct Handle {
    node: Arc<Node>,
    file: RwLock<Arc<File>>,
    /// The descriptor is on the upper filesystem (final: the object never moves back down).
    on_upper: AtomicBool,
    /// The descriptor is read-write with no status flags, so it can serve as the inode's
    /// passthrough backing file as it is.
    shareable: bool,
    /// Opened for writing: counted in the node's writers while open.
    writer: bool,
}

impl Handle {
    fn file(&self) -> Arc<File> {
        self.file.read().clone()
    }

    /// The descriptor, if it is on the upper filesystem (so changes through it are allowed).
    pub(super) fn writable(&self) -> Option<Arc<File>> {
        self.on_upper.load(Ordering::Acquire).then(|| self.file())
    }

    /// Status of the open object.
    pub(super) fn stat(&self) -> Result<Stat, Errno> {
        file::fstat(&self.file())
    }

    /// Xattr `name` of the open object.
    pub(super) fn xattr_get(&self, name: &OsStr) -> Result<Vec<u8>, Errno> {
        file::xattr_get(&self.file(), name)
    }
}

/// Flags passed on to the layer's open: the access mode and sync semantics. Appending is the
/// kernel's job (it sends the offset), and direct I/O would need aligned buffers.
fn layer_flags(flags: i32) -> i32 {
    flags & (libc::O_ACCMODE | libc::O_SYNC | libc::O_DSYNC)
}

impl Overlay {
    /// Opens regular file `ino` with open(2) `flags`; writing (or `O_TRUNC`) copies a lower
    /// file up first.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64, Errno> {
        let node = self.nodes.get(ino)?;
        match node.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        }
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if write {
            self.writable()?;
            self.copy_up_with(&node, flags & libc::O_TRUNC != 0)?;
        }
        // Read before locating: a copy-up finishing in between leaves the handle marked
        // lower, and its next read moves it up (objects never move back down).
        let on_upper = self.on_upper(&node);
        let (dir, name) = self.locate(&node)?;
        let f = dir.open_file_atime(&name, layer_flags(flags), self.noatime(on_upper))?;
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            f.set_len(0).map_err(io_errno)?;
        }
        drop(dir);
        let shareable = layer_flags(flags) == libc::O_RDWR;
        Ok(self.add_handle(node, f, on_upper, shareable, write))
    }

    /// Registers `f`, an open descriptor of `node`; `on_upper` says it is on the upper
    /// filesystem (writes through it are allowed), `shareable` that it is read-write with
    /// no status flags, `writer` that it was opened for writing.
    ///
    /// While a writer is open, the times of the object can change with no request at all
    /// (a store through a shared mapping of a passthrough file): its attributes are then
    /// [`Overlay::attr_volatile`].
    pub(super) fn add_handle(
        &self,
        node: Arc<Node>,
        f: File,
        on_upper: bool,
        shareable: bool,
        writer: bool,
    ) -> u64 {
        if writer {
            node.add_writer();
        }
        let fh = self
            .next_handle
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.files.insert(
            fh,
            Arc::new(Handle {
                node,
                file: RwLock::new(Arc::new(f)),
                on_upper: AtomicBool::new(on_upper),
                shareable,
                writer,
            }),
        );
        fh
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>, Errno> {
        self.files.get(&fh).map(|h| h.clone()).ok_or(Errno::EBADF)
    }

    /// An open handle of node `ino`, if any (for the status of an unlinked file).
    pub(super) fn any_handle(&self, ino: u64) -> Option<Arc<Handle>> {
        self.files
            .iter()
            .find(|h| h.node.id == ino)
            .map(|h| h.clone())
    }

    /// The descriptor to read `h` through: re-opened on the upper copy once there is one.
    fn read_file(&self, h: &Handle) -> Result<Arc<File>, Errno> {
        if !h.on_upper.load(Ordering::Acquire) && self.on_upper(&h.node) && !h.node.is_unlinked() {
            let (dir, name) = self.locate(&h.node)?;
            let f = Arc::new(dir.open_file_atime(&name, libc::O_RDONLY, self.noatime(true))?);
            *h.file.write() = f.clone();
            h.on_upper.store(true, Ordering::Release);
            return Ok(f);
        }
        Ok(h.file())
    }

    /// Whether reads through a descriptor of an object leave its access time: always for a
    /// lower object, for an upper one (`on_upper`) under `noatime`.
    fn noatime(&self, on_upper: bool) -> bool {
        !on_upper || self.view.atime == Atime::Never
    }

    /// True under `strictatime`: pages of a file are not kept from one open to the next, so
    /// every open's reads reach the layer (whose mount copy updates the access time).
    pub fn strict_atime(&self) -> bool {
        self.view.atime == Atime::Strict
    }

    /// The descriptor a read of open file `fh` goes through now, for a caller that reads it
    /// itself (the io_uring transport reads straight into its buffers).
    pub fn file_to_read(&self, fh: u64) -> Result<Arc<File>, Errno> {
        let h = self.handle(fh)?;
        self.read_file(&h)
    }

    /// Reads up to `size` bytes at `offset` from open file `fh` (short only at end of file).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let file = self.file_to_read(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let at = offset.checked_add(done as u64).ok_or(Errno::EINVAL)?;
            match file.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_errno(e)),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Writes `data` at `offset` through open file `fh`; returns the bytes written.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let h = self.handle(fh)?;
        if !h.on_upper.load(Ordering::Acquire) {
            // Opened read-only: a write through it is the kernel's mistake, never the lower's.
            return Err(Errno::EBADF);
        }
        offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        h.file().write_all_at(data, offset).map_err(io_errno)?;
        Ok(data.len() as u32)
    }

    /// Copies up to `len` bytes from open file `fh_in` at `off_in` to open file `fh_out` at
    /// `off_out` (copy_file_range(2), done here so the data never passes through the caller);
    /// returns the bytes copied, short where the source ends or where an error stopped the
    /// copy after some bytes (the error then comes with the next call, as from the kernel).
    pub fn copy_file_range(
        &self,
        (fh_in, off_in): (u64, u64),
        (fh_out, off_out): (u64, u64),
        len: u64,
    ) -> Result<u64, Errno> {
        let src = self.read_file(&*self.handle(fh_in)?)?;
        // Opened read-only: the kernel checks the access mode, so this never lets a write
        // through to a lower file.
        let dst = self.handle(fh_out)?.writable().ok_or(Errno::EBADF)?;
        off_in.checked_add(len).ok_or(Errno::EINVAL)?;
        off_out.checked_add(len).ok_or(Errno::EFBIG)?;
        match super::copyup::copy_range(&src, off_in, &dst, off_out, len) {
            Ok(n) => Ok(n),
            Err(stop) if stop.done > 0 => Ok(stop.done),
            Err(stop) => Err(stop.errno),
        }
    }

    /// Where the next data (`SEEK_DATA`) or hole (`SEEK_HOLE`) at or after `offset` starts
    /// in open file `fh`; ENXIO past the last data, or at or past the end.
    pub fn seek_data_or_hole(&self, fh: u64, offset: u64, whence: i32) -> Result<u64, Errno> {
        let f = self.read_file(&*self.handle(fh)?)?;
        let found = match whence {
            libc::SEEK_DATA => file::next_data(&f, offset)?,
            libc::SEEK_HOLE => file::next_hole(&f, offset)?,
            _ => return Err(Errno::EINVAL),
        };
        found.ok_or(Errno::ENXIO)
    }

    /// fsync (or fdatasync with `datasync`) of open file `fh`.
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<(), Errno> {
        let h = self.handle(fh)?;
        if !h.on_upper.load(Ordering::Acquire) {
            return Ok(());
        }
        let f = h.file();
        if datasync {
            f.sync_data()
        } else {
            f.sync_all()
        }
        .map_err(io_errno)
    }

    /// fallocate(2) on open file `fh`.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<(), Errno> {
        let h = self.handle(fh)?;
        if !h.on_upper.load(Ordering::Acquire) {
            return Err(Errno::EBADF);
        }
        file::fallocate(&h.file(), mode, offset, len)
    }

    /// The descriptor of open file `fh` if it can change the object (for ftruncate).
    pub(super) fn writable_file(&self, fh: u64) -> Option<Arc<File>> {
        self.files.get(&fh)?.writable()
    }

    /// A descriptor the kernel can do the I/O of open file `fh` on by itself (FUSE
    /// passthrough), or `None` where that would break a guarantee.
    ///
    /// An upper object gets a read-write descriptor, whatever `fh` was opened for: the kernel
    /// keeps one backing file per inode, shared by every open of it. That is the handle's own
    /// where it is plain read-write (the kernel takes its own reference), else a new one. A
    /// lower object gets its read-only descriptor only when `lower` allows it (no upper
    /// layer, or `lower_passthrough`): a passthrough read keeps reading the file it was given,
    /// so a lower backing file does not follow a copy-up the way [`Overlay::read`] does.
    pub fn passthrough_file(&self, fh: u64, lower: bool) -> Option<Arc<File>> {
        let h = self.handle(fh).ok()?;
        if h.on_upper.load(Ordering::Acquire) {
            if h.node.is_unlinked() {
                return None;
            }
            if h.shareable {
                return Some(h.file());
            }
            let (dir, name) = self.locate(&h.node).ok()?;
            return dir
                .open_file_atime(&name, libc::O_RDWR, self.noatime(true))
                .ok()
                .map(Arc::new);
        }
        if lower {
            return Some(h.file());
        }
        None
    }

    /// True when open file `fh` is a descriptor of the upper layer's file (false for a lower
    /// one, and for an unknown `fh`).
    pub fn handle_on_upper(&self, fh: u64) -> bool {
        self.files
            .get(&fh)
            .is_some_and(|h| h.on_upper.load(Ordering::Acquire))
    }

    /// Closes open file `fh`; true when it was the last one open for writing of its object.
    pub fn release(&self, fh: u64) -> bool {
        self.files
            .remove(&fh)
            .is_some_and(|(_, h)| h.writer && h.node.drop_writer())
    }

    /// Drops what the kernel caches of the attributes of `ino` (they changed without a
    /// request: stores through a shared mapping of a passthrough file).
    pub fn drop_cached_attrs(&self, ino: u64) {
        self.invalidate(ino);
    }

    /// True while the attributes of `ino` can change without a request (a handle that can
    /// write it is open): the kernel should not cache them.
    pub fn attr_volatile(&self, ino: u64) -> bool {
        self.nodes.get(ino).is_ok_and(|n| n.has_writers())
    }
}
