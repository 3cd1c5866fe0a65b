//! Options of fuse-overlayfs that rootless set-ups and podman use to change how objects are
//! shown: `uidmapping=`, `gidmapping=`, `squash_to_*`, `static_nlink`, `ino32_t`, `noxattrs`,
//! `xattr_permissions=`.
//! They have no kernel overlay counterpart, so each is checked against the layers on disk.

use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::util::{self, errno, tree, Form, Layer, Scratch};

fn owner(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// Creates the empty file `path` as `uid:gid` (a process inside a container with that
/// mapping).
fn create_as(uid: u32, gid: u32, path: &Path) -> bool {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "sh", "-c", ": > \"$0\""])
        .arg(path)
        .status()
        .unwrap()
        .success()
}

#[test]
fn id_mappings_show_stored_owners_mapped_and_store_given_owners_unmapped() {
    let s = Scratch::new();
    Layer::default()
        .file("root-file", "r")
        .file("user-file", "u")
        .owner("user-file", 5, 6)
        .file("stranger", "s")
        .owner("stranger", 70000, 70000)
        .dir_mode("shared", 0o777)
        .write(&s.path("l"), Form::Ours);
    let (u, w, m) = (s.mkdir("u"), s.mkdir("w"), s.mkdir("m"));
    let map = "0:100000:65536";
    let _mnt = util::mount_ours_rw(
        &[s.path("l")],
        &u,
        &w,
        &m,
        &format!("uidmapping={map},gidmapping={map}"),
    );
    println!("stored 0:0, 5:6 and 70000:70000 with the mapping {map}");
    assert_eq!(owner(&m.join("root-file")), (100000, 100000));
    assert_eq!(owner(&m.join("user-file")), (100005, 100006));
    assert_eq!(owner(&m.join("stranger")), (65534, 65534));

    println!("a process running as 100001:100002 creates a file; it is stored as 1:2");
    assert!(create_as(100001, 100002, &m.join("shared/mine")));
    assert_eq!(owner(&m.join("shared/mine")), (100001, 100002));
    assert_eq!(owner(&u.join("shared/mine")), (1, 2));

    println!("a file root (unmapped) creates is stored as nobody's (65534), shown mapped");
    fs::write(m.join("new"), "x").unwrap();
    assert_eq!(owner(&u.join("new")), (65534, 65534));
    assert_eq!(owner(&m.join("new")), (165534, 165534));
    println!("chown to an unmapped id gets EOVERFLOW and changes nothing");
    assert_eq!(
        chown(m.join("root-file"), Some(7), None).map_err(errno),
        Err(libc::EOVERFLOW)
    );
    chown(m.join("user-file"), Some(100010), Some(100011)).unwrap();
    assert_eq!(owner(&m.join("user-file")), (100010, 100011));
    assert_eq!(owner(&u.join("user-file")), (10, 11));
    assert_eq!(owner(&s.path("l/user-file")), (5, 6), "lower untouched");
}

#[test]
fn squash_shows_every_owner_as_one_and_ignores_owner_changes() {
    let s = Scratch::new();
    Layer::default()
        .file("a", "a")
        .owner("a", 5, 6)
        .dir_mode("shared", 0o777)
        .write(&s.path("l"), Form::Ours);
    let (u, w, m) = (s.mkdir("u"), s.mkdir("w"), s.mkdir("m"));
    let _mnt = util::mount_ours_rw(
        &[s.path("l")],
        &u,
        &w,
        &m,
        "uidmapping=0:100000:65536,gidmapping=0:100000:65536,squash_to_uid=1000,squash_to_root",
    );
    println!("squash_to_uid=1000 with squash_to_root: uid 1000, gid 0 for all");
    assert_eq!(owner(&m.join("a")), (1000, 0));
    assert_eq!(owner(&m), (1000, 0));
    assert!(create_as(100001, 100002, &m.join("shared/b")));
    assert_eq!(owner(&m.join("shared/b")), (1000, 0));
    assert_eq!(owner(&u.join("shared/b")), (1, 2));
    println!("an owner that cannot be stored is ignored, as by fuse-overlayfs");
    chown(m.join("a"), Some(7), Some(7)).unwrap();
    assert_eq!(owner(&u.join("a")), (5, 6));
    chown(m.join("a"), Some(100009), None).unwrap();
    assert_eq!(owner(&u.join("a")), (9, 6));
}

