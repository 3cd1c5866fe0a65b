//! The layer unpacker on crafted tarballs: what a well-formed layer becomes in each marker
//! format, and one test per kind of hostile entry (each refused with an error naming it,
//! nothing written outside the layer's directory).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::unpack::{unpack, UnpackError, Unpacked};
use crate::fs::upper::MarkerFormat;
use crate::oci::tar::{Header, Kind, Writer};
use crate::sys::Dir;

fn h(path: &str, kind: Kind) -> Header {
    Header {
        mtime: 1_000_000,
        ..super::export::entry(path, kind)
    }
}

fn file(path: &str, data: &[u8]) -> (Header, Vec<u8>) {
    (h(path, Kind::File(data.len() as u64)), data.to_vec())
}

fn other(path: &str, kind: Kind) -> (Header, Vec<u8>) {
    (h(path, kind), Vec::new())
}

fn tarball(entries: &[(Header, Vec<u8>)]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    for (header, data) in entries {
        w.append(header, Some(&mut &data[..])).unwrap();
    }
    w.finish().unwrap()
}

/// A scratch dir with `root/` (the layer) and `outside/` holding one file.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("root")).unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/f"), b"keep").unwrap();
        Scratch { dir }
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("root")
    }

    fn unpack(&self, tar: &[u8], format: MarkerFormat, free: u64) -> Result<Unpacked, UnpackError> {
        let root = Dir::open_root(&self.root()).unwrap();
        unpack(tar, &root, format, free)
    }

    /// Nothing outside the layer changed.
    fn assert_outside_untouched(&self) {
        let mut names: Vec<_> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["outside", "root"]);
        let outside: Vec<_> = fs::read_dir(self.dir.path().join("outside"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(outside, ["f"]);
        assert_eq!(
            fs::read(self.dir.path().join("outside/f")).unwrap(),
            b"keep"
        );
    }
}

fn refused(entries: &[(Header, Vec<u8>)], naming: &str, saying: &str) {
    let s = Scratch::new();
    // The symlink-parent case points a symlink at `outside/`.
    let outside = s.dir.path().join("outside");
    let entries: Vec<_> = entries
        .iter()
        .map(|(hd, d)| {
            let mut hd = hd.clone();
            if let Kind::Symlink(t) = &hd.kind {
                if t == b"OUTSIDE" {
                    hd.kind = Kind::Symlink(outside.as_os_str().as_encoded_bytes().to_vec());
                }
            }
            (hd, d.clone())
        })
        .collect();
    match s.unpack(&tarball(&entries), MarkerFormat::Kernel, u64::MAX) {
        Err(UnpackError::Entry(path, why)) => {
            assert_eq!(path, naming, "{why}");
            assert!(why.contains(saying), "'{why}' does not say '{saying}'");
            let line = UnpackError::Entry(path, why).to_string();
            assert!(!line.contains('\n'), "{line}");
        }
        other => panic!("{naming}: not refused: {other:?}"),
    }
    s.assert_outside_untouched();
}

fn can_make_devices() -> bool {
    crate::sys::process::euid() == 0
}

