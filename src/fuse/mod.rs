//! The thin FUSE adapter: decode a request, call [`crate::fs::Overlay`], reply exactly once.
//! No overlay semantics live here.

pub mod passthrough;
pub mod session;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    AccessFlags, CopyFileRangeFlags, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use self::passthrough::{OpenIo, Passthrough};
use crate::config::PassthroughMode;
use crate::fs::{Attr, Caller, NewObject, Overlay, Privileges, SetAttr};
use crate::sys::{caller, Errno, FileKind, SetTime};

/// The `fuser::Filesystem` for an [`Overlay`].
#[derive(Debug)]
pub struct OverlayFs {
    core: Arc<Overlay>,
    ttl: Duration,
    /// A duplicate of the session's `/dev/fuse` descriptor, once mounted.
    device: Arc<std::sync::OnceLock<std::os::fd::OwnedFd>>,
    passthrough: Passthrough,
}

impl OverlayFs {
    /// Serves `core`, letting the kernel cache entries and attributes for `ttl`, with FUSE
    /// passthrough as `passthrough` asks.
    pub fn new(core: Arc<Overlay>, ttl: Duration, passthrough: PassthroughMode) -> OverlayFs {
        OverlayFs {
            core,
            ttl,
            device: Arc::default(),
            passthrough: Passthrough::new(passthrough),
        }
    }
}

/// Flags of every file open. A close sends no FLUSH (one round trip the caller would wait
/// for): writes reach the layer before they are answered, and locks stay in the kernel
/// (FUSE_POSIX_LOCKS is not negotiated), so a flush would have nothing to do.
const FILE_OPEN: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

/// The largest write request the kernel sends (its own cap with 256 pages).
const MAX_WRITE: u32 = 1 << 20;

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e as i32)
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: UNIX_EPOCH,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// A negative entry: node id 0 tells the kernel to cache "no such name" for the entry TTL.
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// The privileges of the process behind a request, read from `/proc` when asked.
struct RequestPrivileges<'a>(&'a Request);

impl Privileges for RequestPrivileges<'_> {
    fn fsetid(&self, _uid: u32, _gid: u32) -> bool {
        caller::holds_fsetid(self.0.pid())
    }

    fn in_group_or_capable(&self, uid: u32, gid: u32) -> bool {
        caller::in_group_or_capable(self.0.pid(), self.0.gid(), uid, gid)
    }

    fn known(&self) -> bool {
        caller::readable(self.0.pid())
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::from(t),
    })
}

