//! A builder for layer trees: files, directories, symlinks, hard links, special files,
//! xattrs, whiteouts of each format and opaque markers of each form.
//!
//! Every fixture is written twice: in the form our daemon reads, and in the kernel's native
//! form (char 0/0 whiteouts, `trusted.overlay.opaque=y`), so that a kernel overlay mount of
//! the second shows what ours must show for the first. Formats the kernel reads itself (char
//! devices, xwhiteouts, trusted opaque xattrs) are written identically to both.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A whiteout format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wh {
    /// Character device 0/0.
    Device,
    /// Regular file `.wh.NAME` (AUFS/OCI).
    Aufs,
    /// Zero-size file with `trusted.overlay.whiteout`, parent marked `opaque=x`.
    XattrTrusted,
    /// Zero-size file with `user.overlay.whiteout`, parent marked `user.overlay.opaque=x`.
    XattrUser,
}

/// An opaque-directory form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opq {
    /// `trusted.overlay.opaque=y`.
    Trusted,
    /// `user.overlay.opaque=y`.
    User,
    /// `user.fuseoverlayfs.opaque=y`.
    FuseOverlayfs,
    /// A `.wh..wh..opq` file.
    AufsFile,
}

#[derive(Clone, Debug)]
enum Op {
    Dir(String, u32),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
    HardLink(String, String),
    Fifo(String),
    Socket(String),
    Device(String, u32, u64),
    Xattr(String, String, Vec<u8>),
    Owner(String, u32, u32),
    Whiteout(String, Wh),
    Opaque(String, Opq),
    Raw(String, Vec<u8>),
}

/// One layer's contents, as a list of operations applied in order.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    ops: Vec<Op>,
}

impl Layer {
    /// A directory (parents are created as needed, mode 0755).
    pub fn dir(mut self, path: &str) -> Self {
        self.ops.push(Op::Dir(path.into(), 0o755));
        self
    }
    /// A directory with a mode.
    pub fn dir_mode(mut self, path: &str, mode: u32) -> Self {
        self.ops.push(Op::Dir(path.into(), mode));
        self
    }
    /// A regular file.
    pub fn file(self, path: &str, content: &str) -> Self {
        self.file_mode(path, content.as_bytes(), 0o644)
    }
    /// A regular file with a mode.
    pub fn file_mode(mut self, path: &str, content: &[u8], mode: u32) -> Self {
        self.ops.push(Op::File(path.into(), content.to_vec(), mode));
        self
    }
    /// A symlink.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.ops.push(Op::Symlink(path.into(), target.into()));
        self
    }
    /// A hard link `path` to the existing `existing` of the same layer.
    pub fn hardlink(mut self, path: &str, existing: &str) -> Self {
        self.ops.push(Op::HardLink(path.into(), existing.into()));
        self
    }
    /// A named pipe.
    pub fn fifo(mut self, path: &str) -> Self {
        self.ops.push(Op::Fifo(path.into()));
        self
    }
    /// A Unix socket.
    pub fn socket(mut self, path: &str) -> Self {
        self.ops.push(Op::Socket(path.into()));
        self
    }
    /// A device node (`kind` is `libc::S_IFCHR` or `libc::S_IFBLK`).
    pub fn device(mut self, path: &str, kind: u32, rdev: u64) -> Self {
        self.ops.push(Op::Device(path.into(), kind, rdev));
        self
    }
    /// An xattr on an existing entry.
    pub fn xattr(mut self, path: &str, name: &str, value: &str) -> Self {
        self.ops.push(Op::Xattr(
            path.into(),
            name.into(),
            value.as_bytes().to_vec(),
        ));
        self
    }
    /// Xattr with a binary value on an existing entry.
    pub fn xattr_bytes(mut self, path: &str, name: &str, value: &[u8]) -> Self {
        self.ops
            .push(Op::Xattr(path.into(), name.into(), value.to_vec()));
        self
    }
    /// Owner of an existing entry.
    pub fn owner(mut self, path: &str, uid: u32, gid: u32) -> Self {
        self.ops.push(Op::Owner(path.into(), uid, gid));
        self
    }
    /// A whiteout of `path` in format `wh`.
    pub fn whiteout(mut self, path: &str, wh: Wh) -> Self {
        self.ops.push(Op::Whiteout(path.into(), wh));
        self
    }
    /// Marks the (existing or new) directory `path` opaque in form `opq`.
    pub fn opaque(mut self, path: &str, opq: Opq) -> Self {
        self.ops.push(Op::Opaque(path.into(), opq));
        self
    }
    /// A regular file written as is into both forms (for names the kernel does not read).
    pub fn raw(mut self, path: &str, content: &str) -> Self {
        self.ops
            .push(Op::Raw(path.into(), content.as_bytes().to_vec()));
        self
    }
}

/// Which reader a tree is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Our daemon: every format as written.
    Ours,
    /// The kernel overlay: formats it does not read translated to ones it does.
    Kernel,
    /// Our daemon on a filesystem without whiteout devices (a kernel overlay): device
    /// whiteouts written as `.wh.` files.
    Portable,
}

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn parent(path: &Path) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
}

