//! The merged view, differentially: the same layers mounted by us and by the kernel overlay
//! must give the same tree and the same errors.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::util::{self, errno, lstat, Layer, Opq, Pair, Wh};

#[test]
fn two_lowers_merge_files_dirs_links_and_special_files() {
    let top = Layer::default()
        .file("etc/hosts", "top hosts\n")
        .file("etc/only-top", "t")
        .dir_mode("etc/private", 0o700)
        .symlink("etc/link", "hosts")
        .symlink("dangling", "/nonexistent/target")
        .file_mode("bin/tool", b"#!/bin/sh\n", 0o4755)
        .owner("bin/tool", 1000, 100)
        .xattr("etc/hosts", "user.note", "from top")
        .hardlink("etc/hosts-alias", "etc/hosts");
    let base = Layer::default()
        .file("etc/hosts", "base hosts\n")
        .file("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
        .dir("usr/share/doc")
        .file("usr/share/doc/a", "a")
        .fifo("run/fifo")
        .socket("run/sock")
        .device("dev/null", libc::S_IFCHR, libc::makedev(1, 3))
        .device("dev/loop9", libc::S_IFBLK, libc::makedev(7, 9))
        .xattr("usr", "user.dir", "base usr")
        .hardlink("usr/share/doc/b", "usr/share/doc/a");
    let pair = Pair::new(&[top, base]);
    pair.assert_same_tree();
    // Reads of a file from the top and one from the bottom layer.
    assert_eq!(std::fs::read(pair.o("etc/hosts")).unwrap(), b"top hosts\n");
    assert_eq!(
        std::fs::read(pair.o("etc/passwd")).unwrap(),
        b"root:x:0:0::/root:/bin/sh\n"
    );
    let hosts = std::fs::metadata(pair.o("etc/hosts")).unwrap();
    assert_eq!(hosts.nlink(), 2);
    assert_eq!(
        hosts.ino(),
        std::fs::metadata(pair.o("etc/hosts-alias")).unwrap().ino()
    );
}

#[test]
fn whiteouts_of_every_format_hide_lower_names() {
    for wh in [Wh::Device, Wh::Aufs, Wh::XattrTrusted, Wh::XattrUser] {
        let top = Layer::default()
            .whiteout("etc/motd", wh)
            .whiteout("gone-dir", wh)
            .whiteout("top-level-file", wh)
            .file("etc/kept", "k");
        let base = Layer::default()
            .file("etc/motd", "old motd")
            .file("etc/issue", "issue")
            .file("gone-dir/inner", "x")
            .file("top-level-file", "x");
        let pair = Pair::new(&[top, base]);
        pair.assert_same_tree();
        for p in ["etc/motd", "gone-dir", "gone-dir/inner", "top-level-file"] {
            assert_eq!(lstat(&pair.o(p)), Err(libc::ENOENT), "{wh:?} {p}");
            pair.assert_same(p, |m| lstat(&m.join(p)).map(|(mode, size, _)| (mode, size)));
        }
        // The marker names themselves are not visible either.
        for p in ["etc/.wh.motd", ".wh.gone-dir", "etc/.wh..wh..opq"] {
            assert_eq!(lstat(&pair.o(p)), Err(libc::ENOENT), "{wh:?} {p}");
        }
    }
}

#[test]
fn whiteout_in_a_middle_layer_hides_only_the_layers_below() {
    let top = Layer::default().file("a/x", "re-created on top");
    let mid = Layer::default()
        .whiteout("a/x", Wh::Aufs)
        .whiteout("a/y", Wh::Device);
    let bottom = Layer::default()
        .file("a/x", "old")
        .file("a/y", "old")
        .file("a/z", "z");
    let pair = Pair::new(&[top, mid, bottom]);
    pair.assert_same_tree();
    assert_eq!(std::fs::read(pair.o("a/x")).unwrap(), b"re-created on top");
}

#[test]
fn opaque_directories_of_every_form_stop_the_merge_for_lookup_and_readdir() {
    for opq in [Opq::Trusted, Opq::User, Opq::FuseOverlayfs, Opq::AufsFile] {
        let top = Layer::default()
            .opaque("d", opq)
            .file("d/new", "n")
            .opaque("deep/er/dir", opq);
        let base = Layer::default()
            .file("d/old", "o")
            .dir("d/olddir/sub")
            .file("deep/er/dir/old", "o")
            .file("deep/er/sibling", "s");
        let pair = Pair::new(&[top, base]);
        // Lookups first (cold), then a listing, then lookups again: hidden names stay hidden.
        for p in ["d/old", "d/olddir", "deep/er/dir/old"] {
            assert_eq!(
                lstat(&pair.o(p)),
                Err(libc::ENOENT),
                "{opq:?} {p} before listing"
            );
        }
        pair.assert_same_tree();
        for p in ["d/old", "d/olddir/sub", "deep/er/dir/old"] {
            assert_eq!(
                lstat(&pair.o(p)),
                Err(libc::ENOENT),
                "{opq:?} {p} after listing"
            );
        }
        assert!(lstat(&pair.o("deep/er/sibling")).is_ok());
    }
}

#[test]
fn opaque_directory_in_the_mount_root_stays_opaque_after_listing_and_remount() {
    let layers = [
        Layer::default()
            .opaque("data", Opq::AufsFile)
            .file("data/fresh", "f"),
        Layer::default()
            .file("data/stale", "s")
            .file("data/stale2", "s"),
    ];
    let pair = Pair::new(&layers);
    let names = |p: &Path| -> BTreeSet<String> {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    assert_eq!(
        names(&pair.o("data")),
        BTreeSet::from(["fresh".to_string()])
    );
    assert_eq!(lstat(&pair.o("data/stale")), Err(libc::ENOENT));
    // Remount the same layers: the view is rebuilt from disk, and still opaque.
    let lowers: Vec<_> = (0..2)
        .map(|i| pair.scratch.path(&format!("o{i}")))
        .collect();
    pair.ours.unmount();
    let again = util::mount_ours(&lowers, &pair.ours.path);
    assert_eq!(lstat(&again.path.join("data/stale")), Err(libc::ENOENT));
    assert_eq!(
        names(&again.path.join("data")),
        BTreeSet::from(["fresh".to_string()])
    );
}

#[test]
fn aufs_whiteout_beside_a_directory_records_delete_then_recreate() {
    // containers-storage writes `rm -r d; mkdir d` in one layer as `.wh.d` next to `d/`.
    // The kernel cannot read this form at all, so only our mount is checked.
    let s = util::Scratch::new();
    Layer::default()
        .whiteout("d", Wh::Aufs)
        .file("d/new", "n")
        .write(&s.path("top"), util::Form::Ours);
    Layer::default()
        .file("d/old", "o")
        .file("e/kept", "k")
        .write(&s.path("base"), util::Form::Ours);
    let m = util::mount_ours(&[s.path("top"), s.path("base")], &s.mkdir("m"));
    assert_eq!(lstat(&m.path.join("d/old")), Err(libc::ENOENT));
    assert!(lstat(&m.path.join("d/new")).is_ok());
    assert!(lstat(&m.path.join("e/kept")).is_ok());
    let names: Vec<_> = std::fs::read_dir(m.path.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["new"]);
}

#[test]
fn names_that_only_look_like_markers_are_ordinary() {
    // `.wh.`, `.wh..`, `.wh...` are never honoured; a directory called `.wh.x` is not a marker.
    let top = Layer::default()
        .raw(".wh.", "1")
        .raw(".wh..", "2")
        .raw(".wh...", "3")
        .dir(".wh.keep");
    let base = Layer::default().file("keep", "k").file("other", "o");
    let pair = Pair::new(&[top, base]);
    pair.assert_same_tree();
    assert!(lstat(&pair.o("keep")).is_ok());
    assert!(lstat(&pair.o(".wh.keep")).is_ok());
}

#[test]
fn a_lower_non_directory_under_a_directory_ends_the_merge() {
    let top = Layer::default().file("x/a", "a");
    let mid = Layer::default().file("x", "I am a file");
    let bottom = Layer::default().file("x/b", "b");
    let pair = Pair::new(&[top, mid, bottom]);
    pair.assert_same_tree();
    assert_eq!(lstat(&pair.o("x/b")), Err(libc::ENOENT));
}

/// A small deterministic generator, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `count` random layers over a small name space, so names collide across layers. Within
/// one layer each path gets at most one role, and nothing is put below a non-directory.
fn random_layers(seed: u64, count: usize) -> Vec<Layer> {
    use std::collections::BTreeMap;
    #[derive(Clone, Copy, PartialEq)]
    enum Role {
        Dir,
        Opaque,
        Other,
    }
    let mut rng = Rng(seed | 1);
    let dirs = ["a", "b", "a/c", "b/d", "a/c/e"];
    let names = ["f", "g", "h", "i"];
    let whs = [Wh::Device, Wh::Aufs, Wh::XattrTrusted, Wh::XattrUser];
    let opqs = [Opq::Trusted, Opq::User, Opq::FuseOverlayfs, Opq::AufsFile];
    (0..count)
        .map(|_| {
            let mut layer = Layer::default();
            let mut role: BTreeMap<String, Role> = BTreeMap::new();
            let open = |role: &BTreeMap<String, Role>, dir: &str| {
                let mut p = std::path::Path::new(dir);
                loop {
                    if matches!(role.get(p.to_str().unwrap()), Some(Role::Other)) {
                        return false;
                    }
                    match p.parent() {
                        Some(q) if !q.as_os_str().is_empty() => p = q,
                        _ => return true,
                    }
                }
            };
            for dir in dirs {
                if !open(&role, dir) {
                    continue;
                }
                match rng.below(10) {
                    4 | 5 => {
                        layer = layer.dir(dir);
                        role.insert(dir.into(), Role::Dir);
                    }
                    6 => {
                        layer = layer.opaque(dir, opqs[rng.below(4) as usize]);
                        role.insert(dir.into(), Role::Opaque);
                    }
                    7 => {
                        layer = layer.whiteout(dir, Wh::Device);
                        role.insert(dir.into(), Role::Other);
                    }
                    8 => {
                        layer = layer.file(dir, &format!("{seed}:{dir}"));
                        role.insert(dir.into(), Role::Other);
                    }
                    _ => {}
                }
            }
            for _ in 0..(3 + rng.below(6)) {
                let dir = dirs[rng.below(dirs.len() as u64) as usize];
                let path = format!("{dir}/{}", names[rng.below(names.len() as u64) as usize]);
                if !open(&role, dir) || role.contains_key(&path) {
                    continue;
                }
                role.insert(path.clone(), Role::Other);
                match rng.below(8) {
                    0..=3 => layer = layer.file(&path, &format!("{seed}:{path}:{}", rng.next())),
                    4 => layer = layer.symlink(&path, "f"),
                    // An xattr whiteout marks its parent opaque=x, which an opaque parent has not.
                    5 if role.get(dir) == Some(&Role::Opaque) => {
                        layer = layer.whiteout(&path, Wh::Device)
                    }
                    5 | 6 => layer = layer.whiteout(&path, whs[rng.below(4) as usize]),
                    _ => {
                        layer = layer.dir(&path);
                        role.insert(path, Role::Dir);
                    }
                }
            }
            layer
        })
        .collect()
}

fn random_view_matches_the_kernel(count: usize) {
    let seeds = if count > 8 { 8 } else { 30 };
    for seed in 1..=seeds {
        let seed = seed * 7919 + count as u64;
        let layers = random_layers(seed, count);
        let pair = std::panic::catch_unwind(|| Pair::new(&layers));
        let pair = match pair {
            Ok(p) => p,
            Err(_) => panic!("building seed {seed} with {count} layers failed"),
        };
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pair.assert_same_tree()));
        assert!(
            result.is_ok(),
            "seed {seed}, {count} layers: trees differ (see above)"
        );
    }
}

