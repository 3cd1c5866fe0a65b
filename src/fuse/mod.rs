//! The thin FUSE adapter: decode a request, call [`crate::fs::Overlay`], answer exactly once.
//! No overlay semantics live here, and nothing of a transport: [`OverlayFs::handle`] serves
//! requests read from `/dev/fuse` and from the io_uring queues alike.

pub mod abi;
pub mod passthrough;
pub mod reply;
pub mod request;
pub mod session;
pub mod tally;
mod uring;

use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use self::abi::{fopen, init};
use self::passthrough::{BackingId, OpenIo, Passthrough};
use self::reply::Reply;
use self::request::{Op, Request};
use crate::config::PassthroughMode;
use crate::fs::{Attr, Caller, NewObject, Overlay, Privileges};
use crate::sys::{caller, Errno};

/// The FUSE face of an [`Overlay`].
#[derive(Debug)]
pub struct OverlayFs {
    core: Arc<Overlay>,
    ttl: Duration,
    /// The connection's `/dev/fuse` descriptor, once mounted: passthrough registers backing
    /// files on it.
    device: OnceLock<Arc<OwnedFd>>,
    passthrough: Passthrough,
}

/// What the kernel offered at INIT and what the daemon takes of it.
#[derive(Debug)]
pub struct Negotiation {
    /// The kernel's flags.
    pub offered: u64,
    /// The flags asked for so far.
    pub wanted: u64,
    /// Filesystems that may stack on backing files (passthrough needs 1).
    pub max_stack_depth: u32,
}

impl Negotiation {
    /// Asks for `flag`; false when the kernel does not offer it.
    pub fn ask(&mut self, flag: u64) -> bool {
        if self.offered & flag == flag {
            self.wanted |= flag;
            true
        } else {
            false
        }
    }
}

/// Flags of every file open. A close sends no FLUSH (one round trip the caller would wait
/// for): writes reach the layer before they are answered, and locks stay in the kernel
/// (FUSE_POSIX_LOCKS is not negotiated), so a flush would have nothing to do.
const FILE_OPEN: u32 = fopen::NOFLUSH;

/// The largest write request the kernel sends (its own cap with 256 pages).
pub const MAX_WRITE: u32 = 1 << 20;

fn caller(req: &Request<'_>) -> Caller {
    Caller {
        uid: req.header.uid,
        gid: req.header.gid,
    }
}

/// The privileges of the process behind a request, read from `/proc` when asked.
struct RequestPrivileges {
    pid: u32,
    gid: u32,
}

impl RequestPrivileges {
    fn of(req: &Request<'_>) -> RequestPrivileges {
        RequestPrivileges {
            pid: req.header.pid,
            gid: req.header.gid,
        }
    }
}

impl Privileges for RequestPrivileges {
    fn fsetid(&self, _uid: u32, _gid: u32) -> bool {
        caller::holds_fsetid(self.pid)
    }

    fn in_group_or_capable(&self, uid: u32, gid: u32) -> bool {
        caller::in_group_or_capable(self.pid, self.gid, uid, gid)
    }

    fn known(&self) -> bool {
        caller::readable(self.pid)
    }
}

