//! Extended attributes of layer objects: of an object held by a descriptor, or of a child
//! named in a directory (a symlink is read as itself, never followed).
//!
//! A child, or a directory as its own `.`, is reached in one call with the `*xattrat` system
//! calls (Linux 6.13). Elsewhere (an older kernel, or a seccomp filter that refuses them) a
//! child is opened `O_PATH` first: `f*xattr` refuse `O_PATH` descriptors, and opening fifos
//! or devices for reading has side effects, so the object is reached through its
//! `/proc/self/fd/N` magic link with the following variants (the magic link jumps to the
//! object itself: a symlink stays a symlink).

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;

use super::dir::openat2;
use super::{check, cstr, kernel_has_call, Errno};

/// System call numbers of the `*xattrat` family (the same on every architecture).
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// `struct xattr_args` of `getxattrat(2)` and `setxattrat(2)`.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Where an attribute lives: the object behind a descriptor, a directory, or a child of a
/// directory.
#[derive(Clone, Copy)]
pub(super) enum Target<'a> {
    /// The object `fd` holds (any kind of descriptor, `O_PATH` included).
    Fd(BorrowedFd<'a>),
    /// The directory `fd` holds, reached as `.` relative to itself by the `*xattrat` calls
    /// (which refuse an `O_PATH` descriptor with an empty path); else as [`Target::Fd`].
    Dir(BorrowedFd<'a>),
    /// The entry `name` (one component) of the directory `dir`, not followed.
    Child(BorrowedFd<'a>, &'a CStr),
}

/// True when the kernel serves the `*xattrat` calls (Linux 6.13); asked once.
pub fn have_xattrat() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| {
        kernel_has_call(|| {
            // SAFETY: descriptor -1 and an empty path: the call fails before it reads or
            // writes anything else (the list pointer is null with size 0).
            unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    -1,
                    c"".as_ptr(),
                    libc::AT_EMPTY_PATH,
                    std::ptr::null_mut::<libc::c_char>(),
                    0usize,
                )
            }
        })
    })
}

fn proc_path(fd: BorrowedFd<'_>) -> CString {
    // A formatted integer never holds a NUL byte.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Runs `at` when the kernel has the `*xattrat` calls and the target is a child or a
/// directory; otherwise `by_path` on the magic link of the target (a child opened `O_PATH`
/// for the call).
fn dispatch<T>(
    target: Target<'_>,
    at: impl FnOnce(BorrowedFd<'_>, &CStr) -> Result<T, Errno>,
    by_path: impl FnOnce(&CStr) -> Result<T, Errno>,
) -> Result<T, Errno> {
    match target {
        Target::Dir(dir) if have_xattrat() => at(dir, c"."),
        Target::Fd(fd) | Target::Dir(fd) => by_path(&proc_path(fd)),
        Target::Child(dir, name) if have_xattrat() => at(dir, name),
        Target::Child(dir, name) => {
            let fd = openat2(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            by_path(&proc_path(fd.as_fd()))
        }
    }
}

/// Calls `fill(buf)` until the value fits: first with a small buffer, then with the size the
/// kernel reports (the value may grow between the size query and the read).
fn read_sized(mut fill: impl FnMut(&mut [u8]) -> libc::c_long) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; 256];
    loop {
        match check(fill(&mut buf)) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => {
                let size = check(fill(&mut []))? as usize;
                buf = vec![0u8; size.max(1)];
            }
            Err(e) => return Err(e),
        }
    }
}

/// The NUL-separated list of attribute names of `target`.
pub(super) fn list(target: Target<'_>) -> Result<Vec<u8>, Errno> {
    dispatch(
        target,
        |dir, name| {
            read_sized(|buf| {
                // SAFETY: `name` is NUL-terminated; `buf` is writable for the length we
                // pass (a zero length with a dangling pointer is the size query).
                unsafe {
                    libc::syscall(
                        SYS_LISTXATTRAT,
                        dir.as_raw_fd(),
                        name.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                        buf.as_mut_ptr(),
                        buf.len(),
                    )
                }
            })
        },
        |path| {
            read_sized(|buf| {
                // SAFETY: as above, with a NUL-terminated path.
                let n =
                    unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
                n as libc::c_long
            })
        },
    )
}

