//! `overlayfuse commit`: the layer tarball of an upper layer, checked three ways. Uppers
//! written by our mount (every marker format) and by the kernel overlay for the same changes
//! give the same entries; the layer, unpacked with GNU tar and stacked on the lowers, shows
//! the merged tree it was taken from; and the same upper always gives the same bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::diff::{change, lowers};
use crate::util::{self, tree, Pair};

/// Commits `upper` over `lowers` to `out`; panics with the error on failure. Returns what it
/// printed.
fn commit(lowers: &[PathBuf], upper: &Path, out: &Path) -> String {
    let lower = util::colon_list(lowers);
    let r = util::must(Command::new(util::bin()).args([
        "commit",
        "--lower",
        &lower,
        "--upper",
        upper.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]));
    String::from_utf8(r.stdout).unwrap()
}

/// `sha256:` and the digest sha256sum gives of `data`.
fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), data).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

/// The entries of tar file `t` as GNU tar lists them with xattrs, times left out (ours and
/// the kernel's uppers were changed at different moments).
fn entries(t: &Path) -> Vec<String> {
    let out = util::must(
        Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-tvvf"])
            .arg(t),
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if l.starts_with("  x:") {
                // An xattr of the entry above: its size and name.
                return f.join(" ");
            }
            // mode owner size date time name...: drop the date and time.
            [&f[..3], &f[5..]].concat().join(" ")
        })
        .collect()
}

#[test]
fn commit_writes_the_same_layer_from_every_marker_format_and_it_unpacks_to_the_tree() {
    for format in ["markers=kernel", "markers=userxattr", "markers=aufs"] {
        let pair = Pair::writable(&lowers(), format);
        change(&pair.o(""));
        change(&pair.k(""));
        // A hard link and an xattr among the changes, and an owner.
        for m in [pair.o(""), pair.k("")] {
            fs::hard_link(m.join("new"), m.join("new-link")).unwrap();
            util::fixture::set_xattr(&m.join("new"), "user.note", b"kept");
            std::os::unix::fs::lchown(m.join("newdir"), Some(1000), Some(100)).unwrap();
            // A lower directory whose owner alone changes: not in `diff`, but in the layer.
            std::os::unix::fs::lchown(m.join("owned"), Some(1000), Some(100)).unwrap();
        }
        let s = &pair.scratch;
        let (ours, kernel) = (s.path("ours.tar"), s.path("kernel.tar"));
        commit(&[s.path("o0"), s.path("o1")], &s.path("ou"), &ours);
        commit(&[s.path("k0"), s.path("k1")], &s.path("ku"), &kernel);
        let listed = entries(&ours);
        assert_eq!(
            listed,
            entries(&kernel),
            "{format}: ours (left), kernel's upper"
        );
        let text = listed.join("\n");
        for want in [
            "etc/.wh.group",
            "usr/share/.wh..wh..opq",
            "new-link link to new",
            "x: 4 user.note",
            "1000/100 0 newdir/",
            "1000/100 0 owned/",
        ] {
            assert!(text.contains(want), "{format}: {want} missing:\n{text}");
        }
        assert!(
            !text.contains("overlay"),
            "{format}: the overlay's xattrs leaked:\n{text}"
        );

        // Unpacked as an image tool would and stacked on the lowers (read-only, our mount
        // reads `.wh.` files), the layer shows the tree it was taken from.
        let unpacked = s.mkdir("unpacked");
        let st = Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
            .arg(&ours)
            .arg("-C")
            .arg(&unpacked)
            .status()
            .unwrap();
        assert!(st.success());
        let view = s.mkdir("view");
        let layers = [unpacked.clone(), s.path("o0"), s.path("o1")];
        let mounted = util::mount_ours_with(&layers, &view, "");
        tree::assert_equal(&tree::snapshot(&view), &tree::snapshot(&pair.o("")));
        drop(mounted);

        // The same upper, the same bytes, whatever the compression.
        for name in ["layer.tar", "layer.tar.gz", "layer.tar.zst"] {
            let (a, b) = (s.path(&format!("a-{name}")), s.path(&format!("b-{name}")));
            commit(&[s.path("o0"), s.path("o1")], &s.path("ou"), &a);
            commit(&[s.path("o0"), s.path("o1")], &s.path("ou"), &b);
            assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap(), "{name}");
        }
        let plain = fs::read(s.path("a-layer.tar")).unwrap();
        let gunzip = Command::new("gzip")
            .args(["-dc"])
            .arg(s.path("a-layer.tar.gz"))
            .output()
            .unwrap();
        assert_eq!(gunzip.stdout, plain, "{format}: .tar.gz holds the same tar");
        let unzstd = Command::new("zstd")
            .args(["-dc", "-q"])
            .arg(s.path("a-layer.tar.zst"))
            .output()
            .unwrap();
        assert_eq!(
            unzstd.stdout, plain,
            "{format}: .tar.zst holds the same tar"
        );
        // What it prints: the digest of the file, the diff id of the tar inside.
        let zst = s.path("a-layer.tar.zst");
        let printed = commit(&[s.path("o0"), s.path("o1")], &s.path("ou"), &zst);
        let want = format!(
            "digest {}\ndiff_id {}\n",
            sha256(&fs::read(&zst).unwrap()),
            sha256(&plain)
        );
        assert_eq!(printed, want, "{format}");
    }
}

#[test]
fn commit_refuses_a_name_without_a_layer_format_and_leaves_nothing() {
    let s = util::Scratch::new();
    let (l, u) = (s.mkdir("l"), s.mkdir("u"));
    fs::write(u.join("f"), "f").unwrap();
    for out in ["layer.zip", "dir-missing/layer.tar"] {
        let target = s.path(out);
        let r = util::run(&[
            "commit",
            "--lower",
            l.to_str().unwrap(),
            "--upper",
            u.to_str().unwrap(),
            "-o",
            target.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_ne!(r.status.code(), Some(0), "{out}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!target.exists());
    }
    let names: Vec<_> = fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}: no partial file left");
}
