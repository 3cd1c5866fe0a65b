//! Unit tests of the core over tempdir layers, without mounting.

use std::ffi::OsStr;
use std::path::Path;

use super::{Layer, Overlay};
use crate::sys::{Errno, FileKind};

fn overlay(build: impl FnOnce(&Path)) -> (tempfile::TempDir, Overlay) {
    let t = tempfile::tempdir().unwrap();
    build(t.path());
    let mut names: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let layers = names
        .iter()
        .enumerate()
        .map(|(i, n)| Layer::open(i, &t.path().join(n)).unwrap())
        .collect();
    (t, Overlay::new(layers, None).unwrap())
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn names(o: &Overlay, dir: u64) -> Vec<String> {
    let fh = o.opendir(dir).unwrap();
    let mut out = Vec::new();
    o.readdir(fh, 0, |e, _| {
        out.push(e.name.to_string_lossy().into_owned());
        false
    })
    .unwrap();
    o.releasedir(fh);
    out
}

#[test]
fn lookup_and_readdir_agree_on_whiteouts_and_opaque_dirs() {
    let (_t, o) = overlay(|r| {
        write(r, "0/d/.wh.gone", "");
        write(r, "0/o/.wh..wh..opq", "");
        write(r, "0/o/new", "n");
        write(r, "1/d/gone", "g");
        write(r, "1/d/kept", "k");
        write(r, "1/o/old", "o");
    });
    let d = o.lookup(1, OsStr::new("d")).unwrap().0.ino;
    assert_eq!(o.lookup(d, OsStr::new("gone")).unwrap_err(), Errno::ENOENT);
    assert_eq!(
        o.lookup(d, OsStr::new(".wh.gone")).unwrap_err(),
        Errno::ENOENT
    );
    assert_eq!(names(&o, d), vec![".", "..", "kept"]);
    let dir = o.lookup(1, OsStr::new("o")).unwrap().0;
    assert_eq!(dir.kind, FileKind::Directory);
    assert_eq!(
        dir.nlink, 2,
        "an opaque dir is not merged, so it keeps its link count"
    );
    assert_eq!(names(&o, dir.ino), vec![".", "..", "new"]);
    assert_eq!(
        o.lookup(dir.ino, OsStr::new("old")).unwrap_err(),
        Errno::ENOENT
    );
    assert_eq!(
        o.getattr(d, None).unwrap().nlink,
        1,
        "a merged dir reports one link"
    );
}

#[test]
fn readdir_offsets_resume_where_the_reader_stopped() {
    let (_t, o) = overlay(|r| {
        for i in 0..50 {
            write(r, &format!("0/d/a{i}"), "");
            write(r, &format!("1/d/b{i}"), "");
        }
    });
    let d = o.lookup(1, OsStr::new("d")).unwrap().0.ino;
    let fh = o.opendir(d).unwrap();
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let mut batch = 0;
        o.readdir(fh, offset, |e, next| {
            seen.push(e.name.clone());
            offset = next;
            batch += 1;
            batch == 7
        })
        .unwrap();
        if batch == 0 {
            break;
        }
    }
    assert_eq!(seen.len(), 102);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 102);
}

#[test]
fn forget_frees_nodes_and_lookup_brings_them_back_with_the_same_number() {
    let (_t, o) = overlay(|r| {
        for i in 0..100 {
            write(r, &format!("0/f{i}"), "x");
        }
    });
    let inos: Vec<u64> = (0..100)
        .map(|i| o.lookup(1, OsStr::new(&format!("f{i}"))).unwrap().0.ino)
        .collect();
    assert_eq!(o.live_nodes(), 101);
    for ino in &inos {
        o.forget(*ino, 1);
    }
    assert_eq!(o.live_nodes(), 1);
    assert_eq!(o.getattr(inos[0], None).unwrap_err(), Errno::ESTALE);
    assert_eq!(o.lookup(1, OsStr::new("f0")).unwrap().0.ino, inos[0]);
}

#[test]
fn long_names_writes_and_bad_handles_get_their_errnos() {
    let (_t, o) = overlay(|r| write(r, "0/f", "data"));
    let long = "x".repeat(256);
    assert_eq!(
        o.lookup(1, OsStr::new(&long)).unwrap_err(),
        Errno::ENAMETOOLONG
    );
    let f = o.lookup(1, OsStr::new("f")).unwrap().0.ino;
    assert_eq!(o.open(f, libc::O_RDWR).unwrap_err(), Errno::EROFS);
    assert_eq!(
        o.open(f, libc::O_RDONLY | libc::O_TRUNC).unwrap_err(),
        Errno::EROFS
    );
    assert_eq!(o.access(f, libc::W_OK).unwrap_err(), Errno::EROFS);
    let fh = o.open(f, libc::O_RDONLY).unwrap();
    assert_eq!(o.read(fh, 1, 100).unwrap(), b"ata");
    assert_eq!(o.read(fh, u64::MAX, 10).unwrap_err(), Errno::EINVAL);
    o.release(fh);
    assert_eq!(o.read(fh, 0, 1).unwrap_err(), Errno::EBADF);
    assert_eq!(o.opendir(f).unwrap_err(), Errno::ENOTDIR);
    assert_eq!(o.lookup(f, OsStr::new("x")).unwrap_err(), Errno::ENOTDIR);
}
