//! Test harness: layer fixtures, real mounts of our daemon and of the kernel overlay, and
//! tree snapshots to compare them.
//!
//! Every mount here must succeed: a test that cannot mount fails, it never skips.

#![allow(dead_code)]

pub mod backing;
pub mod fixture;
pub mod tree;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub use fixture::{Form, Layer, Opq, Wh};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_overlayfuse")
}

/// A scratch directory for one test, removed (after unmounting) at the end.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("ofs")
                .tempdir_in(scratch_root())
                .unwrap(),
        }
    }
    /// A scratch directory inside `root` (a backing filesystem).
    pub fn within(root: &Path) -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("ofs")
                .tempdir_in(root)
                .unwrap(),
        }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

/// The directory every scratch dir and backing filesystem of the tests lives in: a bind mount
/// of itself made shared, so that every mount below it is shared too. A mount namespace made
/// while a test's mount exists (podman's rootless pause process, a container runtime) holds a
/// copy of it; where `/` is private, an unmount here would not reach that copy, which would
/// keep the daemon alive and its upper locked after the test unmounted it. Shared, the unmount
/// propagates to the copy (a peer or a slave of ours).
pub fn scratch_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join("ofs-t");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        if !is_mounted(&root) {
            mount_flags(Some(&root), &root, libc::MS_BIND);
        }
        mount_flags(None, &root, libc::MS_SHARED);
        root
    })
}

/// mount(2) of `source` (or nothing) on `target` with `flags` and no type or data; panics
/// with the error.
fn mount_flags(source: Option<&Path>, target: &Path, flags: libc::c_ulong) {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
    let (src, dst) = (source.map(c), c(target));
    let src_ptr = src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: test helper; NUL-terminated paths (or null), null fs type and data.
    let r = unsafe {
        libc::mount(
            src_ptr,
            dst.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    assert_eq!(
        r,
        0,
        "mount {flags:#x} on {}: {}",
        target.display(),
        std::io::Error::last_os_error()
    );
}

/// True when `path` is a mount point in this namespace.
pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(want))
}

/// Spawns `daemon` (a foreground command of our binary, stdin closed) and waits up to
/// `limit` for its mount at `mountpoint` to go live.
pub fn serve_in_foreground(
    mut daemon: Command,
    mountpoint: &Path,
    limit: Duration,
) -> std::process::Child {
    let child = daemon.stdin(std::process::Stdio::null()).spawn().unwrap();
    assert!(
        wait_for(limit, || is_mounted(mountpoint)),
        "the foreground daemon's mount at {} never went live",
        mountpoint.display()
    );
    child
}

/// Waits up to `limit` for `cond`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn umount(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: test helper; NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        // SAFETY: as above.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A mount that is unmounted when dropped.
pub struct Mounted {
    pub path: PathBuf,
}

impl Mounted {
    /// Unmounts now (and waits until the kernel no longer lists it).
    pub fn unmount(&self) {
        umount(&self.path);
        assert!(wait_for(Duration::from_secs(10), || !is_mounted(
            &self.path
        )));
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.path) {
            umount(&self.path);
        }
    }
}

