//! Mounting and unmounting a FUSE connection: mount(2) where this process may (root, or the
//! owner of a user namespace), otherwise through `fusermount3`, the setuid helper of
//! Debian's `fuse3`, which opens the device, mounts, and hands the descriptor back over a
//! socket.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Command;

use nix::sys::socket::{self, ControlMessageOwned, MsgFlags};

use super::{fusedev, Errno};

/// How a FUSE connection is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseMount<'a> {
    /// Where.
    pub mountpoint: &'a Path,
    /// The source `/proc/mounts` shows.
    pub fsname: &'a str,
    /// The type after `fuse.`.
    pub subtype: &'a str,
    /// `ro`.
    pub read_only: bool,
    /// `nodev`.
    pub nodev: bool,
    /// `nosuid`.
    pub nosuid: bool,
    /// `noexec`.
    pub noexec: bool,
    /// `noatime`.
    pub noatime: bool,
    /// Let every user reach the mount, not only its owner.
    pub allow_other: bool,
}

/// Why a mount failed.
#[derive(Debug)]
pub enum MountError {
    /// mount(2) itself refused.
    Kernel(Errno),
    /// `fusermount3` could not be run or failed.
    Helper(String),
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountError::Kernel(e) => write!(f, "mount(2): {e}"),
            MountError::Helper(why) => f.write_str(why),
        }
    }
}

impl FuseMount<'_> {
    fn flags(&self) -> nix::mount::MsFlags {
        use nix::mount::MsFlags;
        let mut flags = MsFlags::empty();
        for (on, flag) in [
            (self.read_only, MsFlags::MS_RDONLY),
            (self.nodev, MsFlags::MS_NODEV),
            (self.nosuid, MsFlags::MS_NOSUID),
            (self.noexec, MsFlags::MS_NOEXEC),
            (self.noatime, MsFlags::MS_NOATIME),
        ] {
            if on {
                flags |= flag;
            }
        }
        flags
    }

    /// The options `fusermount3 -o` takes for the same mount.
    fn helper_options(&self) -> String {
        let fsname = self.fsname.replace('\\', "\\\\").replace(',', "\\,");
        let mut opts = format!(
            "fsname={fsname},subtype={},default_permissions",
            self.subtype
        );
        for (on, name) in [
            (self.allow_other, "allow_other"),
            (self.read_only, "ro"),
            (self.nodev, "nodev"),
            (self.nosuid, "nosuid"),
            (self.noexec, "noexec"),
            (self.noatime, "noatime"),
        ] {
            if on {
                opts.push(',');
                opts.push_str(name);
            }
        }
        opts
    }
}

/// Mounts a new FUSE connection as `m` says and returns its `/dev/fuse` descriptor. The
/// kernel sends the INIT request on it next.
pub fn mount(m: &FuseMount<'_>) -> Result<OwnedFd, MountError> {
    let device = fusedev::open().map_err(MountError::Kernel)?;
    let root_mode = nix::sys::stat::stat(m.mountpoint)
        .map_err(MountError::Kernel)?
        .st_mode
        & libc::S_IFMT;
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={},group_id={},default_permissions",
        device.as_raw_fd(),
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    if m.allow_other {
        data.push_str(",allow_other");
    }
    let fstype = format!("fuse.{}", m.subtype);
    match nix::mount::mount(
        Some(m.fsname),
        m.mountpoint,
        Some(fstype.as_str()),
        m.flags(),
        Some(data.as_str()),
    ) {
        Ok(()) => Ok(device),
        Err(Errno::EPERM) => {
            drop(device);
            mount_by_helper(m)
        }
        Err(e) => Err(MountError::Kernel(e)),
    }
}

/// Runs `fusermount3` with one end of a socket pair in `_FUSE_COMMFD` and receives the
/// descriptor it opened.
fn mount_by_helper(m: &FuseMount<'_>) -> Result<OwnedFd, MountError> {
    let helper = |why: String| MountError::Helper(why);
    // The helper's end stays open across exec; ours is close-on-exec.
    let (ours, theirs) = socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::Stream,
        None,
        socket::SockFlag::empty(),
    )
    .map_err(|e| helper(format!("cannot make a socket pair for fusermount3: {e}")))?;
    nix::fcntl::fcntl(
        ours.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| helper(format!("fcntl: {e}")))?;
    let status = Command::new("fusermount3")
        .arg("-o")
        .arg(m.helper_options())
        .arg("--")
        .arg(m.mountpoint)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .status()
        .map_err(|e| {
            helper(format!(
                "cannot run fusermount3 ({e}): install fuse3, or mount as root"
            ))
        })?;
    drop(theirs);
    if !status.success() {
        return Err(helper(format!("fusermount3 failed ({status})")));
    }
    receive_fd(ours.as_raw_fd()).map_err(|e| helper(format!("no descriptor from fusermount3: {e}")))
}

fn receive_fd(sock: RawFd) -> Result<OwnedFd, Errno> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = socket::recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel installed this descriptor in our table for us alone.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(Errno::EIO)
}

/// Unmounts `path`: umount2 (lazily with `detach`), or `fusermount3 -u` where this process
/// may not unmount itself.
pub fn unmount(path: &Path, detach: bool) -> Result<(), Errno> {
    let flags = if detach {
        nix::mount::MntFlags::MNT_DETACH
    } else {
        nix::mount::MntFlags::empty()
    };
    match nix::mount::umount2(path, flags) {
        Err(Errno::EPERM) => {
            let mut cmd = Command::new("fusermount3");
            cmd.arg("-u");
            if detach {
                cmd.arg("-z");
            }
            match cmd.arg("--").arg(path).status() {
                Ok(s) if s.success() => Ok(()),
                Ok(_) => Err(Errno::EBUSY),
                Err(_) => Err(Errno::EPERM),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_options_escape_commas_in_the_source_name() {
        let m = FuseMount {
            mountpoint: Path::new("/m"),
            fsname: "a,b",
            subtype: "overlayfuse",
            read_only: true,
            nodev: true,
            nosuid: false,
            noexec: false,
            noatime: false,
            allow_other: true,
        };
        assert_eq!(
            m.helper_options(),
            "fsname=a\\,b,subtype=overlayfuse,default_permissions,allow_other,ro,nodev"
        );
    }
}
