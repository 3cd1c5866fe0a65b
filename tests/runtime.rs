//! `overlayfuse run`: real containers from a busybox-static rootfs split into two layers, as
//! root and as the unprivileged user `ofs-rootless`. Each test looks from inside (what the
//! command sees) and from the host (upper layer, cgroups, processes, mounts, private dirs).
//!
//! Needs busybox-static and uidmap (`.ci/run` installs them); a missing tool fails the test.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::util::{self, bin, must, rootless_user, tree, Scratch};

/// The bounding set of podman's default capabilities, as /proc shows it.
const CONTAINER_CAPS: &str = "00000000800405fb";

/// Two image layers built from busybox-static: `base` (busybox and its applets, /etc, /tmp,
/// /proc) and `top` (an /etc/motd, and a whiteout hiding /bin/vi). /dev and /sys are missing
/// on purpose: the runtime makes them.
struct Image {
    scratch: Scratch,
    base: PathBuf,
    top: PathBuf,
    /// `TMPDIR` of every run: where private uppers are made (and must be gone afterwards).
    tmp: PathBuf,
}

impl Image {
    fn new() -> Image {
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.exists(),
            "/bin/busybox is missing: apt-get install busybox-static (.ci/run does)"
        );
        let scratch = Scratch::new();
        fs::set_permissions(scratch.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let base = scratch.mkdir("base");
        for dir in ["bin", "etc", "root", "proc"] {
            fs::create_dir(base.join(dir)).unwrap();
        }
        fs::create_dir(base.join("tmp")).unwrap();
        fs::set_permissions(base.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::copy(busybox, base.join("bin/busybox")).unwrap();
        let applets = must(Command::new(busybox).arg("--list"));
        for applet in String::from_utf8_lossy(&applets.stdout).lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)).unwrap();
            }
        }
        fs::write(
            base.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n",
        )
        .unwrap();
        fs::write(base.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
        let top = scratch.mkdir("top/etc");
        let top = top.parent().unwrap().to_owned();
        fs::write(top.join("etc/motd"), "from the top layer\n").unwrap();
        fs::create_dir(top.join("bin")).unwrap();
        util::fixture::mknod(&top.join("bin/vi"), libc::S_IFCHR | 0o644, 0);
        let tmp = scratch.mkdir("tmp");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
        Image {
            scratch,
            base,
            top,
            tmp,
        }
    }

    fn lower(&self) -> String {
        format!("{}:{}", self.top.display(), self.base.display())
    }

    /// `overlayfuse run` as `uid` (root when `None`), with a clean environment.
    fn command(&self, uid: Option<u32>) -> Command {
        let mut c = match uid {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        c.arg("run")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("TMPDIR", &self.tmp)
            .stdin(Stdio::null());
        c
    }

    /// Runs `script` under /bin/sh in a container of the image, with `options` before `--`.
    fn run_as(&self, uid: Option<u32>, options: &[&str], script: &str) -> Output {
        let out = self
            .command(uid)
            .args(["--lower", &self.lower()])
            .args(options)
            .args(["--", "/bin/sh", "-c", script])
            .output()
            .unwrap();
        println!(
            "run {options:?} {script:?} -> {}\n  stdout: {:?}\n  stderr: {:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn run(&self, options: &[&str], script: &str) -> Output {
        self.run_as(None, options, script)
    }

    fn spawn(&self, options: &[&str], script: &str) -> Child {
        self.command(None)
            .args(["--lower", &self.lower()])
            .args(options)
            .args(["--", "/bin/sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Asserts that no run left anything: no private dir, no process that mentions the
    /// image, no mount below the scratch dir.
    fn assert_clean(&self) {
        let left: Vec<_> = fs::read_dir(&self.tmp)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "private dirs left behind: {left:?}");
        let scratch = self.scratch.dir.path().to_str().unwrap().to_owned();
        let gone = util::wait_for(Duration::from_secs(5), || {
            processes_mentioning(&scratch).is_empty()
        });
        assert!(
            gone,
            "processes left behind: {:?}",
            processes_mentioning(&scratch)
        );
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!info.contains(&scratch), "a mount is left below {scratch}");
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn stdout(out: &Output) -> String {
    text(&out.stdout)
}

/// The output's sections, split at lines of `---`.
fn sections(out: &Output) -> Vec<String> {
    stdout(out)
        .split("---\n")
        .map(|s| s.trim().to_owned())
        .collect()
}

fn code(out: &Output) -> i32 {
    out.status
        .code()
        .expect("the shim itself was killed by a signal")
}

/// Host processes whose command line contains `needle` (other than this test's).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()) && n != me)
        })
        .filter_map(|e| {
            let cmd = fs::read(e.path().join("cmdline")).ok()?;
            let cmd = text(&cmd).replace('\0', " ");
            cmd.contains(needle)
                .then(|| format!("{}: {cmd}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// The pid of a host process whose command line is exactly `argv`.
fn find_process(argv: &[&str]) -> Option<i32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        (fs::read(e.path().join("cmdline")).ok()? == want).then_some(pid)
    })
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with plain integers.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid} {sig}");
}

#[test]
fn namespaces_identity_and_privileges_as_root() {
    let img = Image::new();
    let script = "hostname; echo ---; ps -o pid,comm | tail -n +2; echo ---; cat /proc/self/uid_map; \
        echo ---; ls /sys/class/net; cat /sys/class/net/lo/flags; echo ---; \
        for n in cgroup ipc mnt net pid uts; do readlink /proc/self/ns/$n; done; echo ---; \
        grep -E '^(CapBnd|CapEff|CapPrm|NoNewPrivs)' /proc/self/status; echo ---; ls /proc/self/fd; \
        echo ---; cat /etc/motd; test -e /bin/vi || echo vi-hidden; echo ---; env | sort";
    // An inherited descriptor (7) must not reach the command.
    let out = Command::new("sh")
        .args(["-c", "exec 7</dev/null; exec \"$@\"", "sh"])
        .arg(bin())
        .args([
            "run",
            "--lower",
            &img.lower(),
            "--hostname",
            "box",
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TMPDIR", &img.tmp)
        .env("TERM", "xterm")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let s = sections(&out);
    assert_eq!(s[0], "box");
    let ps: Vec<(u32, String)> = s[1]
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap_or("").to_owned(),
            )
        })
        .collect();
    println!("ps inside: {ps:?}");
    assert_eq!(ps[0], (1, "overlayfuse".to_owned()), "pid 1 is our init");
    assert!(
        ps.len() <= 4 && ps.iter().all(|(pid, _)| *pid < 10),
        "host processes are visible: {ps:?}"
    );
    assert_eq!(
        s[2].split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "4294967295"]
    );
    assert_eq!(s[3], "lo\n0x9", "only loopback, and up");
    for (inside, kind) in s[4]
        .lines()
        .zip(["cgroup", "ipc", "mnt", "net", "pid", "uts"])
    {
        let host = fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
        assert_ne!(
            Path::new(inside),
            host,
            "the container shares the host's {kind} namespace"
        );
    }
    for line in s[5].lines() {
        let (key, value) = line.split_once(':').unwrap();
        let want = if key == "NoNewPrivs" {
            "1"
        } else {
            CONTAINER_CAPS
        };
        assert_eq!(value.trim(), want, "{key}");
    }
    assert_eq!(
        s[6].split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3"],
        "fds above 2 are closed (3 is ls's own)"
    );
    assert_eq!(s[7], "from the top layer\nvi-hidden");
    let env: Vec<&str> = s[8]
        .lines()
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL="))
        .collect();
    assert_eq!(
        env,
        [
            "HOME=/root",
            "HOSTNAME=box",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TERM=xterm"
        ]
    );
    img.assert_clean();
}

