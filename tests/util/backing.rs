//! The filesystems a container host keeps layers on, made fresh for one test: ext4, xfs
//! (reflink=1) and btrfs on loop images, tmpfs, and a kernel overlay mount (the nested case:
//! podman in a container, with its storage on the container's root).
//!
//! A filesystem that cannot be made fails the test: nothing here skips.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{must, Scratch};

/// A backing filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fs {
    Ext4,
    Xfs,
    Btrfs,
    Tmpfs,
    /// A kernel overlay mount: refuses whiteout devices, cannot be a kernel overlay's upper.
    Overlay,
}

impl Fs {
    /// Every backing filesystem, in the order the tests run them.
    pub const ALL: [Fs; 5] = [Fs::Ext4, Fs::Xfs, Fs::Btrfs, Fs::Tmpfs, Fs::Overlay];
}

/// A mounted backing filesystem, unmounted (lazily: mounts inside go first) when dropped.
pub struct Backing {
    pub fs: Fs,
    /// Where it is mounted.
    pub root: PathBuf,
    holder: tempfile::TempDir,
}

/// Size of the sparse loop images: room for the 256 MiB files some tests write, twice.
const IMAGE_BYTES: u64 = 2 << 30;

impl Backing {
    /// Makes and mounts a fresh `fs`.
    pub fn new(fs: Fs) -> Backing {
        let holder = tempfile::Builder::new()
            .prefix("ofsb")
            .tempdir_in(super::scratch_root())
            .unwrap();
        // Reachable by the unprivileged users of the rootless tests.
        std::fs::set_permissions(holder.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = holder.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let b = Backing { fs, root, holder };
        match fs {
            Fs::Ext4 => b.loop_image("mkfs.ext4", &["-q", "-F"], "e2fsprogs"),
            Fs::Xfs => b.loop_image("mkfs.xfs", &["-q", "-f", "-m", "reflink=1"], "xfsprogs"),
            Fs::Btrfs => b.loop_image("mkfs.btrfs", &["-q", "-f"], "btrfs-progs"),
            Fs::Tmpfs => {
                must(
                    Command::new("mount")
                        .args(["-t", "tmpfs", "-o", "size=2g", "tmpfs"])
                        .arg(&b.root),
                );
            }
            Fs::Overlay => {
                let p = |d: &str| b.holder.path().join(d);
                for d in ["l", "u", "w"] {
                    std::fs::create_dir(p(d)).unwrap();
                }
                let data = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    p("l").display(),
                    p("u").display(),
                    p("w").display()
                );
                must(
                    Command::new("mount")
                        .args(["-t", "overlay", "overlay", "-o", &data])
                        .arg(&b.root),
                );
            }
        }
        b
    }

    fn loop_image(&self, mkfs: &str, args: &[&str], package: &str) {
        let image = self.holder.path().join("image");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(IMAGE_BYTES)
            .unwrap();
        let made = Command::new(mkfs).args(args).arg(&image).output();
        match made {
            Ok(out) => assert!(
                out.status.success(),
                "{mkfs} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("{mkfs} cannot run ({e}): apt-get install {package} (.ci/run does)"),
        }
        must(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&self.root),
        );
    }

    /// A scratch directory on this filesystem.
    pub fn scratch(&self) -> Scratch {
        Scratch::within(&self.root)
    }

    /// True where a kernel overlay can keep its upper layer here (not on an overlay).
    pub fn holds_kernel_upper(&self) -> bool {
        self.fs != Fs::Overlay
    }

    /// True where whiteout devices (char 0/0) can be made here (not on an overlay).
    pub fn holds_device_whiteouts(&self) -> bool {
        self.fs != Fs::Overlay
    }

    /// The path of `rel` on this filesystem.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // Lazy: a mount of ours still inside (a failed test) goes with it; the loop device
        // is freed (autoclear) once the last user is gone.
        let _ = Command::new("umount").arg("-l").arg(&self.root).status();
    }
}

/// The filesystem type `path` is on, as statfs names it (for assertions on what was made).
pub fn fs_type(path: &Path) -> String {
    let out = must(Command::new("stat").args(["-f", "-c", "%T"]).arg(path));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