#[test]
fn random_views_match_the_kernel_with_1_lower() {
    random_view_matches_the_kernel(1);
}

#[test]
fn random_views_match_the_kernel_with_2_lowers() {
    random_view_matches_the_kernel(2);
}

#[test]
fn random_views_match_the_kernel_with_8_lowers() {
    random_view_matches_the_kernel(8);
}

#[test]
fn random_views_match_the_kernel_with_64_lowers() {
    random_view_matches_the_kernel(64);
}

#[test]
fn a_100000_entry_directory_reads_completely_and_once_in_small_batches() {
    let s = util::Scratch::new();
    let (top, bottom) = (s.mkdir("top/big"), s.mkdir("bottom/big"));
    let mut expect = BTreeSet::new();
    for i in 0..100_000u32 {
        let name = format!("entry-{i:06}");
        let dir = if i % 2 == 0 { &top } else { &bottom };
        std::fs::write(dir.join(&name), b"").unwrap();
        expect.insert(name.into_bytes());
    }
    // Shadowed and whited-out names must not appear twice or at all.
    for i in (0..1000u32).step_by(2) {
        std::fs::write(bottom.join(format!("entry-{i:06}")), b"dup").unwrap();
    }
    for i in (1..1000u32).step_by(2) {
        std::fs::write(top.join(format!(".wh.entry-{i:06}")), b"").unwrap();
        expect.remove(format!("entry-{i:06}").as_bytes());
    }
    let m = util::mount_ours(&[s.path("top"), s.path("bottom")], &s.mkdir("m"));
    for buf in [65536, 1024, 280] {
        let got = util::getdents_all(&m.path.join("big"), buf);
        let names: Vec<_> = got
            .iter()
            .map(|(n, _, _)| n.clone())
            .filter(|n| n != b"." && n != b"..")
            .collect();
        let unique: BTreeSet<_> = names.iter().cloned().collect();
        assert_eq!(
            names.len(),
            unique.len(),
            "buffer {buf}: some entries came twice"
        );
        assert_eq!(unique, expect, "buffer {buf}: entries missing or extra");
    }
}

