//! POSIX ACLs, differentially: who may read what, and what new objects inherit, as on the
//! kernel overlay over the same layers.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::util::fixture::{set_xattr, Layer};
use crate::util::Pair;

const ACCESS: &str = "system.posix_acl_access";
const DEFAULT: &str = "system.posix_acl_default";

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const NONE: u32 = u32::MAX;

/// Users the ACLs name (4321) or leave to the mode bits (4322).
const NAMED: u32 = 4321;
const OTHER_USER: u32 = 4322;

/// An ACL in its xattr form.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut out = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// Whether `uid` can read `path` (as a process with no other groups).
fn can_read(uid: u32, path: &Path) -> bool {
    Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
            "cat".into(),
        ])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Who of the named and the other user can read `rel` on each mount; both must agree.
fn readers(pair: &Pair, rel: &str) -> (bool, bool) {
    let mut seen = Vec::new();
    for m in [pair.o(rel), pair.k(rel)] {
        seen.push((can_read(NAMED, &m), can_read(OTHER_USER, &m)));
    }
    assert_eq!(
        seen[0], seen[1],
        "{rel}: readers on ours (left) and on the kernel overlay (right)"
    );
    seen[0]
}

fn lower() -> Layer {
    Layer::default()
        // Readable by all but the named user.
        .file_mode("denied", b"secret\n", 0o644)
        .xattr_bytes(
            "denied",
            ACCESS,
            &acl(&[
                (USER_OBJ, 6, NONE),
                (USER, 0, NAMED),
                (GROUP_OBJ, 4, NONE),
                (MASK, 4, NONE),
                (OTHER, 4, NONE),
            ]),
        )
        // Readable by the owner and the named user only.
        .file_mode("granted", b"shared\n", 0o640)
        .xattr_bytes(
            "granted",
            ACCESS,
            &acl(&[
                (USER_OBJ, 6, NONE),
                (USER, 4, NAMED),
                (GROUP_OBJ, 0, NONE),
                (MASK, 4, NONE),
                (OTHER, 0, NONE),
            ]),
        )
        .file_mode("plain", b"plain\n", 0o600)
        .dir_mode("inherit", 0o755)
        .xattr_bytes(
            "inherit",
            DEFAULT,
            &acl(&[
                (USER_OBJ, 7, NONE),
                (USER, 7, NAMED),
                (GROUP_OBJ, 5, NONE),
                (MASK, 7, NONE),
                (OTHER, 0, NONE),
            ]),
        )
}

