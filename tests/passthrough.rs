//! FUSE passthrough (`-o passthrough=on`): the kernel does the I/O of open files on the
//! layer's file. Mounting with `on` fails where the kernel refuses it, so these tests run
//! with passthrough really active. Each scenario also runs on the kernel overlay, and the
//! results must agree.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::util::{self, run, Layer, Pair, Scratch};

fn lowers() -> Vec<Layer> {
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    vec![
        Layer::default().file("etc/hosts", "top hosts\n"),
        Layer::default()
            .file("etc/passwd", "root:x:0:0\n")
            .file_mode("data/big", &big, 0o644),
    ]
}

/// Bytes the daemon serving `mountpoint` has read with read(2)-like calls so far. Reads the
/// daemon makes through io_uring (its READs over the ring) are not counted: the tests that
/// use this serve over `/dev/fuse` (`uring=off`), whatever the kernel offers.
fn daemon_read_bytes(mountpoint: &Path) -> u64 {
    let want = mountpoint.as_os_str().as_encoded_bytes();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let is_daemon = cmdline.split(|b| *b == 0).any(|arg| arg == want)
            && cmdline.starts_with(util::bin().as_bytes());
        if !is_daemon {
            continue;
        }
        let io = fs::read_to_string(entry.path().join("io")).unwrap();
        return io
            .lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .unwrap()
            .parse()
            .unwrap();
    }
    panic!("no daemon serves {}", mountpoint.display());
}

/// Drops the page cache, so a read must fetch its data from where the file's I/O goes.
fn drop_page_cache() {
    let ok = std::process::Command::new("sh")
        .args(["-c", "sync; echo 1 > /proc/sys/vm/drop_caches"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot drop the page cache");
}

/// Reads `rel` of `pair`'s mount whole with a cold page cache, checks it holds `want`, and
/// says how many bytes the daemon read meanwhile.
fn daemon_bytes_to_read(pair: &Pair, rel: &str, want: &[u8]) -> u64 {
    drop_page_cache();
    let before = daemon_read_bytes(&pair.ours.path);
    assert!(read_all(&pair.o(rel)) == want, "{rel} reads other data");
    daemon_read_bytes(&pair.ours.path) - before
}

fn read_all(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    fs::File::open(path).unwrap().read_to_end(&mut v).unwrap();
    v
}

#[test]
fn reads_and_writes_of_upper_files_bypass_the_daemon() {
    let pair = Pair::writable(&lowers(), "passthrough=on,uring=off");
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 253) as u8).collect();
    fs::write(pair.o("new"), &data).unwrap();
    fs::write(pair.k("new"), &data).unwrap();
    let read = daemon_bytes_to_read(&pair, "new", &data);
    assert!(
        read < 1 << 20,
        "reading 8 MiB of an upper file made the daemon read {read} bytes: not passthrough"
    );
    pair.assert_same_tree();
}

#[test]
fn a_lower_file_open_read_only_then_appended_to_changes_only_the_upper() {
    // SEMANTICS-CHECKLIST 27 and 17: the append lands in the upper copy, never in the lower
    // file, and the descriptor opened before the copy-up reads the new data.
    let pair = Pair::writable(&lowers(), "passthrough=on");
    for m in [pair.o(""), pair.k("")] {
        let mut ro = fs::File::open(m.join("etc/passwd")).unwrap();
        let mut first = [0u8; 4];
        ro.read_exact(&mut first).unwrap();
        let mut w = fs::OpenOptions::new()
            .append(true)
            .open(m.join("etc/passwd"))
            .unwrap();
        w.write_all(b"appended\n").unwrap();
        drop(w);
        let mut now = String::new();
        ro.seek(SeekFrom::Start(0)).unwrap();
        ro.read_to_string(&mut now).unwrap();
        assert_eq!(now, "root:x:0:0\nappended\n", "{}", m.display());
    }
    assert_eq!(
        fs::read(pair.scratch.path("o1/etc/passwd")).unwrap(),
        b"root:x:0:0\n",
        "the lower file changed"
    );
    assert_eq!(
        fs::read(pair.scratch.path("ou/etc/passwd")).unwrap(),
        b"root:x:0:0\nappended\n"
    );
    pair.assert_same_tree();
}

