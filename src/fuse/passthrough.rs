//! FUSE passthrough: which open files the kernel reads, writes and maps by itself, on the
//! layer's own file, without a round trip through the daemon.
//!
//! The kernel keeps one backing file per inode while any passthrough open of it lives, and
//! refuses to mix passthrough and cached opens of one inode (EIO in both orders). So the way
//! an inode does its I/O is chosen at its first open and held until its last close: every
//! later open shares the first one's backing file, or stays cached with it.
//!
//! What gets a backing file is decided by [`Overlay::passthrough_file`]: upper files always
//! (read-write, so a later write open can share it), lower files where they can never be
//! copied up (a read-only mount). By default a lower file of a writable mount stays on
//! cached I/O, so a descriptor opened before a copy-up reads the new data after it.
//!
//! `lower_passthrough` gives a lower file of a writable mount its lower file as backing
//! file too when its first open is read-only, at one documented cost: while that backing
//! file is held (until the last open of the inode is closed, mappings included), the file's
//! data cannot change through the mount. An open for writing or a truncate of it fails with
//! `ETXTBSY`, as writing a running executable does. That keeps every guarantee of the
//! default: the kernel takes only opens with the inode's one backing file, so a writer could
//! otherwise only share the lower one (its shared mappings would store into the lower
//! file), and the readers would go on reading the lower data after a copy-up.
//!
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::{Condvar, Mutex};

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

#[derive(Debug, Default)]
struct InodeIo {
    /// Chosen at the first open; `None` while only changes are under way.
    io: Option<OpenIo>,
    /// The backing file is a lower file: the data must not change while it is held.
    on_lower: bool,
    opens: usize,
    /// Opens for writing and truncates under way ([`Passthrough::begin_change`]).
    changing: usize,
}

impl InodeIo {
    fn lower_backed(&self) -> bool {
        self.on_lower && matches!(self.io, Some(OpenIo::Backed(_)))
    }
}

/// The passthrough state of a mount: whether the kernel agreed to it, and the I/O mode of
/// every inode with open files.
#[derive(Debug)]
pub struct Passthrough {
    mode: PassthroughMode,
    /// Lower files of a writable mount get their lower file as backing file too.
    lower: bool,
    /// The kernel accepted passthrough at INIT: opens are tracked per inode.
    negotiated: AtomicBool,
    /// Registering a backing file failed once: new inodes stay cached.
    failed: AtomicBool,
    inodes: DashMap<u64, InodeIo>,
    /// Held while a change waits for a lower backing file to be let go, and while a release
    /// lets one go (so the wake-up cannot be missed).
    release_lock: Mutex<()>,
    /// Woken when an inode's lower backing file is let go.
    released: Condvar,
}

/// How long a change waits for the last close of a lower file read through passthrough
/// before it is refused: the kernel sends the RELEASE of a closed file in the background, so
/// it can reach the daemon after an open made right after the close.
const RELEASE_WAIT: Duration = Duration::from_millis(200);

impl Passthrough {
    /// Passthrough as `mode` asks; `lower` also for read-only opens of lower files of a
    /// writable mount (`lower_passthrough`).
    pub fn new(mode: PassthroughMode, lower: bool) -> Passthrough {
        Passthrough {
            mode,
            lower,
            negotiated: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            inodes: DashMap::new(),
            release_lock: Mutex::new(()),
            released: Condvar::new(),
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
        if core.has_upper() && self.lower {
            log::info!(
                "passthrough: on for every file (lower_passthrough: a lower file open for \
                 reading cannot be opened for writing or truncated: ETXTBSY)"
            );
        } else if core.has_upper() {
            log::info!(
                "passthrough: on for files of the upper layer; lower files use cached I/O \
                 until copied up (so a read-only descriptor follows a copy-up)"
            );
        } else {
            log::info!("passthrough: on for every file (read-only mount)");
        }
        Ok(())
    }

    /// Announces a change of the data of inode `ino` (an open for writing, a truncate),
    /// before it is made; the change is under way until the guard is dropped (after the
    /// open's [`Passthrough::choose`]). `ETXTBSY` while the inode's backing file is a lower
    /// file (after [`RELEASE_WAIT`] for a close in flight): the change would not reach the
    /// descriptors reading it.
    pub fn begin_change(&self, ino: u64) -> Result<Change<'_>, Errno> {
        if !self.lower || !self.negotiated.load(Ordering::Acquire) {
            return Ok(Change(None));
        }
        if self.try_begin_change(ino) {
            return Ok(Change(Some((self, ino))));
        }
        let deadline = Instant::now() + RELEASE_WAIT;
        let mut guard = self.release_lock.lock();
        loop {
            if self.try_begin_change(ino) {
                return Ok(Change(Some((self, ino))));
            }
            if self.released.wait_until(&mut guard, deadline).timed_out() {
                return match self.try_begin_change(ino) {
                    true => Ok(Change(Some((self, ino)))),
                    false => Err(Errno::ETXTBSY),
                };
            }
        }
    }

    /// Counts a change of `ino` as under way, unless its backing file is a lower file.
    fn try_begin_change(&self, ino: u64) -> bool {
        let mut state = self.inodes.entry(ino).or_default();
        if state.lower_backed() {
            return false;
        }
        state.changing += 1;
        true
    }

    fn end_change(&self, ino: u64) {
        if let Entry::Occupied(mut e) = self.inodes.entry(ino) {
            let state = e.get_mut();
            state.changing = state.changing.saturating_sub(1);
            if state.opens == 0 && state.changing == 0 {
                e.remove();
            }
        }
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
        let mut state = self.inodes.entry(ino).or_default();
        state.opens += 1;
        if let Some(io) = &state.io {
            return io.clone();
        }
        let on_lower = !core.handle_on_upper(fh);
        // A lower file whose data is being changed must not get its lower file as backing:
        // the change is on its way into the upper copy.
        let io = if on_lower && state.changing > 0 {
            OpenIo::Cached
        } else {
            self.first_open(core, fh, register)
        };
        state.on_lower = on_lower;
        state.io = Some(io.clone());
        io
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
        let Some(file) = core.passthrough_file(fh, self.lower || !core.has_upper()) else {
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
            .is_some_and(|s| matches!(s.io, Some(OpenIo::Backed(_))))
    }

    /// Notes that an open file of inode `ino` was closed.
    pub fn release(&self, ino: u64) {
        if !self.negotiated.load(Ordering::Acquire) {
            return;
        }
        let Entry::Occupied(mut e) = self.inodes.entry(ino) else {
            return;
        };
        let state = e.get_mut();
        state.opens = state.opens.saturating_sub(1);
        if state.opens > 0 {
            return;
        }
        let was_lower = state.lower_backed();
        // Drops the backing id: the kernel holds its own reference for open files.
        if state.changing == 0 {
            e.remove();
        } else {
            state.io = None;
            drop(e);
        }
        if was_lower {
            // Not under the map's lock: a waiting change takes this one first.
            let _guard = self.release_lock.lock();
            self.released.notify_all();
        }
    }
}

/// A change of an inode's data under way ([`Passthrough::begin_change`]); ends when dropped.
#[derive(Debug)]
pub struct Change<'a>(Option<(&'a Passthrough, u64)>);

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if let Some((p, ino)) = self.0 {
            p.end_change(ino);
        }
    }
}
