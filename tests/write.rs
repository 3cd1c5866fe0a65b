//! Writes through the merged view, differentially: each scenario runs on our mount and on the
//! kernel overlay over the same layers, and the trees and errno values must agree.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::util::{self, errno, Layer, Opq, Pair, Wh};

/// The marker formats a scenario runs under (ours; the kernel writes its own).
const FORMATS: [&str; 3] = ["markers=kernel", "markers=userxattr", "markers=aufs"];

fn base() -> Layer {
    Layer::default()
        .file("etc/hosts", "base hosts\n")
        .file("etc/passwd", "root:x:0:0\n")
        .file_mode("bin/tool", b"#!/bin/sh\n", 0o755)
        .owner("bin/tool", 1000, 100)
        .xattr("bin/tool", "user.note", "tool")
        .dir("usr/share/doc")
        .file("usr/share/doc/a", "a")
        .file("usr/share/doc/b", "b")
        .symlink("usr/link", "share/doc/a")
        .fifo("run/fifo")
        .device("dev/null", libc::S_IFCHR, libc::makedev(1, 3))
        .dir_mode("private", 0o700)
        .file("private/secret", "s")
        .file("top-file", "top")
}

fn top() -> Layer {
    Layer::default()
        .file("etc/hosts", "top hosts\n")
        .whiteout("etc/gone", Wh::Device)
        .file("usr/share/doc/c", "c")
        .opaque("opaque", Opq::Trusted)
        .file("opaque/new", "n")
}

fn lowers() -> Vec<Layer> {
    vec![
        top(),
        base().file("etc/gone", "old").file("opaque/old", "o"),
    ]
}

fn write_file(p: &Path, data: &[u8]) -> Result<(), i32> {
    fs::write(p, data).map_err(errno)
}

fn read(p: &Path) -> Result<Vec<u8>, i32> {
    fs::read(p).map_err(errno)
}

fn names(p: &Path) -> Result<Vec<String>, i32> {
    let mut v: Vec<String> = fs::read_dir(p)
        .map_err(errno)?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    Ok(v)
}

#[test]
fn unlink_leaves_a_whiteout_only_over_lower_names() {
    for fmt in FORMATS {
        let pair = Pair::writable(&lowers(), fmt);
        pair.both("create", |m| write_file(&m.join("etc/new"), b"n"));
        pair.both("unlink lower", |m| {
            fs::remove_file(m.join("etc/passwd")).map_err(errno)
        });
        pair.both("unlink upper", |m| {
            fs::remove_file(m.join("etc/new")).map_err(errno)
        });
        pair.both("unlink top lower", |m| {
            fs::remove_file(m.join("etc/hosts")).map_err(errno)
        });
        pair.both("unlink again", |m| {
            fs::remove_file(m.join("etc/hosts")).map_err(errno)
        });
        pair.both("stat gone", |m| {
            util::lstat(&m.join("etc/passwd")).map(|_| ())
        });
        pair.both("unlink dir", |m| {
            fs::remove_file(m.join("usr")).map_err(errno)
        });
        pair.assert_same_tree();
        // No whiteout for the pure-upper file, in any format.
        let upper = pair.scratch.path("ou/etc");
        let left: Vec<String> = names(&upper).unwrap();
        assert!(!left.iter().any(|n| n.contains("new")), "{fmt}: {left:?}");
        // The lower files are untouched.
        assert_eq!(
            fs::read(pair.scratch.path("o1/etc/passwd")).unwrap(),
            b"root:x:0:0\n"
        );
        if fmt != "markers=aufs" {
            // Device whiteouts are links of one inode, as the kernel overlay makes them.
            let a = fs::symlink_metadata(upper.join("passwd")).unwrap();
            let b = fs::symlink_metadata(upper.join("hosts")).unwrap();
            assert_eq!(a.ino(), b.ino(), "{fmt}");
            assert!(a.nlink() >= 2, "{fmt}");
        }
    }
}

#[test]
fn create_over_a_whiteout_never_shows_old_content() {
    for fmt in FORMATS {
        let pair = Pair::writable(&lowers(), fmt);
        pair.both("rm", |m| {
            fs::remove_file(m.join("etc/hosts")).map_err(errno)
        });
        pair.both("create", |m| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m.join("etc/hosts"))
                .map_err(errno)?;
            f.write_all(b"new").map_err(errno)
        });
        pair.both("read", |m| read(&m.join("etc/hosts")));
        pair.both("create over xattr-less lower whiteout", |m| {
            write_file(&m.join("etc/gone"), b"g2")
        });
        pair.both("read", |m| read(&m.join("etc/gone")));
        pair.both("mkdir over whiteout", |m| {
            fs::remove_file(m.join("top-file")).map_err(errno)?;
            fs::create_dir(m.join("top-file")).map_err(errno)
        });
        pair.both("list", |m| names(&m.join("top-file")));
        pair.assert_same_tree();
    }
}

