//! Unit tests of the core over tempdir layers, without mounting.

use std::ffi::OsStr;
use std::path::Path;

use super::{Caller, Layer, MarkerFormat, NewObject, Overlay, Upper};
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
fn the_first_plus_reply_for_a_big_directory_is_short_and_the_rest_follows() {
    use super::{BIG_DIR, PLUS_IN_BIG_DIR};
    let (_t, o) = overlay(|r| {
        for i in 0..=BIG_DIR {
            write(r, &format!("0/big/f{i}"), "");
        }
        for i in 0..10 {
            write(r, &format!("0/small/f{i}"), "");
        }
    });
    // `.` and `..` come first and count.
    for (dir, total, first) in [("big", BIG_DIR + 3, PLUS_IN_BIG_DIR), ("small", 12, 12)] {
        let d = o.lookup(1, OsStr::new(dir)).unwrap().0.ino;
        let fh = o.opendir(d).unwrap();
        let (mut offset, mut plus, mut rest) = (0, 0, 0);
        o.readdirplus(fh, 0, |_, next, _| {
            plus += 1;
            offset = next;
            false
        })
        .unwrap();
        o.readdir(fh, offset, |_, _| {
            rest += 1;
            false
        })
        .unwrap();
        o.releasedir(fh);
        assert_eq!((plus, plus + rest), (first, total), "{dir}");
    }
}