#[test]
fn st_ino_equals_d_ino_and_stays_stable_after_the_kernel_forgets() {
    let pair = Pair::new(&[
        Layer::default()
            .file("d/a", "a")
            .dir("d/sub")
            .symlink("d/l", "a"),
        Layer::default().file("d/b", "b").dir("d/sub/x").fifo("d/p"),
    ]);
    let before = util::getdents_all(&pair.o("d"), 4096);
    for (name, d_ino, d_type) in &before {
        let name = std::str::from_utf8(name).unwrap();
        if name == ".." {
            continue;
        }
        let m = std::fs::symlink_metadata(pair.o("d").join(name)).unwrap();
        assert_eq!(*d_ino, m.ino(), "{name}: d_ino != st_ino");
        let t = (m.mode() & libc::S_IFMT) >> 12;
        assert_eq!(
            u32::from(*d_type),
            t,
            "{name}: d_type disagrees with st_mode"
        );
    }
    let inos = |root: &Path| -> Vec<u64> {
        ["d", "d/a", "d/b", "d/sub", "d/sub/x", "d/l", "d/p"]
            .iter()
            .map(|p| std::fs::symlink_metadata(root.join(p)).unwrap().ino())
            .collect()
    };
    let first = inos(&pair.ours.path);
    let unique: BTreeSet<_> = first.iter().collect();
    assert_eq!(
        unique.len(),
        first.len(),
        "inode numbers collide across layers"
    );
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    assert_eq!(
        inos(&pair.ours.path),
        first,
        "inode numbers changed after the kernel forgot"
    );
}