#[test]
fn a_copied_up_file_reopened_shares_one_backing_file_across_opens() {
    let pair = Pair::writable(&lowers(), "passthrough=on");
    pair.both("open, write, reopen", |m| {
        let p = m.join("data/big");
        // First write open: copy-up (the inode has no other open).
        let rw = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        rw.write_all_at(b"HEAD", 0).unwrap();
        drop(rw);
        // Now on the upper: a read-only open, then a write open of the same inode while
        // the first is still open (they must share one backing file).
        let ro = fs::File::open(&p).unwrap();
        let rw = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        rw.write_all_at(b"TAIL", (8 << 20) - 4).unwrap();
        rw.set_len(6 << 20).map_err(util::errno)?;
        let mut head = [0u8; 4];
        ro.read_exact_at(&mut head, 0).unwrap();
        let len = ro.metadata().unwrap().len();
        let mut end = [0u8; 4];
        ro.read_exact_at(&mut end, (6 << 20) - 4).unwrap();
        let mut append = fs::OpenOptions::new().append(true).open(&p).unwrap();
        append.write_all(b"END").unwrap();
        append.sync_all().unwrap();
        let total = ro.metadata().unwrap().len();
        Ok((head, len, end, total))
    });
    pair.assert_same_tree();
    assert_eq!(
        fs::metadata(pair.scratch.path("o1/data/big"))
            .unwrap()
            .len(),
        8 << 20,
        "the lower file changed"
    );
}

#[test]
fn shared_mappings_of_upper_files_write_through() {
    let pair = Pair::writable(&lowers(), "passthrough=on");
    pair.both("mmap write, read back", |m| {
        let p = m.join("etc/hosts");
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let len = f.metadata().unwrap().len() as usize;
        // SAFETY: maps `len` bytes of an open file; unmapped below before `f` is dropped.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        // SAFETY: `addr` maps `len` ≥ 3 writable bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(b"TOP".as_ptr(), addr.cast::<u8>(), 3);
            libc::msync(addr, len, libc::MS_SYNC);
            libc::munmap(addr, len);
        }
        Ok(fs::read(&p).unwrap())
    });
    pair.assert_same_tree();
}

#[test]
fn a_read_only_mount_reads_lower_files_through_passthrough() {
    let pair = Pair::with_options(&lowers(), "passthrough=on,uring=off");
    let want = read_all(&pair.k("data/big"));
    let read = daemon_bytes_to_read(&pair, "data/big", &want);
    assert!(
        read < 1 << 20,
        "reading 8 MiB of a lower file made the daemon read {read} bytes: not passthrough"
    );
}

#[test]
fn passthrough_off_serves_io_from_the_daemon() {
    let pair = Pair::writable(&lowers(), "passthrough=off,uring=off");
    fs::write(pair.o("new"), vec![7u8; 4 << 20]).unwrap();
    fs::write(pair.k("new"), vec![7u8; 4 << 20]).unwrap();
    // Not all of it: `drop_caches` skips pages still held in per-CPU LRU batches, which
    // a busy machine (other tests in parallel) leaves behind. Passthrough would read none.
    let read = daemon_bytes_to_read(&pair, "new", &vec![7u8; 4 << 20]);
    assert!(
        read >= 3 << 20,
        "reading 4 MiB made the daemon read {read} bytes: not served by the daemon"
    );
    pair.assert_same_tree();
}