#[test]
fn big_directories_listed_on_two_threads_merge_in_layer_order() {
    let (t, o) = overlay(|r| {
        for i in 0..1200 {
            write(r, &format!("0/d/a{i}"), "");
            write(r, &format!("1/d/a{i}"), "");
            write(r, &format!("1/d/b{i}"), "");
            write(r, &format!("2/d/c{i}"), "");
        }
        for i in 0..600 {
            write(r, &format!("0/d/.wh.b{i}"), "");
        }
    });
    let bytes: u64 = ["0/d", "1/d", "2/d"]
        .iter()
        .map(|d| super::merge::listing_bytes(std::fs::metadata(t.path().join(d)).unwrap().len()))
        .sum();
    assert!(
        bytes >= super::merge::PARALLEL_BYTES,
        "{bytes} bytes: one thread"
    );
    let d = o.lookup(1, OsStr::new("d")).unwrap().0.ino;
    let fh = o.opendir(d).unwrap();
    let mut seen = std::collections::BTreeMap::new();
    o.readdir(fh, 0, |e, _| {
        assert!(
            seen.insert(e.name.clone(), e.ino).is_none(),
            "{:?} twice",
            e.name
        );
        false
    })
    .unwrap();
    o.releasedir(fh);
    let mut want: Vec<String> = vec![".".into(), "..".into()];
    want.extend((0..1200).map(|i| format!("a{i}")));
    want.extend((600..1200).map(|i| format!("b{i}")));
    want.extend((0..1200).map(|i| format!("c{i}")));
    let got: std::collections::BTreeSet<String> = seen
        .keys()
        .map(|n| n.clone().into_string().unwrap())
        .collect();
    let want: std::collections::BTreeSet<String> = want.into_iter().collect();
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    // The topmost copy shows: its number is the one lookup gives.
    for name in ["a7", "b900", "c3"] {
        let ino = o.lookup(d, OsStr::new(name)).unwrap().0.ino;
        assert_eq!(seen[OsStr::new(name)], ino, "{name}");
    }
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

/// A writable overlay: `build` fills `lower`; `upper` and `work` start empty.
fn writable(format: MarkerFormat, build: impl FnOnce(&Path)) -> (tempfile::TempDir, Overlay) {
    let t = tempfile::tempdir().unwrap();
    for d in ["lower", "upper", "work"] {
        std::fs::create_dir(t.path().join(d)).unwrap();
    }
    build(&t.path().join("lower"));
    let layers = vec![
        Layer::open(0, &t.path().join("upper")).unwrap(),
        Layer::open(1, &t.path().join("lower")).unwrap(),
    ];
    let upper = Upper::open(&t.path().join("work"), Some(format), false).unwrap();
    (t, Overlay::new(layers, Some(upper)).unwrap())
}

const ME: Caller = Caller { uid: 0, gid: 0 };

/// A caller holding `CAP_FSETID`: no change of theirs clears setuid or setgid but a chown's.
struct Capable;

impl super::Privileges for Capable {
    fn fsetid(&self, _uid: u32, _gid: u32) -> bool {
        true
    }
    fn in_group_or_capable(&self, _uid: u32, _gid: u32) -> bool {
        true
    }
    fn known(&self) -> bool {
        true
    }
}

#[test]
fn unlink_of_a_lower_file_writes_a_whiteout_in_the_chosen_format() {
    for (format, marker) in [
        (MarkerFormat::Kernel, "gone"),
        (MarkerFormat::Aufs, ".wh.gone"),
    ] {
        let (t, o) = writable(format, |r| write(r, "d/gone", "x"));
        let d = o.lookup(1, OsStr::new("d")).unwrap().0.ino;
        o.unlink(d, OsStr::new("gone")).unwrap();
        assert_eq!(o.lookup(d, OsStr::new("gone")).unwrap_err(), Errno::ENOENT);
        assert!(std::fs::symlink_metadata(t.path().join("upper/d").join(marker)).is_ok());
        assert!(t.path().join("lower/d/gone").exists());
        assert_eq!(names(&o, d), vec![".", ".."]);
    }
}

#[test]
fn copy_up_keeps_the_number_and_leaves_the_lower_file_alone() {
    let (t, o) = writable(MarkerFormat::Kernel, |r| write(r, "f", "lower data"));
    let f = o.lookup(1, OsStr::new("f")).unwrap().0.ino;
    let fh = o.open(f, libc::O_WRONLY).unwrap();
    assert_eq!(o.write(fh, 0, b"UPPER").unwrap(), 5);
    o.release(fh);
    assert_eq!(
        std::fs::read(t.path().join("upper/f")).unwrap(),
        b"UPPER data"
    );
    assert_eq!(
        std::fs::read(t.path().join("lower/f")).unwrap(),
        b"lower data"
    );
    o.forget(f, 1);
    assert_eq!(o.lookup(1, OsStr::new("f")).unwrap().0.ino, f);
}

#[test]
fn a_copy_up_into_a_directory_known_pure_keeps_its_number() {
    let (_t, o) = writable(MarkerFormat::Kernel, |r| write(r, "d/f", "lower data"));
    let d = o.lookup(1, OsStr::new("d")).unwrap().0.ino;
    let f = o.lookup(d, OsStr::new("f")).unwrap().0.ino;
    // A file made through the mount gives `d` an upper directory, which a lookup of that
    // file then learns holds no copied-up entries.
    let (new, _, fh) = o
        .make(d, OsStr::new("new"), NewObject::File, 0o644, 0, ME)
        .unwrap();
    o.release(fh.unwrap());
    assert_eq!(o.lookup(d, OsStr::new("new")).unwrap().0.ino, new.ino);
    let fh = o.open(f, libc::O_WRONLY).unwrap();
    assert_eq!(o.write(fh, 0, b"L").unwrap(), 1);
    o.release(fh);
    o.forget(f, 1);
    assert_eq!(
        o.lookup(d, OsStr::new("f")).unwrap().0.ino,
        f,
        "the copy-up marked the directory, and the lookup saw it"
    );
    let fh = o.opendir(d).unwrap();
    let mut listed = Vec::new();
    o.readdir(fh, 0, |e, _| {
        listed.push((e.name.to_string_lossy().into_owned(), e.ino));
        false
    })
    .unwrap();
    o.releasedir(fh);
    assert!(listed.contains(&("f".to_owned(), f)), "{listed:?}");
}

#[test]
fn copy_file_range_reads_the_current_copy_and_writes_only_the_upper() {
    let (t, o) = writable(MarkerFormat::Kernel, |r| {
        write(r, "src", "0123456789");
        write(r, "dst", "abcdefghij");
    });
    let src = o.lookup(1, OsStr::new("src")).unwrap().0.ino;
    let dst = o.lookup(1, OsStr::new("dst")).unwrap().0.ino;
    // Opened on the lower file, then rewritten through another descriptor (a copy-up).
    let src_ro = o.open(src, libc::O_RDONLY).unwrap();
    let src_rw = o.open(src, libc::O_WRONLY).unwrap();
    o.write(src_rw, 0, b"ABCD").unwrap();
    let dst_ro = o.open(dst, libc::O_RDONLY).unwrap();
    assert_eq!(
        o.copy_file_range((src_ro, 0), (dst_ro, 0), 4).unwrap_err(),
        Errno::EBADF,
        "a read-only destination"
    );
    let dst_rw = o.open(dst, libc::O_WRONLY).unwrap();
    assert_eq!(o.copy_file_range((src_ro, 2), (dst_rw, 5), 6).unwrap(), 6);
    // Short where the source ends, nothing past it.
    assert_eq!(o.copy_file_range((src_ro, 8), (dst_rw, 0), 100).unwrap(), 2);
    assert_eq!(
        o.copy_file_range((src_ro, 50), (dst_rw, 0), 100).unwrap(),
        0
    );
    assert_eq!(o.read(dst_ro, 0, 100).unwrap(), b"89cdeCD4567");
    for fh in [src_ro, src_rw, dst_ro, dst_rw] {
        o.release(fh);
    }
    assert_eq!(
        std::fs::read(t.path().join("lower/dst")).unwrap(),
        b"abcdefghij"
    );
    assert_eq!(
        std::fs::read(t.path().join("lower/src")).unwrap(),
        b"0123456789"
    );
}

#[test]
fn seek_data_and_hole_follow_the_layer_files_extents() {
    let (_t, o) = writable(MarkerFormat::Kernel, |r| {
        let f = std::fs::File::create(r.join("sparse")).unwrap();
        f.set_len(4 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[1; 4096], 1 << 20).unwrap();
    });
    let f = o.lookup(1, OsStr::new("sparse")).unwrap().0.ino;
    let fh = o.open(f, libc::O_RDONLY).unwrap();
    assert_eq!(
        o.seek_data_or_hole(fh, 0, libc::SEEK_DATA).unwrap(),
        1 << 20
    );
    assert_eq!(o.seek_data_or_hole(fh, 0, libc::SEEK_HOLE).unwrap(), 0);
    assert_eq!(
        o.seek_data_or_hole(fh, 1 << 20, libc::SEEK_HOLE).unwrap(),
        (1 << 20) + 4096
    );
    assert_eq!(
        o.seek_data_or_hole(fh, 2 << 20, libc::SEEK_DATA)
            .unwrap_err(),
        Errno::ENXIO
    );
    assert_eq!(
        o.seek_data_or_hole(fh, 0, libc::SEEK_END).unwrap_err(),
        Errno::EINVAL
    );
    o.release(fh);
}

#[test]
fn unlink_waits_for_a_copy_up_under_way_and_then_removes_the_copy() {
    use std::os::unix::fs::FileTypeExt;
    let (t, o) = writable(MarkerFormat::Kernel, |r| write(r, "d/f", "lower"));
    let d = o.lookup(1, OsStr::new("d")).unwrap().0.ino;
    let f = o.lookup(d, OsStr::new("f")).unwrap().0.ino;
    let node = o.nodes.get(f).unwrap();
    std::thread::scope(|s| {
        let copying = o.copy_guard(f);
        let unlink = s.spawn(|| o.unlink(d, OsStr::new("f")));
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!unlink.is_finished(), "unlink did not wait for the copy-up");
        o.copy_up_locked(&node, false).unwrap();
        drop(copying);
        unlink.join().unwrap().unwrap();
    });
    assert_eq!(o.lookup(d, OsStr::new("f")).unwrap_err(), Errno::ENOENT);
    let upper = std::fs::symlink_metadata(t.path().join("upper/d/f")).unwrap();
    assert!(
        upper.file_type().is_char_device(),
        "a whiteout where the copy was"
    );
    assert_eq!(std::fs::read(t.path().join("lower/d/f")).unwrap(), b"lower");
    assert!(o.copying.is_empty(), "copy-up locks left behind");
}