#[test]
fn a_layer_is_unpacked_with_owners_modes_times_links_and_markers() {
    if !can_make_devices() {
        return; // the kernel marker format needs root; covered by the aufs test
    }
    let s = Scratch::new();
    let mut a = file("etc/a", b"data");
    a.0.mode = 0o4750;
    a.0.uid = 7;
    a.0.gid = 8;
    a.0.xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())];
    let mut ro = other("ro", Kind::Dir);
    ro.0.mode = 0o555;
    let tar = tarball(&[
        other("./", Kind::Dir),
        other("etc", Kind::Dir),
        a,
        other("etc/l", Kind::Symlink(b"/etc/a".to_vec())),
        other("etc/hard", Kind::HardLink(b"etc/a".to_vec())),
        other("etc/p", Kind::Fifo),
        file("etc/.wh.gone", b""),
        file("etc/.wh..wh..opq", b""),
        file("implicit/deep/x", b"x"),
        ro,
        file("ro/inside", b"i"),
        file(".wh..wh.plnk", b""),
    ]);
    let done = s.unpack(&tar, MarkerFormat::Kernel, u64::MAX).unwrap();
    assert_eq!(done.bytes, 6);
    let r = s.root();
    let m = fs::metadata(r.join("etc/a")).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.nlink()),
        (0o4750, 7, 8, 2)
    );
    assert_eq!(m.mtime(), 1_000_000);
    assert_eq!(
        crate::sys::file::xattr_get(
            &fs::File::open(r.join("etc/a")).unwrap(),
            OsStr::new("user.k")
        )
        .unwrap(),
        b"v"
    );
    assert_eq!(fs::read_link(r.join("etc/l")).unwrap(), Path::new("/etc/a"));
    assert!(fs::symlink_metadata(r.join("etc/p"))
        .unwrap()
        .file_type()
        .is_fifo());
    let wh = fs::symlink_metadata(r.join("etc/gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(!r.join("etc/.wh.gone").exists() && !r.join("etc/.wh..wh..opq").exists());
    let etc = Dir::open_root(&r.join("etc")).unwrap();
    assert_eq!(
        etc.xattr_get(OsStr::new("trusted.overlay.opaque")).unwrap(),
        b"y"
    );
    assert_eq!(fs::metadata(r.join("etc")).unwrap().mtime(), 1_000_000);
    assert_eq!(
        fs::metadata(r.join("implicit/deep")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(fs::read(r.join("implicit/deep/x")).unwrap(), b"x");
    assert_eq!(fs::metadata(r.join("ro")).unwrap().mode() & 0o7777, 0o555);
    assert_eq!(fs::read(r.join("ro/inside")).unwrap(), b"i");
    assert!(!r.join(".wh..wh.plnk").exists());
    s.assert_outside_untouched();
}

#[test]
fn aufs_stores_keep_whiteout_and_opaque_files() {
    let s = Scratch::new();
    let tar = tarball(&[
        other("d", Kind::Dir),
        file("d/.wh.gone", b""),
        file("d/.wh..wh..opq", b""),
        file("d/kept", b"k"),
    ]);
    s.unpack(&tar, MarkerFormat::Aufs, u64::MAX).unwrap();
    let r = s.root();
    assert!(fs::metadata(r.join("d/.wh.gone")).unwrap().is_file());
    assert!(fs::metadata(r.join("d/.wh..wh..opq")).unwrap().is_file());
    assert!(!r.join("d/gone").exists());
    assert_eq!(fs::read(r.join("d/kept")).unwrap(), b"k");
}

#[test]
fn an_absolute_path_is_refused() {
    refused(&[file("/abs", b"x")], "/abs", "absolute path");
}

#[test]
fn a_dot_dot_is_refused() {
    refused(&[file("a/../../x", b"x")], "a/../../x", "'..'");
    refused(&[file("../outside/f", b"x")], "../outside/f", "'..'");
}

#[test]
fn nothing_is_written_through_a_symlinked_parent() {
    refused(
        &[
            other("s", Kind::Symlink(b"OUTSIDE".to_vec())),
            file("s/x", b"x"),
        ],
        "s/x",
        "not a directory",
    );
    // Nor through a symlink a directory entry tries to reuse.
    refused(
        &[
            other("s", Kind::Symlink(b"OUTSIDE".to_vec())),
            other("s", Kind::Dir),
        ],
        "s/",
        "second entry",
    );
}

#[test]
fn hard_links_out_of_the_layer_are_refused() {
    refused(
        &[other("h", Kind::HardLink(b"../outside/f".to_vec()))],
        "h",
        "'..'",
    );
    refused(
        &[other("h", Kind::HardLink(b"/etc/passwd".to_vec()))],
        "h",
        "absolute path",
    );
    refused(
        &[
            other("h", Kind::HardLink(b"later".to_vec())),
            file("later", b"l"),
        ],
        "h",
        "not a file earlier in this layer",
    );
    refused(
        &[
            other("d", Kind::Dir),
            other("h", Kind::HardLink(b"d".to_vec())),
        ],
        "h",
        "not a file earlier in this layer",
    );
}

#[test]
fn duplicate_names_are_refused() {
    refused(&[file("f", b"1"), file("./f", b"2")], "./f", "second entry");
    refused(
        &[file("a", b"1"), file(".wh.a", b"")],
        ".wh.a",
        "also holds",
    );
    refused(&[file(".wh.a", b""), file("a", b"1")], "a", "also deletes");
    refused(
        &[file("f", b"1"), other("f", Kind::Dir)],
        "f/",
        "second entry",
    );
}

#[test]
fn overlay_xattrs_are_refused() {
    let mut f = file("f", b"x");
    f.0.xattrs = vec![(b"trusted.overlay.opaque".to_vec(), b"y".to_vec())];
    refused(&[f], "f", "overlay xattr");
    let mut d = other("d", Kind::Dir);
    d.0.xattrs = vec![(b"user.overlay.redirect".to_vec(), b"/x".to_vec())];
    refused(&[d], "d/", "overlay xattr");
}

#[test]
fn an_entry_larger_than_the_free_space_is_refused() {
    let s = Scratch::new();
    let tar = tarball(&[file("small", b"12345"), file("big", &[7u8; 100])]);
    match s.unpack(&tar, MarkerFormat::Aufs, 50) {
        Err(UnpackError::Entry(path, why)) => {
            assert_eq!(path, "big");
            assert!(
                why.contains("100 bytes") && why.contains("45 bytes free"),
                "{why}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_truncated_archive_is_refused() {
    let s = Scratch::new();
    let tar = tarball(&[file("f", &[1u8; 4000])]);
    let err = s
        .unpack(&tar[..2048], MarkerFormat::Aufs, u64::MAX)
        .unwrap_err();
    assert!(err.to_string().contains("'f'"), "{err}");
}

#[test]
fn bad_names_are_refused_one_line_each() {
    let long = "n".repeat(300);
    refused(&[file(&long, b"x")], &long, "cannot create");
    refused(
        &[file("a\nb/.wh...", b"")],
        "a\\nb/.wh...",
        "a whiteout of a name",
    );
    refused(&[file(".wh.", b"")], ".wh.", "a whiteout of a name");
}

#[test]
fn pax_times_keep_their_fraction() {
    use super::unpack::pax_time;
    assert_eq!(
        pax_time("1700000000.25"),
        Some((1_700_000_000, 250_000_000))
    );
    assert_eq!(pax_time("12"), Some((12, 0)));
    assert_eq!(pax_time("-1.5"), Some((-2, 500_000_000)));
    assert_eq!(pax_time("1.x"), None);
}