/// Runs the binary with `args` and returns its output (stdin closed).
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// `lowers` as a `lowerdir=` (or `--lower`) value.
pub fn colon_list(lowers: &[PathBuf]) -> String {
    lowers
        .iter()
        .map(|l| l.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Mounts our daemon over `lowers` (topmost first) at `mountpoint`, with extra `-o` options.
pub fn mount_ours_with(lowers: &[PathBuf], mountpoint: &Path, extra: &str) -> Mounted {
    let lower = colon_list(lowers);
    let mut opts = format!("lowerdir={lower}");
    if !extra.is_empty() {
        opts.push(',');
        opts.push_str(extra);
    }
    let out = run(&["-o", &opts, mountpoint.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "overlayfuse mount failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        is_mounted(mountpoint),
        "overlayfuse returned before the mount was live"
    );
    Mounted {
        path: mountpoint.to_owned(),
    }
}

/// Mounts our daemon writable: `lowers` under `upper`, with `work` as its work dir.
pub fn mount_ours_rw(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    mountpoint: &Path,
    extra: &str,
) -> Mounted {
    let mut opts = format!("upperdir={},workdir={}", upper.display(), work.display());
    if !extra.is_empty() {
        opts.push(',');
        opts.push_str(extra);
    }
    mount_ours_with(lowers, mountpoint, &opts)
}

/// Mounts the kernel overlay writable: `lowers` under `upper`, work dir `work`.
pub fn mount_kernel_rw(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    mountpoint: &Path,
) -> Mounted {
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        colon_list(lowers),
        upper.display(),
        work.display()
    );
    kernel_overlay(&data, 0, mountpoint)
}

/// mount(2) of the kernel overlay with option string `data` and mount `flags`; unmounted when
/// the result is dropped.
pub fn kernel_overlay(data: &str, flags: libc::c_ulong, mountpoint: &Path) -> Mounted {
    let data = CString::new(data).unwrap();
    let target = CString::new(mountpoint.as_os_str().as_bytes()).unwrap();
    // SAFETY: test helper; NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    assert_eq!(
        r,
        0,
        "kernel overlay mount failed: {}",
        std::io::Error::last_os_error()
    );
    Mounted {
        path: mountpoint.to_owned(),
    }
}

/// Mounts our daemon over `lowers`.
pub fn mount_ours(lowers: &[PathBuf], mountpoint: &Path) -> Mounted {
    mount_ours_with(lowers, mountpoint, "")
}

/// Mounts the kernel overlay over `lowers` read-only. The kernel needs two lowers without an
/// upper, so a single lower gets an empty one below it.
pub fn mount_kernel(lowers: &[PathBuf], mountpoint: &Path, spare: &Path) -> Mounted {
    let mut lowers = lowers.to_vec();
    if lowers.len() == 1 {
        std::fs::create_dir_all(spare).unwrap();
        lowers.push(spare.to_owned());
    }
    kernel_overlay(
        &format!("lowerdir={}", colon_list(&lowers)),
        libc::MS_RDONLY,
        mountpoint,
    )
}

/// Writes `layers` into the scratch dir twice: `o<i>` in our form, `k<i>` in the kernel's.
fn write_both(scratch: &Scratch, layers: &[Layer]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    write_both_in(scratch, Form::Ours, scratch, layers)
}

/// Writes `layers` as `o<i>` in `ours` (in form `form`) and as `k<i>` in `kernel`.
fn write_both_in(
    ours_in: &Scratch,
    form: Form,
    kernel_in: &Scratch,
    layers: &[Layer],
) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut ours = Vec::new();
    let mut kernel = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let o = ours_in.path(&format!("o{i}"));
        let k = kernel_in.path(&format!("k{i}"));
        layer.write(&o, form);
        layer.write(&k, Form::Kernel);
        ours.push(o);
        kernel.push(k);
    }
    (ours, kernel)
}

/// Runs `cmd`: `Ok` if it exits 0, `Err(-1)` otherwise (for comparing outcomes of tools).
pub fn succeeds(cmd: &mut Command) -> Result<(), i32> {
    if cmd.status().unwrap().success() {
        Ok(())
    } else {
        Err(-1)
    }
}

/// The same layers mounted by us and by the kernel.
pub struct Pair {
    // Fields drop in this order: the mounts go before the directories they live in.
    pub ours: Mounted,
    pub kernel: Mounted,
    pub scratch: Scratch,
    /// Where the kernel's side lives when the scratch's filesystem cannot hold it.
    pub kernel_scratch: Option<Scratch>,
}

impl Pair {
    /// Writes `layers` (topmost first) in both forms and mounts both overlays.
    pub fn new(layers: &[Layer]) -> Pair {
        Pair::with_options(layers, "")
    }

    /// As [`Pair::new`], with extra `-o` options for our mount.
    pub fn with_options(layers: &[Layer], extra: &str) -> Pair {
        let scratch = Scratch::new();
        let (ours, kernel) = write_both(&scratch, layers);
        let om = scratch.mkdir("ours");
        let km = scratch.mkdir("kern");
        let ours = mount_ours_with(&ours, &om, extra);
        let kernel = mount_kernel(&kernel, &km, &scratch.path("spare"));
        Pair {
            scratch,
            ours,
            kernel,
            kernel_scratch: None,
        }
    }