#[test]
fn rm_r_then_mkdir_gives_an_empty_opaque_dir_also_after_remount() {
    for fmt in FORMATS {
        let mut pair = Pair::writable(&lowers(), fmt);
        for dir in ["usr/share/doc", "private"] {
            pair.both("rm -r", |m| fs::remove_dir_all(m.join(dir)).map_err(errno));
            pair.both("stat gone", |m| util::lstat(&m.join(dir)).map(|_| ()));
            pair.both("mkdir", |m| fs::create_dir(m.join(dir)).map_err(errno));
            pair.both("list", |m| names(&m.join(dir)));
            pair.both("stat old name", |m| {
                util::lstat(&m.join(dir).join("a")).map(|_| ())
            });
            pair.both("stat old name", |m| {
                util::lstat(&m.join(dir).join("secret")).map(|_| ())
            });
        }
        pair.assert_same_tree();
        pair.remount_ours(2, fmt);
        for dir in ["usr/share/doc", "private"] {
            assert_eq!(names(&pair.o(dir)).unwrap(), Vec::<String>::new(), "{fmt}");
            assert_eq!(
                util::lstat(&pair.o(dir).join("a")).unwrap_err(),
                libc::ENOENT
            );
            assert_eq!(
                util::lstat(&pair.o(dir).join("secret")).unwrap_err(),
                libc::ENOENT
            );
        }
        pair.assert_same_tree();
    }
}

#[test]
fn a_brand_new_mkdir_is_not_opaque_and_rmdir_ignores_whiteouts() {
    for fmt in FORMATS {
        let pair = Pair::writable(&lowers(), fmt);
        pair.both("mkdir new", |m| {
            fs::create_dir(m.join("fresh")).map_err(errno)
        });
        assert!(util::tree::xattrs(&pair.scratch.path("ou/fresh")).is_empty());
        assert!(!pair.scratch.path("ou/fresh/.wh..wh..opq").exists());
        pair.both("rmdir non-empty", |m| {
            fs::remove_dir(m.join("usr/share/doc")).map_err(errno)
        });
        for f in ["a", "b", "c"] {
            pair.both("rm", |m| {
                fs::remove_file(m.join("usr/share/doc").join(f)).map_err(errno)
            });
        }
        pair.both("list emptied", |m| names(&m.join("usr/share/doc")));
        pair.both("rmdir of whiteouts only", |m| {
            fs::remove_dir(m.join("usr/share/doc")).map_err(errno)
        });
        pair.both("rmdir file", |m| {
            fs::remove_dir(m.join("etc/passwd")).map_err(errno)
        });
        pair.both("rmdir missing", |m| {
            fs::remove_dir(m.join("nope")).map_err(errno)
        });
        pair.assert_same_tree();
    }
}

#[test]
fn renames_of_files_between_layers_match_the_kernel() {
    for fmt in FORMATS {
        let pair = Pair::writable(&lowers(), fmt);
        let ren = |a: &str, b: &str| {
            let (a, b) = (a.to_owned(), b.to_owned());
            move |m: &Path| fs::rename(m.join(&a), m.join(&b)).map_err(errno)
        };
        pair.both("lower to new", ren("etc/passwd", "etc/passwd2"));
        pair.both(
            "lower over lower",
            ren("usr/share/doc/a", "usr/share/doc/b"),
        );
        pair.both("onto whiteout", ren("etc/passwd2", "etc/gone"));
        pair.both("upper file", |m| write_file(&m.join("u1"), b"u"));
        pair.both("upper over lower", ren("u1", "etc/hosts"));
        pair.both("into other dir", ren("top-file", "usr/top-file"));
        pair.both("fifo", ren("run/fifo", "run/fifo2"));
        pair.both("symlink", ren("usr/link", "link2"));
        pair.both("missing", ren("nope", "x"));
        pair.both("file over dir", ren("etc/hosts", "usr"));
        pair.both("dir over file", ren("opaque", "etc/hosts"));
        pair.both("read", |m| read(&m.join("etc/hosts")));
        pair.assert_same_tree();
    }
}

/// renameat2(2) of `a` to `b` under `m` with `flags`: `Ok` or the errno.
pub fn renameat2(m: &Path, a: &str, b: &str, flags: u32) -> Result<(), i32> {
    let ca = std::ffi::CString::new(m.join(a).into_os_string().into_encoded_bytes()).unwrap();
    let cb = std::ffi::CString::new(m.join(b).into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: test helper; NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(errno(std::io::Error::last_os_error()))
    }
}

