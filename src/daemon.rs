//! Running a mount: check the directories, open the layers, then either serve in the
//! foreground or fork a daemon and return once its mount is live.
//!
//! Order matters: everything that can fail because of the user's input happens before the
//! fork, so the error reaches the user's terminal with exit status 2 and nothing is mounted.
//! The fork happens while the process is single-threaded. The daemon detaches from the
//! caller's stdout and stderr *before* it reports "ready", so a caller that reads our output
//! to EOF (podman does) is released when the parent exits.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use crate::config::{MountConfig, MountFlag, PassthroughMode, UringMode};
use crate::error::Error;
use crate::fs::upper::OpenError;
use crate::fs::{Atime, Layer, Overlay, Upper};
use crate::fuse::session::{self, KernelFlags, MountSpec};
use crate::fuse::OverlayFs;
use crate::sys::mount::{LayerMounts, ReadAtime};
use crate::sys::{fusedev, fusemount, process, Errno};
use crate::{claim, logger, preflight};

const READY: &str = "ready";

/// Mounts as `cfg` says. In the foreground this returns when the mount ends; otherwise the
/// parent returns once the daemon's mount is live and the daemon returns when it ends.
pub fn mount(cfg: &MountConfig) -> Result<(), Error> {
    if cfg.debug {
        logger::enable_debug();
    }
    let checked = preflight::check(cfg)?;
    if cfg.passthrough == PassthroughMode::On && !process::admin_in_initial_namespace() {
        return Err(Error::invalid(
            "passthrough=on needs CAP_SYS_ADMIN in the initial user namespace: \
             mount as root, or use passthrough=auto",
        ));
    }
    if cfg.uring == UringMode::On && fusedev::ring_enabled() != Some(true) {
        return Err(Error::invalid(session::RING_OFF));
    }
    let mut dirs: Vec<&preflight::NamedDir> = Vec::with_capacity(checked.lowers.len() + 1);
    if let Some((u, _)) = &checked.upper {
        dirs.push(u);
    }
    dirs.extend(checked.lowers.iter());
    // Layers are read through private copies of their mounts: lower ones never have their
    // access times touched, the upper's follow this mount's atime rule.
    let upper_atime = match cfg.view.atime {
        Atime::Never => ReadAtime::Never,
        Atime::Strict => ReadAtime::Strict,
        Atime::Relative => ReadAtime::Relative,
    };
    let mut mounts = LayerMounts::default();
    let mut layers = Vec::with_capacity(dirs.len());
    for (index, dir) in dirs.iter().enumerate() {
        let atime = match (index, &checked.upper) {
            (0, Some(_)) => upper_atime,
            _ => ReadAtime::Never,
        };
        let opened = mounts
            .open_root(&dir.real, atime)
            .and_then(|root| Layer::with_root(index, &dir.real, root));
        let layer = opened.map_err(|e| {
            Error::invalid(format!(
                "{} '{}' cannot be opened: {e}",
                dir.role,
                dir.given.display()
            ))
        })?;
        layers.push(layer);
    }
    if let Err(Errno::ENOSYS) = layers[0].dir(Path::new("")) {
        return Err(Error::runtime(
            "this kernel lacks openat2(2): Linux 5.6 or newer is needed",
        ));
    }
    // Held for the daemon's life (the forked daemon shares the locked descriptors).
    let _claim = match &checked.upper {
        Some((upper, work)) => Some(claim::take(
            (&upper.real, &upper.given),
            (&work.real, &work.given),
            &checked.mountpoint.real,
        )?),
        None => None,
    };
    let upper = match &checked.upper {
        Some((_, work)) => {
            // Modes of new objects come from the kernel with the caller's umask applied.
            process::clear_umask();
            let root = mounts.open_root(&work.real, upper_atime).map_err(|e| {
                Error::invalid(format!(
                    "workdir '{}' cannot be opened: {e}",
                    work.given.display()
                ))
            })?;
            let up = Upper::open_dir(root, cfg.markers, cfg.fsync).map_err(|e| match e {
                OpenError::WorkDir(e) => {
                    Error::invalid(format!("workdir '{}': {e}", work.given.display()))
                }
                OpenError::Format(e) => Error::invalid(format!("-o {e}")),
            })?;
            log::info!("upper filesystem: {}", up.features.describe());
            log::info!(
                "writing markers in the {} format{}",
                up.format.option_value(),
                if cfg.markers.is_none() {
                    " (the most native it holds)"
                } else {
                    ""
                }
            );
            Some(up)
        }
        None => None,
    };
    let writable = upper.is_some() && !cfg.view.read_only;
    let core = Overlay::new(layers, upper)
        .map_err(|e| Error::invalid(format!("cannot read the layers: {e}")))?
        .with_view(cfg.view.clone());
    if let Err(e) = process::raise_nofile_limit() {
        log::warn!("cannot raise the open-file limit: {e}");
    }
    let spec = MountSpec {
        mountpoint: checked.mountpoint.real.clone(),
        fsname: cfg.fsname.clone(),
        flags: kernel_flags(cfg, writable),
        allow_other: cfg.allow_other || process::euid() == 0,
        threads: cfg.threads,
        max_inodes: cfg.max_inodes,
        readahead: cfg.readahead,
        uring: cfg.uring,
    };
    let fs = OverlayFs::new(
        Arc::new(core),
        cfg.timeout,
        cfg.passthrough,
        cfg.lower_passthrough,
    );
    if cfg.foreground {
        block_termination_signals()?;
        let mounted = session::mount(fs, &spec).map_err(|e| mount_error(&spec, e))?;
        return serve(mounted);
    }
    match process::fork_with_pipe().map_err(|e| Error::runtime(format!("cannot fork: {e}")))? {
        process::Forked::Parent { ready } => wait_ready(ready),
        process::Forked::Child { ready } => run_daemon(ready, fs, &spec),
    }
}