    /// Writes `lowers` (topmost first) in both forms and mounts both overlays writable, each
    /// with an empty upper layer (`ou`/`ku`) and work dir (`ow`/`kw`) in the scratch dir.
    pub fn writable(lowers: &[Layer], extra: &str) -> Pair {
        let scratch = Scratch::new();
        let (ours, kernel) = write_both(&scratch, lowers);
        for d in ["ou", "ow", "ku", "kw"] {
            scratch.mkdir(d);
        }
        let om = scratch.mkdir("ours");
        let km = scratch.mkdir("kern");
        let ours = mount_ours_rw(&ours, &scratch.path("ou"), &scratch.path("ow"), &om, extra);
        let kernel = mount_kernel_rw(&kernel, &scratch.path("ku"), &scratch.path("kw"), &km);
        Pair {
            scratch,
            ours,
            kernel,
            kernel_scratch: None,
        }
    }

    /// As [`Pair::writable`], with our layers, upper and work dir on `backing`; the kernel's
    /// side is there too where the kernel overlay can keep an upper on it, else in /tmp.
    /// Where `backing` holds no whiteout devices, lower whiteouts are written as `.wh.` files
    /// (as containers-storage writes layers there).
    /// `kernel_extra`: more options for the kernel overlay (`index=on`, ...).
    pub fn writable_on(
        backing: Option<&backing::Backing>,
        lowers: &[Layer],
        extra: &str,
        kernel_extra: &str,
    ) -> Pair {
        let scratch = backing.map_or_else(Scratch::new, |b| b.scratch());
        let kernel_scratch = backing
            .filter(|b| !b.holds_kernel_upper())
            .map(|_| Scratch::new());
        let kside = kernel_scratch.as_ref().unwrap_or(&scratch);
        let form = match backing {
            Some(b) if !b.holds_device_whiteouts() => Form::Portable,
            _ => Form::Ours,
        };
        let (ours, kernel) = write_both_in(&scratch, form, kside, lowers);
        for d in ["ou", "ow"] {
            scratch.mkdir(d);
        }
        for d in ["ku", "kw"] {
            kside.mkdir(d);
        }
        let om = scratch.mkdir("ours");
        let km = kside.mkdir("kern");
        let ours = mount_ours_rw(&ours, &scratch.path("ou"), &scratch.path("ow"), &om, extra);
        let mut data = format!(
            "lowerdir={},upperdir={},workdir={}",
            colon_list(&kernel),
            kside.path("ku").display(),
            kside.path("kw").display()
        );
        if !kernel_extra.is_empty() {
            data = format!("{data},{kernel_extra}");
        }
        let kernel = kernel_overlay(&data, 0, &km);
        Pair {
            scratch,
            ours,
            kernel,
            kernel_scratch,
        }
    }

    /// Unmounts and mounts our overlay again over the same layers (`extra` options as at
    /// first), as a writable pair was set up.
    pub fn remount_ours(&mut self, lowers: usize, extra: &str) {
        self.ours.unmount();
        let l: Vec<PathBuf> = (0..lowers)
            .map(|i| self.scratch.path(&format!("o{i}")))
            .collect();
        let s = &self.scratch;
        let new = mount_ours_rw(&l, &s.path("ou"), &s.path("ow"), &s.path("ours"), extra);
        // The old guard would unmount the new mount at the same path.
        std::mem::forget(std::mem::replace(&mut self.ours, new));
    }

    /// Runs `op` on both mounts and asserts the results (value or errno) agree.
    pub fn both<T: PartialEq + std::fmt::Debug>(
        &self,
        what: &str,
        op: impl Fn(&Path) -> Result<T, i32>,
    ) {
        let o = op(&self.ours.path);
        let k = op(&self.kernel.path);
        assert_eq!(
            o, k,
            "{what}: ours (left) differs from the kernel overlay (right)"
        );
    }

    /// Path `rel` in our mount.
    pub fn o(&self, rel: &str) -> PathBuf {
        self.ours.path.join(rel)
    }

    /// Path `rel` in the kernel's mount.
    pub fn k(&self, rel: &str) -> PathBuf {
        self.kernel.path.join(rel)
    }

    /// Asserts both merged trees are equal in every compared property.
    pub fn assert_same_tree(&self) {
        let ours = tree::snapshot(&self.ours.path);
        let kernel = tree::snapshot_with(&self.kernel.path, true);
        tree::assert_equal(&ours, &kernel);
    }