#[test]
fn acls_decide_who_reads_as_on_the_kernel_overlay() {
    let pair = Pair::writable(&[lower()], "");
    assert_eq!(readers(&pair, "denied"), (false, true));
    assert_eq!(readers(&pair, "granted"), (true, false));
    assert_eq!(readers(&pair, "plain"), (false, false));

    // A chmod narrows the mask: the named user loses the read it was granted.
    for m in [pair.o(""), pair.k("")] {
        fs::set_permissions(m.join("granted"), fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert_eq!(readers(&pair, "granted"), (false, false));

    // An ACL set through the mount copies the file up and takes effect at once.
    let grant = acl(&[
        (USER_OBJ, 6, NONE),
        (USER, 4, OTHER_USER),
        (GROUP_OBJ, 0, NONE),
        (MASK, 4, NONE),
        (OTHER, 0, NONE),
    ]);
    for m in [pair.o(""), pair.k("")] {
        set_xattr(&m.join("plain"), ACCESS, &grant);
    }
    assert_eq!(readers(&pair, "plain"), (false, true));
    assert!(pair.scratch.path("ou/plain").exists(), "copied up");
    pair.assert_same_tree();
}

#[test]
fn new_objects_take_the_default_acl_or_the_umask_as_on_the_kernel_overlay() {
    let pair = Pair::writable(&[lower()], "");
    let script = "umask 027 && echo x > inherit/file && mkdir inherit/dir \
                  && echo x > inherit/dir/deeper && echo x > masked && mkdir masked-dir";
    for m in [pair.o(""), pair.k("")] {
        let made = Command::new("sh")
            .args(["-c", script])
            .current_dir(&m)
            .status();
        assert!(made.unwrap().success(), "{script} in {}", m.display());
    }
    // The default ACL, not the umask, decides: group bits come from its mask (rwx & mode).
    let mode = |rel: &str| fs::metadata(pair.o(rel)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("inherit/file"), 0o660);
    assert_eq!(mode("inherit/dir"), 0o770);
    assert_eq!(mode("masked"), 0o640);
    assert_eq!(mode("masked-dir"), 0o750);
    assert_eq!(readers(&pair, "inherit/file"), (true, false));
    assert_eq!(readers(&pair, "inherit/dir/deeper"), (true, false));
    pair.assert_same_tree();
}

#[test]
fn with_modes_in_owner_xattrs_a_chmod_and_an_acl_still_agree_as_on_the_kernel_overlay() {
    // Modes live in an xattr here, the inode keeps the daemon's access: the ACL must still
    // follow a chmod, and the shown mode an ACL set.
    let pair = Pair::writable(&[lower()], "xattr_permissions=2");
    let mode = |m: &Path| fs::metadata(m).unwrap().permissions().mode() & 0o7777;
    let chmod = |rel: &str, mode: u32| {
        for m in [pair.o(rel), pair.k(rel)] {
            fs::set_permissions(m, fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    // The first chmod copies the file up; the next ones change an upper file. Without group
    // bits the kernel skips the ACL (others' bits decide); with them the mask limits the
    // named user.
    chmod("granted", 0o604);
    assert_eq!(readers(&pair, "granted"), (true, true));
    chmod("granted", 0o614);
    assert_eq!(readers(&pair, "granted"), (false, true));
    chmod("granted", 0o640);
    assert_eq!(readers(&pair, "granted"), (true, false));
    let grant = acl(&[
        (USER_OBJ, 6, NONE),
        (USER, 4, OTHER_USER),
        (GROUP_OBJ, 0, NONE),
        (MASK, 4, NONE),
        (OTHER, 0, NONE),
    ]);
    for m in [pair.o(""), pair.k("")] {
        set_xattr(&m.join("plain"), ACCESS, &grant);
    }
    assert_eq!(readers(&pair, "plain"), (false, true));
    // The owner's entry shows the owner's bits, not the daemon's access kept on disk.
    chmod("granted", 0o440);
    for rel in ["granted", "plain"] {
        assert_eq!(mode(&pair.o(rel)), mode(&pair.k(rel)), "{rel}");
    }
    assert_eq!(mode(&pair.o("plain")), 0o640);
    for rel in ["granted", "plain"] {
        pair.both(&format!("{rel}: its ACL"), |m| {
            crate::util::tree::xattrs(&m.join(rel))
                .remove(ACCESS)
                .ok_or(libc::ENODATA)
        });
    }
}

/// Sets (`Some`) or removes (`None`) the access ACL of `path` as `uid`, with no other
/// groups; whether that worked.
fn change_acl_as(uid: u32, path: &Path, value: Option<&[u8]>) -> bool {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        "setfattr".into(),
    ]);
    match value {
        Some(v) => {
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            cmd.args(["-n", ACCESS, "-v", &format!("0x{hex}")])
        }
        None => cmd.args(["-x", ACCESS]),
    };
    cmd.arg(path).status().unwrap().success()
}

#[test]
fn an_acl_change_by_an_owner_outside_the_group_clears_setgid_as_on_the_kernel_overlay() {
    // Each object is owned by the named user. Files get their setgid mode after the chown,
    // which would clear it.
    let sgid_file = |layer: Layer, name: &str, gid: u32, mode: u32| {
        layer
            .file_mode(name, b"", 0o644)
            .owner(name, NAMED, gid)
            .file_mode(name, b"x\n", mode)
    };
    let mut layer = Layer::default();
    for (name, gid) in [("outside", 0), ("member", NAMED), ("by-root", 0)] {
        layer = sgid_file(layer, name, gid, 0o2775);
    }
    let full = acl(&[
        (USER_OBJ, 7, NONE),
        (USER, 4, OTHER_USER),
        (GROUP_OBJ, 7, NONE),
        (MASK, 7, NONE),
        (OTHER, 0, NONE),
    ]);
    let layer = sgid_file(layer, "removed", 0, 0o2770)
        .xattr_bytes("removed", ACCESS, &full)
        .dir_mode("dir", 0o2775)
        .owner("dir", NAMED, 0);
    let pair = Pair::writable(&[layer], "");
    let grant = acl(&[
        (USER_OBJ, 6, NONE),
        (USER, 4, OTHER_USER),
        (GROUP_OBJ, 0, NONE),
        (MASK, 4, NONE),
        (OTHER, 0, NONE),
    ]);
    for m in [pair.o(""), pair.k("")] {
        for rel in ["outside", "member", "dir"] {
            assert!(change_acl_as(NAMED, &m.join(rel), Some(&grant)), "{rel}");
        }
        assert!(change_acl_as(NAMED, &m.join("removed"), None));
        set_xattr(&m.join("by-root"), ACCESS, &grant);
    }
    let mode = |m: &Path| fs::symlink_metadata(m).unwrap().permissions().mode() & 0o7777;
    for rel in ["outside", "member", "dir", "removed", "by-root"] {
        assert_eq!(
            mode(&pair.o(rel)),
            mode(&pair.k(rel)),
            "{rel}: mode on ours (left) and on the kernel overlay (right)"
        );
    }
    // The owner outside the group loses setgid, also on a directory and when removing the
    // ACL; a member and root keep it.
    for rel in ["outside", "dir", "removed"] {
        assert_eq!(mode(&pair.o(rel)) & 0o2000, 0, "{rel}");
    }
    assert_eq!(mode(&pair.o("member")) & 0o2000, 0o2000);
    assert_eq!(mode(&pair.o("by-root")) & 0o2000, 0o2000);
    pair.assert_same_tree();
}
