//! Process-level calls: forking the daemon, detaching it, signals, unmounting, syslog.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::signal::{SigSet, Signal};
use nix::unistd::ForkResult;

use super::{check, Errno};

/// Which side of [`fork_with_pipe`] this process is on.
#[derive(Debug)]
pub enum Forked {
    /// The original process; `ready` is the read end of the readiness pipe.
    Parent {
        /// Read end: the child writes its verdict here and closes it.
        ready: File,
    },
    /// The new process; `ready` is the write end of the readiness pipe.
    Child {
        /// Write end, for the child's verdict.
        ready: File,
    },
}

/// Forks with a pipe from the child to the parent.
///
/// Must be called while the process has a single thread (before any session or helper thread
/// starts): `daemon::mount` calls it after the checks and before mounting.
pub fn fork_with_pipe() -> Result<Forked, Errno> {
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the caller guarantees the process is single-threaded, so the child cannot
    // inherit a lock held by another thread; both sides only continue with ordinary Rust.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { .. } => Ok(Forked::Parent {
            ready: File::from(read),
        }),
        ForkResult::Child => Ok(Forked::Child {
            ready: File::from(write),
        }),
    }
}

/// Starts a new session and points stdin, stdout and stderr at `/dev/null`, so that whoever
/// started us (podman reads our output until EOF) is not held by our descriptors.
pub fn detach_from_terminal() -> Result<(), Errno> {
    nix::unistd::setsid()?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    for target in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors; `null` stays open for the call.
        check(unsafe { libc::dup2(null.as_raw_fd(), target) }.into())?;
    }
    Ok(())
}

/// The signals that end the daemon cleanly.
pub fn termination_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(sig);
    }
    set
}

/// Blocks `set` in the calling thread (and so in every thread it starts later).
pub fn block_signals(set: &SigSet) -> Result<(), Errno> {
    set.thread_block()
}

/// Waits for one of the (blocked) signals in `set`.
pub fn wait_signal(set: &SigSet) -> Result<Signal, Errno> {
    set.wait()
}

/// The effective user id.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Sends one message to syslog under the ident `overlayfuse`.
pub fn syslog(level: log::Level, message: &str) {
    let priority = match level {
        log::Level::Error => libc::LOG_ERR,
        log::Level::Warn => libc::LOG_WARNING,
        log::Level::Info => libc::LOG_INFO,
        log::Level::Debug | log::Level::Trace => libc::LOG_DEBUG,
    };
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: both strings are NUL-terminated; "%s" makes syslog treat the message as data.
    unsafe {
        libc::openlog(c"overlayfuse".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON);
        libc::syslog(priority, c"%s".as_ptr(), text.as_ptr());
    }
}

/// Raises the soft open-file limit to the hard limit: the daemon holds a descriptor per open
/// file and per cached directory.
pub fn raise_nofile_limit() -> Result<u64, Errno> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// Sets the process umask to 0, so modes given to the layer filesystem are used as they are.
pub fn clear_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
}

/// The effective group id of this process.
pub fn egid() -> u32 {
    nix::unistd::getegid().as_raw()
}

/// True when this process has `CAP_SYS_ADMIN` in the initial user namespace, which the kernel
/// requires to register FUSE passthrough backing files.
pub fn admin_in_initial_namespace() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let initial = std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| {
        let fields: Vec<&str> = map.split_whitespace().collect();
        fields == ["0", "0", "4294967295"]
    });
    let admin = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|status| super::caller::has_effective_cap(&status, CAP_SYS_ADMIN));
    initial && admin
}

/// How many CPUs this machine may ever have (`/sys/devices/system/cpu/possible`): the
/// kernel keeps one FUSE ring queue per possible CPU.
pub fn possible_cpus() -> usize {
    let parsed = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|text| last_cpu(&text));
    match parsed {
        Some(last) => last + 1,
        // SAFETY: sysconf only reads a configuration value.
        None => (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }).max(1) as usize,
    }
}

/// The highest CPU number of a kernel CPU list such as `0-3,8,10-11`.
fn last_cpu(list: &str) -> Option<usize> {
    list.trim()
        .split(',')
        .filter_map(|range| range.rsplit('-').next()?.trim().parse::<usize>().ok())
        .max()
}

/// Runs the calling thread on CPU `cpu` only.
pub fn pin_to_cpu(cpu: usize) -> Result<(), Errno> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

#[cfg(test)]
mod cpu_tests {
    use super::last_cpu;

    #[test]
    fn cpu_lists_give_their_highest_cpu() {
        assert_eq!(last_cpu("0-1\n"), Some(1));
        assert_eq!(last_cpu("0-3,8,10-11"), Some(11));
        assert_eq!(last_cpu("0"), Some(0));
        assert_eq!(last_cpu(""), None);
    }
}