#[test]
fn writes_land_in_the_upper_only() {
    let img = Image::new();
    let (base_before, top_before) = (tree::snapshot(&img.base), tree::snapshot(&img.top));
    let upper = img.scratch.mkdir("upper");
    let work = img.scratch.mkdir("work");
    let (u, w) = (upper.to_str().unwrap(), work.to_str().unwrap());
    let out = img.run(
        &["--upper", u, "--work", w],
        "echo new > /etc/new && echo more >> /etc/motd && rm /bin/ls && mkdir -p /var/x && test ! -e /bin/ls",
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(fs::read_to_string(upper.join("etc/new")).unwrap(), "new\n");
    assert_eq!(
        fs::read_to_string(upper.join("etc/motd")).unwrap(),
        "from the top layer\nmore\n"
    );
    let ls = fs::symlink_metadata(upper.join("bin/ls")).unwrap();
    assert!(
        ls.file_type().is_char_device() && ls.rdev() == 0,
        "rm of a lower file is a whiteout"
    );
    assert!(upper.join("var/x").is_dir());
    tree::assert_equal(&tree::snapshot(&img.base), &base_before);
    tree::assert_equal(&tree::snapshot(&img.top), &top_before);
    // The next container over the same upper sees the changes.
    let out = img.run(
        &["--upper", u, "--work", w],
        "cat /etc/new; ls /bin/ls 2>&1 || echo gone",
    );
    assert_eq!(
        stdout(&out),
        "new\nls: /bin/ls: No such file or directory\ngone\n"
    );

    // A private upper is removed afterwards; --keep-upper keeps it and says where.
    let out = img.run(&[], "echo private > /etc/private");
    assert_eq!(code(&out), 0);
    img.assert_clean();
    let out = img.run(&["--keep-upper"], "echo kept > /etc/kept");
    let kept: Vec<PathBuf> = fs::read_dir(&img.tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(kept.len(), 1);
    let upper = kept[0].join("upper");
    assert!(
        text(&out.stderr).contains(upper.to_str().unwrap()),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(upper.join("etc/kept")).unwrap(),
        "kept\n"
    );
    assert!(!kept[0].join("work").exists() && !kept[0].join("merged").exists());
    fs::remove_dir_all(&kept[0]).unwrap();

    // --rootfs: the directory itself is the root.
    let out = Command::new(bin())
        .args([
            "run",
            "--rootfs",
            img.base.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            "echo direct > /direct",
        ])
        .env("TMPDIR", &img.tmp)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(
        fs::read_to_string(img.base.join("direct")).unwrap(),
        "direct\n"
    );
    img.assert_clean();
}

/// This process's cgroup directory in the v1 hierarchy of `controller`.
fn own_cgroup(controller: &str) -> PathBuf {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = text
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, p) = (f.next()?, f.next()?, f.next()?);
            c.split(',').any(|x| x == controller).then(|| p.to_owned())
        })
        .unwrap_or_else(|| panic!("no {controller} cgroup: this machine is v1-hybrid"));
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(path.trim_start_matches('/'))
}

