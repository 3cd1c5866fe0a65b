//! `overlayfuse diff`, differentially: the same changes made through our mount (in every
//! marker format) and through the kernel overlay leave uppers that `overlayfuse diff` reads
//! as the same list; and the list is the one `podman diff` gives (see tests/podman.rs).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::{self, Layer, Opq, Pair, Wh};

/// Two lowers: `top` with its own whiteout and an opaque directory, `base` below.
pub(crate) fn lowers() -> Vec<Layer> {
    vec![
        Layer::default()
            .file("etc/top", "t")
            .whiteout("etc/hidden", Wh::Device)
            .dir("opq")
            .opaque("opq", Opq::Trusted)
            .file("opq/new", "n"),
        Layer::default()
            .file("etc/passwd", "root")
            .file("etc/hidden", "h")
            .file("etc/group", "g")
            .dir("usr/share/doc")
            .file("usr/share/doc/a", "a")
            .file("usr/lib/x", "x")
            .file("opq/old", "o")
            .file("rmdir/f", "f")
            .file("owned/f", "f")
            .file("gone", "g")
            .dir("moved/inner")
            .file("moved/inner/f", "f")
            .symlink("link", "etc/passwd"),
    ]
}

/// The same changes on the merged tree at `m`.
pub(crate) fn change(m: &Path) {
    fs::write(m.join("new"), "new").unwrap();
    fs::create_dir_all(m.join("newdir/sub")).unwrap();
    fs::write(m.join("newdir/sub/f"), "f").unwrap();
    let mut passwd = fs::read(m.join("etc/passwd")).unwrap();
    passwd.extend_from_slice(b"\nuser");
    fs::write(m.join("etc/passwd"), passwd).unwrap();
    fs::remove_file(m.join("etc/group")).unwrap();
    fs::remove_file(m.join("gone")).unwrap();
    fs::remove_dir_all(m.join("rmdir")).unwrap();
    fs::remove_dir_all(m.join("usr/share")).unwrap();
    fs::create_dir(m.join("usr/share")).unwrap();
    fs::write(m.join("usr/share/again"), "again").unwrap();
    fs::set_permissions(m.join("usr/lib/x"), fs::Permissions::from_mode(0o600)).unwrap();
    // mv: the kernel overlay (without redirect_dir) answers EXDEV and mv copies instead.
    let st = std::process::Command::new("mv")
        .arg(m.join("moved"))
        .arg(m.join("moved-here"))
        .status()
        .unwrap();
    assert!(st.success());
    // Names the lowers hide (a whiteout, an opaque directory above them) come back as new.
    fs::write(m.join("etc/hidden"), "anew").unwrap();
    fs::write(m.join("opq/old"), "anew").unwrap();
    fs::remove_file(m.join("link")).unwrap();
    std::os::unix::fs::symlink("etc/top", m.join("link")).unwrap();
    // Made and removed again: nothing to list.
    fs::write(m.join("etc/tmp"), "x").unwrap();
    fs::remove_file(m.join("etc/tmp")).unwrap();
}

/// What `overlayfuse diff` prints for `upper` over `lowers`, as lines.
fn diff(lowers: &[std::path::PathBuf], upper: &Path, format: &str) -> Vec<String> {
    let lower = util::colon_list(lowers);
    let out = util::must(std::process::Command::new(util::bin()).args([
        "diff",
        "--lower",
        &lower,
        "--upper",
        upper.to_str().unwrap(),
        "--format",
        format,
    ]));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

const WANT: [&str; 21] = [
    "C /etc",
    "D /etc/group",
    "A /etc/hidden",
    "C /etc/passwd",
    "D /gone",
    "C /link",
    "D /moved",
    "A /moved-here",
    "A /moved-here/inner",
    "A /moved-here/inner/f",
    "A /new",
    "A /newdir",
    "A /newdir/sub",
    "A /newdir/sub/f",
    "C /opq",
    "A /opq/old",
    "D /rmdir",
    "C /usr",
    "C /usr/lib/x",
    "D /usr/share",
    "A /usr/share/again",
];

#[test]
fn diff_reads_every_marker_format_as_the_kernels_upper() {
    for format in ["markers=kernel", "markers=userxattr", "markers=aufs"] {
        let pair = Pair::writable(&lowers(), format);
        change(&pair.o(""));
        change(&pair.k(""));
        let s = &pair.scratch;
        let ours = diff(&[s.path("o0"), s.path("o1")], &s.path("ou"), "text");
        let kernel = diff(&[s.path("k0"), s.path("k1")], &s.path("ku"), "text");
        assert_eq!(
            ours, kernel,
            "{format}: ours (left), the kernel's upper (right)"
        );
        // In path order; parents of additions and deletions listed as changed, /usr/lib
        // (only copied up on the way to x) not at all.
        assert_eq!(ours, WANT, "{format}");
        let json = diff(&[s.path("o0"), s.path("o1")], &s.path("ou"), "json");
        assert_eq!(json.len(), 1);
        assert!(
            json[0].starts_with("{\"changed\":[\"/etc\",\"/etc/passwd\""),
            "{json:?}"
        );
        assert!(json[0].contains("\"deleted\":[\"/etc/group\""), "{json:?}");
    }
}

#[test]
fn diff_of_bad_layers_is_one_line_and_exit_2() {
    let s = util::Scratch::new();
    let (l, u) = (s.mkdir("l"), s.mkdir("u"));
    fs::write(s.path("file"), "x").unwrap();
    let file = s.path("file");
    let cases: [(&[&str], &str); 4] = [
        (&["--upper", u.to_str().unwrap()], "--lower"),
        (
            &["--lower", "/nonexistent", "--upper", u.to_str().unwrap()],
            "give an existing directory",
        ),
        (
            &[
                "--lower",
                l.to_str().unwrap(),
                "--upper",
                file.to_str().unwrap(),
            ],
            "not a directory",
        ),
        (
            &[
                "--lower",
                u.to_str().unwrap(),
                "--upper",
                u.to_str().unwrap(),
            ],
            "give each layer once",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["diff"];
        all.extend_from_slice(args);
        let out = util::run(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // An empty upper changes nothing.
    assert!(diff(&[l], &u, "text").is_empty());
}