#[test]
fn mkdir_over_a_deleted_dir_is_opaque_and_renaming_a_lower_dir_works() {
    let (t, o) = writable(MarkerFormat::Kernel, |r| {
        write(r, "d/old", "o");
        write(r, "e/inner", "i");
    });
    let d = o.lookup(1, OsStr::new("d")).unwrap().0.ino;
    o.unlink(d, OsStr::new("old")).unwrap();
    o.rmdir(1, OsStr::new("d")).unwrap();
    let (attr, _, _) = o
        .make(1, OsStr::new("d"), NewObject::Dir, 0o755, 0, ME)
        .unwrap();
    assert_eq!(names(&o, attr.ino), vec![".", ".."]);
    assert_eq!(
        o.lookup(attr.ino, OsStr::new("old")).unwrap_err(),
        Errno::ENOENT
    );
    o.lookup(1, OsStr::new("e")).unwrap();
    o.rename(1, OsStr::new("e"), 1, OsStr::new("moved"), 0)
        .unwrap();
    let moved = o.lookup(1, OsStr::new("moved")).unwrap().0.ino;
    assert_eq!(names(&o, moved), vec![".", "..", "inner"]);
    assert_eq!(
        std::fs::read(t.path().join("upper/moved/inner")).unwrap(),
        b"i"
    );
    assert_eq!(o.lookup(1, OsStr::new("e")).unwrap_err(), Errno::ENOENT);
}