#[test]
fn rename_noreplace_and_exchange_match_the_kernel() {
    for fmt in FORMATS {
        let pair = Pair::writable(&lowers(), fmt);
        let nr = libc::RENAME_NOREPLACE;
        let ex = libc::RENAME_EXCHANGE;
        pair.both("noreplace onto existing", |m| {
            renameat2(m, "etc/passwd", "etc/hosts", nr)
        });
        pair.both("noreplace onto whiteout", |m| {
            renameat2(m, "etc/passwd", "etc/gone", nr)
        });
        pair.both("exchange lower files", |m| {
            renameat2(m, "etc/gone", "etc/hosts", ex)
        });
        pair.both("exchange with missing", |m| {
            renameat2(m, "etc/hosts", "etc/none", ex)
        });
        pair.both("upper file", |m| write_file(&m.join("usr/u"), b"u"));
        pair.both("exchange upper and lower", |m| {
            renameat2(m, "usr/u", "bin/tool", ex)
        });
        pair.both("read", |m| read(&m.join("usr/u")));
        pair.both("read", |m| read(&m.join("bin/tool")));
        pair.assert_same_tree();
    }
}

/// `mv` of a lower directory: the kernel says EXDEV and mv copies; we rename. The trees
/// after `mv` must agree either way, for a big tree too.
#[test]
fn mv_of_lower_and_merged_dirs_gives_the_kernels_tree() {
    let mut big = base();
    for i in 0..10_000 {
        big = big.file(&format!("big/d{}/f{i}", i % 50), &format!("{i}"));
    }
    let pair = Pair::writable(&[top(), big], "");
    let mv = |a: &str, b: &str| {
        let (a, b) = (a.to_owned(), b.to_owned());
        move |m: &Path| {
            util::succeeds(
                std::process::Command::new("mv")
                    .arg(m.join(&a))
                    .arg(m.join(&b)),
            )
        }
    };
    pair.both("modify inside", |m| {
        write_file(&m.join("usr/share/doc/a"), b"changed")
    });
    pair.both("delete inside", |m| {
        fs::remove_file(m.join("usr/share/doc/b")).map_err(errno)
    });
    pair.both("mv merged dir", mv("usr", "usr2"));
    pair.both("mv lower dir", mv("private", "usr2/private"));
    pair.both("mv big tree", mv("big", "big2"));
    pair.both("recreate", |m| fs::create_dir(m.join("usr")).map_err(errno));
    pair.both("list", |m| names(&m.join("usr")));
    pair.assert_same_tree();
    // Our rename itself is a rename, never EXDEV.
    assert_eq!(renameat2(&pair.ours.path, "usr2/share", "share", 0), Ok(()));
    assert_eq!(names(&pair.o("share/doc")).unwrap(), vec!["a", "c"]);
}

#[test]
fn copy_up_keeps_type_mode_owner_xattrs_and_times() {
    for fmt in FORMATS {
        let pair = Pair::writable(&lowers(), fmt);
        pair.both("chmod fifo", |m| {
            fs::set_permissions(m.join("run/fifo"), fs::Permissions::from_mode(0o600))
                .map_err(errno)
        });
        pair.both("chown symlink", |m| {
            std::os::unix::fs::lchown(m.join("usr/link"), Some(7), Some(8)).map_err(errno)
        });
        pair.both("chown device", |m| {
            std::os::unix::fs::lchown(m.join("dev/null"), Some(5), None).map_err(errno)
        });
        pair.both("xattr on tool", |m| {
            xattr_set(&m.join("bin/tool"), "user.more", b"x")
        });
        pair.both("append", |m| {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(m.join("etc/passwd"))
                .map_err(errno)?;
            f.write_all(b"x:1\n").map_err(errno)
        });
        pair.both("deep dir copy-up", |m| {
            write_file(&m.join("usr/share/doc/new"), b"n")
        });
        pair.assert_same_tree();
        assert!(fs::symlink_metadata(pair.scratch.path("ou/run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo_like());
    }
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}
impl FifoLike for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

fn xattr_set(p: &Path, name: &str, value: &[u8]) -> Result<(), i32> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: test helper; NUL-terminated strings, value readable for its length.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(errno(std::io::Error::last_os_error()))
    }
}

#[test]
fn st_ino_survives_copy_up_and_readdir_agrees() {
    let pair = Pair::writable(&lowers(), "");
    for m in [pair.o(""), pair.k("")] {
        let before = fs::metadata(m.join("etc/passwd")).unwrap().ino();
        fs::set_permissions(m.join("etc/passwd"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(fs::metadata(m.join("etc/passwd")).unwrap().ino(), before);
        let dir_before = fs::metadata(m.join("usr/share")).unwrap().ino();
        write_file(&m.join("usr/share/x"), b"x").unwrap();
        assert_eq!(fs::metadata(m.join("usr/share")).unwrap().ino(), dir_before);
    }
    pair.remount_check_inos();
}

impl Pair {
    fn remount_check_inos(self) {
        let mut pair = self;
        let before = fs::metadata(pair.o("etc/passwd")).unwrap().ino();
        pair.remount_ours(2, "");
        assert_eq!(fs::metadata(pair.o("etc/passwd")).unwrap().ino(), before);
        pair.assert_same_tree();
    }
}

#[test]
fn a_read_only_fd_opened_before_copy_up_reads_the_new_data() {
    let pair = Pair::writable(&lowers(), "");
    for m in [pair.o(""), pair.k("")] {
        let mut ro = fs::File::open(m.join("etc/passwd")).unwrap();
        let mut first = [0u8; 4];
        ro.read_exact(&mut first).unwrap();
        fs::write(m.join("etc/passwd"), b"rewritten\n").unwrap();
        ro.seek(SeekFrom::Start(0)).unwrap();
        let mut now = String::new();
        ro.read_to_string(&mut now).unwrap();
        assert_eq!(now, "rewritten\n", "{}", m.display());
    }
    assert_eq!(
        fs::read(pair.scratch.path("o1/etc/passwd")).unwrap(),
        b"root:x:0:0\n"
    );
}

#[test]
fn an_unlinked_open_file_stays_readable_and_writable() {
    let pair = Pair::writable(&lowers(), "");
    for m in [pair.o(""), pair.k("")] {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.join("etc/passwd"))
            .unwrap();
        fs::remove_file(m.join("etc/passwd")).unwrap();
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(b"more\n").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "root:x:0:0\nmore\n");
        assert_eq!(f.metadata().unwrap().nlink(), 0, "{}", m.display());
        f.set_len(3).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 3);
        // The name is free again.
        fs::write(m.join("etc/passwd"), b"other").unwrap();
        assert_eq!(fs::read(m.join("etc/passwd")).unwrap(), b"other");
    }
    pair.assert_same_tree();
}