#[test]
fn cgroup_limits_as_root() {
    let img = Image::new();
    // The limits are written where the kernel applies them, and go away afterwards.
    let child = img.spawn(
        &["--memory", "48M", "--pids", "20", "--cpus", "0.5"],
        "grep -E ':(memory|pids|cpu):' /proc/self/cgroup; sleep 2",
    );
    let name = format!("overlayfuse-run-{}", child.id());
    let files = [
        ("memory", "memory.limit_in_bytes", "50331648"),
        ("memory", "memory.memsw.limit_in_bytes", "50331648"),
        ("pids", "pids.max", "20"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
        ("cpu", "cpu.cfs_period_us", "100000"),
    ];
    // The directories appear before the supervisor writes the limits: wait for the values
    // (memory.memsw.limit_in_bytes exists only where the kernel accounts swap).
    let read = |controller: &str, file: &str| {
        let path = own_cgroup(controller).join(&name).join(file);
        fs::read_to_string(path).ok().map(|v| v.trim().to_owned())
    };
    let settled = || {
        files.iter().all(|(c, f, want)| match read(c, f) {
            Some(v) => v == *want,
            None => f.contains("memsw") && read("memory", "memory.limit_in_bytes").is_some(),
        })
    };
    util::wait_for(Duration::from_secs(5), settled);
    for (controller, file, want) in files {
        let got = read(controller, file);
        println!("{controller}/{name}/{file}: {got:?}");
        if file.contains("memsw") && got.is_none() {
            continue;
        }
        assert_eq!(got.as_deref(), Some(want), "{controller}/{file}");
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let inside = stdout(&out);
    assert!(
        inside.lines().all(|l| l.ends_with(":/")),
        "the cgroup namespace shows its root: {inside}"
    );
    for controller in ["memory", "pids", "cpu"] {
        assert!(
            !own_cgroup(controller).join(&name).exists(),
            "cgroup {controller}/{name} left behind"
        );
    }

    // The memory limit kills a process that allocates past it; below it, all is well.
    let out = img.run(&["--memory", "32M"], "tail /dev/zero");
    assert_eq!(code(&out), 137, "tail /dev/zero must be OOM-killed");
    let out = img.run(
        &["--memory", "32M"],
        "head -c 8000000 /dev/zero | tail -c 10 | wc -c",
    );
    assert_eq!(stdout(&out).trim(), "10");
    // The pids limit refuses forks (the shell counts as one).
    let out = img.run(
        &["--pids", "4"],
        "for i in 1 2 3 4 5 6; do sleep 1 & done; wait",
    );
    assert!(
        text(&out.stderr).contains("can't fork"),
        "{}",
        text(&out.stderr)
    );
    img.assert_clean();
}

#[test]
fn exit_codes_and_signals() {
    let img = Image::new();
    assert_eq!(code(&img.run(&[], "exit 7")), 7);
    assert_eq!(code(&img.run(&[], "kill -9 $$")), 137);
    assert_eq!(code(&img.run(&[], "exec /nonexistent")), 127);
    let out = img
        .command(None)
        .args(["--lower", &img.lower(), "--", "/etc/motd"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 126, "a file that is not executable");
    let out = img
        .command(None)
        .args(["--lower", &img.lower(), "--", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 127, "a command not on PATH");
    for bad in [
        vec!["--lower", "/nonexistent-layer", "--", "true"],
        vec!["--lower", "relative", "--", "true"],
        vec!["--memory", "3x", "--lower", "/x", "--", "true"],
        vec!["--lower", "/x"],
        vec!["--bogus", "--", "true"],
        vec!["--lower", &img.lower(), "--cwd", "/nope", "--", "true"],
        vec![
            "--lower",
            &img.lower(),
            "--bind",
            "/nonexistent:/x",
            "--",
            "true",
        ],
    ] {
        let out = img.command(None).args(&bad).output().unwrap();
        let err = text(&out.stderr);
        println!("{bad:?} -> {}: {err}", out.status);
        assert_eq!(code(&out), 125, "set-up error for {bad:?}");
        assert_eq!(err.lines().count(), 1, "one line for {bad:?}: {err}");
        assert!(!err.contains("panicked"));
    }

    // SIGTERM to the shim reaches the command, whose trap decides the status.
    // The loop's `sleep` shows the trap is set (a fixed wait was too short under load).
    let child = img.spawn(
        &[],
        "trap 'echo got TERM; exit 42' TERM; while true; do sleep 0.1234; done",
    );
    assert!(util::wait_for(Duration::from_secs(5), || find_process(&[
        "sleep", "0.1234"
    ])
    .is_some()));
    signal(child.id() as i32, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert_eq!((code(&out), stdout(&out).as_str()), (42, "got TERM\n"));
    // Without a trap the command dies of it: 128+15.
    let child = img.spawn(&[], "exec sleep 4243");
    assert!(util::wait_for(Duration::from_secs(5), || find_process(&[
        "sleep", "4243"
    ])
    .is_some()));
    signal(child.id() as i32, libc::SIGTERM);
    assert_eq!(code(&child.wait_with_output().unwrap()), 143);
    // A command that ignores SIGTERM is killed once the grace period (10 s) is over.
    let child = img.spawn(&[], "trap '' TERM; exec sleep 4246");
    assert!(util::wait_for(Duration::from_secs(5), || find_process(&[
        "sleep", "4246"
    ])
    .is_some()));
    let sent = std::time::Instant::now();
    signal(child.id() as i32, libc::SIGTERM);
    assert_eq!(code(&child.wait_with_output().unwrap()), 137);
    let waited = sent.elapsed();
    println!("a command ignoring SIGTERM ended after {waited:?}");
    assert!(
        waited >= Duration::from_secs(9),
        "killed before the grace period: {waited:?}"
    );
    // kill -9 of the command from the host: 137, and everything is cleaned up.
    let child = img.spawn(&[], "exec sleep 4242");
    assert!(util::wait_for(Duration::from_secs(5), || find_process(&[
        "sleep", "4242"
    ])
    .is_some()));
    signal(find_process(&["sleep", "4242"]).unwrap(), libc::SIGKILL);
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 128 + 9);
    // The shell's orphans die with init.
    let out = img.run(&[], "sleep 4244 & sleep 4245 & exit 3");
    assert_eq!(code(&out), 3);
    assert!(
        find_process(&["sleep", "4244"]).is_none() && find_process(&["sleep", "4245"]).is_none()
    );
    img.assert_clean();
}

#[test]
fn escape_attempts_fail() {
    let img = Image::new();
    // /proc/timer_list (a few KiB on the host) is masked; this kernel has no /proc/kcore.
    assert!(
        fs::metadata("/proc/timer_list").unwrap().len() == 0
            && !fs::read("/proc/timer_list").unwrap().is_empty()
    );
    let script = "cat /proc/timer_list | wc -c; ls /sys/firmware | wc -l; \
        echo x > /proc/sys/kernel/hostname 2>/dev/null && echo WROTE-PROC-SYS; \
        echo b > /proc/sysrq-trigger 2>/dev/null && echo SYSRQ; \
        mount -t tmpfs t /tmp 2>/dev/null && echo MOUNTED; \
        ulimit -n; ulimit -n 100000 2>/dev/null && echo RAISED; \
        mknod /tmp/disk b 8 0 2>/dev/null && echo MKNOD; \
        hostname evil 2>/dev/null && echo RENAMED; \
        kill -9 -1; echo alive > /after && cat /after";
    let out = img.run(&["--rlimit", "nofile=64:64"], script);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(stdout(&out), "0\n0\n64\nalive\n");
    // The daemon survived kill -9 -1 (the write above went through it) and ends normally.
    img.assert_clean();
}

#[test]
fn symlinked_mount_targets_stay_inside_the_image() {
    let img = Image::new();
    let escape = img.scratch.mkdir("escape");
    for dir in ["proc", "dev", "sys", "data"] {
        fs::create_dir(escape.join(dir)).unwrap();
    }
    let e = escape.to_str().unwrap();
    // Absolute and ../ symlinks that would point at host directories if followed on the host.
    let top = &img.top;
    fs::create_dir(top.join("proc-holder")).unwrap();
    std::os::unix::fs::symlink(format!("{e}/proc"), top.join("proc")).unwrap();
    std::os::unix::fs::symlink(format!("../../../../../../../..{e}/dev"), top.join("dev")).unwrap();
    std::os::unix::fs::symlink(format!("{e}/sys"), top.join("sys")).unwrap();
    std::os::unix::fs::symlink(format!("{e}/data"), top.join("mnt")).unwrap();
    let source = img.scratch.mkdir("source");
    fs::write(source.join("f"), "bound\n").unwrap();
    let bind = format!("{}:/mnt/data", source.display());
    let out = img.run(
        &["--bind", &bind],
        "ls /proc/self/fd >/dev/null && echo proc; echo x > /dev/null && echo dev; cat /mnt/data/f",
    );
    assert_eq!(stdout(&out), "proc\ndev\nbound\n", "{}", text(&out.stderr));
    for dir in ["proc", "dev", "sys", "data"] {
        let host = escape.join(dir);
        assert_eq!(
            fs::read_dir(&host).unwrap().count(),
            0,
            "{host:?} was written"
        );
        assert!(!util::is_mounted(&host), "{host:?} was mounted on");
    }
    img.assert_clean();
}

#[test]
fn user_cwd_binds_and_network_options() {
    let img = Image::new();
    let out = img.run(
        &["--user", "1000:1000", "--cwd", "/tmp", "--env", "A=1"],
        "id -u; id -g; pwd; grep CapEff /proc/self/status; echo $HOME $A",
    );
    assert_eq!(
        stdout(&out),
        "1000\n1000\n/tmp\nCapEff:\t0000000000000000\n/ 1\n"
    );
    let ro = img.scratch.mkdir("ro");
    fs::write(ro.join("f"), "read me\n").unwrap();
    // A mount below a read-only bind's source is read-only inside too.
    let sub = img.scratch.mkdir("ro/sub");
    must(Command::new("mount").args(["-t", "tmpfs", "sub"]).arg(&sub));
    let rw = img.scratch.mkdir("rw");
    let binds = [
        format!("{}:/data:ro", ro.display()),
        format!("{}:/rw", rw.display()),
    ];
    let out = img.run(
        &["--bind", &binds[0], "--bind", &binds[1]],
        "cat /data/f; echo x > /data/g 2>/dev/null && echo WROTE; \
         echo x > /data/sub/g 2>/dev/null && echo WROTE-SUB; echo y > /rw/g",
    );
    must(Command::new("umount").arg(&sub));
    assert_eq!(stdout(&out), "read me\n");
    assert!(!ro.join("g").exists());
    assert_eq!(fs::read_to_string(rw.join("g")).unwrap(), "y\n");
    // --net host shares the host's interfaces.
    let mut host: Vec<String> = fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    host.sort();
    let out = img.run(&["--net", "host"], "ls /sys/class/net");
    assert_eq!(stdout(&out).lines().collect::<Vec<_>>(), host);
    img.assert_clean();
}

#[test]
fn rootless_containers() {
    let uid = rootless_user();
    let img = Image::new();
    let subuid = fs::read_to_string("/etc/subuid").unwrap();
    let start: u32 = subuid
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{}:", util::ROOTLESS_USER)))
        .and_then(|rest| rest.split(':').next()?.parse().ok())
        .unwrap();
    let upper = img.scratch.mkdir("upper");
    let work = img.scratch.mkdir("work");
    for dir in [&upper, &work] {
        std::os::unix::fs::chown(dir, Some(uid), Some(uid)).unwrap();
    }
    let (u, w) = (upper.to_str().unwrap(), work.to_str().unwrap());
    let out = img.run_as(
        Some(uid),
        &["--upper", u, "--work", w, "--hostname", "rootless"],
        "cat /proc/self/uid_map; echo ---; id -u; hostname; ps -o pid | tail -n +2 | tr '\\n' ' '; echo; echo ---; \
         echo made > /etc/made && chown 1000:1000 /etc/made && echo own > /etc/own; \
         grep CapBnd /proc/self/status; kill -9 -1; cat /etc/made",
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let s = sections(&out);
    let map: Vec<String> = s[0]
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(map, [format!("0 {uid} 1"), format!("1 {start} 65536")]);
    let lines: Vec<&str> = s[1].lines().collect();
    assert_eq!(lines[..2], ["0", "rootless"]);
    let pids: Vec<u32> = lines[2]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        pids[0] == 1 && pids.iter().all(|&p| p < 10),
        "host processes are visible: {pids:?}"
    );
    assert_eq!(s[2], format!("CapBnd:\t{CONTAINER_CAPS}\nmade"));
    let own = fs::metadata(upper.join("etc/own")).unwrap();
    assert_eq!(
        (own.uid(), own.gid()),
        (uid, uid),
        "root inside is the user outside"
    );
    let made = fs::metadata(upper.join("etc/made")).unwrap();
    assert_eq!(
        made.uid(),
        start + 999,
        "uid 1000 inside is a subordinate id outside"
    );
    // A limit this user cannot apply (no delegated cgroup) is an error, not silently dropped.
    let out = img.run_as(Some(uid), &["--memory", "32M"], "true");
    assert_eq!(code(&out), 125);
    assert!(
        text(&out.stderr).contains("--memory"),
        "{}",
        text(&out.stderr)
    );
    // Exit codes and private uppers as for root.
    assert_eq!(
        code(&img.run_as(Some(uid), &[], "echo x > /etc/x; exit 9")),
        9
    );
    img.assert_clean();
}

#[test]
fn rootless_without_subordinate_ids() {
    // A user without /etc/subuid ranges gets only its own ids mapped (to 0), which the
    // kernel allows without newuidmap; devpts then cannot use the tty group.
    const USER: &str = "ofs-nosubid";
    if !Command::new("id")
        .arg(USER)
        .output()
        .unwrap()
        .status
        .success()
    {
        must(Command::new("useradd").args(["--no-create-home", "--shell", "/bin/sh", USER]));
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = fs::read_to_string(file).unwrap_or_default();
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{USER}:")))
            .map(|l| format!("{l}\n"))
            .collect();
        if kept != text {
            util::replace_file(file, &kept);
        }
    }
    rootless_user(); // /dev/fuse read-write for users
    let uid: u32 = text(&must(Command::new("id").args(["-u", USER])).stdout)
        .trim()
        .parse()
        .unwrap();
    let img = Image::new();
    let out = img.run_as(
        Some(uid),
        &[],
        "cat /proc/self/uid_map; echo ---; mkdir /made && echo x > /made/f && cat /made/f; ls /dev/pts",
    );
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let s = sections(&out);
    assert_eq!(
        s[0].split_whitespace().collect::<Vec<_>>(),
        ["0", &uid.to_string(), "1"]
    );
    assert_eq!(s[1], "x\nptmx");
    img.assert_clean();
}

#[test]
fn the_default_seccomp_filter_refuses_what_podman_refuses_and_unconfined_lifts_it() {
    let img = Image::new();
    // A new user namespace needs no capability: only the filter stands in the way.
    let script = "unshare -U true && echo made || echo refused";
    let out = img.run(&[], script);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = img.run(&["--seccomp", "unconfined"], script);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "made");
    // Ordinary work runs under the filter: processes, files, pipes.
    let out = img.run(
        &[],
        "echo a > /tmp/f && cat /tmp/f | wc -c && (sleep 0 &) && wait",
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    // A bad value is a set-up error.
    assert_eq!(code(&img.run(&["--seccomp", "strict"], "true")), 125);
    img.assert_clean();
}