#[test]
fn id_mappings_show_stored_owners_mapped_and_refuse_ids_without_room() {
    use super::idmap::{parse_ranges, OneMap};
    use super::{IdMap, SetAttr, View};
    use std::os::unix::fs::MetadataExt;
    let (t, o) = writable(MarkerFormat::Kernel, |r| {
        write(r, "d/f", "x");
        std::os::unix::fs::lchown(r.join("d/f"), Some(5), Some(6)).unwrap();
    });
    let map = OneMap {
        ranges: parse_ranges("0:100000:65536").unwrap(),
        squash: None,
    };
    let o = o.with_view(View {
        ids: IdMap {
            uids: map.clone(),
            gids: map,
        },
        static_nlink: true,
        ..View::default()
    });
    let (d, _) = o.lookup(1, OsStr::new("d")).unwrap();
    assert_eq!(d.nlink, 1, "static_nlink");
    let (f, _) = o.lookup(d.ino, OsStr::new("f")).unwrap();
    assert_eq!((f.uid, f.gid), (100005, 100006));

    let inside = Caller {
        uid: 100001,
        gid: 100002,
    };
    let (made, _, _) = o
        .make(d.ino, OsStr::new("new"), NewObject::Dir, 0o755, 0, inside)
        .unwrap();
    assert_eq!((made.uid, made.gid), (100001, 100002));
    let st = std::fs::metadata(t.path().join("upper/d/new")).unwrap();
    assert_eq!((st.uid(), st.gid()), (1, 2));
    let outside = Caller { uid: 70000, gid: 7 };
    let (made, _, _) = o
        .make(d.ino, OsStr::new("x"), NewObject::Dir, 0o755, 0, outside)
        .unwrap();
    assert_eq!((made.uid, made.gid), (165534, 165534), "stored as nobody");

    let chown = |uid| SetAttr {
        uid: Some(uid),
        ..SetAttr::default()
    };
    assert_eq!(
        o.setattr(f.ino, None, &chown(100010), &Capable)
            .unwrap()
            .uid,
        100010
    );
    assert_eq!(
        std::fs::metadata(t.path().join("upper/d/f")).unwrap().uid(),
        10
    );
    assert_eq!(
        o.setattr(f.ino, None, &chown(0), &Capable).unwrap_err(),
        Errno::EOVERFLOW
    );
    assert_eq!(
        std::fs::metadata(t.path().join("upper/d/f")).unwrap().uid(),
        10
    );
}