#[test]
fn hard_links_never_show_diverging_data_after_copy_up() {
    let lower = base().hardlink("etc/alias", "etc/passwd");
    let pair = Pair::writable(&[lower], "");
    let m = pair.o("");
    let ino = fs::metadata(m.join("etc/passwd")).unwrap().ino();
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("etc/alias"))
        .unwrap()
        .write_all(b"appended\n")
        .unwrap();
    for name in ["etc/passwd", "etc/alias"] {
        assert_eq!(
            fs::read(m.join(name)).unwrap(),
            b"root:x:0:0\nappended\n",
            "{name}"
        );
        assert_eq!(fs::metadata(m.join(name)).unwrap().ino(), ino, "{name}");
    }
    fs::set_permissions(m.join("etc/passwd"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(m.join("etc/alias")).unwrap().mode() & 0o777,
        0o640
    );
    // Removing or renaming one alias leaves the others working.
    fs::hard_link(m.join("etc/passwd"), m.join("etc/third")).unwrap();
    fs::rename(m.join("etc/third"), m.join("etc/fourth")).unwrap();
    fs::remove_file(m.join("etc/fourth")).unwrap();
    assert_eq!(
        fs::read(m.join("etc/alias")).unwrap(),
        b"root:x:0:0\nappended\n"
    );
    assert_eq!(fs::metadata(m.join("etc/passwd")).unwrap().ino(), ino);
    let mut pair = pair;
    pair.remount_ours(1, "");
    for name in ["etc/passwd", "etc/alias"] {
        assert_eq!(
            fs::read(pair.o(name)).unwrap(),
            b"root:x:0:0\nappended\n",
            "{name}"
        );
        assert_eq!(
            fs::metadata(pair.o(name)).unwrap().mode() & 0o777,
            0o640,
            "{name}"
        );
    }
    assert_eq!(
        fs::read(pair.scratch.path("o0/etc/alias")).unwrap(),
        b"root:x:0:0\n"
    );
}

#[test]
fn copy_up_keeps_holes() {
    let pair = Pair::writable(&[base()], "");
    let lower = pair.scratch.path("o0/sparse");
    let f = fs::File::create(&lower).unwrap();
    f.set_len(200 << 20).unwrap();
    drop(f);
    let m = pair.o("sparse");
    let mut f = fs::OpenOptions::new().append(true).open(&m).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    let up = fs::metadata(pair.scratch.path("ou/sparse")).unwrap();
    assert_eq!(up.len(), (200 << 20) + 1);
    assert!(
        up.blocks() < 1024,
        "copy-up inflated a sparse file: {} blocks",
        up.blocks()
    );
}