#[test]
fn ino32_static_nlink_and_noxattrs_change_only_what_is_shown() {
    let s = Scratch::new();
    // The second lower on another filesystem: its numbers carry a filesystem index in the
    // high bits unless ino32_t folds them below 2^32.
    let shm = tempfile::Builder::new()
        .prefix("ofs-ino32")
        .tempdir_in("/dev/shm")
        .unwrap();
    let top = Layer::default()
        .dir("d/sub1")
        .dir("d/sub2")
        .file("d/f", "f")
        .xattr("d/f", "user.note", "n");
    let bottom = Layer::default().file("low/g", "g").dir("low/sub");
    top.write(&s.path("l1"), Form::Ours);
    bottom.write(shm.path(), Form::Ours);
    let lowers = [s.path("l1"), shm.path().to_owned()];

    let plain = util::mount_ours(&lowers, &s.mkdir("plain"));
    let tree = tree::snapshot(&plain.path);
    assert!(tree.inos.values().any(|ino| *ino > u64::from(u32::MAX)));
    assert_eq!(tree.entries[Path::new("d")].nlink, 4);
    assert_eq!(
        tree.entries[Path::new("d/f")].xattrs.get("user.note"),
        Some(&b"n".to_vec())
    );
    drop(plain);

    let m = s.mkdir("m");
    let _mnt = util::mount_ours_with(&lowers, &m, "ino32_t,static_nlink,noxattrs");
    let tree = tree::snapshot(&m);
    println!("ino32_t: every st_ino and d_ino below 2^32, still distinct");
    let mut seen = std::collections::BTreeSet::new();
    for (path, ino) in &tree.inos {
        assert!(*ino <= u64::from(u32::MAX), "{}: {ino:#x}", path.display());
        assert!(seen.insert(*ino), "{}: {ino} repeats", path.display());
        assert!(tree.entries[path].dirent_agrees, "{}", path.display());
    }
    println!("static_nlink: directories report one link");
    assert_eq!(tree.entries[Path::new("d")].nlink, 1);
    assert_eq!(tree.entries[Path::new("low/sub")].nlink, 1);
    assert_eq!(tree.entries[Path::new("d/f")].nlink, 1);
    println!("noxattrs: xattr calls fail with EOPNOTSUPP");
    assert!(tree.entries[Path::new("d/f")].xattrs.is_empty());
    let c = std::ffi::CString::new(m.join("d/f").to_str().unwrap()).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: NUL-terminated path and name; the buffer is writable for its length.
    let r = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"user.note".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EOPNOTSUPP)
    );
}