/// The value of attribute `attr` of `target`.
pub(super) fn get(target: Target<'_>, attr: &OsStr) -> Result<Vec<u8>, Errno> {
    let attr = cstr(attr.as_bytes())?;
    dispatch(
        target,
        |dir, name| {
            read_sized(|buf| {
                let mut args = XattrArgs {
                    value: buf.as_mut_ptr() as u64,
                    size: buf.len() as u32,
                    flags: 0,
                };
                // SAFETY: both strings are NUL-terminated; `args` points at `buf`, writable
                // for the size it states, and its own size is passed.
                unsafe {
                    libc::syscall(
                        SYS_GETXATTRAT,
                        dir.as_raw_fd(),
                        name.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                        attr.as_ptr(),
                        &mut args as *mut XattrArgs,
                        std::mem::size_of::<XattrArgs>(),
                    )
                }
            })
        },
        |path| {
            read_sized(|buf| {
                // SAFETY: both strings are NUL-terminated; `buf` is writable for the length
                // we pass.
                let n = unsafe {
                    libc::getxattr(
                        path.as_ptr(),
                        attr.as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                n as libc::c_long
            })
        },
    )
}

/// Sets attribute `attr` of `target` to `value` (`flags`: `XATTR_CREATE`, `XATTR_REPLACE`
/// or 0).
pub(super) fn set(target: Target<'_>, attr: &OsStr, value: &[u8], flags: i32) -> Result<(), Errno> {
    let attr = cstr(attr.as_bytes())?;
    dispatch(
        target,
        |dir, name| {
            let args = XattrArgs {
                value: value.as_ptr() as u64,
                size: value.len() as u32,
                flags: flags as u32,
            };
            // SAFETY: both strings are NUL-terminated; `args` points at `value`, readable
            // for the size it states, and its own size is passed.
            let ret = unsafe {
                libc::syscall(
                    SYS_SETXATTRAT,
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    attr.as_ptr(),
                    &args as *const XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            };
            check(ret).map(drop)
        },
        |path| {
            // SAFETY: both strings are NUL-terminated; `value` is readable for the length
            // we pass.
            let ret = unsafe {
                libc::setxattr(
                    path.as_ptr(),
                    attr.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags,
                )
            };
            check(ret.into()).map(drop)
        },
    )
}

/// Removes attribute `attr` of `target`.
pub(super) fn remove(target: Target<'_>, attr: &OsStr) -> Result<(), Errno> {
    let attr = cstr(attr.as_bytes())?;
    dispatch(
        target,
        |dir, name| {
            // SAFETY: both strings are NUL-terminated.
            let ret = unsafe {
                libc::syscall(
                    SYS_REMOVEXATTRAT,
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    attr.as_ptr(),
                )
            };
            check(ret).map(drop)
        },
        |path| {
            // SAFETY: both strings are NUL-terminated.
            let ret = unsafe { libc::removexattr(path.as_ptr(), attr.as_ptr()) };
            check(ret.into()).map(drop)
        },
    )
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::sys::Dir;

    /// `user.*` xattrs of a file and a symlink's target, reached by name (`*xattrat` where
    /// the kernel has it) and through an `O_PATH` descriptor's magic link: the two routes
    /// agree, and neither follows the symlink.
    #[test]
    fn child_routes_agree_and_never_follow_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("file", t.path().join("link")).unwrap();
        let dir = Dir::open_root(t.path()).unwrap();
        let fd = dir.as_fd();
        let child = |n: &'static CStr| Target::Child(fd, n);
        let held = openat2(fd, c"file", libc::O_PATH | libc::O_NOFOLLOW, 0).unwrap();
        let by_fd = Target::Fd(held.as_fd());
        let attr = OsStr::new("user.test");
        let long = vec![7u8; 1000];
        set(child(c"file"), attr, &long, 0).unwrap();
        assert_eq!(get(child(c"file"), attr).unwrap(), long);
        assert_eq!(get(by_fd, attr).unwrap(), long);
        assert_eq!(list(child(c"file")).unwrap(), b"user.test\0");
        assert_eq!(list(by_fd).unwrap(), list(child(c"file")).unwrap());
        assert_eq!(
            set(child(c"file"), attr, b"v", libc::XATTR_CREATE),
            Err(Errno::EEXIST)
        );
        // user.* xattrs are not allowed on symlinks: the link itself was asked.
        assert_eq!(get(child(c"link"), attr), Err(Errno::ENODATA));
        assert_eq!(set(child(c"link"), attr, b"v", 0), Err(Errno::EPERM));
        remove(child(c"file"), attr).unwrap();
        assert_eq!(get(by_fd, attr), Err(Errno::ENODATA));
        assert_eq!(remove(by_fd, attr), Err(Errno::ENODATA));
    }

    /// A directory's own xattrs through `.` (where the kernel has `*xattrat`) and through
    /// its magic link agree, for an `O_PATH` descriptor too.
    #[test]
    fn a_directory_reached_as_itself_and_by_its_link_agree() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        let dir = Dir::open_root(t.path()).unwrap();
        let held = openat2(dir.as_fd(), c"d", libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
        let (as_dir, by_fd) = (Target::Dir(held.as_fd()), Target::Fd(held.as_fd()));
        let attr = OsStr::new("user.test");
        set(as_dir, attr, b"v", 0).unwrap();
        assert_eq!(get(by_fd, attr).unwrap(), b"v");
        assert_eq!(get(as_dir, attr).unwrap(), b"v");
        assert_eq!(list(as_dir).unwrap(), b"user.test\0");
        assert_eq!(list(by_fd).unwrap(), list(as_dir).unwrap());
        remove(as_dir, attr).unwrap();
        assert_eq!(get(by_fd, attr), Err(Errno::ENODATA));
        assert_eq!(list(as_dir).unwrap(), b"");
        // The child's own entry was changed, not the parent's.
        assert_eq!(list(Target::Dir(dir.as_fd())).unwrap(), b"");
    }
}