#[test]
fn writes_by_a_non_owner_clear_setuid_and_setgid() {
    let lower = Layer::default()
        .file_mode("suid", b"x", 0o6777)
        .owner("suid", 1234, 1234);
    let pair = Pair::writable(&[lower], "");
    for m in [pair.o(""), pair.k("")] {
        let st = std::process::Command::new("setpriv")
            .args(["--reuid=4321", "--regid=4321", "--clear-groups", "sh", "-c"])
            .arg(format!("echo y >> {}", m.join("suid").display()))
            .status()
            .unwrap();
        assert!(st.success());
    }
    pair.assert_same_tree();
    assert_eq!(fs::metadata(pair.o("suid")).unwrap().mode() & 0o6000, 0);
}

#[test]
fn markers_cannot_be_forged_or_seen_through_the_mount() {
    let pair = Pair::writable(&lowers(), "markers=aufs");
    let m = pair.o("");
    for name in [".wh.hosts", ".wh..wh..opq"] {
        assert_eq!(
            write_file(&m.join("etc").join(name), b"").unwrap_err(),
            libc::EINVAL
        );
        assert_eq!(
            fs::rename(m.join("etc/passwd"), m.join("etc").join(name))
                .map_err(errno)
                .unwrap_err(),
            libc::EINVAL
        );
    }
    assert_eq!(fs::read(m.join("etc/hosts")).unwrap(), b"top hosts\n");
    // The kernel (6.7+) escapes overlay xattrs set through it; we refuse them.
    for name in [
        "trusted.overlay.opaque",
        "user.overlay.whiteout",
        "user.overlayfuse.origin",
    ] {
        assert_eq!(
            xattr_set(&m.join("etc"), name, b"y"),
            Err(libc::EOPNOTSUPP),
            "{name}"
        );
    }
    fs::remove_file(m.join("etc/passwd")).unwrap();
    fs::remove_dir_all(m.join("usr")).unwrap();
    fs::create_dir(m.join("usr")).unwrap();
    assert_eq!(names(&m.join("etc")).unwrap(), vec!["hosts"]);
    assert_eq!(names(&m.join("usr")).unwrap(), Vec::<String>::new());
    assert!(pair.scratch.path("ou/etc/.wh.passwd").is_file());
    assert!(pair.scratch.path("ou/usr/.wh..wh..opq").is_file());
}

#[test]
fn created_objects_belong_to_the_caller() {
    let pair = Pair::writable(&lowers(), "");
    for m in [pair.o(""), pair.k("")] {
        fs::set_permissions(m.join("etc"), fs::Permissions::from_mode(0o777)).unwrap();
        let st = std::process::Command::new("setpriv")
            .args(["--reuid=4321", "--regid=4322", "--clear-groups", "sh", "-c"])
            .arg(format!(
                "umask 022; echo a > {0}/etc/mine && mkdir {0}/etc/d && ln -s x {0}/etc/l && mkfifo {0}/etc/p",
                m.display()
            ))
            .status()
            .unwrap();
        assert!(st.success());
    }
    pair.assert_same_tree();
    let st = fs::metadata(pair.o("etc/mine")).unwrap();
    assert_eq!((st.uid(), st.gid(), st.mode() & 0o777), (4321, 4322, 0o644));
}

