//! Changes inside a layer directory: every call takes a single name relative to a [`Dir`]
//! and never follows a symlink in it, so a change cannot land outside the layer.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};

use super::dir::{component, openat2};
use super::xattr::{self, Target};
use super::{check, cstr, kernel_has_call, Dir, Errno};

/// A time to set with [`Dir::set_times`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// Leave it as it is.
    Omit,
    /// The current time.
    Now,
    /// Seconds and nanoseconds since the epoch.
    At(i64, i64),
}

impl From<std::time::SystemTime> for SetTime {
    fn from(t: std::time::SystemTime) -> SetTime {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => SetTime::At(d.as_secs() as i64, d.subsec_nanos().into()),
            Err(e) => {
                // Before the epoch: whole seconds rounded down, nanoseconds counted up.
                let d = e.duration();
                let nsec = i64::from(d.subsec_nanos());
                if nsec == 0 {
                    SetTime::At(-(d.as_secs() as i64), 0)
                } else {
                    SetTime::At(-(d.as_secs() as i64) - 1, 1_000_000_000 - nsec)
                }
            }
        }
    }
}

impl SetTime {
    /// The time as a `SystemTime` (`Now` read now), `None` for `Omit`.
    pub fn system_time(self) -> Option<std::time::SystemTime> {
        use std::time::{Duration, SystemTime, UNIX_EPOCH};
        match self {
            SetTime::Omit => None,
            SetTime::Now => Some(SystemTime::now()),
            SetTime::At(s, n) if s >= 0 => Some(UNIX_EPOCH + Duration::new(s as u64, n as u32)),
            SetTime::At(s, n) => Some(
                UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(n as u64),
            ),
        }
    }

    fn timespec(self) -> libc::timespec {
        match self {
            SetTime::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            SetTime::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            SetTime::At(sec, nsec) => libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            },
        }
    }
}

/// Flags of [`Dir::rename`], as renameat2(2) takes them.
pub mod rename_flags {
    /// Fail if the target exists.
    pub const NOREPLACE: u32 = libc::RENAME_NOREPLACE;
    /// Swap the two names atomically.
    pub const EXCHANGE: u32 = libc::RENAME_EXCHANGE;
    /// Leave a whiteout (char device 0/0) at the source, atomically.
    pub const WHITEOUT: u32 = libc::RENAME_WHITEOUT;
}

impl Dir {
    /// Creates directory `name` with `mode`.
    pub fn mkdir(&self, name: &OsStr, mode: u32) -> Result<(), Errno> {
        let c = component(name)?;
        // SAFETY: `c` is a NUL-terminated single component; the fd is live.
        check(unsafe { libc::mkdirat(self.as_fd().as_raw_fd(), c.as_ptr(), mode) }.into()).map(drop)
    }

    /// Creates the node `name` (fifo, socket, device, or a 0/0 whiteout) with `mode`
    /// (type bits included) and device number `rdev`.
    pub fn mknod(&self, name: &OsStr, mode: u32, rdev: u64) -> Result<(), Errno> {
        let c = component(name)?;
        // SAFETY: `c` is a NUL-terminated single component; the fd is live.
        let ret = unsafe { libc::mknodat(self.as_fd().as_raw_fd(), c.as_ptr(), mode, rdev) };
        check(ret.into()).map(drop)
    }

    /// Creates the symlink `name` pointing at `target` (stored as is, never followed here).
    pub fn symlink(&self, name: &OsStr, target: &[u8]) -> Result<(), Errno> {
        let c = component(name)?;
        let t = cstr(target)?;
        // SAFETY: both strings are NUL-terminated; the fd is live.
        let ret = unsafe { libc::symlinkat(t.as_ptr(), self.as_fd().as_raw_fd(), c.as_ptr()) };
        check(ret.into()).map(drop)
    }

    /// Creates the regular file `name` (which must not exist) with `mode` and opens it with
    /// `flags` (an access mode, plus `O_TRUNC`/`O_APPEND` which are meaningless here).
    pub fn create_file(&self, name: &OsStr, flags: i32, mode: u32) -> Result<File, Errno> {
        let c = component(name)?;
        let how = flags | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        let fd = openat2(self.as_fd(), &c, how, mode)?;
        Ok(File::from(fd))
    }

