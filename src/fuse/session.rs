//! Mounting an [`OverlayFs`] and serving it until it is unmounted or told to stop: the
//! INIT handshake, then the classic transport (threads reading `/dev/fuse`) or the io_uring
//! one, both calling [`OverlayFs::handle`].

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use super::abi::{self, init, PutFields};
use super::reply::Reply;
use super::request::{Op, Request};
use super::tally::Tally;
use super::uring::{self, Ring};
use super::{Negotiation, OverlayFs, MAX_WRITE};
use crate::config::UringMode;
use crate::fs::readahead::{Job, Readahead};
use crate::fs::{Bound, Invalidator, Overlay};
use crate::sys::fusemount::{self, FuseMount};
use crate::sys::{fusedev, process, Errno};

/// How the FUSE mount itself is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// What `/proc/mounts` shows as the source.
    pub fsname: String,
    /// Kernel mount flags.
    pub flags: KernelFlags,
    /// Let every user reach the mount (the kernel still checks permissions).
    pub allow_other: bool,
    /// Request-serving threads, each on its own cloned `/dev/fuse` descriptor.
    pub threads: usize,
    /// Inodes kept cached before the oldest unused ones are dropped (0: no limit).
    pub max_inodes: usize,
    /// Subdirectories read ahead of a tree walk (0: no readahead).
    pub readahead: usize,
    /// Whether requests travel over io_uring.
    pub uring: UringMode,
}

/// The kernel mount flags of a FUSE mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFlags {
    /// `ro`.
    pub read_only: bool,
    /// `nodev`.
    pub nodev: bool,
    /// `nosuid`.
    pub nosuid: bool,
    /// `noexec`.
    pub noexec: bool,
    /// `noatime`.
    pub noatime: bool,
}

/// A live mount, ready to serve.
#[derive(Debug)]
pub struct Mounted {
    fs: Arc<OverlayFs>,
    device: Arc<OwnedFd>,
    mountpoint: PathBuf,
    threads: usize,
    /// The io_uring queues serving the mount, when they do.
    ring: Option<Ring>,
}

/// The size of a request buffer: the largest WRITE and its headers, rounded to a page.
const REQUEST_BUFFER: usize = MAX_WRITE as usize + 4096;

/// Mounts `fs` as `spec` says. Returns once the kernel has completed the FUSE handshake, so
/// the mount is usable when this returns.
pub fn mount(fs: OverlayFs, spec: &MountSpec) -> io::Result<Mounted> {
    let device = fusemount::mount(&FuseMount {
        mountpoint: &spec.mountpoint,
        fsname: &spec.fsname,
        subtype: "overlayfuse",
        read_only: spec.flags.read_only,
        nodev: spec.flags.nodev,
        nosuid: spec.flags.nosuid,
        noexec: spec.flags.noexec,
        noatime: spec.flags.noatime,
        allow_other: spec.allow_other,
    })
    .map_err(|e| io::Error::other(e.to_string()))?;
    let device = Arc::new(device);
    fs.set_device(device.clone());
    let ring_agreed = match handshake(&fs, device.as_fd(), spec.uring) {
        Ok(agreed) => agreed,
        Err(e) => {
            // Nothing will serve this mount: take it away again.
            let _ = fusemount::unmount(&spec.mountpoint, true);
            return Err(e);
        }
    };
    let core = fs.core().clone();
    if spec.max_inodes > 0 {
        bound_inodes(&core, device.as_fd().try_clone_to_owned()?, spec.max_inodes)?;
    }
    if spec.readahead > 0 {
        read_ahead(&core, spec.readahead)?;
    }
    let notifier = device.clone();
    core.set_invalidator(Invalidator(Box::new(move |id| {
        // An inode the kernel dropped gives ENOENT: nothing to drop then.
        let _ = fusedev::inval_inode(notifier.as_fd(), id);
    })));
    let fs = Arc::new(fs);
    let ring = if ring_agreed {
        match uring::start(&fs, &device) {
            Ok(ring) => Some(ring),
            Err(e) if spec.uring == UringMode::On => {
                let _ = fusemount::unmount(&spec.mountpoint, true);
                return Err(io::Error::other(format!(
                    "uring=on: cannot register the io_uring queues: {e}"
                )));
            }
            Err(e) => {
                log::warn!("io_uring queues not registered ({e}): serving /dev/fuse");
                None
            }
        }
    } else {
        None
    };
    Ok(Mounted {
        fs,
        device,
        mountpoint: spec.mountpoint.clone(),
        threads: spec.threads.max(1),
        ring,
    })
}