#[test]
fn bad_upper_and_work_dirs_are_refused_with_one_line() {
    let s = util::Scratch::new();
    let (l, u, w, m) = (s.mkdir("l"), s.mkdir("u"), s.mkdir("w"), s.mkdir("m"));
    fs::write(w.join("precious"), "x").unwrap();
    let opts = |u: &Path, w: &Path| {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            l.display(),
            u.display(),
            w.display()
        )
    };
    let shm = Path::new("/dev/shm").join(format!("ofs-work-{}", std::process::id()));
    fs::create_dir_all(&shm).unwrap();
    let cases = [
        (opts(&u, &w), "not ours"),
        (opts(&u, &u.join("inner")), "does not exist"),
        (opts(&l, &s.mkdir("w2")), "given twice"),
        (opts(&u, &shm), "another filesystem"),
        (opts(&s.mkdir("l/nested"), &s.mkdir("w3")), "nest"),
    ];
    for (o, want) in cases {
        let out = util::run(&["-o", &o, m.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{o}: {err}");
        assert!(err.contains(want), "{o}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!util::is_mounted(&m));
    }
    fs::remove_dir_all(shm).unwrap();
}

#[test]
fn one_mount_per_upper_and_work_dir_also_while_a_copy_lives_in_another_namespace() {
    let s = util::Scratch::new();
    let l = s.mkdir("l");
    fs::write(l.join("a"), "a").unwrap();
    let (u, w, m) = (s.mkdir("u"), s.mkdir("w"), s.mkdir("m"));
    let mount = |u: &Path, w: &Path, m: &Path| {
        let o = format!(
            "lowerdir={},upperdir={},workdir={}",
            l.display(),
            u.display(),
            w.display()
        );
        util::run(&["-o", &o, m.to_str().unwrap()])
    };
    let refused = |out: std::process::Output, want: &[&str]| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        for x in want {
            assert!(err.contains(x), "{x:?} missing from: {err}");
        }
    };
    let first = mount(&u, &w, &m);
    assert!(first.status.success(), "{first:?}");
    let first = util::Mounted { path: m.clone() };
    fs::write(m.join("a"), "first").unwrap();
    let m2 = s.mkdir("m2");
    let m = m.to_str().unwrap();
    refused(
        mount(&u, &s.mkdir("w2"), &m2),
        &["upperdir", m, "unmount that first"],
    );
    refused(
        mount(&s.mkdir("u2"), &w, &m2),
        &["workdir", m, "unmount that first"],
    );
    assert!(!util::is_mounted(&m2));

    // A private copy of the mount in another mount namespace keeps the first daemon serving
    // after the unmount here: still refused, saying so.
    let mut copy = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sleep", "600"])
        .spawn()
        .unwrap();
    let own_ns = fs::read_link("/proc/self/ns/mnt").unwrap();
    let ns = format!("/proc/{}/ns/mnt", copy.id());
    assert!(util::wait_for(std::time::Duration::from_secs(10), || {
        fs::read_link(&ns).is_ok_and(|n| n != own_ns)
    }));
    first.unmount();
    std::mem::forget(first);
    refused(
        mount(&u, &w, Path::new(m)),
        &["upperdir", m, "still served", "another mount namespace"],
    );
    copy.kill().unwrap();
    copy.wait().unwrap();
    // The copy gone, the first daemon exits and the upper is free again (within the grace).
    let again = mount(&u, &w, Path::new(m));
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let _again = util::Mounted { path: m.into() };
    assert_eq!(fs::read_to_string(Path::new(m).join("a")).unwrap(), "first");
}

#[test]
fn o_excl_and_other_create_errors_match_the_kernel() {
    let pair = Pair::writable(&lowers(), "");
    pair.both("O_EXCL on lower", |m| {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m.join("etc/passwd"))
            .map(|_| ())
            .map_err(errno)
    });
    pair.both("mkdir existing", |m| {
        fs::create_dir(m.join("usr")).map_err(errno)
    });
    pair.both("mkdir in missing", |m| {
        fs::create_dir(m.join("nope/x")).map_err(errno)
    });
    pair.both("create in file", |m| {
        write_file(&m.join("etc/passwd/x"), b"")
    });
    pair.both("symlink existing", |m| {
        std::os::unix::fs::symlink("x", m.join("etc/hosts")).map_err(errno)
    });
    pair.both("link dir", |m| {
        fs::hard_link(m.join("usr"), m.join("usr3")).map_err(errno)
    });
    pair.both("link lower", |m| {
        fs::hard_link(m.join("etc/passwd"), m.join("pw")).map_err(errno)
    });
    pair.both("long name", |m| write_file(&m.join("x".repeat(256)), b""));
    pair.both("truncate via open", |m| {
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(0)
            .open(m.join("etc/hosts"))
            .map(|_| ())
            .map_err(errno)
    });
    pair.both("read truncated", |m| read(&m.join("etc/hosts")));
    pair.assert_same_tree();
}

#[test]
fn flock_and_posix_locks_work_between_processes() {
    let pair = Pair::writable(&lowers(), "");
    for m in [pair.o(""), pair.k("")] {
        let f = m.join("etc/passwd");
        let script = format!(
            "exec 8<>{0}; flock -n 8 || exit 3; (flock -n 9 && exit 4; exit 0) 9<>{0}",
            f.display()
        );
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(0), "{}", m.display());
        let held = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&f)
            .unwrap();
        let lock = libc::flock {
            l_type: libc::F_WRLCK as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        use std::os::fd::AsRawFd;
        // SAFETY: test helper; a valid fd and flock struct.
        assert_eq!(
            unsafe { libc::fcntl(held.as_raw_fd(), libc::F_SETLK, &lock) },
            0
        );
        let probe = format!(
            "python3 -c \"import fcntl,os,sys\nfd=os.open('{0}',os.O_RDWR)\ntry:\n fcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB); sys.exit(1)\nexcept OSError: sys.exit(0)\"",
            f.display()
        );
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(&probe)
            .status()
            .unwrap();
        assert_eq!(
            st.code(),
            Some(0),
            "a second process got a held POSIX lock: {}",
            m.display()
        );
    }
}

