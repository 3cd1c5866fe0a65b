//! The only home of `unsafe` and raw system calls.
//!
//! Everything above this module works with safe types: [`Dir`] is a directory file descriptor
//! that can only be obtained beneath a layer root (openat2 with `RESOLVE_BENEATH`, no symlinks,
//! no magic links, no mount crossings), so code that holds one cannot have escaped its layer.
//! Each function returns `Result<_, Errno>`; each `unsafe` block states its invariant in a
//! `// SAFETY:` line.

pub mod caller;
pub mod container;
mod dir;
mod dirent;
mod dirwrite;
pub mod file;
pub mod fusedev;
pub mod fusemount;
pub mod lock;
pub mod mount;
pub mod process;
mod stat;
pub mod uring;
mod xattr;

pub use dir::{Dir, OpenedFile, Xattr};
pub use dirent::RawEntry;
pub use dirwrite::{rename_flags, SetTime};
pub use nix::errno::Errno;
pub use stat::{FileKind, FsStat, Stat};
pub use xattr::have_xattrat;

/// True when a newer system call exists: `probe` makes it with descriptor -1, which only a
/// kernel that knows the call answers with `EBADF` (`ENOSYS`, or a seccomp filter's
/// refusal, reads as absent). Callers keep the answer in a `OnceLock`.
fn kernel_has_call(probe: impl FnOnce() -> libc::c_long) -> bool {
    check(probe()) == Err(Errno::EBADF)
}

/// Turns a libc return value of -1 into the thread's `errno`.
fn check(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// The errno of a std I/O error (`EIO` for one that carries none).
pub fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Converts a Rust string-ish value into a C string, refusing interior NUL bytes.
fn cstr(bytes: &[u8]) -> Result<std::ffi::CString, Errno> {
    std::ffi::CString::new(bytes).map_err(|_| Errno::EINVAL)
}
