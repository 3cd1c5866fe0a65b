//! FUSE passthrough: which open files the kernel reads, writes and maps by itself, on the
//! layer's own file, without a round trip through the daemon.
//!
//! The kernel keeps one backing file per inode while any passthrough open of it lives, and
//! refuses to mix passthrough and cached opens of one inode (EIO in both orders). So the way
//! an inode does its I/O is chosen at its first open and held until its last close: every
//! later open shares the first one's backing file, or stays cached with it.
//!
//! What gets a backing file is decided by [`Overlay::passthrough_file`]: upper files always
//! (read-write, so a later write open can share it), lower files only where they can never be
//! copied up. A lower file of a writable mount stays on cached I/O, so a descriptor opened
//! before a copy-up reads the new data after it, and no write can ever reach a lower file.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::abi::init;
use super::Negotiation;
use crate::config::PassthroughMode;
use crate::fs::Overlay;
use crate::sys::{fusedev, Errno};

/// A file registered with the kernel as a backing file; unregistered when dropped (open
/// files keep the kernel's own reference).
#[derive(Debug)]
pub struct BackingId {
    device: Arc<OwnedFd>,
    id: u32,
}

impl BackingId {
    /// Registers `file` on the connection of `device`.
    pub fn register(device: &Arc<OwnedFd>, file: &File) -> Result<BackingId, Errno> {
        let id = fusedev::backing_open(device.as_fd(), file)?;
        Ok(BackingId {
            device: device.clone(),
            id,
        })
    }

    /// The id an open answer carries.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for BackingId {
    fn drop(&mut self) {
        if let Err(e) = fusedev::backing_close(self.device.as_fd(), self.id) {
            log::debug!(
                "passthrough: cannot unregister backing file {}: {e}",
                self.id
            );
        }
    }
}

/// How one open file does its I/O.
#[derive(Clone, Debug)]
pub enum OpenIo {
    /// In the kernel, on this backing file.
    Backed(Arc<BackingId>),
    /// Through the daemon's read and write handlers (and the kernel's page cache).
    Cached,
}

#[derive(Debug)]
struct InodeIo {
    io: OpenIo,
    opens: usize,
}

/// The passthrough state of a mount: whether the kernel agreed to it, and the I/O mode of
/// every inode with open files.
#[derive(Debug)]
pub struct Passthrough {
    mode: PassthroughMode,
    /// The kernel accepted passthrough at INIT: opens are tracked per inode.
    negotiated: AtomicBool,
    /// Registering a backing file failed once: new inodes stay cached.
    failed: AtomicBool,
    inodes: DashMap<u64, InodeIo>,
}

impl Passthrough {
    /// Passthrough as `mode` asks.
    pub fn new(mode: PassthroughMode) -> Passthrough {
        Passthrough {
            mode,
            negotiated: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            inodes: DashMap::new(),
        }
    }

    /// Asks the kernel for passthrough at INIT. Errors only when `passthrough=on` cannot be
    /// had; `auto` falls back to cached I/O and says so in the log.
    pub fn negotiate(&self, n: &mut Negotiation, core: &Overlay) -> io::Result<()> {
        if self.mode == PassthroughMode::Off {
            log::info!("passthrough: off (passthrough=off): all file I/O goes through the daemon");
            return Ok(());
        }
        let refused = if !crate::sys::process::admin_in_initial_namespace() {
            Some("the kernel allows it only with CAP_SYS_ADMIN in the initial user namespace")
        } else if !n.ask(init::PASSTHROUGH) {
            Some("this kernel does not offer FUSE passthrough (Linux 6.9 or later does)")
        } else {
            n.max_stack_depth = 1;
            None
        };
        if let Some(why) = refused {
            if self.mode == PassthroughMode::On {
                log::error!("passthrough=on: {why}");
                return Err(io::Error::other(format!("passthrough=on: {why}")));
            }
            log::info!("passthrough: off ({why}): all file I/O goes through the daemon");
            return Ok(());
        }
        self.negotiated.store(true, Ordering::Release);
        if core.has_upper() {
            log::info!(
                "passthrough: on for files of the upper layer; lower files use cached I/O \
                 until copied up (so a read-only descriptor follows a copy-up)"
            );
        } else {
            log::info!("passthrough: on for every file (read-only mount)");
        }
        Ok(())
    }

    /// Chooses the I/O of open file `fh` of inode `ino`, which `core` has just opened.
    /// `register` turns a descriptor into a backing file.
    pub fn choose(
        &self,
        core: &Overlay,
        ino: u64,
        fh: u64,
        register: impl FnOnce(&File) -> Result<BackingId, Errno>,
    ) -> OpenIo {
        if !self.negotiated.load(Ordering::Acquire) {
            return OpenIo::Cached;
        }
        match self.inodes.entry(ino) {
            Entry::Occupied(mut e) => {
                let state = e.get_mut();
                state.opens += 1;
                state.io.clone()
            }
            Entry::Vacant(v) => {
                let io = self.first_open(core, fh, register);
                v.insert(InodeIo {
                    io: io.clone(),
                    opens: 1,
                });
                io
            }
        }
    }

    fn first_open(
        &self,
        core: &Overlay,
        fh: u64,
        register: impl FnOnce(&File) -> Result<BackingId, Errno>,
    ) -> OpenIo {
        if self.failed.load(Ordering::Relaxed) {
            return OpenIo::Cached;
        }
        let Some(file) = core.passthrough_file(fh, !core.has_upper()) else {
            return OpenIo::Cached;
        };
        match register(&file) {
            Ok(id) => OpenIo::Backed(Arc::new(id)),
            Err(e) => {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "passthrough: cannot register a backing file ({e}); \
                         files opened from now on use cached I/O"
                    );
                }
                OpenIo::Cached
            }
        }
    }

    /// True while open files of `ino` do their I/O in the kernel, on a backing file.
    pub fn backed(&self, ino: u64) -> bool {
        self.inodes
            .get(&ino)
            .is_some_and(|s| matches!(s.io, OpenIo::Backed(_)))
    }

    /// Notes that an open file of inode `ino` was closed.
    pub fn release(&self, ino: u64) {
        if !self.negotiated.load(Ordering::Acquire) {
            return;
        }
        if let Entry::Occupied(mut e) = self.inodes.entry(ino) {
            let state = e.get_mut();
            state.opens = state.opens.saturating_sub(1);
            if state.opens == 0 {
                // Drops the backing id: the kernel holds its own reference for open files.
                e.remove();
            }
        }
    }
}
