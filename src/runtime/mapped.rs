//! [`as_mapped_root`]: work done for a user who is not root, as root of a user namespace
//! mapped as a rootless run's ([`super::userns::for_caller`]: the caller's id is 0 inside,
//! its subordinate ranges 1 and up). The image commands work there, so the ids of image
//! files and of what a container made are the container's, on disk as on the host a
//! rootless run maps them (as podman's rootless storage keeps them), and the caller can
//! remove them again.

use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{Gid, Uid};

use super::link::{Link, REFUSED};
use super::userns;
use crate::error::Error;
use crate::sys::container::fork;

/// Runs `work` in a child process that is root of a new user namespace mapped as a rootless
/// run's; the child's exit status (`work`'s, 125 when the namespace cannot be set up).
pub fn as_mapped_root(work: impl FnOnce() -> i32) -> Result<i32, Error> {
    let maps = userns::for_caller();
    let (mut ours, mut theirs) = Link::pair()?;
    let child = match fork().map_err(|e| Error::setup(format!("cannot fork: {e}")))? {
        None => {
            drop(ours);
            let entered = nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
                .map_err(|e| Error::setup(format!("cannot make a user namespace: {e}")))
                .and_then(|()| theirs.ask("userns"))
                .and_then(|()| {
                    let (g, u) = (Gid::from_raw(0), Uid::from_raw(0));
                    nix::unistd::setresgid(g, g, g)
                        .and_then(|()| nix::unistd::setresuid(u, u, u))
                        .map_err(|e| Error::setup(format!("cannot become root inside: {e}")))
                });
            drop(theirs);
            let code = match entered {
                Ok(()) => work(),
                Err(e) => {
                    if !e.message.is_empty() {
                        eprintln!("overlayfuse: {e}");
                    }
                    crate::error::SETUP_EXIT
                }
            };
            std::process::exit(code);
        }
        Some(pid) => pid,
    };
    drop(theirs);
    if ours.receive().as_deref() == Some("userns") {
        let answer = match maps.apply(child.as_raw()) {
            Ok(()) => "ok",
            Err(e) => {
                eprintln!("overlayfuse: {e}");
                REFUSED
            }
        };
        let _ = ours.send(answer);
    }
    drop(ours);
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::setup(format!("cannot wait for the helper: {e}"))),
        }
    }
}