/// Blocks the termination signals before any thread starts, so only the watcher thread of
/// [`session::Mounted::serve`] receives them.
fn block_termination_signals() -> Result<(), Error> {
    process::block_signals(&process::termination_signals())
        .map_err(|e| Error::runtime(format!("cannot block signals: {e}")))
}

/// The kernel mount flags: `ro` without an upper layer or when asked; `nodev` and `nosuid`
/// unless the user asks for `dev` or `suid`; the last of two opposite flags wins.
fn kernel_flags(cfg: &MountConfig, writable: bool) -> KernelFlags {
    let mut flags = KernelFlags {
        read_only: !writable,
        nodev: true,
        nosuid: true,
        noexec: false,
        noatime: false,
    };
    for flag in &cfg.flags {
        match flag {
            MountFlag::Dev => flags.nodev = false,
            MountFlag::NoDev => flags.nodev = true,
            MountFlag::Suid => flags.nosuid = false,
            MountFlag::NoSuid => flags.nosuid = true,
            MountFlag::Exec => flags.noexec = false,
            MountFlag::NoExec => flags.noexec = true,
            MountFlag::Atime => flags.noatime = false,
            MountFlag::NoAtime => flags.noatime = true,
        }
    }
    flags
}

fn mount_error(spec: &MountSpec, e: std::io::Error) -> Error {
    Error::runtime(format!(
        "cannot mount on '{}': {e} (is /dev/fuse there, and may this user mount?)",
        spec.mountpoint.display()
    ))
}

fn serve(mounted: session::Mounted) -> Result<(), Error> {
    mounted
        .serve()
        .map_err(|e| Error::runtime(format!("serving the mount failed: {e}")))
}

fn wait_ready(mut ready: std::fs::File) -> Result<(), Error> {
    let mut verdict = String::new();
    // EOF comes when the daemon closes its end: after "ready", or when it died.
    let _ = ready.read_to_string(&mut verdict);
    match verdict.strip_prefix("error: ") {
        _ if verdict == READY => Ok(()),
        Some(message) => Err(Error::runtime(message.trim_end())),
        None => Err(Error::runtime(
            "the daemon exited before the mount was live: run with -f to see why",
        )),
    }
}

fn run_daemon(mut ready: std::fs::File, fs: OverlayFs, spec: &MountSpec) -> Result<(), Error> {
    logger::use_syslog();
    if let Err(e) = block_termination_signals() {
        let _ = write!(ready, "error: {e}");
        return Err(e);
    }
    if let Err(e) = process::detach_from_terminal() {
        let _ = write!(ready, "error: cannot detach the daemon: {e}");
        return Err(Error::runtime("cannot detach"));
    }
    match session::mount(fs, spec) {
        Ok(mounted) => {
            let _ = ready.write_all(READY.as_bytes());
            drop(ready);
            serve(mounted)
        }
        Err(e) => {
            let err = mount_error(spec, e);
            let _ = write!(ready, "error: {err}");
            Err(err)
        }
    }
}

/// Unmounts the merged directory `path`; its daemon then exits by itself.
pub fn umount(path: &Path) -> Result<(), Error> {
    let shown = path.display();
    if process::euid() != 0 {
        let status = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(path)
            .status()
            .map_err(|e| Error::runtime(format!("cannot run fusermount3: {e}: install fuse3")))?;
        return if status.success() {
            Ok(())
        } else {
            Err(Error::runtime(format!("fusermount3 -u '{shown}' failed")))
        };
    }
    fusemount::unmount(path, false).map_err(|e| match e {
        Errno::EINVAL => Error::invalid(format!(
            "'{shown}' is not a mount point: nothing to unmount"
        )),
        Errno::ENOENT => Error::invalid(format!(
            "'{shown}' does not exist: give the merged directory"
        )),
        Errno::EBUSY => Error::runtime(format!(
            "'{shown}' is busy: stop what uses it, or detach it with umount -l"
        )),
        e => Error::runtime(format!("cannot unmount '{shown}': {e}")),
    })
}