/// `lsetxattr`, panicking with the path on failure.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    if let Err(e) = try_set_xattr(path, name, value) {
        panic!(
            "setxattr {name} on {}: {}",
            path.display(),
            std::io::Error::from_raw_os_error(e)
        );
    }
}

/// `lsetxattr`; the errno on failure.
pub fn try_set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), i32> {
    let n = CString::new(name).unwrap();
    // SAFETY: test helper; NUL-terminated strings and a valid buffer.
    let r = unsafe {
        libc::lsetxattr(
            c(path).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// `mknod`, panicking on failure.
pub fn mknod(path: &Path, mode: u32, rdev: u64) {
    // SAFETY: test helper; NUL-terminated path.
    let r = unsafe { libc::mknod(c(path).as_ptr(), mode, rdev) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn write_whiteout(dir: &Path, name: &str, wh: Wh, form: Form) {
    let target = dir.join(name);
    parent(&target);
    let wh = match (wh, form) {
        (Wh::Aufs, Form::Kernel) | (Wh::XattrUser, Form::Kernel) => Wh::Device,
        (Wh::Device, Form::Portable) => Wh::Aufs,
        (other, _) => other,
    };
    match wh {
        Wh::Device => mknod(&target, libc::S_IFCHR | 0o600, 0),
        Wh::Aufs => {
            let base = target.file_name().unwrap().to_str().unwrap();
            std::fs::write(target.with_file_name(format!(".wh.{base}")), b"").unwrap();
        }
        Wh::XattrTrusted | Wh::XattrUser => {
            let ns = if wh == Wh::XattrTrusted {
                "trusted"
            } else {
                "user"
            };
            std::fs::write(&target, b"").unwrap();
            set_xattr(&target, &format!("{ns}.overlay.whiteout"), b"y");
            set_xattr(
                target.parent().unwrap(),
                &format!("{ns}.overlay.opaque"),
                b"x",
            );
        }
    }
}

fn write_opaque(dir: &Path, opq: Opq, form: Form) {
    std::fs::create_dir_all(dir).unwrap();
    match (opq, form) {
        (_, Form::Kernel) | (Opq::Trusted, _) => set_xattr(dir, "trusted.overlay.opaque", b"y"),
        (Opq::User, _) => set_xattr(dir, "user.overlay.opaque", b"y"),
        (Opq::FuseOverlayfs, _) => set_xattr(dir, "user.fuseoverlayfs.opaque", b"y"),
        (Opq::AufsFile, _) => std::fs::write(dir.join(".wh..wh..opq"), b"").unwrap(),
    }
}

impl Layer {
    /// Writes the layer below `root` in `form`.
    pub fn write(&self, root: &Path, form: Form) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(root).unwrap();
        let mut modes: Vec<(PathBuf, u32)> = Vec::new();
        for op in &self.ops {
            match op {
                Op::Dir(p, mode) => {
                    std::fs::create_dir_all(root.join(p)).unwrap();
                    modes.push((root.join(p), *mode));
                }
                Op::File(p, content, mode) => {
                    let t = root.join(p);
                    parent(&t);
                    std::fs::write(&t, content).unwrap();
                    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(*mode)).unwrap();
                }
                Op::Raw(p, content) => {
                    let t = root.join(p);
                    parent(&t);
                    std::fs::write(&t, content).unwrap();
                }
                Op::Symlink(p, target) => {
                    let t = root.join(p);
                    parent(&t);
                    std::os::unix::fs::symlink(target, &t).unwrap();
                }
                Op::HardLink(p, existing) => {
                    let t = root.join(p);
                    parent(&t);
                    std::fs::hard_link(root.join(existing), &t).unwrap();
                }
                Op::Fifo(p) => {
                    let t = root.join(p);
                    parent(&t);
                    mknod(&t, libc::S_IFIFO | 0o644, 0);
                }
                Op::Socket(p) => {
                    let t = root.join(p);
                    parent(&t);
                    drop(std::os::unix::net::UnixListener::bind(&t).unwrap());
                }
                Op::Device(p, kind, rdev) => {
                    let t = root.join(p);
                    parent(&t);
                    mknod(&t, kind | 0o640, *rdev);
                }
                Op::Xattr(p, name, value) => set_xattr(&root.join(p), name, value),
                Op::Owner(p, uid, gid) => {
                    // chown clears setuid and setgid: the mode given stays as given.
                    let t = root.join(p);
                    let before = std::fs::symlink_metadata(&t).unwrap();
                    std::os::unix::fs::lchown(&t, Some(*uid), Some(*gid)).unwrap();
                    if !before.file_type().is_symlink() {
                        std::fs::set_permissions(&t, before.permissions()).unwrap();
                    }
                }
                Op::Whiteout(p, wh) => write_whiteout(root, p, *wh, form),
                Op::Opaque(p, opq) => write_opaque(&root.join(p), *opq, form),
            }
        }
        super::tree::pin_times(root);
        // Directory modes last, so a read-only directory can still be filled first.
        for (path, mode) in modes.into_iter().rev() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}
