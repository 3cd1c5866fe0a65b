//! The keeper: enters the user namespace (rootless) and a private mount namespace, mounts
//! the layers by starting `overlayfuse mount -f` as its child, starts the container's init
//! in a new pid namespace, and when init ends unmounts, waits for the daemon and removes the
//! private directories. The daemon therefore lives outside the container's pid and mount
//! namespaces, and dies with the keeper (its parent-death signal is SIGTERM).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::Signal;

use super::link::Link;
use super::workspace::{Layers, Workspace};
use super::{container, wait_for};
use crate::config::run::RunConfig;
use crate::error::{Error, SETUP_EXIT};
use crate::sys::container::{detach_and_tie, fork, make_mounts_private};

/// How long the daemon may take to mount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon may take to exit once unmounted.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the keeper and returns the exit status for the supervisor.
pub fn run(cfg: &RunConfig, workspace: &Workspace, user_namespace: bool, link: Link) -> i32 {
    let code = match keep(cfg, workspace, user_namespace, link) {
        Ok(code) => code,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("overlayfuse run: {e}");
            }
            SETUP_EXIT
        }
    };
    workspace.remove();
    if workspace.keep_upper {
        if let Some(layers) = &workspace.layers {
            eprintln!(
                "overlayfuse run: the upper layer is kept in '{}'",
                layers.upper.display()
            );
        }
    }
    code
}

fn setup(what: &str, e: nix::errno::Errno) -> Error {
    Error::setup(format!("{what}: {e}"))
}

fn keep(
    cfg: &RunConfig,
    workspace: &Workspace,
    user_namespace: bool,
    mut link: Link,
) -> Result<i32, Error> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| setup("cannot set the parent-death signal", e))?;
    if user_namespace {
        unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| {
            setup(
                "cannot make a user namespace (is kernel.unprivileged_userns_clone 1?)",
                e,
            )
        })?;
        link.ask("userns")?;
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| setup("cannot make a mount namespace", e))?;
    make_mounts_private().map_err(|e| setup("cannot make the mounts private", e))?;
    let daemon = match &workspace.layers {
        Some(layers) => Some(Daemon::start(
            layers,
            workspace.keep_upper,
            &workspace.root,
        )?),
        None => None,
    };
    let result = start_container(cfg, &workspace.root, link);
    if let Some(d) = daemon {
        d.stop(&workspace.root);
    }
    result
}

/// Starts init and waits for it. `link` to the supervisor is closed once init has joined the
/// cgroup: that ends the supervisor's set-up phase and starts its signal forwarding.
fn start_container(cfg: &RunConfig, root: &Path, mut link: Link) -> Result<i32, Error> {
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| setup("cannot make a pid namespace", e))?;
    let (mut to_init, from_keeper) = Link::pair()?;
    let init = match fork().map_err(|e| setup("cannot fork", e))? {
        None => {
            drop(to_init);
            drop(link);
            container::run(cfg, root, from_keeper)
        }
        Some(pid) => pid,
    };
    drop(from_keeper);
    if let Err(e) = link.ask(&format!("join {init}")) {
        let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
        wait_for(init);
        return Err(e);
    }
    drop(link);
    // The init starts once in the cgroup; a failed send shows as its exit status.
    let _ = to_init.send("go");
    drop(to_init);
    Ok(wait_for(init))
}

/// The FUSE daemon serving the container's root.
struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts `overlayfuse mount -f` on `merged` and waits until the mount is live.
    fn start(layers: &Layers, keep_upper: bool, merged: &Path) -> Result<Daemon, Error> {
        if layers.private_upper {
            match_top_lower(layers);
        }
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("mount")
            .arg("--lower")
            .arg(&layers.lower)
            .arg("--upper")
            .arg(&layers.upper)
            .arg("--work")
            .arg(&layers.work)
            .arg("-f");
        if layers.private_upper && !keep_upper {
            // The upper is thrown away afterwards: syncing copy-ups buys nothing.
            cmd.args(["-o", "volatile"]);
        }
        cmd.arg(merged)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        detach_and_tie(&mut cmd, Signal::SIGTERM);
        let unmounted_dev = std::fs::metadata(merged).map(|m| m.dev()).ok();
        let child = cmd
            .spawn()
            .map_err(|e| Error::setup(format!("cannot start the overlayfuse daemon: {e}")))?;
        let mut daemon = Daemon { child };
        let started = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(Error::setup(format!(
                    "cannot mount the layers: the daemon ended ({status}) before the mount was live"
                )));
            }
            // A FUSE filesystem on another device than the empty directory had: ours (the
            // directory itself may lie on some other FUSE mount).
            let live = nix::sys::statfs::statfs(merged)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC)
                && std::fs::metadata(merged).map(|m| m.dev()).ok() != unmounted_dev;
            if live {
                return Ok(daemon);
            }
            if started.elapsed() > MOUNT_TIMEOUT {
                daemon.stop(merged);
                return Err(Error::setup(format!(
                    "the layers were not mounted within {} s",
                    MOUNT_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Unmounts `merged` (the daemon then exits by itself) and waits for the daemon.
    fn stop(mut self, merged: &Path) {
        if umount2(merged, MntFlags::empty()).is_err() {
            let _ = umount2(merged, MntFlags::MNT_DETACH);
        }
        let started = Instant::now();
        while started.elapsed() < EXIT_TIMEOUT {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        eprintln!("overlayfuse run: the daemon did not exit after the unmount; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gives a private upper's root the owner and mode of the top lower's root, as
/// containers-storage does: the merged root shows the upper's.
fn match_top_lower(layers: &Layers) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let top = crate::cli::optlist::split_layers(&layers.lower, "--lower")
        .ok()
        .and_then(|l| l.into_iter().next());
    let Some(meta) = top.and_then(|t| std::fs::metadata(t).ok()) else {
        return;
    };
    let _ = std::os::unix::fs::chown(&layers.upper, Some(meta.uid()), Some(meta.gid()));
    let _ = std::fs::set_permissions(
        &layers.upper,
        std::fs::Permissions::from_mode(meta.mode() & 0o7777),
    );
}
