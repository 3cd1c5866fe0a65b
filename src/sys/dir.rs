//! [`Dir`]: a directory descriptor that is provably beneath a layer root.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::stat::{FsStat, Stat};
use super::xattr::{self, Target};
use super::{check, cstr, dirent, Errno, RawEntry};

/// Resolution rules for every path opened inside a layer: stay beneath the starting directory,
/// follow no symlink (a trailing one is opened as itself with `O_PATH|O_NOFOLLOW`), no magic
/// links, and never cross into another mount.
const RESOLVE_IN_LAYER: u64 = libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_SYMLINKS
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_NO_XDEV;

/// An open file inside a layer, as returned by [`Dir::open_file`].
pub type OpenedFile = File;

/// An extended attribute: its name and value.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// A directory inside a layer, held as an `O_PATH` descriptor.
///
/// The only constructors are [`Dir::open_root`] and `Dir::from_fd` (a layer root the user
/// named, the latter through a private mount copy, see [`super::mount`]) and methods of an
/// existing `Dir` that resolve with `RESOLVE_BENEATH`, so every `Dir` lies beneath some
/// layer root.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

pub(super) fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    openat2_resolving(dir, path, flags, mode, RESOLVE_IN_LAYER)
}

/// [`openat2`], with `O_NOATIME` where `noatime` asks for it and the kernel allows it
/// (`EPERM` for a file the daemon neither owns nor may act as the owner of).
fn open_maybe_noatime(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    noatime: bool,
) -> Result<OwnedFd, Errno> {
    if noatime {
        match openat2(dir, path, flags | libc::O_NOATIME, 0) {
            Err(Errno::EPERM) => {}
            r => return r,
        }
    }
    openat2(dir, path, flags, 0)
}

/// openat2(2) with the `RESOLVE_*` rules `resolve`; the descriptor is close-on-exec.
pub(super) fn openat2_resolving(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> Result<OwnedFd, Errno> {
    // SAFETY: open_how is plain integers, for which all-zero is a valid value (and the
    // value the kernel expects in fields we do not set).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = mode as u64;
    how.resolve = resolve;
    // SAFETY: `path` is a valid NUL-terminated string, `how` is a fully initialised open_how
    // whose size we pass; the kernel only reads both. `dir` is a live descriptor.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let fd = check(ret)? as i32;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Refuses names that are not a single path component: the callers pass one name to calls
/// (fstatat, readlinkat) that would otherwise walk `/` and `..` without `RESOLVE_BENEATH`.
pub(super) fn component(name: &OsStr) -> Result<std::ffi::CString, Errno> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    cstr(bytes)
}

fn relative(path: &Path) -> Result<std::ffi::CString, Errno> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return cstr(b".");
    }
    cstr(bytes)
}

fn fstatat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> Result<Stat, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is writable memory of the right size; `name` is NUL-terminated.
    let ret = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) };
    check(ret.into())?;
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(Stat::from_libc(unsafe { &st.assume_init() }))
}

impl Dir {
    /// The directory `fd` refers to (a layer root opened another way, see [`super::mount`]).
    pub(super) fn from_fd(fd: OwnedFd) -> Dir {
        Dir { fd }
    }