/// Reads the kernel's INIT request and answers it with what `fs` asks for. True when FUSE
/// over io_uring was agreed on.
fn handshake(fs: &OverlayFs, device: BorrowedFd<'_>, uring: UringMode) -> io::Result<bool> {
    let mut buf = vec![0u8; REQUEST_BUFFER];
    let n = fusedev::read_request(device, &mut buf)?
        .ok_or_else(|| io::Error::other("the connection ended before INIT"))?;
    let req = Request::from_device(&buf[..n])?;
    let Op::Init {
        major,
        minor,
        max_readahead,
        flags,
    } = req.op
    else {
        return Err(io::Error::other(format!(
            "the kernel sent opcode {} before INIT",
            req.header.opcode
        )));
    };
    let unique = req.header.unique;
    if major != abi::MAJOR || minor < abi::MIN_MINOR {
        send_error(device, unique, Errno::EPROTO);
        return Err(io::Error::other(format!(
            "the kernel speaks FUSE {major}.{minor}; overlayfuse needs {}.{} or later",
            abi::MAJOR,
            abi::MIN_MINOR
        )));
    }
    let mut n = Negotiation {
        offered: flags,
        wanted: 0,
        max_stack_depth: 0,
    };
    n.ask(init::INIT_EXT);
    let ring = uring != UringMode::Off && n.ask(init::OVER_IO_URING);
    if uring == UringMode::On && !ring {
        send_error(device, unique, Errno::EPROTO);
        return Err(io::Error::other(RING_OFF));
    }
    if let Err(e) = fs.negotiate(&mut n) {
        send_error(device, unique, Errno::EPROTO);
        return Err(e);
    }
    let mut body = Vec::with_capacity(abi::INIT_OUT);
    body.put_u32(abi::MAJOR);
    body.put_u32(minor.min(abi::MINOR));
    body.put_u32(max_readahead);
    body.put_u32(n.wanted as u32);
    body.put_u16(16); // max_background, as libfuse and fuser
    body.put_u16(12); // congestion_threshold: 3/4 of it
    body.put_u32(MAX_WRITE);
    body.put_u32(1); // time_gran: nanoseconds
    body.put_u16((MAX_WRITE / 4096) as u16); // max_pages
    body.put_u16(0);
    body.put_u32((n.wanted >> 32) as u32);
    body.put_u32(n.max_stack_depth);
    body.put_zeros(abi::INIT_OUT - body.len());
    let mut reply = Reply::default();
    reply.bytes(&body);
    send(device, unique, &reply).map_err(io::Error::from)?;
    log::debug!(
        "FUSE {major}.{minor}: offered {flags:#x}, asked for {:#x}",
        n.wanted
    );
    Ok(ring)
}

/// Why `uring=on` cannot be had, and how to get it.
pub const RING_OFF: &str = "uring=on: the kernel does not offer FUSE over io_uring: as root, \
    echo 1 > /sys/module/fuse/parameters/enable_uring (Linux 6.14+), or use uring=auto";

