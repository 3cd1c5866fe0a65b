//! Calls the runtime shim needs that nix does not wrap safely: resolving paths inside a new
//! root, capabilities, the loopback interface, closing inherited descriptors, forking, and
//! preparing a child before `exec`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::unistd::{ForkResult, Pid};

use super::mount::{mount_setattr, MountAttr};
use super::{check, cstr, Errno};

/// Opens `path` relative to `root` as if `root` were `/`: absolute symlinks and `..` in the
/// path or in symlinks met on the way stay inside `root` (`RESOLVE_IN_ROOT`), and magic links
/// are refused. A mount target found this way cannot lie outside the container's root.
/// `mode` applies when `flags` has `O_CREAT`.
pub fn open_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: i32,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    let rel = cstr(path.as_os_str().as_bytes())?;
    let resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    super::dir::openat2_resolving(root, &rel, flags, mode, resolve)
}

/// The path through which `mount(2)` reaches the object `fd` refers to.
pub fn fd_path(fd: BorrowedFd<'_>) -> std::path::PathBuf {
    format!("/proc/self/fd/{}", fd.as_raw_fd()).into()
}

/// The highest capability number this kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Removes every capability not in `keep` (a bit mask) from the bounding set, so no later
/// `exec` can gain it, and clears the ambient set.
pub fn limit_bounding_set(keep: u64) -> Result<(), Errno> {
    for cap in 0..=last_capability() {
        if cap < 64 && keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) }.into())?;
    }
    // SAFETY: prctl with integer arguments only.
    check(
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        }
        .into(),
    )?;
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Reduces this process's effective, permitted and inheritable capabilities to `keep` (a
/// bit mask); capabilities it does not hold stay absent.
pub fn limit_capabilities(keep: u64) -> Result<(), Errno> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget fills two CapData records (version 3) and reads the header.
    check(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) })?;
    for (i, d) in data.iter_mut().enumerate() {
        let mask = (keep >> (32 * i)) as u32;
        d.permitted &= mask;
        d.effective = d.permitted;
        d.inheritable &= d.permitted;
    }
    // SAFETY: capset reads the header and two CapData records (version 3).
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })?;
    Ok(())
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> Result<(), Errno> {
    // SAFETY: a plain socket(2) call; the descriptor is owned right after.
    let sock = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }.into(),
    )?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(sock as RawFd) };
    // SAFETY: ifreq is plain data (a name and a union of integers), valid when zeroed.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `req`, which outlives it.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) }.into())?;
    // SAFETY: the kernel just filled ifru_flags, the union member SIOCGIFFLAGS uses.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads `req`, which is initialised and outlives the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }.into())?;
    Ok(())
}

/// Closes every descriptor from `first` up.
pub fn close_from(first: u32) -> Result<(), Errno> {
    // SAFETY: close_range only closes descriptors; no Rust object owns one from `first` up
    // in the callers (a forked child about to exec or to become the container's init).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
    if check(ret).is_ok() {
        return Ok(());
    }
    // Kernels before 5.9: close what /proc lists.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(super::io_errno)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd: &RawFd| fd >= first as RawFd)
        .collect();
    for fd in fds {
        // SAFETY: as above; EBADF for the descriptor read_dir used is harmless.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Forks. The caller must be single-threaded (the runtime forks before any thread starts).
pub fn fork() -> Result<Option<Pid>, Errno> {
    // SAFETY: the runtime's processes never start threads, so the child cannot inherit a
    // lock held by another thread; both sides continue with ordinary Rust.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Some(child)),
        ForkResult::Child => Ok(None),
    }
}

/// Makes `command` start in a session of its own (so a terminal's Ctrl-C does not reach it)
/// and receive `signal` when the thread that spawned it dies.
pub fn detach_and_tie(command: &mut std::process::Command, signal: nix::sys::signal::Signal) {
    let sig = signal as libc::c_ulong;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls (setsid, prctl), touching no memory shared with the parent.
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sets resource limit `resource` (an `RLIMIT_*` number) of this process.
pub fn set_rlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> Result<(), Errno> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the rlimit record, which outlives the call.
    check(unsafe { libc::setrlimit(resource, &limit) }.into())?;
    Ok(())
}

/// Gives `SIGPIPE` its default action back (the Rust runtime ignores it, and an ignored
/// signal stays ignored across `exec`).
pub fn restore_sigpipe() -> Result<(), Errno> {
    // SAFETY: installs the default action, not a handler; nothing runs in signal context.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    }?;
    Ok(())
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Makes the mount at `path` and every mount below it read-only (`readonly`) and
/// `nosuid,nodev` (`nosuid_nodev`), with `mount_setattr(AT_RECURSIVE)`.
pub fn restrict_mount_tree(path: &Path, readonly: bool, nosuid_nodev: bool) -> Result<(), Errno> {
    let c = cstr(path.as_os_str().as_bytes())?;
    let mut set = 0;
    if readonly {
        set |= MOUNT_ATTR_RDONLY;
    }
    if nosuid_nodev {
        set |= MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    mount_setattr(
        libc::AT_FDCWD,
        &c,
        libc::AT_RECURSIVE as libc::c_uint,
        &attr,
    )
}

/// Gives this process a new, empty session keyring, so the container cannot read the keys of
/// the caller's session.
pub fn join_new_session_keyring() -> Result<(), Errno> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl with a null name pointer: join a new anonymous session keyring.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    check(ret)?;
    Ok(())
}

/// A process descriptor: signals sent through it cannot reach a later process that reuses
/// the pid.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl PidFd {
    /// Opens a descriptor of the live process `pid`.
    pub fn open(pid: Pid) -> Result<PidFd, Errno> {
        // SAFETY: pidfd_open with integer arguments; it returns a new descriptor.
        let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) })? as RawFd;
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends `signal`; `ESRCH` once the process has ended.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), Errno> {
        // SAFETY: pidfd_send_signal with a live descriptor, a signal number and no siginfo.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        check(ret)?;
        Ok(())
    }
}

/// Makes every mount of this process's mount namespace private, so nothing mounted or
/// unmounted here propagates to the namespace it was copied from.
pub fn make_mounts_private() -> Result<(), Errno> {
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}
