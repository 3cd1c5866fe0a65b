//! Mounting an [`OverlayFs`] and serving it until it is unmounted or told to stop.

use std::io;
use std::path::{Path, PathBuf};

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc};

use fuser::{Config, MountOption, Session, SessionACL};

use super::OverlayFs;
use crate::fs::readahead::{Job, Readahead};
use crate::fs::{Bound, Invalidator, Overlay};
use crate::sys::{fusedev, process};

/// How the FUSE mount itself is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// What `/proc/mounts` shows as the source.
    pub fsname: String,
    /// Kernel mount flags (`ro`, `nodev`, `nosuid`, `noexec`, `noatime`, ...).
    pub flags: Vec<MountOption>,
    /// Let every user reach the mount (the kernel still checks permissions).
    pub allow_other: bool,
    /// Request-serving threads, each on its own cloned `/dev/fuse` descriptor.
    pub threads: usize,
    /// Inodes kept cached before the oldest unused ones are dropped (0: no limit).
    pub max_inodes: usize,
    /// Subdirectories read ahead of a tree walk (0: no readahead).
    pub readahead: usize,
}

/// A live mount, ready to serve.
#[derive(Debug)]
pub struct Mounted {
    session: Session<OverlayFs>,
    mountpoint: PathBuf,
}

/// Mounts `fs` as `spec` says. Returns once the kernel has completed the FUSE handshake, so
/// the mount is usable when this returns.
pub fn mount(fs: OverlayFs, spec: &MountSpec) -> io::Result<Mounted> {
    let mut options = vec![
        MountOption::FSName(spec.fsname.clone()),
        MountOption::Subtype("overlayfuse".into()),
        MountOption::DefaultPermissions,
    ];
    options.extend(spec.flags.iter().cloned());
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = if spec.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(spec.threads.max(1));
    config.clone_fd = true;
    let core = fs.core.clone();
    let device = fs.device.clone();
    let session = Session::new(fs, &spec.mountpoint, &config)?;
    // Our own handle on the connection, to tell at the end whether the kernel ended it.
    let _ = device.set(session.as_fd().try_clone_to_owned()?);
    if spec.max_inodes > 0 {
        bound_inodes(
            &core,
            session.as_fd().try_clone_to_owned()?,
            spec.max_inodes,
        )?;
    }
    if spec.readahead > 0 {
        read_ahead(&core, spec.readahead)?;
    }
    let notifier = session.notifier();
    core.set_invalidator(Invalidator(Box::new(move |id| {
        // Attributes only (negative offset); an inode the kernel dropped gives ENOENT.
        let _ = notifier.inval_inode(fuser::INodeNo(id), -1, 0);
    })));
    Ok(Mounted {
        session,
        mountpoint: spec.mountpoint.clone(),
    })
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
    pub fn serve(mut self) -> io::Result<()> {
        let mut unmounter = self.session.unmount_callable();
        let mountpoint = self.mountpoint.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let signals = process::termination_signals();
                if let Ok(sig) = process::wait_signal(&signals) {
                    log::info!("{sig}: unmounting {}", mountpoint.display());
                    if let Err(e) = unmounter.unmount() {
                        log::warn!("unmount {}: {e}; detaching it", mountpoint.display());
                        detach(&mountpoint);
                    }
                }
            })?;
        self.session.run()
    }
}

fn detach(mountpoint: &Path) {
    if let Err(e) = process::unmount(mountpoint, true) {
        log::error!("cannot detach {}: {e}", mountpoint.display());
    }
}
