//! The container's pid 1: drops to the container's privileges, starts the command, then
//! reaps every orphan and passes forwarded signals on to the command until it ends. Its exit
//! status is the command's (128+N if signal N killed it); when it exits the kernel kills
//! whatever is left in the pid namespace.

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{command, seccomp, status_code, waited_signals, CONTAINER_CAPABILITIES};
use crate::config::run::RunConfig;
use crate::error::SETUP_EXIT;
use crate::sys::container::{
    close_from, fork, join_new_session_keyring, limit_bounding_set, limit_capabilities,
};

/// Runs the command under this init and returns its exit status.
pub fn run(cfg: &RunConfig) -> i32 {
    if let Err(e) = drop_privileges() {
        eprintln!("overlayfuse run: cannot drop privileges: {e}");
        return SETUP_EXIT;
    }
    let signals = waited_signals();
    if let Err(e) = signals.thread_block() {
        eprintln!("overlayfuse run: cannot block signals: {e}");
        return SETUP_EXIT;
    }
    // Built before the fork: the command's process allocates nothing before it execs.
    let filter = if cfg.seccomp {
        match seccomp::programs() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("overlayfuse run: {e}: use --seccomp unconfined");
                return SETUP_EXIT;
            }
        }
    } else {
        Vec::new()
    };
    let child = match fork() {
        Ok(None) => command::exec(cfg, &filter),
        Ok(Some(pid)) => pid,
        Err(e) => {
            eprintln!("overlayfuse run: cannot start the command: {e}");
            return SETUP_EXIT;
        }
    };
    loop {
        let Ok(sig) = signals.wait() else { continue };
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        if let Some(code) = reap(child) {
            return code;
        }
    }
}

/// Reaps every child that has ended; returns the command's status once it has.
fn reap(command: Pid) -> Option<i32> {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return None,
            Ok(status) if status.pid() == Some(command) => {
                if let Some(code) = status_code(status) {
                    return Some(code);
                }
            }
            Ok(_) => {}
        }
    }
}

/// Init gets a session keyring of its own (the caller's keys stay out of reach), keeps only
/// the container's capabilities, cannot gain any (no_new_privs), cannot be
/// inspected through /proc or ptrace by the container (not dumpable), and holds no
/// descriptor but the standard three.
fn drop_privileges() -> Result<(), nix::errno::Errno> {
    close_from(3)?;
    match join_new_session_keyring() {
        Ok(()) | Err(nix::errno::Errno::ENOSYS) => {}
        Err(e) => return Err(e),
    }
    limit_bounding_set(CONTAINER_CAPABILITIES)?;
    limit_capabilities(CONTAINER_CAPABILITIES)?;
    nix::sys::prctl::set_no_new_privs()?;
    nix::sys::prctl::set_dumpable(false)
}