    /// Asserts `probe` gives the same result (value or errno) on both mounts.
    pub fn assert_same<T: PartialEq + std::fmt::Debug>(
        &self,
        what: &str,
        probe: impl Fn(&Path) -> Result<T, i32>,
    ) {
        let o = probe(&self.ours.path);
        let k = probe(&self.kernel.path);
        assert_eq!(
            o, k,
            "{what}: ours (left) differs from the kernel overlay (right)"
        );
    }
}

/// errno of an io::Error.
pub fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// lstat as (mode, size, ino) or errno.
pub fn lstat(path: &Path) -> Result<(u32, u64, u64), i32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .map(|m| (m.mode(), m.size(), m.ino()))
        .map_err(errno)
}

/// Raw getdents64 reading with a buffer of `buf_size` bytes: (name, d_ino, d_type) triples.
pub fn getdents_all(dir: &Path, buf_size: usize) -> Vec<(Vec<u8>, u64, u8)> {
    let f = std::fs::File::open(dir).unwrap();
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; buf_size];
    let mut out = Vec::new();
    loop {
        // SAFETY: test helper; buf is writable for its length.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                f.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        assert!(n >= 0, "getdents64: {}", std::io::Error::last_os_error());
        if n == 0 {
            return out;
        }
        let mut off = 0usize;
        while off < n as usize {
            let ino = u64::from_ne_bytes(buf[off..off + 8].try_into().unwrap());
            let reclen = u16::from_ne_bytes(buf[off + 16..off + 18].try_into().unwrap()) as usize;
            let dtype = buf[off + 18];
            let name = &buf[off + 19..off + reclen];
            let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
            out.push((name[..end].to_vec(), ino, dtype));
            off += reclen;
        }
    }
}

/// The unprivileged user rootless tests run as (created if missing).
pub const ROOTLESS_USER: &str = "ofs-rootless";

/// Runs `cmd` and returns its output; panics with that output unless it exits 0.
pub fn must(cmd: &mut Command) -> Output {
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Gives `ROOTLESS_USER` (made if missing) subordinate ids and access to /dev/fuse, as a rootless
/// set-up has them (Debian's udev leaves /dev/fuse 0666; this machine's is 0600).
pub fn rootless_user() -> u32 {
    let exists = Command::new("id")
        .arg(ROOTLESS_USER)
        .output()
        .unwrap()
        .status
        .success();
    if !exists {
        must(Command::new("useradd").args([
            "--no-create-home",
            "--shell",
            "/bin/sh",
            ROOTLESS_USER,
        ]));
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !text
            .lines()
            .any(|l| l.starts_with(&format!("{ROOTLESS_USER}:")))
        {
            replace_file(file, &format!("{text}{ROOTLESS_USER}:300000:65536\n"));
        }
    }
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = must(Command::new("id").args(["-u", ROOTLESS_USER]));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Replaces the contents of `path` in one step (a temporary file renamed over it), so that
/// tests running at the same time never read it half-written.
pub fn replace_file(path: &str, text: &str) {
    let tmp = format!("{path}.ofs-test-{}", std::process::id());
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `/sys/module/fuse/parameters/enable_uring`: whether the kernel offers FUSE over io_uring
/// to new connections.
const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

static RING_SETTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the kernel's FUSE-over-io_uring switch at a value for one test (tests that set it
/// take turns) and puts back the value it found when dropped.
pub struct RingSetting {
    found: String,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl RingSetting {
    /// Sets the switch to `on`.
    pub fn set(on: bool) -> RingSetting {
        let turn = RING_SETTING.lock().unwrap_or_else(|e| e.into_inner());
        let found = std::fs::read_to_string(ENABLE_URING).unwrap_or_else(|e| {
            panic!("{ENABLE_URING}: {e}: this kernel has no FUSE over io_uring (6.14+)")
        });
        std::fs::write(ENABLE_URING, if on { "1" } else { "0" }).unwrap();
        RingSetting {
            found: found.trim().to_owned(),
            _turn: turn,
        }
    }
}

impl Drop for RingSetting {
    fn drop(&mut self) {
        let back = if self.found == "Y" { "1" } else { "0" };
        let _ = std::fs::write(ENABLE_URING, back);
    }
}

/// True when the kernel offers FUSE over io_uring to new connections right now.
pub fn ring_offered() -> bool {
    std::fs::read_to_string(ENABLE_URING).is_ok_and(|v| v.trim() == "Y")
}
