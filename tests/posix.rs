//! POSIX corners, differentially against the kernel overlay: times of writes through a
//! shared mapping, open objects whose name a rename or rmdir took, access times under
//! `relatime`, `strictatime` and `noatime`, `ro` with an upper layer, and file handles.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use crate::util::{errno, Layer, Pair};

/// (mtime, ctime) in nanoseconds.
fn times(p: &Path) -> (i128, i128) {
    let m = fs::metadata(p).unwrap();
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    (ns(m.mtime(), m.mtime_nsec()), ns(m.ctime(), m.ctime_nsec()))
}

fn pause() {
    std::thread::sleep(Duration::from_millis(30));
}

/// Writes through a shared mapping of `p` (made 8 KiB long if it is missing) and says, at
/// each step, whether mtime and ctime moved since the step before: the first store, msync,
/// a store after msync, munmap and close.
fn mapped_writes(p: &Path) -> Vec<(&'static str, bool, bool)> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .unwrap();
    let len = 8192;
    if f.metadata().unwrap().len() < len as u64 {
        // Created here: its first attributes come with the create reply.
        f.set_len(len as u64).unwrap();
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: a fresh shared mapping of a file at least `len` long, unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    let bytes = map.cast::<u8>();
    let mut out = Vec::new();
    let mut last = times(p);
    let mut step = |what, out: &mut Vec<_>| {
        let now = times(p);
        out.push((what, now.0 != last.0, now.1 != last.1));
        last = now;
    };
    pause();
    // SAFETY: inside the mapping.
    unsafe { *bytes = b'a' };
    step("first store", &mut out);
    pause();
    // SAFETY: the mapping above.
    assert_eq!(unsafe { libc::msync(map, len, libc::MS_SYNC) }, 0);
    step("msync", &mut out);
    pause();
    // SAFETY: inside the mapping.
    unsafe { *bytes.add(100) = b'b' };
    step("store after msync", &mut out);
    pause();
    // SAFETY: the mapping above, not used after.
    assert_eq!(unsafe { libc::munmap(map, len) }, 0);
    drop(f);
    step("munmap and close", &mut out);
    out
}

#[test]
fn times_of_writes_through_a_shared_mapping_move_as_on_the_kernel_overlay() {
    let lower = Layer::default().file("lower", &"l".repeat(8192));
    let pair = Pair::writable(&[lower], "");
    for m in [pair.o(""), pair.k("")] {
        fs::write(m.join("upper"), vec![b'u'; 8192]).unwrap();
    }
    for name in ["lower", "upper", "created"] {
        let ours = mapped_writes(&pair.o(name));
        let kernel = mapped_writes(&pair.k(name));
        assert_eq!(ours, kernel, "{name}: (step, mtime moved, ctime moved)");
        assert!(ours[0].1, "{name}: the first store moves mtime");
    }
    pair.assert_same_tree();
}

#[test]
fn times_of_mapped_writes_without_passthrough_move_when_the_data_arrives() {
    // The kernel's FUSE page cache moves no times itself: they move when msync or the
    // unmap sends the data to the daemon, not at the first store (a documented difference).
    let lower = Layer::default().file("lower", &"l".repeat(8192));
    let pair = Pair::writable(&[lower], "passthrough=off");
    fs::write(pair.o("upper"), vec![b'u'; 8192]).unwrap();
    for name in ["lower", "upper"] {
        let steps = mapped_writes(&pair.o(name));
        let moved = |what: &str| steps.iter().any(|s| s.0 == what && s.1 && s.2);
        assert!(moved("msync"), "{name}: {steps:?}");
        assert!(moved("munmap and close"), "{name}: {steps:?}");
    }
}

/// fstat of `fd` as (nlink, mode) or errno.
fn fstat(f: &fs::File) -> Result<(u64, u32), i32> {
    f.metadata().map(|m| (m.nlink(), m.mode())).map_err(errno)
}

#[test]
fn open_objects_whose_name_went_keep_answering_as_on_the_kernel_overlay() {
    let lower = Layer::default()
        .dir("lowerdir")
        .dir("rmdir-lower")
        .file("merged/m", "m")
        .file("lowerfile", "lower")
        .file("linked1", "h")
        .hardlink("linked2", "linked1");
    let pair = Pair::writable_on(None, &[lower], "", "index=on");
    let run = |m: &Path| {
        let mut seen: Vec<String> = Vec::new();
        let mut note = |what: &str, v: String| seen.push(format!("{what}: {v}"));
        fs::create_dir(m.join("a")).unwrap();
        fs::create_dir(m.join("b")).unwrap();
        let b = fs::File::open(m.join("b")).unwrap();
        fs::rename(m.join("a"), m.join("b")).unwrap();
        note("upper dir replaced", format!("{:?}", fstat(&b)));
        let low = fs::File::open(m.join("lowerdir")).unwrap();
        fs::create_dir(m.join("c")).unwrap();
        fs::rename(m.join("c"), m.join("lowerdir")).unwrap();
        note("lower dir replaced", format!("{:?}", fstat(&low)));
        fs::create_dir(m.join("d")).unwrap();
        for name in ["d", "rmdir-lower", "merged"] {
            let dir = fs::File::open(m.join(name)).unwrap();
            if name == "merged" {
                fs::write(m.join("merged/new"), "n").unwrap();
                fs::remove_file(m.join("merged/new")).unwrap();
                fs::remove_file(m.join("merged/m")).unwrap();
            }
            fs::remove_dir(m.join(name)).unwrap();
            let listed = fs::read_dir(format!("/proc/self/fd/{}", {
                std::os::fd::AsRawFd::as_raw_fd(&dir)
            }))
            .map(|r| r.count())
            .map_err(errno);
            note(
                &format!("rmdir {name}"),
                format!("{:?} {listed:?}", fstat(&dir)),
            );
        }
        for name in ["lowerfile", "upperfile", "linked1"] {
            if name == "upperfile" {
                fs::write(m.join(name), "upper").unwrap();
            }
            let f = fs::OpenOptions::new()
                .read(true)
                .write(name != "linked1")
                .open(m.join(name))
                .unwrap();
            fs::write(m.join("new"), "new").unwrap();
            fs::rename(m.join("new"), m.join(name)).unwrap();
            let mut io = String::new();
            if name != "linked1" {
                f.write_all_at(b"X", 0).unwrap();
                f.sync_all().unwrap();
            }
            let mut buf = [0u8; 16];
            let n = f.read_at(&mut buf, 0).unwrap();
            io.push_str(&String::from_utf8_lossy(&buf[..n]));
            note(&format!("{name} replaced"), format!("{:?} {io}", fstat(&f)));
        }
        note(
            "other link",
            format!("{}", fs::metadata(m.join("linked2")).unwrap().nlink()),
        );
        seen
    };
    let ours = run(&pair.o(""));
    let kernel = run(&pair.k(""));
    assert_eq!(ours, kernel);
    assert!(
        ours[0].starts_with("upper dir replaced: Ok((0,"),
        "{ours:?}"
    );
    pair.assert_same_tree();
}

/// Remounts the kernel overlay at `m` with mount flags `flags` (its own, not the layers').
fn kernel_remount(m: &Path, flags: libc::c_ulong) {
    let c = CString::new(m.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated path; null source, type and data, as a bind remount takes.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND | flags,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "remount: {}", std::io::Error::last_os_error());
}

fn atime(p: &Path) -> i128 {
    let m = fs::metadata(p).unwrap();
    i128::from(m.atime()) * 1_000_000_000 + i128::from(m.atime_nsec())
}

/// Reads, execs and lists under one atime policy and says what moved.
fn access_times(m: &Path, lower_real: &Path) -> Vec<(&'static str, bool)> {
    let past = std::time::SystemTime::now() - Duration::from_secs(1000);
    let set_past = |p: &Path| {
        let f = fs::File::options().write(true).open(p).unwrap();
        f.set_times(
            fs::FileTimes::new()
                .set_accessed(past)
                .set_modified(past + Duration::from_secs(10)),
        )
        .unwrap();
    };
    let mut out = Vec::new();
    let up = m.join("upper");
    fs::write(&up, "u".repeat(100)).unwrap();
    set_past(&up);
    let a0 = atime(&up);
    pause();
    fs::read(&up).unwrap();
    let a1 = atime(&up);
    pause();
    fs::read(&up).unwrap();
    let a2 = atime(&up);
    out.push(("first read of an upper file", a1 != a0));
    out.push(("second read", a2 != a1));
    let prog = m.join("prog");
    fs::write(&prog, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
    set_past(&prog);
    let a0 = atime(&prog);
    assert!(std::process::Command::new(&prog)
        .status()
        .unwrap()
        .success());
    out.push(("exec of an upper program", atime(&prog) != a0));
    let (lf, real) = (m.join("lowerfile"), lower_real.join("lowerfile"));
    let (a0, r0) = (atime(&lf), atime(&real));
    fs::read(&lf).unwrap();
    pause();
    fs::read(&lf).unwrap();
    fs::read_dir(m.join("lowerdir")).unwrap().for_each(drop);
    out.push(("reads of a lower file, merged", atime(&lf) != a0));
    out.push(("reads of a lower file, real", atime(&real) != r0));
    out
}

#[test]
fn access_times_follow_relatime_strictatime_and_noatime_as_on_the_kernel_overlay() {
    let policies: [(&str, libc::c_ulong); 3] = [
        ("relatime", libc::MS_RELATIME),
        ("strictatime", libc::MS_STRICTATIME),
        ("noatime", libc::MS_NOATIME),
    ];
    let runs = policies
        .iter()
        .flat_map(|p| [(p.0, p.1, ""), (p.0, p.1, ",passthrough=off")]);
    for (option, flag, io) in runs {
        let lower = Layer::default()
            .file("lowerfile", "lower")
            .file("lowerdir/x", "x");
        let pair = Pair::writable(&[lower], &format!("{option}{io}"));
        kernel_remount(&pair.k(""), flag);
        // Lower objects read long ago, before their last change: relatime would update them.
        for side in ["o0", "k0"] {
            for rel in ["lowerfile", "lowerdir"] {
                let p = pair.scratch.path(&format!("{side}/{rel}"));
                let f = fs::File::open(&p).unwrap();
                let past = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
                f.set_times(fs::FileTimes::new().set_accessed(past))
                    .unwrap();
            }
        }
        let ours = access_times(&pair.o(""), &pair.scratch.path("o0"));
        let kernel = access_times(&pair.k(""), &pair.scratch.path("k0"));
        assert_eq!(ours, kernel, "{option}{io}: (what, atime moved)");
        let moved = |what| ours.iter().any(|(w, m)| *w == what && *m);
        assert!(!moved("reads of a lower file, real"), "{option}");
        assert_eq!(moved("first read of an upper file"), option != "noatime");
        assert_eq!(moved("second read"), option == "strictatime");
    }
}

#[test]
fn ro_with_an_upper_layer_mounts_read_only_as_the_kernel_overlay_does() {
    let lower = Layer::default().file("a", "a");
    let pair = Pair::writable(&[lower], "");
    fs::write(pair.o("b"), "b").unwrap();
    fs::remove_file(pair.o("a")).unwrap();
    let mut pair = pair;
    pair.remount_ours(1, "ro");
    let m = pair.ours.path.clone();
    let names: Vec<_> = fs::read_dir(&m)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["b"]);
    assert_eq!(fs::read_to_string(m.join("b")).unwrap(), "b");
    let refused: [(&str, Result<(), i32>); 4] = [
        ("create", fs::write(m.join("c"), "c").map_err(errno)),
        ("write", fs::write(m.join("b"), "x").map_err(errno)),
        ("mkdir", fs::create_dir(m.join("d")).map_err(errno)),
        ("unlink", fs::remove_file(m.join("b")).map_err(errno)),
    ];
    for (what, r) in refused {
        assert_eq!(r, Err(libc::EROFS), "{what}");
    }
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == m.to_str())
        .unwrap();
    assert!(
        line.split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{line}"
    );
    assert_eq!(fs::read_to_string(pair.scratch.path("ou/b")).unwrap(), "b");
}

