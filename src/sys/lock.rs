//! flock(2): the advisory locks that tie an upper and a work dir to one live mount.

use std::fs::File;
use std::os::fd::AsRawFd;

use super::{check, Errno};

/// Takes an exclusive flock on `file` without waiting: `Ok(false)` when another open file
/// description holds one. The lock lives as long as `file`'s description (forked copies
/// included) and dies with the last process holding it.
pub fn try_exclusive(file: &File) -> Result<bool, Errno> {
    // SAFETY: the fd is live for the duration of the call; flock only reads it.
    let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    match check(ret.into()) {
        Ok(_) => Ok(true),
        Err(Errno::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes an exclusive flock on `file`, waiting for another holder to let go.
pub fn exclusive(file: &File) -> Result<(), Errno> {
    wait_for_lock(file, libc::LOCK_EX)
}

/// Takes a shared flock on `file`, waiting while another holds an exclusive one.
pub fn shared(file: &File) -> Result<(), Errno> {
    wait_for_lock(file, libc::LOCK_SH)
}

fn wait_for_lock(file: &File, operation: i32) -> Result<(), Errno> {
    loop {
        // SAFETY: the fd is live for the duration of the call; flock only reads it.
        let ret = unsafe { libc::flock(file.as_raw_fd(), operation) };
        match check(ret.into()) {
            Err(Errno::EINTR) => continue,
            r => return r.map(drop),
        }
    }
}