#[test]
fn passthrough_on_without_the_privilege_is_refused() {
    let s = Scratch::new();
    let l = s.mkdir("l");
    let m = s.mkdir("m");
    let opts = format!("lowerdir={},passthrough=on", l.display());
    // A user namespace of its own: root there, but not in the initial namespace.
    let out = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", util::bin(), "-o", &opts])
        .arg(&m)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("passthrough=on needs CAP_SYS_ADMIN"), "{err}");
    assert!(!util::is_mounted(&m));
    // And an unknown value is a usage error.
    let out = run(&["-o", "lowerdir=/x,passthrough=yes", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap()
}

/// Opens `path` with `flags` (and `O_CLOEXEC`): the errno of a refusal.
fn open_errno(path: &Path, flags: i32) -> Result<std::os::fd::OwnedFd, i32> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string; the descriptor returned is owned by the caller.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    // SAFETY: a descriptor just opened, owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

#[test]
fn lower_passthrough_reads_lower_files_of_a_writable_mount_in_the_kernel() {
    let pair = Pair::writable(&lowers(), "passthrough=on,lower_passthrough,uring=off");
    let want = read_all(&pair.k("data/big"));
    let read = daemon_bytes_to_read(&pair, "data/big", &want);
    assert!(
        read < 1 << 20,
        "reading 8 MiB of a lower file made the daemon read {read} bytes: not passthrough"
    );
    // Without the option the same read goes through the daemon (the test above can fail).
    let plain = Pair::writable(&lowers(), "passthrough=on,uring=off");
    let read = daemon_bytes_to_read(&plain, "data/big", &want);
    assert!(read >= 4 << 20, "the daemon read only {read} bytes");
    pair.assert_same_tree();
}

#[test]
fn lower_passthrough_refuses_changes_to_a_lower_file_while_it_is_read() {
    let pair = Pair::writable(&lowers(), "passthrough=on,lower_passthrough");
    let p = pair.o("etc/passwd");
    let reader = fs::File::open(&p).unwrap();
    let mut first = String::new();
    (&reader).read_to_string(&mut first).unwrap();
    assert_eq!(first, "root:x:0:0\n");
    for flags in [
        libc::O_RDWR,
        libc::O_WRONLY | libc::O_APPEND,
        libc::O_RDONLY | libc::O_TRUNC,
    ] {
        assert_eq!(
            open_errno(&p, flags).err(),
            Some(libc::ETXTBSY),
            "flags {flags:#o}"
        );
    }
    assert_eq!(
        std::process::Command::new("truncate")
            .args(["-s", "0"])
            .arg(&p)
            .status()
            .unwrap()
            .code(),
        Some(1),
        "truncate(1) of a lower file being read must fail"
    );
    // A metadata change copies up without touching the data: allowed, and a new reader
    // reads the same bytes.
    fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert_eq!(fs::read_to_string(&p).unwrap(), "root:x:0:0\n");
    drop(reader);
    // The last close frees it (after a close in flight, see RELEASE_WAIT): the write lands
    // in the upper copy only.
    let mut w = fs::OpenOptions::new().append(true).open(&p).unwrap();
    w.write_all(b"appended\n").unwrap();
    drop(w);
    assert_eq!(fs::read_to_string(&p).unwrap(), "root:x:0:0\nappended\n");
    // A mapping made before a copy-up keeps showing the lower data, as on the kernel
    // overlay (checked on both).
    pair.both("map, close, overwrite", |m| {
        let p = m.join("etc/hosts");
        let reader = fs::File::open(&p).unwrap();
        // SAFETY: a private read-only mapping of an open file; unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                reader.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        drop(reader);
        let w = fs::OpenOptions::new().write(true).open(&p).map_err(errno)?;
        w.write_all_at(b"TOP", 0).unwrap();
        drop(w);
        // SAFETY: the mapping above is 4096 bytes long and readable.
        let mapped = unsafe { std::slice::from_raw_parts(map as *const u8, 10) }.to_vec();
        // SAFETY: the mapping made above, of 4096 bytes.
        assert_eq!(unsafe { libc::munmap(map, 4096) }, 0);
        Ok((mapped, fs::read_to_string(&p).unwrap()))
    });
    assert_eq!(
        fs::read(pair.scratch.path("o1/etc/passwd")).unwrap(),
        b"root:x:0:0\n",
        "the lower file changed"
    );
    assert_eq!(
        fs::read(pair.scratch.path("o0/etc/hosts")).unwrap(),
        b"top hosts\n",
        "the lower file changed"
    );
    assert_eq!(
        fs::read(pair.scratch.path("ou/etc/passwd")).unwrap(),
        b"root:x:0:0\nappended\n"
    );
}

#[test]
fn lower_passthrough_leaves_writes_to_files_not_being_read_alone() {
    // Only a lower file held open for reading is refused: with no reader, writes, truncates
    // and appends behave as on the kernel overlay, and the upper copy is passed through.
    let pair = Pair::writable(&lowers(), "passthrough=on,lower_passthrough");
    pair.both("write, truncate, read", |m| {
        let p = m.join("data/big");
        let before = fs::read(&p).unwrap();
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.set_len(1 << 20).unwrap();
        drop(f);
        std::process::Command::new("truncate")
            .args(["-s", "4096"])
            .arg(m.join("etc/passwd"))
            .status()
            .unwrap();
        let after = fs::read(&p).unwrap();
        Ok((before.len(), after[..16].to_vec(), after.len()))
    });
    pair.assert_same_tree();
}