/// Sends `reply` as the answer to request `unique`. An answer to a request the kernel has
/// given up on (`ENOENT`) is no error.
pub(super) fn send(device: BorrowedFd<'_>, unique: u64, reply: &Reply) -> Result<(), Errno> {
    let (error, body, data) = reply.parts();
    let mut header = Vec::with_capacity(abi::OUT_HEADER);
    header.put_u32((abi::OUT_HEADER + reply.len()) as u32);
    header.put_u32(error as u32);
    header.put_u64(unique);
    match fusedev::write_message(device, &[&header, body, data]) {
        Err(Errno::ENOENT) | Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}

fn send_error(device: BorrowedFd<'_>, unique: u64, e: Errno) {
    let mut reply = Reply::default();
    reply.error(e);
    let _ = send(device, unique, &reply);
}

/// Keeps the inodes the kernel caches, and the daemon's nodes with them, near `limit`: a
/// thread asks the kernel to drop the oldest unused ones each time the node table is full.
/// On a kernel without the prune notification (before Linux 6.18) nothing is bounded; the
/// kernel then drops inodes only under memory pressure.
fn bound_inodes(core: &Arc<Overlay>, device: OwnedFd, limit: usize) -> io::Result<()> {
    if let Err(e) = fusedev::prune(&device, &[]) {
        log::info!(
            "max_inodes={limit} not applied: this kernel cannot be asked to drop cached \
             inodes ({e}; FUSE_NOTIFY_PRUNE needs Linux 6.18)"
        );
        return Ok(());
    }
    let (due, rounds) = mpsc::sync_channel::<()>(1);
    let pruner = core.clone();
    std::thread::Builder::new()
        .name("prune".into())
        .spawn(move || {
            for () in rounds {
                let held = pruner.live_nodes();
                let ids = pruner.prune_candidates();
                log::info!(
                    "inode cache full ({held} held, max_inodes={limit}): asking the kernel \
                     to drop the {} oldest",
                    ids.len()
                );
                if let Err(e) = fusedev::prune(&device, &ids) {
                    log::warn!("cannot ask the kernel to drop cached inodes: {e}");
                    return;
                }
            }
        })?;
    core.set_bound(Bound {
        limit,
        on_full: Box::new(move || {
            // A round already queued covers this one too.
            let _ = due.try_send(());
        }),
    });
    Ok(())
}

/// Starts the thread that reads `window` subdirectories ahead of tree walks. Work it is
/// too far behind to take is dropped: readahead is a hint.
fn read_ahead(core: &Arc<Overlay>, window: usize) -> io::Result<()> {
    let (queue, jobs) = mpsc::sync_channel::<Job>(64);
    let reader = core.clone();
    std::thread::Builder::new()
        .name("readahead".into())
        .spawn(move || {
            for job in jobs {
                log::debug!(
                    "readahead: {} subdirectories of {}",
                    job.names.len(),
                    job.parent.path().display()
                );
                reader.read_ahead(&job);
            }
        })?;
    core.set_readahead(Readahead::new(
        window,
        Box::new(move |job| {
            let _ = queue.try_send(job);
        }),
    ));
    Ok(())
}

impl Mounted {
    /// Serves requests until the mount goes away: `umount`, `fusermount3 -u`, or one of the
    /// termination signals (which unmount it). The caller must have blocked those signals
    /// before any thread was started, so only the watcher thread receives them.
    pub fn serve(self) -> io::Result<()> {
        let mountpoint = self.mountpoint.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let signals = process::termination_signals();
                if let Ok(sig) = process::wait_signal(&signals) {
                    log::info!("{sig}: unmounting {}", mountpoint.display());
                    if let Err(e) = fusemount::unmount(&mountpoint, false) {
                        log::warn!("unmount {}: {e}; detaching it", mountpoint.display());
                        if let Err(e) = fusemount::unmount(&mountpoint, true) {
                            log::error!("cannot detach {}: {e}", mountpoint.display());
                        }
                    }
                }
            })?;
        // With the ring, one /dev/fuse thread serves what the ring does not carry.
        let (classic, queues) = match self.ring {
            Some(ring) => (1, ring.threads),
            None => {
                log::info!("transport: /dev/fuse, {} threads", self.threads);
                (self.threads, Vec::new())
            }
        };
        let mut workers = Vec::with_capacity(classic);
        for i in 1..classic {
            let fd = fusedev::clone_connection(self.device.as_fd())?;
            let fs = self.fs.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("fuse-{i}"))
                    .spawn(move || serve_device(&fs, fd.as_fd()))?,
            );
        }
        let join = |w: std::thread::JoinHandle<io::Result<Tally>>| {
            w.join()
                .unwrap_or_else(|_| Err(io::Error::other("a serving thread panicked")))
        };
        let mut device = serve_device(&self.fs, self.device.as_fd());
        for w in workers {
            device = device.and_then(|mut t| {
                t.add(&join(w)?);
                Ok(t)
            });
        }
        let mut ring: io::Result<Tally> = Ok(Tally::default());
        for q in queues {
            ring = ring.and_then(|mut t| {
                t.add(&join(q)?);
                Ok(t)
            });
        }
        let (device, ring) = (device?, ring?);
        let mut all = device.clone();
        all.add(&ring);
        log::info!(
            "unmounted after {} requests ({} through io_uring, {} through /dev/fuse): {}; \
             exiting",
            all.total(),
            ring.total(),
            device.total(),
            all.describe()
        );
        Ok(())
    }
}

/// The classic transport: reads requests from `device` and answers them, until the
/// connection ends; returns what it served.
fn serve_device(fs: &OverlayFs, device: BorrowedFd<'_>) -> io::Result<Tally> {
    let mut buf = vec![0u8; REQUEST_BUFFER];
    let mut reply = Reply::default();
    let mut served = Tally::default();
    loop {
        let Some(n) = fusedev::read_request(device, &mut buf)? else {
            return Ok(served);
        };
        reply.reset();
        let unique = match Request::from_device(&buf[..n]) {
            Ok(req) => {
                served.count(req.header.opcode);
                fs.handle(&req, &mut reply);
                req.header.unique
            }
            Err(e) => match abi::InHeader::parse(&buf[..n]) {
                Some(h) => {
                    log::warn!("malformed request (opcode {}): {e}", h.opcode);
                    reply.error(e);
                    h.unique
                }
                None => continue,
            },
        };
        if reply.is_silent() {
            continue;
        }
        match send(device, unique, &reply) {
            Ok(()) => {}
            Err(Errno::ENODEV) => return Ok(served),
            Err(e) => log::warn!("cannot answer request {unique}: {e}"),
        }
    }
}