#[test]
fn whiteout_devices_cannot_be_made_and_renames_replace_emptied_dirs() {
    let pair = Pair::writable(&lowers(), "");
    pair.both("mknod 0/0", |m| {
        let c = std::ffi::CString::new(m.join("wh").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: test helper; NUL-terminated path.
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) };
        if r == 0 {
            Ok(())
        } else {
            Err(errno(std::io::Error::last_os_error()))
        }
    });
    for f in ["a", "b", "c"] {
        pair.both("empty doc", |m| {
            fs::remove_file(m.join("usr/share/doc").join(f)).map_err(errno)
        });
    }
    pair.both("new dir", |m| {
        fs::create_dir(m.join("fresh")).map_err(errno)?;
        write_file(&m.join("fresh/inside"), b"i")
    });
    pair.both("rename over emptied merged dir", |m| {
        fs::rename(m.join("fresh"), m.join("usr/share/doc")).map_err(errno)
    });
    pair.both("list", |m| names(&m.join("usr/share/doc")));
    pair.assert_same_tree();
}

#[test]
fn removing_or_renaming_a_lower_alias_after_its_group_was_copied_up() {
    let lower = base().hardlink("etc/alias", "etc/passwd");
    let pair = Pair::writable(&[lower], "");
    let m = pair.o("");
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("etc/passwd"))
        .unwrap()
        .write_all(b"x\n")
        .unwrap();
    fs::rename(m.join("etc/alias"), m.join("etc/moved")).unwrap();
    assert_eq!(fs::read(m.join("etc/moved")).unwrap(), b"root:x:0:0\nx\n");
    fs::remove_file(m.join("etc/moved")).unwrap();
    assert_eq!(fs::read(m.join("etc/passwd")).unwrap(), b"root:x:0:0\nx\n");
    fs::set_permissions(m.join("etc/passwd"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(util::lstat(&m.join("etc/alias")).unwrap_err(), libc::ENOENT);
}

/// copy_file_range(2) of `len` bytes from `src` at `off_in` to `dst` at `off_out`.
fn copy_range(
    src: &fs::File,
    off_in: i64,
    dst: &fs::File,
    off_out: i64,
    len: usize,
) -> Result<usize, i32> {
    use std::os::fd::AsRawFd;
    let (mut i, mut o) = (off_in, off_out);
    // SAFETY: test helper; live descriptors and offsets.
    let r =
        unsafe { libc::copy_file_range(src.as_raw_fd(), &mut i, dst.as_raw_fd(), &mut o, len, 0) };
    if r < 0 {
        Err(errno(std::io::Error::last_os_error()))
    } else {
        Ok(r as usize)
    }
}

#[test]
fn copy_file_range_matches_the_kernel_and_never_writes_a_lower_file() {
    let pair = Pair::writable(&lowers(), "");
    pair.both("copy_file_range cases", |m| {
        let open_rw = |p: &str| {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(m.join(p))
        };
        // Opened before a copy-up: the copy reads the data written since.
        let passwd = fs::File::open(m.join("etc/passwd")).map_err(errno)?;
        write_file(&m.join("etc/passwd"), b"rewritten passwd\n")?;
        let fresh = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m.join("fresh"))
            .map_err(errno)?;
        let mut got = vec![copy_range(&passwd, 0, &fresh, 0, 1 << 20)?];
        // Into the middle of a lower file, which is copied up by the write open.
        let hosts = open_rw("etc/hosts").map_err(errno)?;
        got.push(copy_range(&passwd, 2, &hosts, 4, 5)?);
        // Past the end of the source: nothing.
        got.push(copy_range(&passwd, 1000, &hosts, 0, 10)?);
        let ro = fs::File::open(m.join("usr/share/doc/a")).map_err(errno)?;
        let errs = [
            copy_range(&passwd, 0, &ro, 0, 4).unwrap_err(),
            copy_range(&hosts, 0, &hosts, 2, 4).unwrap_err(),
        ];
        Ok((
            got,
            errs,
            read(&m.join("fresh"))?,
            read(&m.join("etc/hosts"))?,
        ))
    });
    pair.assert_same_tree();
    let lower = pair.scratch.path("o0/etc/hosts");
    assert_eq!(fs::read(lower).unwrap(), b"top hosts\n");
}

/// The offsets SEEK_DATA and SEEK_HOLE give (or their errno) at each of `from`.
fn data_and_holes(p: &Path, from: &[i64]) -> Result<Vec<(i64, i64)>, i32> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(p).map_err(errno)?;
    let seek = |off, whence| {
        // SAFETY: test helper; a live descriptor.
        let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
        if r < 0 {
            -i64::from(errno(std::io::Error::last_os_error()))
        } else {
            r
        }
    };
    Ok(from
        .iter()
        .map(|&o| (seek(o, libc::SEEK_DATA), seek(o, libc::SEEK_HOLE)))
        .collect())
}