    /// Opens a layer root by the path the user gave (the one place a path is followed as is).
    pub fn open_root(path: &Path) -> Result<Dir, Errno> {
        let c = cstr(path.as_os_str().as_bytes())?;
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        // SAFETY: `c` is a valid NUL-terminated path.
        let fd = check(unsafe { libc::open(c.as_ptr(), flags) }.into())? as i32;
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Opens the directory at `rel` (relative, `""` for this one) beneath this one.
    pub fn open_beneath(&self, rel: &Path) -> Result<Dir, Errno> {
        let c = relative(rel)?;
        let fd = openat2(
            self.fd.as_fd(),
            &c,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        Ok(Dir { fd })
    }

    /// Opens the child directory `name`.
    pub fn child_dir(&self, name: &OsStr) -> Result<Dir, Errno> {
        let c = component(name)?;
        let fd = openat2(
            self.fd.as_fd(),
            &c,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        Ok(Dir { fd })
    }

    /// Status of this directory.
    pub fn stat(&self) -> Result<Stat, Errno> {
        fstatat(self.fd.as_fd(), c"", libc::AT_EMPTY_PATH)
    }

    /// Status of the child `name`, not following a symlink.
    pub fn stat_child(&self, name: &OsStr) -> Result<Stat, Errno> {
        let c = component(name)?;
        fstatat(self.fd.as_fd(), &c, libc::AT_SYMLINK_NOFOLLOW)
    }

    /// Every entry of this directory, `.` and `..` included, in on-disk order; with
    /// `noatime`, leaving its access time as it is where the daemon may.
    pub fn entries(&self, noatime: bool) -> Result<Vec<RawEntry>, Errno> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        let fd = open_maybe_noatime(self.fd.as_fd(), c".", flags, noatime)?;
        dirent::read_all(fd)
    }

    /// Opens the regular file `name` with `flags` (`O_NOFOLLOW` is always added).
    pub fn open_file(&self, name: &OsStr, flags: i32) -> Result<OpenedFile, Errno> {
        let c = component(name)?;
        let fd = openat2(self.fd.as_fd(), &c, flags | libc::O_NOFOLLOW, 0)?;
        Ok(File::from(fd))
    }

    /// As [`Dir::open_file`]; with `noatime`, reads through the descriptor leave the access
    /// time as it is, where the daemon may ask for that (it owns the file, or holds
    /// `CAP_FOWNER`; else reads update it as usual).
    pub fn open_file_atime(
        &self,
        name: &OsStr,
        flags: i32,
        noatime: bool,
    ) -> Result<OpenedFile, Errno> {
        let c = component(name)?;
        let fd = open_maybe_noatime(self.fd.as_fd(), &c, flags | libc::O_NOFOLLOW, noatime)?;
        Ok(File::from(fd))
    }

    /// The target of the symlink `name`.
    pub fn readlink_child(&self, name: &OsStr) -> Result<Vec<u8>, Errno> {
        let c = component(name)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: `buf` is writable for its whole length, which we pass.
        let ret = unsafe {
            libc::readlinkat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let n = check(ret as libc::c_long)? as usize;
        buf.truncate(n);
        Ok(buf)
    }

    /// Extended attribute names of this directory, as the kernel's NUL-separated list.
    pub fn xattr_list(&self) -> Result<Vec<u8>, Errno> {
        xattr::list(Target::Dir(self.fd.as_fd()))
    }

    /// The value of the extended attribute `attr` of this directory.
    pub fn xattr_get(&self, attr: &OsStr) -> Result<Vec<u8>, Errno> {
        xattr::get(Target::Dir(self.fd.as_fd()), attr)
    }

    /// Extended attribute names of the child `name` (a symlink is read as itself).
    pub fn child_xattr_list(&self, name: &OsStr) -> Result<Vec<u8>, Errno> {
        xattr::list(Target::Child(self.fd.as_fd(), &component(name)?))
    }

    /// The value of the extended attribute `attr` of the child `name`.
    pub fn child_xattr_get(&self, name: &OsStr, attr: &OsStr) -> Result<Vec<u8>, Errno> {
        xattr::get(Target::Child(self.fd.as_fd(), &component(name)?), attr)
    }

    /// The extended attributes, name and value, of the child `name` (of this directory for
    /// `None`) whose names `keep` accepts, in the kernel's order: none where the filesystem
    /// holds none (`ENOTSUP`), and one removed between listing and reading is skipped.
    pub fn xattrs(
        &self,
        name: Option<&OsStr>,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<Xattr>, Errno> {
        let list = match name {
            Some(n) => self.child_xattr_list(n),
            None => self.xattr_list(),
        };
        let list = match list {
            Ok(l) => l,
            Err(Errno::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for attr in list.split(|b| *b == 0).filter(|n| !n.is_empty() && keep(n)) {
            let value = match name {
                Some(n) => self.child_xattr_get(n, OsStr::from_bytes(attr)),
                None => self.xattr_get(OsStr::from_bytes(attr)),
            };
            match value {
                Ok(v) => out.push((attr.to_vec(), v)),
                Err(Errno::ENODATA) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Usage figures of the filesystem holding this directory.
    pub fn statfs(&self) -> Result<FsStat, Errno> {
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `st` is writable memory of the right size; the fd is live.
        check(unsafe { libc::fstatvfs(self.fd.as_raw_fd(), st.as_mut_ptr()) }.into())?;
        // SAFETY: fstatvfs succeeded, so it filled `st`.
        let st = unsafe { st.assume_init() };
        Ok(FsStat {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namemax: st.f_namemax as u32,
            frsize: st.f_frsize as u32,
        })
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