#[test]
fn xattrs_are_listed_and_read_with_the_overlays_own_hidden() {
    let top = Layer::default()
        .file("f", "f")
        .xattr("f", "user.visible", "1")
        .xattr("f", "user.overlay.secret", "hidden")
        .xattr("f", "trusted.overlay.origin", "hidden")
        .xattr("f", "user.fuseoverlayfs.x", "hidden")
        .xattr("f", "trusted.other", "shown")
        .dir("d")
        .xattr("d", "user.on-dir", "2");
    let pair = Pair::new(&[top, Layer::default().file("g", "g")]);
    let got = util::tree::xattrs(&pair.o("f"));
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec!["trusted.other", "user.visible"]
    );
    let c = std::ffi::CString::new(pair.o("f").to_str().unwrap()).unwrap();
    let mut buf = [0u8; 64];
    for hidden in [c"user.overlay.secret", c"trusted.overlay.origin"] {
        // SAFETY: test; valid strings and buffer.
        let n = unsafe { libc::getxattr(c.as_ptr(), hidden.as_ptr(), buf.as_mut_ptr().cast(), 64) };
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA)
        );
    }
    // A too-small buffer is ERANGE; a size query returns the length.
    // SAFETY: as above.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"user.visible".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    assert_eq!(n, 1);
    assert_eq!(
        util::tree::xattrs(&pair.o("d"))
            .get("user.on-dir")
            .map(Vec::as_slice),
        Some(&b"2"[..])
    );
}

