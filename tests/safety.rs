//! Nothing escapes a layer: hostile symlinks in lowers, and lowers changed behind the mount.

use crate::util::{self, lstat, Layer, Pair};

#[test]
fn hostile_symlinks_in_a_lower_are_shown_as_links_and_never_merged_through() {
    let top = Layer::default().file("etc/mine", "mine").file("sub/x", "x");
    let hostile = Layer::default()
        .symlink("etc", "/etc")
        .symlink("sub", "../../../../../../")
        .symlink("root", "/")
        .symlink("dotdot", "..");
    let pair = Pair::new(&[top, hostile]);
    pair.assert_same_tree();
    for p in ["etc/passwd", "etc/hostname", "sub/etc"] {
        assert_eq!(
            lstat(&pair.o(p)),
            Err(libc::ENOENT),
            "{p} leaked through a lower symlink"
        );
        pair.assert_same(p, |m| lstat(&m.join(p)).map(|_| ()));
    }
    assert_eq!(
        std::fs::read_link(pair.o("root")).unwrap(),
        std::path::Path::new("/")
    );
}

#[test]
fn a_lower_directory_swapped_for_a_symlink_behind_the_mount_never_reaches_outside() {
    let s = util::Scratch::new();
    let lower = s.mkdir("lower");
    std::fs::create_dir(lower.join("d")).unwrap();
    std::fs::write(lower.join("d/ok"), "inside").unwrap();
    let outside = s.mkdir("outside");
    std::fs::write(outside.join("secret"), "SECRET").unwrap();
    // A long entry timeout keeps the kernel's dentry for `d`, so the next lookup below it
    // reaches the daemon, which still holds `d` as a directory of the layer.
    let m = util::mount_ours_with(std::slice::from_ref(&lower), &s.mkdir("m"), "timeout=600");
    assert_eq!(
        std::fs::read_to_string(m.path.join("d/ok")).unwrap(),
        "inside"
    );
    // Behind the mount's back (undefined for any overlay, but it must stay inside the layer).
    std::fs::rename(lower.join("d"), s.path("moved")).unwrap();
    std::os::unix::fs::symlink(&outside, lower.join("d")).unwrap();
    let read = std::fs::read_to_string(m.path.join("d/secret"));
    assert!(
        read.is_err(),
        "the daemon followed a symlink out of the layer: {read:?}"
    );
    // The daemon survives and still serves.
    assert!(std::fs::symlink_metadata(&m.path).is_ok());
}
