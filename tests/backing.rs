//! The layers, upper and work dir on every filesystem a container host keeps them on: ext4,
//! xfs and btrfs (loop images), tmpfs, and a kernel overlay mount (podman in a container,
//! its storage on the container's root). On each: the write scenarios and a random run,
//! differentially against the kernel overlay (kept in /tmp where it cannot have its upper on
//! the filesystem), a kill -9 in a rename storm, and the marker format the probe chose.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::util::backing::{fs_type, Backing, Fs};
use crate::util::{self, errno, Layer, Opq, Pair, Wh};
use crate::write::renameat2;
use crate::{crash, random_ops};

fn lowers() -> Vec<Layer> {
    let top = Layer::default()
        .file("etc/conf", "top conf\n")
        .whiteout("etc/old", Wh::Device)
        .opaque("var/cache", Opq::Trusted)
        .file("var/cache/top", "t\n");
    let base = Layer::default()
        .file("etc/conf", "base conf\n")
        .file("etc/old", "old\n")
        .file("etc/keep", "keep\n")
        .file("etc/other", "other\n")
        .file("var/cache/base", "hidden\n")
        .file("tree/a/f1", "1\n")
        .file("tree/a/f2", "2\n")
        .file("tree/b/deep/f3", "3\n")
        .file_mode("bin/tool", &vec![0x7f; 1 << 20], 0o755)
        .symlink("etc/link", "conf")
        .fifo("run/fifo")
        .xattr("etc/keep", "user.note", "kept");
    vec![top, base]
}

fn write(m: &Path, rel: &str, data: &[u8]) -> Result<(), i32> {
    fs::write(m.join(rel), data).map_err(errno)
}

fn sh(m: &Path, script: &str) -> Result<(), i32> {
    util::succeeds(Command::new("sh").arg("-c").arg(script).current_dir(m))
}

/// One change made the same way on both mounts.
type Step = dyn Fn(&Path) -> Result<(), i32>;

/// The write scenarios of a container build, each compared with the kernel overlay, then
/// again after our mount is remounted.
fn write_scenarios(b: &Backing) {
    let mut pair = Pair::writable_on(Some(b), &lowers(), "", "");
    let steps: [(&str, &Step); 16] = [
        ("unlink a lower file", &|m| {
            fs::remove_file(m.join("etc/other")).map_err(errno)
        }),
        ("rm -rf a lower tree", &|m| sh(m, "rm -rf tree/a")),
        ("mkdir where a tree was", &|m| {
            fs::create_dir(m.join("tree/a")).map_err(errno)
        }),
        ("create in it", &|m| write(m, "tree/a/new", b"new\n")),
        ("create over a lower whiteout", &|m| {
            write(m, "etc/old", b"again\n")
        }),
        ("append to a lower file", &|m| {
            sh(m, "echo more >> etc/keep")
        }),
        ("chmod a lower file", &|m| {
            fs::set_permissions(m.join("etc/conf"), fs::Permissions::from_mode(0o600))
                .map_err(errno)
        }),
        ("mv a lower file", &|m| sh(m, "mv etc/keep etc/kept")),
        ("mv a lower dir", &|m| sh(m, "mv tree/b tree/moved")),
        ("exchange two lower names", &|m| {
            renameat2(m, "etc/conf", "etc/link", libc::RENAME_EXCHANGE)
        }),
        ("truncate a big lower file", &|m| {
            sh(m, "truncate -s 4096 bin/tool")
        }),
        ("symlink, fifo and link", &|m| {
            sh(
                m,
                "ln -s kept etc/sym && mkfifo run/f2 && ln etc/kept etc/hard",
            )
        }),
        ("rmdir an emptied lower dir", &|m| {
            sh(m, "rm var/cache/top && rmdir var/cache")
        }),
        ("recreate it", &|m| {
            sh(m, "mkdir var/cache && echo c > var/cache/c")
        }),
        ("unlink a copied-up file", &|m| {
            fs::remove_file(m.join("etc/hard")).map_err(errno)
        }),
        ("cp -a a tree in", &|m| sh(m, "cp -a tree/moved tree/copy")),
    ];
    for (what, step) in steps {
        pair.both(&format!("{:?}: {what}", b.fs), step);
        pair.assert_same_tree();
    }
    pair.remount_ours(2, "");
    pair.assert_same_tree();
    check_markers(b, &pair.scratch.path("ou"));
}

/// The upper holds the markers the probe should have chosen: device whiteouts where the
/// filesystem holds them, `.wh.` files (and never a device) on a kernel overlay.
fn check_markers(b: &Backing, upper: &Path) {
    let (devices, aufs) = markers(upper);
    let fits = if b.holds_device_whiteouts() {
        devices > 0 && aufs == 0
    } else {
        devices == 0 && aufs > 0
    };
    assert!(
        fits,
        "{:?}: {devices} whiteout devices, {aufs} .wh. files",
        b.fs
    );
}

/// Counts the whiteout devices and `.wh.` names under `dir`.
fn markers(dir: &Path) -> (usize, usize) {
    let (mut devices, mut aufs) = (0, 0);
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        if m.file_type().is_char_device() && m.rdev() == 0 {
            devices += 1;
        }
        if e.file_name().to_string_lossy().starts_with(".wh.") {
            aufs += 1;
        }
        if m.is_dir() {
            let (d, a) = markers(&e.path());
            devices += d;
            aufs += a;
        }
    }
    (devices, aufs)
}

fn on(fs: Fs, statfs_name: &str) {
    let b = Backing::new(fs);
    assert_eq!(fs_type(&b.root), statfs_name, "{fs:?} was not made");
    write_scenarios(&b);
    random_ops::run_seed(Some(&b), 7, 150);
    let format = if b.holds_device_whiteouts() {
        "markers=kernel"
    } else {
        "markers=auto"
    };
    crash::rename_storm(Some(&b), format, 3);
}

#[test]
fn ext4_loop_image() {
    on(Fs::Ext4, "ext2/ext3");
}

#[test]
fn xfs_loop_image() {
    on(Fs::Xfs, "xfs");
}

#[test]
fn btrfs_loop_image() {
    on(Fs::Btrfs, "btrfs");
}

#[test]
fn tmpfs() {
    on(Fs::Tmpfs, "tmpfs");
}

#[test]
fn kernel_overlay_mount_nested() {
    on(Fs::Overlay, "overlayfs");
}
