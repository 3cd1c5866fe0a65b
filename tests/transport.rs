//! The two transports: requests read from `/dev/fuse`, and FUSE over io_uring (one queue per
//! CPU). The whole suite runs under each in CI; these tests pin down the choice itself (what
//! `uring=` does with and without the kernel's offer, what the log reports), and the ends of
//! a ring mount: unmount, SIGTERM and kill -9.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{self, RingSetting, Scratch};

/// A foreground daemon, killed if a failing test leaves it running.
struct Daemon(Option<Child>);

impl Daemon {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A writable foreground daemon with `extra` options, its log (info) on a pipe.
fn foreground(s: &Scratch, extra: &str) -> Daemon {
    for d in ["lower", "upper", "work", "merged"] {
        s.mkdir(d);
    }
    std::fs::write(s.path("lower/old"), "lower data").unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}{extra}",
        s.path("lower").display(),
        s.path("upper").display(),
        s.path("work").display()
    );
    let mut daemon = Command::new(util::bin());
    daemon
        .args(["-f", "-o", &opts])
        .arg(s.path("merged"))
        .env("OVERLAYFUSE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Daemon(Some(util::serve_in_foreground(
        daemon,
        &s.path("merged"),
        Duration::from_secs(10),
    )))
}

/// Changes the merged tree with ordinary calls and checks what the upper layer got: the work
/// a transport must carry, from lookups to copy-up and whiteouts.
fn work_and_check(s: &Scratch) {
    let m = s.path("merged");
    for i in 0..200 {
        std::fs::write(m.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    std::fs::create_dir(m.join("dir")).unwrap();
    std::fs::rename(m.join("f0"), m.join("dir/g")).unwrap();
    std::fs::write(m.join("old"), "new data").unwrap();
    std::fs::set_permissions(m.join("f1"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(m.join("f2")).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&m)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 200, "{names:?}");
    assert_eq!(std::fs::read_to_string(m.join("dir/g")).unwrap(), "file 0");
    assert_eq!(
        std::fs::read_to_string(s.path("upper/old")).unwrap(),
        "new data"
    );
    assert_eq!(
        std::fs::read_to_string(s.path("lower/old")).unwrap(),
        "lower data"
    );
    let mode = std::fs::metadata(s.path("upper/f1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!s.path("upper/f2").exists() && !m.join("f2").exists());
}

/// Unmounts, waits for the daemon, and returns its exit code and log.
fn unmount_and_log(mut daemon: Daemon, s: &Scratch) -> (Option<i32>, String) {
    util::must(Command::new("umount").arg(s.path("merged")));
    let mut child = daemon.0.take().unwrap();
    let status = child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    (status.code(), log)
}

/// The counts of the daemon's last log line: (through io_uring, through /dev/fuse).
fn served(log: &str) -> (u64, u64) {
    let line = log
        .lines()
        .find(|l| l.contains("through io_uring"))
        .unwrap_or_else(|| panic!("no request counts in the log:\n{log}"));
    let number_before = |what: &str| -> u64 {
        let head = &line[..line.find(what).unwrap()];
        let digits: String = head
            .trim_end()
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.chars().rev().collect::<String>().parse().unwrap()
    };
    (
        number_before(" through io_uring"),
        number_before(" through /dev/fuse"),
    )
}

#[test]
fn requests_travel_over_the_ring_when_the_kernel_offers_it() {
    let _ring = RingSetting::set(true);
    let s = Scratch::new();
    let child = foreground(&s, "");
    work_and_check(&s);
    let (code, log) = unmount_and_log(child, &s);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("transport: io_uring"), "{log}");
    let (ring, device) = served(&log);
    // 200 creates alone are 200 CREATEs and as many RELEASEs; /dev/fuse carries only what
    // the ring does not (FORGET, and requests made before every queue was registered).
    assert!(
        ring > 400 && ring > 10 * device,
        "ring {ring}, /dev/fuse {device}\n{log}"
    );
}

#[test]
fn reads_of_lower_files_over_the_ring_return_the_layer_data() {
    let _ring = RingSetting::set(true);
    let s = Scratch::new();
    // 5 MiB and a bit: reads of every size the kernel sends, the last one short.
    let data: Vec<u8> = (0..(5u32 << 20) + 1234).map(|i| (i % 251) as u8).collect();
    s.mkdir("lower");
    std::fs::write(s.path("lower/big"), &data).unwrap();
    let child = foreground(&s, ",passthrough=off,uring=on");
    util::must(Command::new("sh").args(["-c", "sync; echo 1 > /proc/sys/vm/drop_caches"]));
    assert!(
        std::fs::read(s.path("merged/big")).unwrap() == data,
        "data differs"
    );
    // Random 4 KiB reads past the cached part, and one past the end.
    let f = std::fs::File::open(s.path("merged/big")).unwrap();
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 4096];
    for at in [0u64, 4096 * 300, 4096 * 1000, data.len() as u64 - 100] {
        let n = f.read_at(&mut buf, at).unwrap();
        let want = &data[at as usize..(at as usize + 4096).min(data.len())];
        assert_eq!(&buf[..n], want, "at {at}");
    }
    assert_eq!(f.read_at(&mut buf, data.len() as u64 + 10).unwrap(), 0);
    drop(f);
    let (code, log) = unmount_and_log(child, &s);
    assert_eq!(code, Some(0), "{log}");
    let (ring, _) = served(&log);
    // The counts per operation follow the totals: "...): read 41, open 2, ...".
    let ops = log
        .lines()
        .find_map(|l| l.split_once("through /dev/fuse): ").map(|(_, ops)| ops))
        .unwrap_or("");
    let reads = ops
        .split(", ")
        .find_map(|kind| kind.strip_prefix("read "))
        .map_or(0, |n| {
            n.trim_end_matches("; exiting").parse::<u64>().unwrap()
        });
    assert!(ring > 0 && reads > 0, "no READ over the ring:\n{log}");
}

#[test]
fn uring_off_reads_dev_fuse_even_when_the_ring_is_offered() {
    let _ring = RingSetting::set(true);
    let s = Scratch::new();
    let child = foreground(&s, ",uring=off");
    work_and_check(&s);
    let (code, log) = unmount_and_log(child, &s);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("transport: /dev/fuse"), "{log}");
    let (ring, device) = served(&log);
    assert_eq!(ring, 0, "{log}");
    assert!(device > 400, "{log}");
}

#[test]
fn uring_auto_falls_back_to_dev_fuse_and_uring_on_is_refused_without_the_offer() {
    let _ring = RingSetting::set(false);
    let s = Scratch::new();
    let child = foreground(&s, "");
    work_and_check(&s);
    let (code, log) = unmount_and_log(child, &s);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("transport: /dev/fuse"), "{log}");
    assert_eq!(served(&log).0, 0, "{log}");

    let m = s.path("merged");
    let opts = format!("lowerdir={},uring=on", s.path("lower").display());
    let out = util::run(&["-o", &opts, m.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("/sys/module/fuse/parameters/enable_uring"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!util::is_mounted(&m));
}

#[test]
fn a_ring_daemon_ends_on_sigterm_and_its_kill_leaves_a_mount_umount_clears() {
    let _ring = RingSetting::set(true);
    let s = Scratch::new();
    let mut daemon = foreground(&s, ",uring=on");
    std::fs::write(s.path("merged/x"), "x").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child().id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let status = daemon.child().wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!util::is_mounted(&s.path("merged")));

    let s = Scratch::new();
    let mut daemon = foreground(&s, ",uring=on");
    std::fs::write(s.path("merged/y"), "y").unwrap();
    daemon.child().kill().unwrap();
    daemon.child().wait().unwrap();
    // The connection is gone: calls fail at once (no hang), and umount takes the mount down.
    // (A call that reaches a queue before the kernel has torn the ring down is ended with
    // ECONNABORTED; later ones get ENOTCONN, as with /dev/fuse.)
    let err = std::fs::read_dir(s.path("merged")).unwrap_err();
    let code = err.raw_os_error();
    assert!(
        code == Some(libc::ENOTCONN) || code == Some(libc::ECONNABORTED),
        "{err}"
    );
    util::must(Command::new("umount").arg(s.path("merged")));
    assert!(!util::is_mounted(&s.path("merged")));
    assert_eq!(std::fs::read_to_string(s.path("upper/y")).unwrap(), "y");
}

#[test]
fn features_says_whether_the_ring_will_be_used() {
    for on in [true, false] {
        let _ring = RingSetting::set(on);
        let out = util::run(&["features"]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("FUSE over io_uring"))
            .unwrap_or_else(|| panic!("no io_uring line:\n{text}"));
        assert_eq!(line.starts_with("yes"), on, "{line}");
        if !on {
            assert!(line.contains("enable_uring"), "{line}");
        }
        for feature in ["FUSE device", "passthrough", "*xattrat", "mount_setattr"] {
            assert!(text.contains(feature), "{feature} missing:\n{text}");
        }
    }
}