/// Runs `sh -c script` as `uid:gid`; true when it succeeds.
fn sh_as(uid: u32, gid: u32, script: &str) -> bool {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "sh", "-c", script])
        .status()
        .unwrap()
        .success()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn xattr_permissions_keep_owners_and_modes_in_xattrs() {
    for (value, attr) in [
        ("2", "user.fuseoverlayfs.override_stat"),
        ("1", "security.fuseoverlayfs.override_stat"),
    ] {
        println!("xattr_permissions={value}: owners and modes in {attr}");
        let s = Scratch::new();
        Layer::default()
            .file("plain", "p")
            .file("owned", "o")
            .owner("owned", 5, 6)
            .file("forced", "f")
            .xattr("forced", "user.containers.override_stat", "7:8:0600:file")
            .dir_mode("shared", 0o777)
            .write(&s.path("l"), Form::Ours);
        let (u, w, m) = (s.mkdir("u"), s.mkdir("w"), s.mkdir("m"));
        let opts = format!("xattr_permissions={value}");
        let mnt = util::mount_ours_rw(&[s.path("l")], &u, &w, &m, &opts);
        let stored = |p: &Path| String::from_utf8(tree::xattrs(p).remove(attr).unwrap()).unwrap();

        // A lower layer's containers-storage xattr is shown and enforced, and hidden.
        assert_eq!(
            (owner(&m.join("forced")), mode(&m.join("forced"))),
            ((7, 8), 0o600)
        );
        assert!(!sh_as(
            9,
            9,
            &format!("cat {} >/dev/null 2>&1", m.join("forced").display())
        ));
        assert!(sh_as(
            7,
            8,
            &format!("cat {} >/dev/null", m.join("forced").display())
        ));
        assert!(
            tree::xattrs(&m.join("forced")).is_empty(),
            "owner xattrs are hidden"
        );

        // A file made by 1234:1234 is the daemon's on disk, with its owner in the xattr.
        let made = m.join("shared/made");
        assert!(sh_as(
            1234,
            1234,
            &format!("umask 022; : > {}", made.display())
        ));
        assert_eq!((owner(&made), mode(&made)), ((1234, 1234), 0o644));
        assert_eq!(owner(&u.join("shared/made")), (0, 0));
        assert_eq!(stored(&u.join("shared/made")), "1234:1234:0644");
        // chown and chmod change only the xattr.
        chown(&made, Some(42), Some(43)).unwrap();
        fs::set_permissions(&made, fs::Permissions::from_mode(0o4750)).unwrap();
        assert_eq!((owner(&made), mode(&made)), ((42, 43), 0o4750));
        assert_eq!(stored(&u.join("shared/made")), "42:43:4750");
        assert_eq!(owner(&u.join("shared/made")), (0, 0));
        assert_eq!(
            mode(&u.join("shared/made")),
            0o750 | 0o600,
            "no setuid bit on disk"
        );
        // A directory and a copy-up: the lower's real owner and mode go into the xattr.
        fs::create_dir(m.join("shared/dir")).unwrap();
        assert_eq!(stored(&u.join("shared/dir")), "0:0:0755");
        fs::set_permissions(m.join("plain"), fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(stored(&u.join("plain")), "0:0:0640");
        assert_eq!(
            stored(&u.join("shared")),
            "0:0:0777",
            "the copied-up parent"
        );
        // A lower owner the daemon could give (it is root) still goes into the xattr.
        fs::set_permissions(m.join("owned"), fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            (owner(&u.join("owned")), stored(&u.join("owned"))),
            ((0, 0), "5:6:0640".to_owned())
        );
        assert_eq!(owner(&m.join("owned")), (5, 6));
        // A symlink shows its creator (in the xattr, or on the inode where user xattrs are
        // refused on symlinks).
        assert!(sh_as(
            1234,
            1234,
            &format!("ln -s target {}", m.join("shared/link").display())
        ));
        assert_eq!(owner(&m.join("shared/link")), (1234, 1234));
        // A setgid directory, setgid and group only in its xattr, still hands both down.
        let sgid = m.join("shared/dir");
        chown(&sgid, Some(0), Some(77)).unwrap();
        fs::set_permissions(&sgid, fs::Permissions::from_mode(0o2777)).unwrap();
        assert!(sh_as(
            1234,
            1234,
            &format!("umask 022; : > {0}/f; mkdir {0}/d", sgid.display())
        ));
        assert_eq!(owner(&sgid.join("f")), (1234, 77));
        assert_eq!(
            (owner(&sgid.join("d")).1, mode(&sgid.join("d")) & 0o2000),
            (77, 0o2000)
        );
        // An open file that is unlinked keeps its shown owner, and a chmod through it works.
        let open = fs::File::open(&made).unwrap();
        fs::remove_file(&made).unwrap();
        let meta = open.metadata().unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (42, 43, 0o4750)
        );
        open.set_permissions(fs::Permissions::from_mode(0o700))
            .unwrap();
        assert_eq!(open.metadata().unwrap().mode() & 0o7777, 0o700);
        drop(open);
        // A copy-up of an overridden lower file keeps what was shown, in the mount's own
        // xattr only.
        util::must(
            Command::new("sh")
                .arg("-c")
                .arg(format!("echo more >> {}", m.join("forced").display())),
        );
        assert_eq!(stored(&u.join("forced")), "7:8:0600");
        assert_eq!(
            owner(&u.join("forced")),
            (0, 0),
            "the inode stays the daemon's"
        );
        let upper_xattrs = tree::xattrs(&u.join("forced"));
        assert!(
            !upper_xattrs.contains_key("user.containers.override_stat"),
            "{upper_xattrs:?}"
        );
        assert_eq!(
            (owner(&m.join("forced")), mode(&m.join("forced"))),
            ((7, 8), 0o600)
        );
        // The mount's own xattrs cannot be set through it.
        let set = util::fixture::try_set_xattr(&m.join("plain"), attr, b"0:0:0777");
        assert!(
            matches!(set, Err(libc::EPERM | libc::EOPNOTSUPP)),
            "{set:?}"
        );
        assert_eq!(stored(&u.join("plain")), "0:0:0640");

        // After a remount everything reads back, through readdirplus (ls) first.
        mnt.unmount();
        let _mnt = util::mount_ours_rw(&[s.path("l")], &u, &w, &m, &opts);
        let ls = util::must(Command::new("ls").arg("-ln").arg(&m));
        let line = String::from_utf8_lossy(&ls.stdout)
            .lines()
            .find(|l| l.ends_with(" forced"))
            .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
            .unwrap();
        assert_eq!(line, "-rw------- 1 7 8");
        let made = m.join("shared/dir/f");
        assert_eq!(owner(&made), (1234, 77));
        assert_eq!(
            (owner(&m.join("forced")), mode(&m.join("forced"))),
            ((7, 8), 0o600)
        );
        assert_eq!(mode(&m.join("plain")), 0o640);
    }
}