#[test]
fn a_read_only_overlay_refuses_every_change_like_the_kernel() {
    let pair = Pair::new(&[
        Layer::default().file("f", "x").dir("d"),
        Layer::default().file("g", "y"),
    ]);
    type Change = fn(&Path) -> Result<(), i32>;
    let ops: [(&str, Change); 9] = [
        ("create", |m| {
            std::fs::write(m.join("new"), b"").map_err(errno)
        }),
        ("open for writing", |m| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(m.join("g"))
                .map(drop)
                .map_err(errno)
        }),
        ("mkdir", |m| {
            std::fs::create_dir(m.join("nd")).map_err(errno)
        }),
        ("unlink", |m| {
            std::fs::remove_file(m.join("f")).map_err(errno)
        }),
        ("rmdir", |m| std::fs::remove_dir(m.join("d")).map_err(errno)),
        ("rename", |m| {
            std::fs::rename(m.join("f"), m.join("f2")).map_err(errno)
        }),
        ("chmod", |m| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(m.join("f"), std::fs::Permissions::from_mode(0o600))
                .map_err(errno)
        }),
        ("symlink", |m| {
            std::os::unix::fs::symlink("x", m.join("sl")).map_err(errno)
        }),
        ("link", |m| {
            std::fs::hard_link(m.join("f"), m.join("hl")).map_err(errno)
        }),
    ];
    for (what, op) in ops {
        pair.assert_same(what, op);
        assert_eq!(op(&pair.ours.path), Err(libc::EROFS), "{what}");
    }
    pair.assert_same_tree();
}

#[test]
fn statfs_and_name_length_limits() {
    let pair = Pair::new(&[Layer::default().file("f", "x"), Layer::default()]);
    let long = "n".repeat(256);
    pair.assert_same("256-byte name", |m| lstat(&m.join(&long)).map(|_| ()));
    assert_eq!(lstat(&pair.o(&long)), Err(libc::ENAMETOOLONG));
    let max = "n".repeat(255);
    assert_eq!(lstat(&pair.o(&max)), Err(libc::ENOENT));
    let st = nix::sys::statvfs::statvfs(&pair.ours.path).unwrap();
    let layer = nix::sys::statvfs::statvfs(&pair.scratch.path("o0")).unwrap();
    assert_eq!(st.name_max(), layer.name_max());
    assert_eq!(st.blocks(), layer.blocks());
    assert!(st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
}

#[test]
fn parallel_walkers_and_cache_drops_see_one_consistent_tree() {
    // Several threads walk, stat and read the same merged tree while the kernel is made to
    // forget its inodes: every walk must see exactly the expected tree, and nothing hangs.
    let mut top = Layer::default()
        .opaque("shared/opaque", Opq::Trusted)
        .file("shared/opaque/new", "n");
    let mut base = Layer::default().file("shared/opaque/old", "o");
    for i in 0..200 {
        top = top.file(&format!("shared/t{i}"), &format!("top {i}"));
        base = base.file(&format!("shared/b{i}"), &format!("base {i}"));
        if i % 10 == 0 {
            top = top.whiteout(&format!("shared/b{i}"), Wh::Aufs);
        }
    }
    let pair = Pair::new(&[top, base]);
    let expected = util::tree::snapshot(&pair.ours.path);
    assert!(expected.entries.len() > 350);
    let root = pair.ours.path.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dropper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let walkers: Vec<_> = (0..6)
        .map(|_| {
            let root = root.clone();
            std::thread::spawn(move || {
                (0..5)
                    .map(|_| util::tree::snapshot(&root).entries)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for w in walkers {
        for seen in w.join().unwrap() {
            assert_eq!(
                seen, expected.entries,
                "a parallel walk saw a different tree"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    dropper.join().unwrap();
    pair.assert_same_tree();
}
