//! The container's root: every mount target inside the image is resolved with the image as
//! `/` (`RESOLVE_IN_ROOT`), so a symlinked `/proc` or `/dev` in an image lands inside it, never
//! on the host. Then `pivot_root` into it, the old root detached, and the paths crun masks or
//! makes read-only treated the same way.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

use crate::config::run::Bind;
use crate::error::Error;
use crate::sys::container::{fd_path, make_mounts_private, open_in_root, restrict_mount_tree};

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

/// Opens file `rel` inside `root` (as `O_PATH`, so a FIFO cannot block), making an empty
/// file (and missing parents) when absent.
fn ensure_file(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Errno> {
    match open_in_root(root, rel, libc::O_PATH, 0) {
        Err(Errno::ENOENT) => {}
        other => return other,
    }
    if let Some(parent) = rel.parent() {
        ensure_dir(root, parent)?;
    }
    drop(open_in_root(
        root,
        rel,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o644,
    )?);
    open_in_root(root, rel, libc::O_PATH, 0)
}

/// Identity of a filesystem object.
type FileId = (u64, u64);

fn file_id(fd: BorrowedFd<'_>) -> Result<FileId, Errno> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    Ok((st.st_dev, st.st_ino))
}

/// Checks a resolved mount target: never the root itself (a filesystem stacked on `/`
/// would be reachable as `/..`), and on one of the filesystems in `allowed` (the image, or
/// the container's /dev), never on a mount made here for /proc or /sys.
fn checked(target: OwnedFd, root: FileId, allowed: &[u64], shown: &str) -> Result<OwnedFd, Error> {
    let id = file_id(target.as_fd()).map_err(|e| fail(format!("mount target {shown}"), e))?;
    if id == root {
        return Err(Error::setup(format!(
            "mount target {shown} resolves to the root of the image (a symlink to /?): fix the image"
        )));
    }
    if !allowed.contains(&id.0) {
        return Err(Error::setup(format!(
            "mount target {shown} resolves into /proc, /sys or another mount: fix the image or the target"
        )));
    }
    Ok(target)
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

/// Builds the container's root at `root` and pivots into it. `own_network`: the container
/// has its own network namespace (so a fresh sysfs may be mounted).
pub fn enter(root: &Path, binds: &[Bind], own_network: bool) -> Result<(), Error> {
    make_mounts_private().map_err(|e| fail("cannot make the mounts private".into(), e))?;
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| fail(format!("cannot bind '{}' for the root", root.display()), e))?;
    // Device nodes and setuid bits of the image (a --rootfs directory too) grant nothing.
    restrict_mount_tree(root, false, true)
        .map_err(|e| fail("cannot make the root nosuid,nodev".into(), e))?;
    let rootfd: OwnedFd = std::fs::File::open(root)
        .map_err(|e| Error::setup(format!("cannot open the root '{}': {e}", root.display())))?
        .into();
    let root = rootfd.as_fd();
    let root_id = file_id(root).map_err(|e| fail("cannot stat the root".into(), e))?;
    let sources = binds
        .iter()
        .map(|b| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH)
                .open(&b.source)
                .map(OwnedFd::from)
                .map_err(|e| Error::setup(format!("--bind source '{}': {e}", b.source.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let target = |rel: &str| {
        let fd = ensure_dir(root, Path::new(rel))
            .map_err(|e| fail(format!("mount target /{rel} in the image"), e))?;
        checked(fd, root_id, &[root_id.0], &format!("/{rel}"))
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
    let dev_fs = mount_dev(root, target("dev")?.as_fd())?;
    for (bind, source) in binds.iter().zip(&sources) {
        mount_bind(root, bind, source.as_fd(), root_id, dev_fs)?;
    }
    pivot(root)?;
    drop(rootfd);
    for (path, magic, name) in [
        ("/proc", nix::sys::statfs::PROC_SUPER_MAGIC, "procfs"),
        ("/sys", nix::sys::statfs::SYSFS_MAGIC, "sysfs"),
    ] {
        let found = nix::sys::statfs::statfs(path).map(|s| s.filesystem_type());
        if found != Ok(magic) {
            return Err(Error::setup(format!(
                "{path} in the container is not the {name} mounted for it: a mount target of the image is a symlink that moved it"
            )));
        }
    }
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
    // Read-only all the way down: the host's cgroup and fuse trees are mounted below /sys.
    restrict_mount_tree(&fd_path(mounted.as_fd()), true, true)
        .map_err(|e| fail("cannot make /sys read-only".into(), e))
}

/// Builds /dev; returns the device number of its tmpfs (bind targets may lie there).
fn mount_dev(root: BorrowedFd<'_>, target: BorrowedFd<'_>) -> Result<u64, Error> {
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
    file_id(dev)
        .map(|(fs, _)| fs)
        .map_err(|e| fail("cannot stat /dev".into(), e))
}

fn mount_bind(
    root: BorrowedFd<'_>,
    bind: &Bind,
    source: BorrowedFd<'_>,
    root_id: FileId,
    dev_fs: u64,
) -> Result<(), Error> {
    let shown = bind.target.display().to_string();
    let rel = relative(&bind.target);
    let is_dir = std::fs::metadata(fd_path(source)).is_ok_and(|m| m.is_dir());
    let target = if is_dir {
        ensure_dir(root, rel)
    } else {
        ensure_file(root, rel)
    }
    .map_err(|e| fail(format!("--bind target '{shown}' in the image"), e))?;
    let target = checked(target, root_id, &[root_id.0, dev_fs], &shown)?;
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
        restrict_mount_tree(&fd_path(mounted.as_fd()), true, false)
            .map_err(|e| fail(format!("cannot make '{shown}' read-only"), e))?;
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
        restrict_mount_tree(Path::new(path), true, false)
            .map_err(|e| fail(format!("cannot make {path} read-only"), e))?;
    }
    Ok(())
}