    /// Opens an unnamed regular file in this directory (`O_TMPFILE`), for writing.
    pub fn tmpfile(&self, mode: u32) -> Result<File, Errno> {
        let fd = openat2(self.as_fd(), c".", libc::O_TMPFILE | libc::O_WRONLY, mode)?;
        Ok(File::from(fd))
    }

    /// Makes `new_name` in `new_dir` a hard link to `name` here (a symlink is linked as itself).
    pub fn link(&self, name: &OsStr, new_dir: &Dir, new_name: &OsStr) -> Result<(), Errno> {
        let a = component(name)?;
        let b = component(new_name)?;
        // SAFETY: both strings are NUL-terminated single components; both fds are live.
        let ret = unsafe {
            libc::linkat(
                self.as_fd().as_raw_fd(),
                a.as_ptr(),
                new_dir.as_fd().as_raw_fd(),
                b.as_ptr(),
                0,
            )
        };
        check(ret.into()).map(drop)
    }

    /// Removes the non-directory `name`.
    pub fn unlink(&self, name: &OsStr) -> Result<(), Errno> {
        self.unlinkat(name, 0)
    }

    /// Removes the empty directory `name`.
    pub fn rmdir(&self, name: &OsStr) -> Result<(), Errno> {
        self.unlinkat(name, libc::AT_REMOVEDIR)
    }

    fn unlinkat(&self, name: &OsStr, flags: i32) -> Result<(), Errno> {
        let c = component(name)?;
        // SAFETY: `c` is a NUL-terminated single component; the fd is live.
        check(unsafe { libc::unlinkat(self.as_fd().as_raw_fd(), c.as_ptr(), flags) }.into())
            .map(drop)
    }

    /// Renames `name` here to `new_name` in `new_dir`, with renameat2(2) `flags`
    /// (see [`rename_flags`]).
    pub fn rename(
        &self,
        name: &OsStr,
        new_dir: &Dir,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        let a = component(name)?;
        let b = component(new_name)?;
        // SAFETY: both strings are NUL-terminated single components; both fds are live.
        let ret = unsafe {
            libc::renameat2(
                self.as_fd().as_raw_fd(),
                a.as_ptr(),
                new_dir.as_fd().as_raw_fd(),
                b.as_ptr(),
                flags,
            )
        };
        check(ret.into()).map(drop)
    }