fn reply_xattr(value: Result<Vec<u8>, Errno>, size: u32, reply: &mut Reply) {
    match value {
        Ok(v) if size == 0 => reply.xattr_size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.bytes(&v),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(r: Result<(), Errno>, reply: &mut Reply) {
    if let Err(e) = r {
        reply.error(e);
    }
}

impl OverlayFs {
    /// Serves `core`, letting the kernel cache entries and attributes for `ttl`, with FUSE
    /// passthrough as `passthrough` asks, for read-only opens of lower files of a writable
    /// mount too where `lower_passthrough` says so.
    pub fn new(
        core: Arc<Overlay>,
        ttl: Duration,
        passthrough: PassthroughMode,
        lower_passthrough: bool,
    ) -> OverlayFs {
        OverlayFs {
            core,
            ttl,
            device: OnceLock::new(),
            passthrough: Passthrough::new(passthrough, lower_passthrough),
        }
    }

    /// The kernel features to ask for at INIT. Errors when one that was insisted on
    /// (`passthrough=on`) is not to be had.
    pub fn negotiate(&self, n: &mut Negotiation) -> std::io::Result<()> {
        n.ask(init::ASYNC_READ);
        n.ask(init::BIG_WRITES);
        n.ask(init::MAX_PAGES);
        // Lookups in one directory may run in parallel: they take no lock in the core (only
        // changes of one upper directory serialize, on the core's directory locks).
        if !n.ask(init::PARALLEL_DIROPS) {
            log::debug!("kernel lacks FUSE_PARALLEL_DIROPS");
        }
        // No file handles that could outlive the kernel's inode cache: a node forgotten by
        // the kernel cannot be found again from its number alone, so name_to_handle_at is
        // refused (EOPNOTSUPP), as on the kernel overlay without nfs_export. Handles for
        // identification only (AT_HANDLE_FID, fanotify) still work.
        if !n.ask(init::NO_EXPORT_SUPPORT) {
            log::warn!(
                "kernel lacks FUSE_NO_EXPORT_SUPPORT (Linux 6.9+): name_to_handle_at gives \
                 handles that go stale once the kernel drops an inode"
            );
        }
        // Listings carry each entry's attributes, so a walk that stats what it lists needs
        // no lookup round trips; the kernel asks for them only while the caller looks
        // entries up (AUTO), so a plain listing stays cheap.
        if !n.ask(init::DO_READDIRPLUS | init::READDIRPLUS_AUTO) {
            log::debug!("kernel lacks FUSE_DO_READDIRPLUS");
        }
        // The umask is applied here (or a default ACL instead, as the upper filesystem of
        // the kernel overlay does), not by the kernel before it knows the directory.
        if !n.ask(init::DONT_MASK) {
            log::debug!("kernel lacks FUSE_DONT_MASK");
        }
        // The kernel checks POSIX ACLs (read through getxattr) along with the mode bits.
        if self.core.enforces_acls() {
            if n.ask(init::POSIX_ACL) {
                log::info!("POSIX ACLs: checked by the kernel");
            } else {
                log::warn!("POSIX ACLs: kept but not checked (kernel lacks FUSE_POSIX_ACL)");
            }
        }
        self.passthrough.negotiate(n, &self.core)
    }

    /// Notes the connection's device, for passthrough registrations.
    pub fn set_device(&self, device: Arc<OwnedFd>) {
        let _ = self.device.set(device);
    }

    /// The overlay served.
    pub fn core(&self) -> &Arc<Overlay> {
        &self.core
    }

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
    fn reply_entry(&self, reply: &mut Reply, attr: &Attr, generation: u64) {
        reply.entry(self.ttl, self.ttl_for(attr.ino), attr, generation)
    }

    fn reply_made(&self, made: Result<(Attr, u64, Option<u64>), Errno>, reply: &mut Reply) {
        match made {
            Ok((attr, generation, fh)) => {
                if let Some(fh) = fh {
                    // mknod of a regular file opens nothing.
                    self.core.release(fh);
                }
                self.reply_entry(reply, &attr, generation)
            }
            Err(e) => reply.error(e),
        }
    }

    /// Chooses the I/O of the open file `fh` of `ino`: passthrough or cached.
    fn open_io(&self, ino: u64, fh: u64) -> OpenIo {
        self.passthrough
            .choose(&self.core, ino, fh, |file| match self.device.get() {
                Some(device) => BackingId::register(device, file),
                None => Err(Errno::ENODEV),
            })
    }

    /// Serves one request, leaving its answer in `reply` (or marking it silent).
    pub fn handle(&self, req: &Request<'_>, reply: &mut Reply) {
        let ino = req.header.nodeid;
        let core = &self.core;
        match &req.op {
            Op::Lookup { name } => match core.lookup(ino, name) {
                Ok((attr, generation)) => self.reply_entry(reply, &attr, generation),
                Err(Errno::ENOENT) => reply.negative_entry(self.ttl),
                Err(e) => reply.error(e),
            },
            Op::Forget { nlookup } => {
                core.forget(ino, *nlookup);
                reply.silence();
            }
            Op::BatchForget { nodes } => {
                for &(node, nlookup) in nodes {
                    core.forget(node, nlookup);
                }
                reply.silence();
            }
            Op::GetAttr { fh } => match core.getattr(ino, *fh) {
                Ok(attr) => reply.attr(self.ttl_for(attr.ino), &attr),
                Err(e) => reply.error(e),
            },
            Op::SetAttr { fh, set } => {
                let who = RequestPrivileges::of(req);
                let _change = match set.size.map(|_| self.passthrough.begin_change(ino)) {
                    Some(Err(e)) => return reply.error(e),
                    change => change,
                };
                match core.setattr(ino, *fh, set, &who) {
                    Ok(attr) => reply.attr(self.ttl_for(attr.ino), &attr),
                    Err(e) => reply.error(e),
                }
            }
            Op::ReadLink => match core.readlink(ino) {
                Ok(target) => reply.bytes(&target),
                Err(e) => reply.error(e),
            },
            Op::MkNod {
                name,
                mode,
                rdev,
                umask,
            } => {
                let what = if mode & libc::S_IFMT == libc::S_IFREG {
                    NewObject::File
                } else {
                    NewObject::Node(mode & libc::S_IFMT, (*rdev).into())
                };
                let made = core.make(ino, name, what, mode & 0o7777, *umask, caller(req));
                self.reply_made(made, reply);
            }
            Op::MkDir { name, mode, umask } => {
                let made = core.make(
                    ino,
                    name,
                    NewObject::Dir,
                    mode & 0o7777,
                    *umask,
                    caller(req),
                );
                self.reply_made(made, reply);
            }
            Op::Symlink { name, target } => {
                let made = core.make(ino, name, NewObject::Symlink(target), 0o777, 0, caller(req));
                self.reply_made(made, reply);
            }
            Op::Unlink { name } => reply_empty(core.unlink(ino, name), reply),
            Op::RmDir { name } => reply_empty(core.rmdir(ino, name), reply),
            Op::Rename {
                name,
                newdir,
                newname,
                flags,
            } => reply_empty(core.rename(ino, name, *newdir, newname, *flags), reply),
            Op::Link { oldnode, newname } => match core.link(*oldnode, ino, newname) {
                Ok((attr, generation)) => self.reply_entry(reply, &attr, generation),
                Err(e) => reply.error(e),
            },
            Op::Open { flags } => self.open(ino, *flags, reply),
            Op::Read { fh, offset, size } => match core.read(*fh, *offset, *size) {
                Ok(data) => reply.data(data),
                Err(e) => reply.error(e),
            },
            Op::Write { fh, offset, data } => match core.write(*fh, *offset, data) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            },
            Op::CopyFileRange {
                fh_in,
                off_in,
                fh_out,
                off_out,
                len,
                flags,
            } => {
                if *flags != 0 {
                    return reply.error(Errno::EINVAL);
                }
                // The answer's count is 32 bits (the kernel asks for no more, page-aligned).
                let len = (*len).min(u64::from(u32::MAX) & !0xfff);
                match core.copy_file_range((*fh_in, *off_in), (*fh_out, *off_out), len) {
                    Ok(n) => reply.written(n as u32),
                    Err(e) => reply.error(e),
                }
            }
            Op::Lseek { fh, offset, whence } => {
                // The kernel asks only for SEEK_DATA and SEEK_HOLE; it moves the offset itself.
                let Ok(offset) = u64::try_from(*offset) else {
                    return reply.error(Errno::ENXIO);
                };
                match core.seek_data_or_hole(*fh, offset, *whence) {
                    Ok(at) => reply.offset(at),
                    Err(e) => reply.error(e),
                }
            }
            Op::Release { fh } => {
                let backed = self.passthrough.backed(ino);
                if core.release(*fh) && backed {
                    // The last writer closed: what its mappings stored shows at the next stat.
                    core.drop_cached_attrs(ino);
                }
                self.passthrough.release(ino);
            }
            Op::Fsync { fh, datasync } => reply_empty(core.fsync(*fh, *datasync), reply),
            Op::Flush | Op::FsyncDir | Op::Destroy => {}
            Op::OpenDir => match core.opendir(ino) {
                // The kernel may keep listings: a merged directory changes only through this
                // mount, and the kernel drops a cached listing when it changes one.
                Ok(fh) => reply.open(fh, fopen::CACHE_DIR | fopen::KEEP_CACHE, 0),
                Err(e) => reply.error(e),
            },
            Op::ReadDir {
                fh,
                offset,
                size,
                plus,
            } => self.readdir(*fh, *offset, *size as usize, *plus, reply),
            Op::ReleaseDir { fh } => core.releasedir(*fh),
            Op::StatFs => match core.statfs() {
                Ok(s) => reply.statfs(&s),
                Err(e) => reply.error(e),
            },
            Op::SetXattr { name, value, flags } => {
                let who = RequestPrivileges::of(req);
                reply_empty(core.setxattr(ino, name, value, *flags, &who), reply)
            }
            Op::GetXattr { name, size } => reply_xattr(core.getxattr(ino, name), *size, reply),
            Op::ListXattr { size } => reply_xattr(core.listxattr(ino), *size, reply),
            Op::RemoveXattr { name } => {
                let who = RequestPrivileges::of(req);
                reply_empty(core.removexattr(ino, name, &who), reply)
            }
            Op::Access { mask } => reply_empty(core.access(ino, *mask), reply),
            Op::Create { name, mode, umask } => self.create(req, name, *mode, *umask, reply),
            Op::Fallocate {
                fh,
                offset,
                length,
                mode,
            } => reply_empty(core.fallocate(*fh, *offset, *length, *mode), reply),
            // ENOSYS to an interrupt tells the kernel to send no more (nothing is cancelled).
            Op::Interrupt | Op::Unsupported | Op::Init { .. } => reply.error(Errno::ENOSYS),
        }
    }

    fn open(&self, ino: u64, flags: i32, reply: &mut Reply) {
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let _change = match writes.then(|| self.passthrough.begin_change(ino)) {
            Some(Err(e)) => return reply.error(e),
            change => change,
        };
        let fh = match self.core.open(ino, flags) {
            Ok(fh) => fh,
            Err(e) => return reply.error(e),
        };
        match self.open_io(ino, fh) {
            OpenIo::Backed(id) => {
                // Stores through its mappings will bypass the daemon: attributes cached
                // before this open must go (while it is open none are cached, see ttl_for).
                if self.core.attr_volatile(ino) {
                    self.core.drop_cached_attrs(ino);
                }
                reply.open(fh, FILE_OPEN, id.id())
            }
            // Cached pages stay valid: lower layers are frozen for the mount's life, and the
            // upper changes only through this mount.
            // (Not under strictatime: every open's reads must reach the daemon.)
            OpenIo::Cached if self.core.strict_atime() => reply.open(fh, FILE_OPEN, 0),
            OpenIo::Cached => reply.open(fh, FILE_OPEN | fopen::KEEP_CACHE, 0),
        }
    }

    fn readdir(&self, fh: u64, offset: u64, max: usize, plus: bool, reply: &mut Reply) {
        let result = if plus {
            self.core
                .readdirplus(fh, offset, |entry, next, (attr, generation)| {
                    use std::os::unix::ffi::OsStrExt;
                    let ttl = self.ttl_for(entry.ino);
                    let name = entry.name.as_bytes();
                    reply.direntplus(max, self.ttl, ttl, next, name, attr, *generation, entry.ino)
                })
        } else {
            self.core.readdir(fh, offset, |entry, next| {
                use std::os::unix::ffi::OsStrExt;
                reply.dirent(max, entry.ino, next, entry.kind, entry.name.as_bytes())
            })
        };
        if let Err(e) = result {
            reply.error(e);
        }
    }

    fn create(
        &self,
        req: &Request<'_>,
        name: &std::ffi::OsStr,
        mode: u32,
        umask: u32,
        reply: &mut Reply,
    ) {
        let parent = req.header.nodeid;
        let made = self.core.make(
            parent,
            name,
            NewObject::File,
            mode & 0o7777,
            umask,
            caller(req),
        );
        match made {
            Ok((attr, generation, Some(fh))) => {
                // The mount's timeout, for the entry's sake (a zero one would have every new
                // file looked up again). The attributes cannot go stale through a mapping
                // before they are asked for again: a new file must first get a size
                // (ftruncate, fallocate, a write), and each of those refreshes them with
                // ttl_for's zero timeout.
                reply.entry(self.ttl, self.ttl, &attr, generation);
                match self.open_io(attr.ino, fh) {
                    OpenIo::Backed(id) => reply.open(fh, FILE_OPEN, id.id()),
                    OpenIo::Cached => reply.open(fh, FILE_OPEN, 0),
                }
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }
}
