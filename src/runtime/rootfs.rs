//! The container's root: every mount target inside the image is resolved with the image as
//! `/` (`RESOLVE_IN_ROOT`), so a symlinked `/proc` or `/dev` in an image lands inside it, never
//! on the host. Then `pivot_root` into it, the old root detached, and the paths crun masks or
//! makes read-only treated the same way.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::sys::statvfs::FsFlags;

use crate::config::run::Bind;
use crate::error::Error;
use crate::sys::container::{fd_path, open_in_root};

/// Host devices bound into the container's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// Paths hidden from the container (crun's and podman's defaults).
const MASKED: [&str; 12] = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/fs/selinux",
    "/sys/dev/block",
    "/sys/devices/virtual/powercap",
];
/// Paths the container may read but not write.
const READ_ONLY: [&str; 6] = [
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn fail(what: String, e: Errno) -> Error {
    Error::setup(format!("{what}: {e}"))
}

const DIR: i32 = libc::O_PATH | libc::O_DIRECTORY;

/// Opens directory `rel` inside `root`, making it (and missing parents) when absent. A
/// dangling symlink on the way is followed inside the root and its target made.
fn ensure_dir(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Errno> {
    ensure_dir_within(root, rel, 0)
}

/// Most dangling symlinks followed while making one directory.
const MAX_LINKS: u32 = 40;

fn ensure_dir_within(root: BorrowedFd<'_>, rel: &Path, links: u32) -> Result<OwnedFd, Errno> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    match open_in_root(root, rel, DIR, 0) {
        Err(Errno::ENOENT) => {}
        other => return other,
    }
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(Errno::ENOENT);
    };
    let parent_fd = ensure_dir_within(root, parent, links)?;
    let mode = Mode::from_bits_truncate(0o755);
    match nix::sys::stat::mkdirat(Some(parent_fd.as_raw_fd()), name, mode) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    match open_in_root(root, rel, DIR, 0) {
        Err(Errno::ENOENT) if links < MAX_LINKS => {
            let target = nix::fcntl::readlinkat(Some(parent_fd.as_raw_fd()), name)?;
            let target = Path::new(&target);
            let next = match target.strip_prefix("/") {
                Ok(inside) => inside.to_owned(),
                Err(_) => parent.join(target),
            };
            ensure_dir_within(root, &next, links + 1)?;
            open_in_root(root, rel, DIR, 0)
        }
        other => other,
    }
}

