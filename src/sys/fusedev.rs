//! The FUSE connection's device, `/dev/fuse`: opening and cloning it, reading requests,
//! writing answers and notifications, registering passthrough backing files, and telling
//! whether the kernel offers FUSE over io_uring.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{check, Errno};

/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`.
const IOC_CLONE: libc::c_ulong = 0x8004_e500;
/// `FUSE_DEV_IOC_BACKING_OPEN`: `_IOW(229, 1, struct fuse_backing_map)` (16 bytes).
const IOC_BACKING_OPEN: libc::c_ulong = 0x4010_e501;
/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
const IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

/// `struct fuse_backing_map`.
#[repr(C)]
struct BackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

/// `FUSE_NOTIFY_PRUNE` (protocol 7.45, Linux 6.18): drop these cached inodes if unused.
const NOTIFY_PRUNE: i32 = 9;
/// `FUSE_NOTIFY_INVAL_INODE`: drop an inode's cached attributes (and pages in a range).
const NOTIFY_INVAL_INODE: i32 = 2;
/// Node ids per message: the kernel takes any number; this keeps a message to 32 KiB.
const PRUNE_BATCH: usize = 4096;
/// `struct fuse_out_header` (len, error = notification code, unique = 0) and
/// `struct fuse_notify_prune_out` (count, padding, spare).
const PRUNE_HEADERS: usize = 16 + 16;

/// Opens `/dev/fuse` for a new connection.
pub fn open() -> Result<OwnedFd, Errno> {
    let fd = nix::fcntl::open(
        "/dev/fuse",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A second descriptor on the connection of `fd`, with its own request queue wake-ups: each
/// serving thread reads its own.
pub fn clone_connection(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let new = open()?;
    let mut source = fd.as_raw_fd() as u32;
    // SAFETY: IOC_CLONE reads one u32 (the source descriptor) through a valid pointer.
    check(unsafe { libc::ioctl(new.as_raw_fd(), IOC_CLONE, &mut source as *mut u32) }.into())?;
    Ok(new)
}

/// Reads one request into `buf`. `Ok(None)` once the connection has ended (the mount is
/// gone, or the connection was aborted). A request interrupted before it was read is
/// skipped, as the kernel asks (`ENOENT`).
pub fn read_request(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Option<usize>, Errno> {
    loop {
        match nix::unistd::read(fd.as_raw_fd(), buf) {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::ENODEV) => return Ok(None),
            Err(Errno::ENOENT | Errno::EINTR | Errno::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes one message made of `parts` in a single write, as the device requires.
pub fn write_message(fd: BorrowedFd<'_>, parts: &[&[u8]]) -> Result<(), Errno> {
    let slices: Vec<std::io::IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| std::io::IoSlice::new(p))
        .collect();
    nix::sys::uio::writev(fd, &slices)?;
    Ok(())
}

/// Registers `file` as a passthrough backing file of the connection; returns its id.
pub fn backing_open(fd: BorrowedFd<'_>, file: &File) -> Result<u32, Errno> {
    let map = BackingMap {
        fd: file.as_raw_fd(),
        flags: 0,
        padding: 0,
    };
    // SAFETY: IOC_BACKING_OPEN reads one struct fuse_backing_map through a valid pointer.
    let id = check(
        unsafe { libc::ioctl(fd.as_raw_fd(), IOC_BACKING_OPEN, &map as *const BackingMap) }.into(),
    )?;
    Ok(id as u32)
}

/// Drops the connection's reference to backing file `id`.
pub fn backing_close(fd: BorrowedFd<'_>, id: u32) -> Result<(), Errno> {
    // SAFETY: IOC_BACKING_CLOSE reads one u32 through a valid pointer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), IOC_BACKING_CLOSE, &id as *const u32) }.into())?;
    Ok(())
}

/// Asks the kernel to drop the cached attributes of inode `ino` (and no pages). `ENOENT`
/// when the kernel no longer knows the inode.
pub fn inval_inode(fd: BorrowedFd<'_>, ino: u64) -> Result<(), Errno> {
    let mut msg = Vec::with_capacity(40);
    msg.extend_from_slice(&40u32.to_ne_bytes());
    msg.extend_from_slice(&NOTIFY_INVAL_INODE.to_ne_bytes());
    msg.extend_from_slice(&0u64.to_ne_bytes());
    msg.extend_from_slice(&ino.to_ne_bytes());
    // A negative offset: attributes only.
    msg.extend_from_slice(&(-1i64).to_ne_bytes());
    msg.extend_from_slice(&0i64.to_ne_bytes());
    nix::unistd::write(fd, &msg)?;
    Ok(())
}

/// Asks the kernel to drop its cached inodes `ids`, and their directory entries, where
/// nothing uses them: an open file, a working directory, a mount on the entry or a cached
/// child keeps an inode. For each one dropped the kernel sends a FORGET, as under memory
/// pressure. An empty `ids` sends one empty message, which tells whether the kernel knows
/// the notification: `EINVAL` before Linux 6.18.
pub fn prune(fd: &OwnedFd, ids: &[u64]) -> Result<(), Errno> {
    let mut batches: Vec<&[u64]> = ids.chunks(PRUNE_BATCH).collect();
    if batches.is_empty() {
        batches.push(&[]);
    }
    let mut msg = Vec::with_capacity(PRUNE_HEADERS + 8 * PRUNE_BATCH.min(ids.len()));
    for batch in batches {
        let len = PRUNE_HEADERS + 8 * batch.len();
        msg.clear();
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&NOTIFY_PRUNE.to_ne_bytes());
        msg.extend_from_slice(&0u64.to_ne_bytes());
        msg.extend_from_slice(&(batch.len() as u32).to_ne_bytes());
        msg.extend_from_slice(&[0; 12]);
        for id in batch {
            msg.extend_from_slice(&id.to_ne_bytes());
        }
        // One message per write: the device takes it whole or not at all.
        nix::unistd::write(fd.as_fd(), &msg)?;
    }
    Ok(())
}

/// Whether the kernel offers FUSE over io_uring to new connections: `Some(true)` when
/// `/sys/module/fuse/parameters/enable_uring` says `Y`, `None` when the kernel has no such
/// parameter (before Linux 6.14, or built without `CONFIG_FUSE_IO_URING`).
pub fn ring_enabled() -> Option<bool> {
    let text = std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring").ok()?;
    Some(matches!(text.trim(), "Y" | "1"))
}
