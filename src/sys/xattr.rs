//! Extended attributes of objects held by `O_PATH` descriptors.
//!
//! `f*xattr` refuse `O_PATH` descriptors, and opening fifos or devices for reading has side
//! effects, so the object is reached through its `/proc/self/fd/N` magic link with the
//! following variants: the magic link jumps to the object itself (a symlink stays a symlink).

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use super::{check, cstr, Errno};

fn proc_path(fd: BorrowedFd<'_>) -> CString {
    // A formatted integer never holds a NUL byte.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Calls `fill(buf)` with a growing buffer until the value fits (the value may grow between
/// the size query and the read).
fn read_sized(mut fill: impl FnMut(&mut [u8]) -> libc::ssize_t) -> Result<Vec<u8>, Errno> {
    loop {
        let size = check(fill(&mut []) as libc::c_long)? as usize;
        let mut buf = vec![0u8; size];
        match check(fill(&mut buf) as libc::c_long) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The NUL-separated list of attribute names of the object behind `fd`.
pub(super) fn list(fd: BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
    let path = proc_path(fd);
    read_sized(|buf| {
        // SAFETY: `path` is NUL-terminated; `buf` is writable for the length we pass (a
        // zero length with a dangling pointer is the documented size query).
        unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    })
}

/// The value of attribute `name` of the object behind `fd`.
pub(super) fn get(fd: BorrowedFd<'_>, name: &OsStr) -> Result<Vec<u8>, Errno> {
    let path = proc_path(fd);
    let name = cstr(name.as_bytes())?;
    read_sized(|buf| {
        // SAFETY: both strings are NUL-terminated; `buf` is writable for the length we pass.
        unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }
    })
}

/// Sets attribute `name` of the object behind `fd` to `value` (`flags`: `XATTR_CREATE`,
/// `XATTR_REPLACE` or 0).
pub(super) fn set(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8], flags: i32) -> Result<(), Errno> {
    let path = proc_path(fd);
    let name = cstr(name.as_bytes())?;
    // SAFETY: both strings are NUL-terminated; `value` is readable for the length we pass.
    let ret = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    check(ret.into()).map(drop)
}

/// Removes attribute `name` of the object behind `fd`.
pub(super) fn remove(fd: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    let path = proc_path(fd);
    let name = cstr(name.as_bytes())?;
    // SAFETY: both strings are NUL-terminated.
    let ret = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    check(ret.into()).map(drop)
}
