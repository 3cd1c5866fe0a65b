//! Mounts: the mount table of this namespace, and private copies of the mounts the layers
//! live on, each with the access-time rule the overlay reads its layers by.
//!
//! The kernel overlay reads its layers through private copies of their mounts too: that is
//! what keeps a read of a lower file from touching its access time, and makes the upper's
//! follow the overlay's `relatime`, `strictatime` or `noatime` rather than its own mount's.
//! A copy matters here beyond the daemon's own reads: the kernel's passthrough reads open
//! the file anew at the path of the descriptor the daemon registered, so they go by the
//! rules of the mount that descriptor is on.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{check, cstr, Dir, Errno};

/// True when the kernel has mount_setattr(2) (Linux 5.12): the calls behind idmapped mounts
/// and the per-layer access-time rules.
pub fn have_mount_setattr() -> bool {
    // A change to ask for (read-only): a call asking for none succeeds before it looks at
    // the descriptor.
    let attr: [u64; 4] = [1, 0, 0, 0];
    super::kernel_has_call(|| {
        // SAFETY: descriptor -1 with an empty path: the call fails with EBADF when it looks
        // the target up, after only reading the 32-byte `attr`.
        unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                -1,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        }
    })
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
pub(super) struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

/// `MOUNT_ATTR_NOATIME`.
const MOUNT_ATTR_NOATIME: u64 = 0x10;
/// `MOUNT_ATTR_STRICTATIME`.
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
/// `MOUNT_ATTR__ATIME`: the field of the three access-time rules (0 within it: relatime).
const MOUNT_ATTR_ATIME_FIELD: u64 = 0x70;
/// `OPEN_TREE_CLONE`.
const OPEN_TREE_CLONE: u32 = 1;

/// mount_setattr(2) of `path` beneath `dir` (`""` with `AT_EMPTY_PATH`: `dir` itself).
pub(super) fn mount_setattr(
    dir: libc::c_int,
    path: &CStr,
    flags: libc::c_uint,
    attr: &MountAttr,
) -> Result<(), Errno> {
    // SAFETY: `path` is NUL-terminated and `attr` a fully initialised mount_attr whose size
    // is passed; the kernel only reads both.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dir,
            path.as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// When reads through a mount update access times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadAtime {
    /// The first read after a change, or a day after the last (`relatime`).
    Relative,
    /// Every read (`strictatime`).
    Strict,
    /// Never (`noatime`).
    Never,
}

/// Private copies of mounts, one per mount point and rule, shared by every layer root
/// opened on that mount (an upper dir and its work dir must be on one mount: renames go
/// between them).
#[derive(Debug, Default)]
pub struct LayerMounts {
    copies: Vec<(PathBuf, ReadAtime, Dir)>,
}

impl LayerMounts {
    /// Opens directory `path` (absolute, with no symlink in it) through a private copy of
    /// the mount it is on, reading by `atime`. Where no copy can be made or given the rule
    /// (no `CAP_SYS_ADMIN` over the mount namespace, a mount locked by a less privileged
    /// namespace, a kernel before 5.12), it is opened as it is, on its own mount.
    pub fn open_root(&mut self, path: &Path, atime: ReadAtime) -> Result<Dir, Errno> {
        match self.copy_for(path, atime) {
            Some((root, rel)) => root.open_beneath(&rel),
            None => Dir::open_root(path),
        }
    }

    /// The copy of the mount `path` is on (made now if need be), and `path` relative to it.
    fn copy_for(&mut self, path: &Path, atime: ReadAtime) -> Option<(&Dir, PathBuf)> {
        let mount_point = mount_point_of(path)?;
        let rel = path.strip_prefix(&mount_point).ok()?.to_owned();
        let at = self
            .copies
            .iter()
            .position(|(m, a, _)| *m == mount_point && *a == atime);
        let at = match at {
            Some(i) => i,
            None => match private_copy(&mount_point, atime) {
                Ok(dir) => {
                    self.copies.push((mount_point, atime, dir));
                    self.copies.len() - 1
                }
                Err(e) => {
                    log::debug!(
                        "no private copy of the mount on {}: {e}; its access times follow \
                         its own mount",
                        mount_point.display()
                    );
                    return None;
                }
            },
        };
        Some((&self.copies[at].2, rel))
    }
}

/// A detached copy of the mount on `mount_point` (without the mounts below it), reading by
/// `atime`.
fn private_copy(mount_point: &Path, atime: ReadAtime) -> Result<Dir, Errno> {
    let c = cstr(mount_point.as_os_str().as_bytes())?;
    // SAFETY: `c` is NUL-terminated; the flags ask for a detached clone, close-on-exec.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as u32,
        )
    };
    let fd = check(fd)? as i32;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let attr = MountAttr {
        attr_set: match atime {
            ReadAtime::Relative => 0,
            ReadAtime::Strict => MOUNT_ATTR_STRICTATIME,
            ReadAtime::Never => MOUNT_ATTR_NOATIME,
        },
        attr_clr: MOUNT_ATTR_ATIME_FIELD,
        propagation: 0,
        userns_fd: 0,
    };
    mount_setattr(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH as u32, &attr)?;
    Ok(Dir::from_fd(fd))
}

/// The mount point, in this namespace, of the mount `path` is on: the longest mount point
/// that is `path` or one of its ancestors (the last listed of equals: it is on top).
fn mount_point_of(path: &Path) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<PathBuf> = None;
    for point in mount_points(&info) {
        if path.starts_with(&point)
            && best
                .as_ref()
                .map_or(true, |b| point.as_os_str().len() >= b.as_os_str().len())
        {
            best = Some(point);
        }
    }
    best
}

/// The mount points of a `/proc/self/mountinfo` text, in its order.
pub fn mount_points(info: &str) -> impl Iterator<Item = PathBuf> + '_ {
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(<std::ffi::OsStr as OsStrExt>::from_bytes(&unescape(m)).to_owned()))
}

/// A mountinfo path field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b\\134c"), b"/a b\\c".to_vec());
        assert_eq!(unescape("/plain"), b"/plain".to_vec());
        let info = "22 1 0:21 / /a\\040b rw - tmpfs t rw\n23 1 0:22 / / rw - ext4 x rw\n";
        let points: Vec<_> = mount_points(info).collect();
        assert_eq!(points, [PathBuf::from("/a b"), PathBuf::from("/")]);
    }

    #[test]
    fn a_path_is_on_the_longest_mount_point_above_it() {
        let root = mount_point_of(Path::new("/proc/self")).unwrap();
        assert_eq!(root, PathBuf::from("/proc"));
        assert!(mount_point_of(Path::new("/")).is_some());
    }
}
