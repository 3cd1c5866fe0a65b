//! The FUSE connection's device, `/dev/fuse`, beyond what fuser does with it: whether the
//! kernel has ended the connection, and the one notification fuser cannot send.

use std::os::fd::{AsFd, OwnedFd};

use super::Errno;

/// `FUSE_NOTIFY_PRUNE` (protocol 7.45, Linux 6.18): drop these cached inodes if unused.
const NOTIFY_PRUNE: i32 = 9;
/// Node ids per message: the kernel takes any number; this keeps a message to 32 KiB.
const PRUNE_BATCH: usize = 4096;
/// `struct fuse_out_header` (len, error = notification code, unique = 0) and
/// `struct fuse_notify_prune_out` (count, padding, spare).
const PRUNE_HEADERS: usize = 16 + 16;

/// True when the FUSE connection of `/dev/fuse` descriptor `fd` has been ended by the kernel
/// (its mount is gone): the device then polls `POLLERR`.
pub fn connection_ended(fd: &OwnedFd) -> bool {
    let mut fds = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::empty(),
    )];
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
        Ok(1) => fds[0]
            .revents()
            .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLERR)),
        _ => false,
    }
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
        nix::unistd::write(fd, &msg)?;
    }
    Ok(())
}