#[test]
fn seek_data_and_hole_match_the_kernel_on_lower_and_upper_files() {
    let mut layers = lowers();
    layers[0] = top().file("sparse", "");
    let pair = Pair::writable(&layers, "");
    // Made sparse before anything looks at it (the layer builder writes plain files).
    for root in ["o0", "k0"] {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(pair.scratch.path(&format!("{root}/sparse")))
            .unwrap();
        f.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[7; 8192], 3 << 20).unwrap();
    }
    let from = [0, 3 << 20, (3 << 20) + 4096, 5 << 20, 8 << 20, 9 << 20];
    pair.both("lower sparse file", |m| {
        data_and_holes(&m.join("sparse"), &from)
    });
    pair.both("upper sparse file", |m| {
        let f = fs::File::create(m.join("up-sparse")).map_err(errno)?;
        f.set_len(8 << 20).map_err(errno)?;
        std::os::unix::fs::FileExt::write_all_at(&f, &[7; 8192], 3 << 20).map_err(errno)?;
        drop(f);
        data_and_holes(&m.join("up-sparse"), &from)
    });
    pair.both("a file without holes", |m| {
        data_and_holes(&m.join("etc/hosts"), &[0, 3, 10, 11])
    });
}

#[test]
fn copy_file_range_into_a_full_upper_returns_what_it_copied_as_the_kernel_does() {
    let s = util::Scratch::new();
    let len = 8 << 20;
    let mut seen = Vec::new();
    for (name, ours) in [("o", true), ("k", false)] {
        // One filesystem for all layers (the kernel overlay refuses a copy between two), with
        // room for the lower file and half a copy of it.
        let small = s.mkdir(&format!("{name}-small"));
        let mut tmpfs = std::process::Command::new("mount");
        util::must(
            tmpfs
                .args(["-t", "tmpfs", "-o", "size=12m", "tmpfs"])
                .arg(&small),
        );
        let _small = util::Mounted {
            path: small.clone(),
        };
        let (lower, up, work) = (small.join("l"), small.join("u"), small.join("w"));
        for d in [&lower, &up, &work] {
            fs::create_dir(d).unwrap();
        }
        fs::write(lower.join("big"), vec![7u8; len]).unwrap();
        let m = s.mkdir(name);
        let _mounted = if ours {
            util::mount_ours_rw(std::slice::from_ref(&lower), &up, &work, &m, "")
        } else {
            util::mount_kernel_rw(std::slice::from_ref(&lower), &up, &work, &m)
        };
        let src = fs::File::open(m.join("big")).unwrap();
        let dst = fs::File::create(m.join("copy")).unwrap();
        let first = copy_range(&src, 0, &dst, 0, len);
        let size = dst.metadata().unwrap().len();
        let next = copy_range(&src, size as i64, &dst, size as i64, len);
        seen.push((name, first, size, next));
    }
    for (name, first, size, next) in seen {
        let n = first.unwrap_or_else(|e| panic!("{name}: the first copy failed: errno {e}"));
        assert!(n > 0 && n < len, "{name}: a short copy, not {n} of {len}");
        assert_eq!(n as u64, size, "{name}: the count is what the file holds");
        assert_eq!(next, Err(libc::ENOSPC), "{name}: the error comes next");
    }
}

/// `st_nlink` of a lower hard-link group as the kernel overlay gives it with `index=on`:
/// the group's names counted, whichever are copied up, removed, linked or replaced, and
/// the same after a remount.
#[test]
fn hard_link_counts_of_lower_groups_match_the_kernel_with_index() {
    let lower = Layer::default()
        .file("hl1", "one\n")
        .hardlink("hl2", "hl1")
        .file("g1", "g\n")
        .hardlink("g2", "g1")
        .hardlink("g3", "g1")
        .dir("d");
    let mut pair = Pair::writable_on(None, &[lower], "", "index=on,redirect_dir=on");
    let links = |names: &'static [&'static str]| {
        move |m: &Path| -> Result<Vec<u64>, i32> {
            names
                .iter()
                .map(|n| {
                    fs::symlink_metadata(m.join(n))
                        .map(|md| md.nlink())
                        .map_err(errno)
                })
                .collect()
        }
    };
    let sh = |script: &'static str| {
        move |m: &Path| {
            util::succeeds(
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(script)
                    .current_dir(m),
            )
        }
    };
    pair.both("chmod one name", sh("chmod 640 hl2"));
    pair.both("links after chmod", links(&["hl1", "hl2"]));
    pair.both("unlink the other", sh("rm hl1"));
    pair.both("links after unlink", links(&["hl2"]));
    pair.both("link it again", sh("ln hl2 d/a"));
    pair.both("links after link", links(&["hl2", "d/a"]));
    pair.both("unlink a lower name first", sh("rm g1 && mv g2 g9"));
    pair.both("links after mv", links(&["g9", "g3"]));
    pair.both("replace a lower name", sh("echo z > g4 && mv g4 g3"));
    pair.both("links after replace", links(&["g9"]));
    pair.remount_ours(1, "");
    pair.both("after remount", links(&["hl2", "d/a", "g9"]));
}