fn reply_xattr(value: Result<Vec<u8>, Errno>, size: u32, reply: ReplyXattr) {
    match value {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(fuser::Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty(r: Result<(), Errno>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

impl OverlayFs {
    /// How long the kernel may keep the attributes of `ino`: not at all while they can change
    /// without a request (a file open for writing and served by passthrough: stores through
    /// its shared mappings reach the layer's file directly), else the mount's timeout.
    /// (Without passthrough, the kernel moves the times of a mapped store itself.)
    fn ttl_for(&self, ino: u64) -> Duration {
        if self.core.attr_volatile(ino) && self.passthrough.backed(ino) {
            Duration::ZERO
        } else {
            self.ttl
        }
    }

    /// Answers a lookup (or a make, a link) with `attr`: the entry kept for the mount's
    /// timeout, the attributes as [`OverlayFs::ttl_for`] says.
    fn reply_entry(&self, reply: ReplyEntry, attr: &Attr, generation: u64) {
        reply.entry_with_ttls(
            &self.ttl_for(attr.ino),
            &self.ttl,
            &file_attr(attr),
            Generation(generation),
        )
    }

    fn reply_made(&self, made: Result<(Attr, u64, Option<u64>), Errno>, reply: ReplyEntry) {
        match made {
            Ok((attr, generation, fh)) => {
                if let Some(fh) = fh {
                    // mknod of a regular file opens nothing.
                    self.core.release(fh);
                }
                self.reply_entry(reply, &attr, generation)
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}

impl Filesystem for OverlayFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Lookups in one directory may run in parallel: they take no lock in the core (only
        // changes of one upper directory serialize, on the core's directory locks).
        if config
            .add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS)
            .is_err()
        {
            log::debug!("kernel lacks FUSE_PARALLEL_DIROPS");
        }
        // No file handles that could outlive the kernel's inode cache: a node forgotten by
        // the kernel cannot be found again from its number alone, so name_to_handle_at is
        // refused (EOPNOTSUPP), as on the kernel overlay without nfs_export. Handles for
        // identification only (AT_HANDLE_FID, fanotify) still work.
        if config
            .add_capabilities(fuser::InitFlags::FUSE_NO_EXPORT_SUPPORT)
            .is_err()
        {
            log::warn!(
                "kernel lacks FUSE_NO_EXPORT_SUPPORT (Linux 6.9+): name_to_handle_at gives \
                 handles that go stale once the kernel drops an inode"
            );
        }
        // Listings carry each entry's attributes, so a walk that stats what it lists needs
        // no lookup round trips; the kernel asks for them only while the caller looks
        // entries up (AUTO), so a plain listing stays cheap.
        if config
            .add_capabilities(
                fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
            )
            .is_err()
        {
            log::debug!("kernel lacks FUSE_DO_READDIRPLUS");
        }
        // The umask is applied here (or a default ACL instead, as the upper filesystem of
        // the kernel overlay does), not by the kernel before it knows the directory.
        if config
            .add_capabilities(fuser::InitFlags::FUSE_DONT_MASK)
            .is_err()
        {
            log::debug!("kernel lacks FUSE_DONT_MASK");
        }
        // The kernel checks POSIX ACLs (read through getxattr) along with the mode bits.
        if self.core.enforces_acls() {
            match config.add_capabilities(fuser::InitFlags::FUSE_POSIX_ACL) {
                Ok(()) => log::info!("POSIX ACLs: checked by the kernel"),
                Err(_) => {
                    log::warn!("POSIX ACLs: kept but not checked (kernel lacks FUSE_POSIX_ACL)")
                }
            }
        }
        let _ = config.set_max_write(MAX_WRITE);
        self.passthrough.negotiate(config, &self.core)
    }

    fn destroy(&mut self) {
        // The session ended. If the kernel ended the connection (the mount is gone), end
        // the process here: fuser would otherwise unmount the mount point by path, and
        // another mount may sit there by now (a caller that unmounts and mounts again at
        // once, as podman does).
        if let Some(fd) = self.device.get() {
            if crate::sys::fusedev::connection_ended(fd) {
                log::info!("unmounted; exiting");
                std::process::exit(0);
            }
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.core.lookup(parent.0, name) {
            Ok((attr, generation)) => self.reply_entry(reply, &attr, generation),
            Err(Errno::ENOENT) => reply.entry(&self.ttl, &negative_attr(), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.core.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(attr) => reply.attr(&self.ttl_for(attr.ino), &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        match self
            .core
            .setattr(ino.0, fh.map(|f| f.0), &set, &RequestPrivileges(req))
        {
            Ok(attr) => reply.attr(&self.ttl_for(attr.ino), &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.core.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let what = if mode & libc::S_IFMT == libc::S_IFREG {
            NewObject::File
        } else {
            NewObject::Node(mode & libc::S_IFMT, rdev.into())
        };
        let made = self
            .core
            .make(parent.0, name, what, mode & 0o7777, umask, caller(req));
        self.reply_made(made, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let made = self.core.make(
            parent.0,
            name,
            NewObject::Dir,
            mode & 0o7777,
            umask,
            caller(req),
        );
        self.reply_made(made, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.core.unlink(parent.0, name), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.core.rmdir(parent.0, name), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        use std::os::unix::ffi::OsStrExt;
        let what = NewObject::Symlink(target.as_os_str().as_bytes());
        self.reply_made(
            self.core
                .make(parent.0, link_name, what, 0o777, 0, caller(req)),
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self
            .core
            .rename(parent.0, name, newparent.0, newname, flags.bits());
        reply_empty(r, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.core.link(ino.0, newparent.0, newname) {
            Ok((attr, generation)) => self.reply_entry(reply, &attr, generation),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fh = match self.core.open(ino.0, flags.0) {
            Ok(fh) => fh,
            Err(e) => return reply.error(errno(e)),
        };
        match self
            .passthrough
            .choose(&self.core, ino.0, fh, |f| reply.open_backing(f))
        {
            OpenIo::Backed(id) => {
                // Stores through its mappings will bypass the daemon: attributes cached
                // before this open must go (while it is open none are cached, see ttl_for).
                if self.core.attr_volatile(ino.0) {
                    self.core.drop_cached_attrs(ino.0);
                }
                reply.opened_passthrough(FileHandle(fh), FILE_OPEN, &id)
            }
            // Cached pages stay valid: lower layers are frozen for the mount's life, and the
            // upper changes only through this mount.
            // (Not under strictatime: every open's reads must reach the daemon.)
            OpenIo::Cached if self.core.strict_atime() => reply.opened(FileHandle(fh), FILE_OPEN),
            OpenIo::Cached => {
                reply.opened(FileHandle(fh), FILE_OPEN | FopenFlags::FOPEN_KEEP_CACHE)
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.core.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.core.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if !flags.is_empty() {
            return reply.error(errno(Errno::EINVAL));
        }
        // The reply's count is 32 bits (the kernel asks for no more than that, page-aligned).
        let len = len.min(u64::from(u32::MAX) & !0xfff);
        let range = self
            .core
            .copy_file_range((fh_in.0, offset_in), (fh_out.0, offset_out), len);
        match range {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // The kernel asks only for SEEK_DATA and SEEK_HOLE; it moves the offset itself.
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(errno(Errno::ENXIO));
        };
        match self.core.seek_data_or_hole(fh.0, offset, whence) {
            Ok(at) => reply.offset(at as i64),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let backed = self.passthrough.backed(ino.0);
        if self.core.release(fh.0) && backed {
            // The last writer closed: what its mappings stored shows at the next stat.
            self.core.drop_cached_attrs(ino.0);
        }
        self.passthrough.release(ino.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, ds: bool, reply: ReplyEmpty) {
        reply_empty(self.core.fsync(fh.0, ds), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.core.opendir(ino.0) {
            // The kernel may keep listings: a merged directory changes only through this
            // mount, and the kernel drops a cached listing when it changes one.
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.core.readdir(fh.0, offset, |entry, next| {
            reply.add(INodeNo(entry.ino), next, file_type(entry.kind), &entry.name)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let result = self
            .core
            .readdirplus(fh.0, offset, |entry, next, (attr, generation)| {
                let attr = FileAttr {
                    // `.` and `..` carry the listing's numbers; the kernel links no inode to them.
                    ino: INodeNo(entry.ino),
                    ..file_attr(attr)
                };
                reply.add(
                    INodeNo(entry.ino),
                    next,
                    &entry.name,
                    &self.ttl_for(entry.ino),
                    &attr,
                    Generation(*generation),
                )
            });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ds: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.core.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namemax, s.frsize,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let who = RequestPrivileges(req);
        reply_empty(self.core.setxattr(ino.0, name, value, flags, &who), reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(self.core.getxattr(ino.0, name), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(self.core.listxattr(ino.0), size, reply);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let who = RequestPrivileges(req);
        reply_empty(self.core.removexattr(ino.0, name, &who), reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.core.access(ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let made = self.core.make(
            parent.0,
            name,
            NewObject::File,
            mode & 0o7777,
            umask,
            caller(req),
        );
        match made {
            Ok((attr, generation, Some(fh))) => {
                let (attr, generation) = (file_attr(&attr), Generation(generation));
                let io = self
                    .passthrough
                    .choose(&self.core, attr.ino.0, fh, |f| reply.open_backing(f));
                match io {
                    // The mount's timeout, for the entry's sake (a zero one would have every
                    // new file looked up again). The attributes cannot go stale through a
                    // mapping before they are asked for again: a new file must first get a
                    // size (ftruncate, fallocate, a write), and each of those refreshes
                    // them with ttl_for's zero timeout.
                    OpenIo::Backed(id) => reply.created_passthrough(
                        &self.ttl,
                        &attr,
                        generation,
                        FileHandle(fh),
                        FILE_OPEN,
                        &id,
                    ),
                    OpenIo::Cached => {
                        reply.created(&self.ttl, &attr, generation, FileHandle(fh), FILE_OPEN)
                    }
                }
            }
            Ok(_) => reply.error(fuser::Errno::EIO),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.core.fallocate(fh.0, offset, length, mode), reply);
    }
}
