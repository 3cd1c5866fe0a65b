//! `overlayfuse run`: a command in a container whose root is the merged tree (DESIGN.md §6).
//!
//! Four processes, each with one job:
//! - the **supervisor** ([`supervisor`], the process the user started) stays on the host: it
//!   makes the cgroup, writes the user-namespace id maps, forwards signals and returns the
//!   exit status;
//! - the **keeper** ([`keeper`]) enters the user namespace (rootless) and a private mount
//!   namespace, starts the FUSE daemon there as its child, starts the container, and unmounts
//!   and cleans up afterwards; the daemon is thus outside the container's pid and mount
//!   namespaces;
//! - the container's **init** ([`container`], [`rootfs`], [`init`]) is pid 1 of new pid,
//!   mount, uts, ipc, net and cgroup namespaces: it builds the root, pivots into it, drops
//!   privileges, then reaps orphans and forwards signals;
//! - the **command** ([`command`]) takes the user, working directory and environment and
//!   execs.
//!
//! This tree uses the filesystem only through the merged directory: it starts the daemon as
//! `overlayfuse mount -f`.

#![forbid(unsafe_code)]

mod cgroup;
mod command;
mod container;
mod init;
mod keeper;
mod link;
mod mapped;
mod rootfs;
mod seccomp;
mod supervisor;
mod userns;
mod workspace;

pub use mapped::as_mapped_root;
pub use supervisor::run;
pub(crate) use workspace::private_dir;

use nix::sys::signal::{SigSet, Signal};

/// The capabilities a container keeps: podman's default set (CHOWN, DAC_OVERRIDE, FOWNER,
/// FSETID, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT, SETFCAP).
pub const CONTAINER_CAPABILITIES: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 10)
    | (1 << 18)
    | (1 << 31);

/// Signals the supervisor and the container's init pass on to the command.
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// The forwarded signals plus `SIGCHLD`: blocked from the start in every process of the run
/// and taken with `sigwait`, so none of them kills a process that is not the command.
fn waited_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(sig);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// The exit status a shell would give for a wait status: the code, or 128+N for signal N.
fn status_code(status: nix::sys::wait::WaitStatus) -> Option<i32> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Waits for `pid` to end and returns its status code.
fn wait_for(pid: nix::unistd::Pid) -> i32 {
    loop {
        match nix::sys::wait::waitpid(pid, None) {
            Ok(status) => {
                if let Some(code) = status_code(status) {
                    return code;
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return crate::error::SETUP_EXIT,
        }
    }
}
