//! Mounts made inside a user namespace, as rootless podman makes them: root there, but
//! without `CAP_SYS_ADMIN` in the initial namespace, so `trusted.` xattrs are out of reach.
//! The same operations run on the kernel overlay (`userxattr`) in the same kind of namespace,
//! and both upper layers are then read back by the kernel overlay from outside.

use std::path::Path;
use std::process::Command;

use crate::util::backing::{Backing, Fs};
use crate::util::{self, tree, Layer, Scratch};

/// Mounts an overlay over `lower` at `merged` inside a new user and mount namespace, runs the
/// operations of a rootless image build on it, unmounts it, and returns what they printed.
fn build_in_user_namespace(
    mount: &str,
    lower: &Path,
    upper: &Path,
    work: &Path,
    merged: &Path,
) -> String {
    let script = r#"
set -u
eval "$MOUNT" || { echo "mount failed"; exit 1; }
cd "$M"
rm -rf dir && echo "rm dir: $?"
mkdir dir && echo "mkdir dir: $?"
echo new > dir/new && echo "write dir/new: $?"
rm gone && echo "rm gone: $?"
echo more >> keep && echo "append keep: $?"
mv keep kept && echo "mv keep: $?"
echo x 2>&1 >> strange/f | sed 's/.*: //'
ls -a dir
cd /
umount "$M" && echo "umount: $?"
"#;
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", script])
        .env("MOUNT", mount)
        .env("BIN", util::bin())
        .env("L", lower)
        .env("U", upper)
        .env("W", work)
        .env("M", merged)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{mount}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn layer() -> Layer {
    Layer::default()
        .file("dir/old", "old\n")
        .file("dir/sub/deep", "deep\n")
        .file("gone", "gone\n")
        .file("keep", "keep\n")
        .file_mode(
            "strange/f",
            b"in a directory of an id the namespace lacks\n",
            0o666,
        )
        .owner("strange", 4242, 4242)
}

#[test]
fn user_namespace_mount_writes_the_kernels_userxattr_markers() {
    let s = Scratch::new();
    for side in ["o", "k"] {
        layer().write(&s.path(&format!("{side}l")), util::Form::Kernel);
        for d in ["u", "w", "m"] {
            s.mkdir(&format!("{side}{d}"));
        }
    }
    let run = |side: &str, mount: &str| {
        let p = |d: &str| s.path(&format!("{side}{d}"));
        build_in_user_namespace(mount, &p("l"), &p("u"), &p("w"), &p("m"))
    };
    let ours = run(
        "o",
        r#""$BIN" -o "lowerdir=$L,upperdir=$U,workdir=$W" "$M""#,
    );
    let kernel = run(
        "k",
        r#"mount -t overlay overlay -o "lowerdir=$L,upperdir=$U,workdir=$W,userxattr" "$M""#,
    );
    assert_eq!(ours, kernel);
    assert!(ours.contains("mkdir dir: 0"), "{ours}");
    // A copy-up that cannot keep an owner (the parent's, an id the namespace does not map)
    // fails with EOVERFLOW, on both. (A write to an object of such an id never reaches a
    // FUSE daemon: the kernel refuses it with EACCES, where its own overlay copies up.)
    assert!(ours.contains("Value too large"), "{ours}");

    // The upper layers hold device whiteouts and `user.overlay.opaque`, nothing `trusted.`.
    let upper = tree::snapshot(&s.path("ou"));
    for (path, entry) in &upper.entries {
        assert!(
            entry.xattrs.keys().all(|k| !k.starts_with("trusted.")),
            "{}: {:?}",
            path.display(),
            entry.xattrs
        );
    }
    assert!(!upper.entries.contains_key(Path::new("strange")));
    assert_eq!(upper.entries[Path::new("gone")].kind, 'c');
    assert_eq!(upper.entries[Path::new("gone")].rdev, 0);
    assert_eq!(
        upper.entries[Path::new("dir")]
            .xattrs
            .get("user.overlay.opaque"),
        Some(&b"y".to_vec())
    );

    // The kernel overlay reads our upper layer as it reads its own.
    let view = |side: &str| {
        let p = |d: &str| s.path(&format!("{side}{d}"));
        let m = s.mkdir(&format!("{side}view"));
        let data = format!(
            "lowerdir={}:{},userxattr",
            p("u").display(),
            p("l").display()
        );
        let guard = util::kernel_overlay(&data, libc::MS_RDONLY, &m);
        let mut t = tree::snapshot_with(&m, true);
        drop(guard);
        // Our own bookkeeping (origins, impure marks) is private to us; the kernel shows it.
        for entry in t.entries.values_mut() {
            entry
                .xattrs
                .retain(|k, _| !k.starts_with("user.overlayfuse."));
        }
        t
    };
    let (o, k) = (view("o"), view("k"));
    assert!(o.entries.contains_key(Path::new("dir/new")));
    assert!(!o.entries.contains_key(Path::new("dir/old")));
    tree::assert_equal(&o, &k);
}

/// Rootless podman in a pod: uid 0 of a user namespace, the storage on the container's root,
/// a kernel overlay mount. Whiteout devices and `trusted.` xattrs are both out of reach
/// there, so the upper gets `.wh.` files; the build must behave as the kernel overlay's does
/// on a plain filesystem, and the layers read back must show the same tree.
#[test]
fn user_namespace_mount_on_a_kernel_overlay_writes_aufs_markers() {
    let nested = Backing::new(Fs::Overlay);
    let o = nested.scratch();
    let k = Scratch::new();
    for s in [&o, &k] {
        layer().write(&s.path("l"), util::Form::Portable);
        for d in ["u", "w", "m"] {
            s.mkdir(d);
        }
    }
    let run = |s: &Scratch, mount: &str| {
        build_in_user_namespace(
            mount,
            &s.path("l"),
            &s.path("u"),
            &s.path("w"),
            &s.path("m"),
        )
    };
    let ours = run(&o, r#""$BIN" -o "lowerdir=$L,upperdir=$U,workdir=$W" "$M""#);
    let kernel = run(
        &k,
        r#"mount -t overlay overlay -o "lowerdir=$L,upperdir=$U,workdir=$W,userxattr" "$M""#,
    );
    assert_eq!(ours, kernel);
    assert!(
        ours.contains("rm dir: 0") && ours.contains("rm gone: 0"),
        "{ours}"
    );

    let upper = tree::snapshot(&o.path("u"));
    assert_eq!(upper.entries[Path::new(".wh.gone")].kind, 'f', "{upper:?}");
    assert!(upper.entries.values().all(|e| e.kind != 'c'));
    assert!(upper.entries.contains_key(Path::new("dir/.wh..wh..opq")));

    // Our upper over its lower, read back by our daemon, shows what the kernel's shows.
    let ours_view = o.mkdir("view");
    let lowers = [o.path("u"), o.path("l")];
    let guard = util::mount_ours(&lowers, &ours_view);
    let ov = tree::snapshot(&ours_view);
    drop(guard);
    let kernel_view = k.mkdir("view");
    let data = format!(
        "lowerdir={}:{},userxattr",
        k.path("u").display(),
        k.path("l").display()
    );
    let guard = util::kernel_overlay(&data, libc::MS_RDONLY, &kernel_view);
    let mut kv = tree::snapshot_with(&kernel_view, true);
    drop(guard);
    for entry in kv.entries.values_mut() {
        entry
            .xattrs
            .retain(|k, _| !k.starts_with("user.overlayfuse."));
    }
    assert!(ov.entries.contains_key(Path::new("dir/new")));
    tree::assert_equal(&ov, &kv);
}