/// name_to_handle_at of `p` with `flags`: Ok or errno.
fn name_to_handle(p: &Path, flags: i32) -> Result<(), i32> {
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; 128],
    }
    let mut h = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id = 0;
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: `h` is a file_handle with room for the 128 bytes it declares; `c` is
    // NUL-terminated; `mount_id` is writable.
    let r = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c.as_ptr(),
            (&mut h as *mut Handle).cast(),
            &mut mount_id,
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

#[test]
fn file_handles_are_refused_and_identifiers_given_as_on_the_kernel_overlay() {
    let lower = Layer::default().file("lower", "l").dir("dir");
    let pair = Pair::writable(&[lower], "");
    for m in [pair.o(""), pair.k("")] {
        fs::write(m.join("upper"), "u").unwrap();
    }
    const AT_HANDLE_FID: i32 = 0x200;
    for name in ["lower", "dir", "upper", ""] {
        for flags in [0, AT_HANDLE_FID] {
            let ours = name_to_handle(&pair.o(name), flags);
            assert_eq!(
                ours,
                name_to_handle(&pair.k(name), flags),
                "{name} {flags:#x}"
            );
            let want = if flags == 0 {
                Err(libc::EOPNOTSUPP)
            } else {
                Ok(())
            };
            assert_eq!(ours, want, "{name} {flags:#x}");
        }
    }
}