/// Opens file `rel` inside `root`, making it (and missing parents) when absent.
fn ensure_file(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Errno> {
    if let Some(parent) = rel.parent() {
        ensure_dir(root, parent)?;
    }
    open_in_root(
        root,
        rel,
        libc::O_RDONLY | libc::O_CREAT | libc::O_NOCTTY,
        0o644,
    )
}

fn relative(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

/// A mount of `source` (a path or a filesystem name) onto `target` inside the root.
fn mount_at(
    source: &str,
    target: BorrowedFd<'_>,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
) -> Result<(), Error> {
    mount(Some(source), &fd_path(target), fstype, flags, data)
        .map_err(|e| fail(format!("cannot mount {what}"), e))
}

/// The flags a read-only remount must repeat: in a user namespace the kernel refuses to
/// clear nosuid, nodev or noexec that the mount already has.
fn locked_flags(target: &Path) -> MsFlags {
    let mut flags = MsFlags::empty();
    if let Ok(vfs) = nix::sys::statvfs::statvfs(target) {
        let f = vfs.flags();
        for (fs, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f.contains(fs) {
                flags |= ms;
            }
        }
    }
    flags
}

fn remount_read_only(target: &Path, what: &str) -> Result<(), Error> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked_flags(target);
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(|e| fail(format!("cannot make {what} read-only"), e))
}

/// Builds the container's root at `root` and pivots into it. `own_network`: the container
/// has its own network namespace (so a fresh sysfs may be mounted).
pub fn enter(root: &Path, binds: &[Bind], own_network: bool) -> Result<(), Error> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("cannot make the mounts private".into(), e))?;
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| fail(format!("cannot bind '{}' for the root", root.display()), e))?;
    let rootfd: OwnedFd = std::fs::File::open(root)
        .map_err(|e| Error::setup(format!("cannot open the root '{}': {e}", root.display())))?
        .into();
    let root = rootfd.as_fd();
    let sources = binds
        .iter()
        .map(|b| {
            std::fs::File::open(&b.source)
                .map(OwnedFd::from)
                .map_err(|e| Error::setup(format!("--bind source '{}': {e}", b.source.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let target = |rel: &str| {
        ensure_dir(root, Path::new(rel))
            .map_err(|e| fail(format!("mount target /{rel} in the image"), e))
    };
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_at(
        "proc",
        target("proc")?.as_fd(),
        Some("proc"),
        nosuid_nodev_noexec,
        None,
        "/proc",
    )?;
    mount_sys(root, target("sys")?.as_fd(), own_network)?;
    mount_dev(root, target("dev")?.as_fd())?;
    for (bind, source) in binds.iter().zip(&sources) {
        mount_bind(root, bind, source.as_fd())?;
    }
    pivot(root)?;
    drop(rootfd);
    mask()
}

fn mount_sys(root: BorrowedFd<'_>, target: BorrowedFd<'_>, own_network: bool) -> Result<(), Error> {
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let fresh = own_network
        && mount(
            Some("sysfs"),
            &fd_path(target),
            Some("sysfs"),
            flags,
            None::<&str>,
        )
        .is_ok();
    if fresh {
        return Ok(());
    }
    // Sharing the host's network namespace as a user namespace: a new sysfs is refused, so
    // the host's is bound, read-only.
    mount_at(
        "/sys",
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
        "/sys",
    )?;
    let mounted = open_in_root(root, Path::new("sys"), DIR, 0)
        .map_err(|e| fail("cannot open /sys".into(), e))?;
    remount_read_only(&fd_path(mounted.as_fd()), "/sys")
}

fn mount_dev(root: BorrowedFd<'_>, target: BorrowedFd<'_>) -> Result<(), Error> {
    mount_at(
        "tmpfs",
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=65536k"),
        "/dev",
    )?;
    let dev = open_in_root(root, Path::new("dev"), DIR, 0)
        .map_err(|e| fail("cannot open /dev".into(), e))?;
    let dev = dev.as_fd();
    for name in DEVICES {
        let node = open_in_root(
            dev,
            Path::new(name),
            libc::O_RDONLY | libc::O_CREAT | libc::O_EXCL,
            0o666,
        )
        .map_err(|e| fail(format!("cannot make /dev/{name}"), e))?;
        mount_at(
            &format!("/dev/{name}"),
            node.as_fd(),
            None,
            MsFlags::MS_BIND,
            None,
            &format!("/dev/{name}"),
        )?;
    }
    let pts =
        ensure_dir(dev, Path::new("pts")).map_err(|e| fail("cannot make /dev/pts".into(), e))?;
    let pts_flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let with_tty_group = mount(
        Some("devpts"),
        &fd_path(pts.as_fd()),
        Some("devpts"),
        pts_flags,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    );
    if with_tty_group.is_err() {
        // Group 5 (tty) is not mapped in this user namespace.
        mount_at(
            "devpts",
            pts.as_fd(),
            Some("devpts"),
            pts_flags,
            Some("newinstance,ptmxmode=0666,mode=0620"),
            "/dev/pts",
        )?;
    }
    let shm =
        ensure_dir(dev, Path::new("shm")).map_err(|e| fail("cannot make /dev/shm".into(), e))?;
    mount_at(
        "tmpfs",
        shm.as_fd(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
        "/dev/shm",
    )?;
    for (name, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        nix::unistd::symlinkat(to, Some(dev.as_raw_fd()), name)
            .map_err(|e| fail(format!("cannot make /dev/{name}"), e))?;
    }
    Ok(())
}

fn mount_bind(root: BorrowedFd<'_>, bind: &Bind, source: BorrowedFd<'_>) -> Result<(), Error> {
    let shown = bind.target.display().to_string();
    let rel = relative(&bind.target);
    let is_dir = std::fs::metadata(fd_path(source)).is_ok_and(|m| m.is_dir());
    let target = if is_dir {
        ensure_dir(root, rel)
    } else {
        ensure_file(root, rel)
    }
    .map_err(|e| fail(format!("--bind target '{shown}' in the image"), e))?;
    let src = fd_path(source);
    mount(
        Some(&src),
        &fd_path(target.as_fd()),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        fail(
            format!("cannot bind '{}' on '{shown}'", bind.source.display()),
            e,
        )
    })?;
    if bind.readonly {
        let mounted = open_in_root(root, rel, libc::O_PATH, 0)
            .map_err(|e| fail(format!("cannot open '{shown}'"), e))?;
        remount_read_only(&fd_path(mounted.as_fd()), &shown)?;
    }
    Ok(())
}

/// `pivot_root(".", ".")` then a lazy unmount of the old root stacked on the new one, which
/// needs no directory for the old root inside the image.
fn pivot(root: BorrowedFd<'_>) -> Result<(), Error> {
    nix::unistd::fchdir(root.as_raw_fd()).map_err(|e| fail("cannot enter the root".into(), e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| fail("pivot_root failed".into(), e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("cannot detach the old root".into(), e))?;
    nix::unistd::chdir("/").map_err(|e| fail("cannot enter /".into(), e))
}

/// Hides the masked paths (an empty read-only tmpfs on directories, /dev/null on files) and
/// makes the read-only ones read-only. Runs after the pivot, on the fresh /proc and /sys.
fn mask() -> Result<(), Error> {
    for path in MASKED {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue;
        };
        let result = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )
        } else {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        result.map_err(|e| fail(format!("cannot mask {path}"), e))?;
    }
    for path in READ_ONLY {
        if std::fs::symlink_metadata(path).is_err() {
            continue;
        }
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| fail(format!("cannot bind {path}"), e))?;
        remount_read_only(Path::new(path), path)?;
    }
    Ok(())
}
