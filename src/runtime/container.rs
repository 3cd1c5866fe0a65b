//! The container's init before it becomes init: pid 1 of a new pid namespace, it waits until
//! the supervisor has put it in the cgroup, makes its other namespaces, builds the root and
//! pivots into it, sets the host name, the loopback interface and the resource limits.

use std::path::Path;

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::Signal;

use super::link::Link;
use super::{init, rootfs};
use crate::config::run::{Network, RunConfig};
use crate::error::{Error, SETUP_EXIT};
use crate::sys::container::{loopback_up, set_rlimit};

/// Sets the container up and runs the command under init; never returns.
pub fn run(cfg: &RunConfig, root: &Path, link: Link) -> ! {
    let code = match prepare(cfg, root, link) {
        Ok(()) => init::run(cfg),
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("overlayfuse run: {e}");
            }
            SETUP_EXIT
        }
    };
    std::process::exit(code)
}

fn fail(what: &str, e: nix::errno::Errno) -> Error {
    Error::setup(format!("{what}: {e}"))
}

fn prepare(cfg: &RunConfig, root: &Path, mut link: Link) -> Result<(), Error> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| fail("cannot set the parent-death signal", e))?;
    if link.receive().as_deref() != Some("go") {
        // The keeper reported why.
        return Err(Error::reported());
    }
    drop(link);
    nix::unistd::setsid().map_err(|e| fail("cannot start a session", e))?;
    let mut flags = CloneFlags::CLONE_NEWCGROUP
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if cfg.net == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(|e| fail("cannot make the container's namespaces", e))?;
    nix::unistd::sethostname(&cfg.hostname).map_err(|e| fail("cannot set the host name", e))?;
    if cfg.net == Network::None {
        loopback_up().map_err(|e| fail("cannot bring the loopback interface up", e))?;
    }
    rootfs::enter(root, &cfg.binds, cfg.net == Network::None)?;
    for r in &cfg.rlimits {
        set_rlimit(r.resource, r.soft, r.hard).map_err(|e| {
            fail(
                &format!(
                    "cannot set resource limit {} to {}:{}",
                    r.resource, r.soft, r.hard
                ),
                e,
            )
        })?;
    }
    Ok(())
}