    /// Changes the permission bits of the child `name` (a symlink's own mode is not
    /// changeable: `EOPNOTSUPP`).
    pub fn chmod_child(&self, name: &OsStr, mode: u32) -> Result<(), Errno> {
        let c = component(name)?;
        if !have_fchmodat2() {
            let fd = openat2(self.as_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            return chmod_fd(fd.as_fd(), mode);
        }
        // SAFETY: `c` is NUL-terminated; the descriptor is live.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                self.as_fd().as_raw_fd(),
                c.as_ptr(),
                mode & 0o7777,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        check(ret).map(drop)
    }

    /// Changes the permission bits of this directory.
    pub fn chmod(&self, mode: u32) -> Result<(), Errno> {
        chmod_fd(self.as_fd(), mode)
    }

    /// Changes the owner of the child `name` (a symlink itself); `None` leaves an id as is.
    pub fn chown_child(
        &self,
        name: &OsStr,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), Errno> {
        let c = component(name)?;
        self.fchownat(&c, uid, gid, libc::AT_SYMLINK_NOFOLLOW)
    }

    /// Changes the owner of this directory.
    pub fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> Result<(), Errno> {
        self.fchownat(c"", uid, gid, libc::AT_EMPTY_PATH)
    }

    fn fchownat(
        &self,
        name: &std::ffi::CStr,
        uid: Option<u32>,
        gid: Option<u32>,
        flags: i32,
    ) -> Result<(), Errno> {
        let uid = uid.unwrap_or(u32::MAX);
        let gid = gid.unwrap_or(u32::MAX);
        // SAFETY: `name` is NUL-terminated (empty with AT_EMPTY_PATH); the fd is live.
        let ret =
            unsafe { libc::fchownat(self.as_fd().as_raw_fd(), name.as_ptr(), uid, gid, flags) };
        check(ret.into()).map(drop)
    }

    /// Sets the access and modification times of the child `name` (a symlink itself).
    pub fn set_times_child(
        &self,
        name: &OsStr,
        atime: SetTime,
        mtime: SetTime,
    ) -> Result<(), Errno> {
        let c = component(name)?;
        self.utimensat(&c, atime, mtime, libc::AT_SYMLINK_NOFOLLOW)
    }

    /// Sets the access and modification times of this directory.
    pub fn set_times(&self, atime: SetTime, mtime: SetTime) -> Result<(), Errno> {
        self.utimensat(c"", atime, mtime, libc::AT_EMPTY_PATH)
    }

    fn utimensat(
        &self,
        name: &std::ffi::CStr,
        atime: SetTime,
        mtime: SetTime,
        flags: i32,
    ) -> Result<(), Errno> {
        let times = [atime.timespec(), mtime.timespec()];
        // SAFETY: `name` is NUL-terminated; `times` holds the two timespecs utimensat reads.
        let ret = unsafe {
            libc::utimensat(
                self.as_fd().as_raw_fd(),
                name.as_ptr(),
                times.as_ptr(),
                flags,
            )
        };
        check(ret.into()).map(drop)
    }

    /// Sets xattr `attr` of this directory.
    pub fn xattr_set(&self, attr: &OsStr, value: &[u8], flags: i32) -> Result<(), Errno> {
        xattr::set(Target::Dir(self.as_fd()), attr, value, flags)
    }

    /// Removes xattr `attr` of this directory.
    pub fn xattr_remove(&self, attr: &OsStr) -> Result<(), Errno> {
        xattr::remove(Target::Dir(self.as_fd()), attr)
    }

    /// Sets xattr `attr` of the child `name` (a symlink itself).
    pub fn child_xattr_set(
        &self,
        name: &OsStr,
        attr: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        xattr::set(
            Target::Child(self.as_fd(), &component(name)?),
            attr,
            value,
            flags,
        )
    }

    /// Removes xattr `attr` of the child `name`.
    pub fn child_xattr_remove(&self, name: &OsStr, attr: &OsStr) -> Result<(), Errno> {
        xattr::remove(Target::Child(self.as_fd(), &component(name)?), attr)
    }

    /// Flushes the filesystem holding this directory (syncfs(2)).
    pub fn syncfs(&self) -> Result<(), Errno> {
        let fd = openat2(self.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        // SAFETY: the fd is live.
        check(unsafe { libc::syncfs(fd.as_raw_fd()) }.into()).map(drop)
    }

    /// fsync(2) of this directory itself, so a rename or create in it is durable.
    pub fn fsync(&self) -> Result<(), Errno> {
        let fd = openat2(self.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        // SAFETY: the fd is live.
        check(unsafe { libc::fsync(fd.as_raw_fd()) }.into()).map(drop)
    }
}

/// True when the kernel has fchmodat2(2) (Linux 6.6), which changes a child's mode without
/// following a symlink in one call; asked once.
fn have_fchmodat2() -> bool {
    static HAVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAVE.get_or_init(|| {
        kernel_has_call(|| {
            // SAFETY: descriptor -1 and an empty path: the call fails without side effects.
            unsafe {
                libc::syscall(
                    libc::SYS_fchmodat2,
                    -1,
                    c"".as_ptr(),
                    0o644,
                    libc::AT_EMPTY_PATH,
                )
            }
        })
    })
}

fn chmod_fd(fd: std::os::fd::BorrowedFd<'_>, mode: u32) -> Result<(), Errno> {
    // fchmod refuses O_PATH descriptors; the magic link reaches the object itself.
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| Errno::EINVAL)?;
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) }.into()).map(drop)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn chmod_child_changes_a_file_and_never_follows_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("file", t.path().join("link")).unwrap();
        let dir = Dir::open_root(t.path()).unwrap();
        let mode = || {
            std::fs::metadata(t.path().join("file"))
                .unwrap()
                .permissions()
                .mode()
        };
        dir.chmod_child(OsStr::new("file"), 0o4711).unwrap();
        assert_eq!(mode() & 0o7777, 0o4711);
        assert_eq!(
            dir.chmod_child(OsStr::new("link"), 0o600),
            Err(Errno::EOPNOTSUPP)
        );
        assert_eq!(mode() & 0o7777, 0o4711);
    }
}
