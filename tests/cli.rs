//! The command line and the daemon's life cycle: bad input, help, background start, and the
//! three ways a mount ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{self, bin, is_mounted, run, wait_for, Scratch};

fn layers(s: &Scratch) -> (PathBuf, PathBuf, PathBuf) {
    let a = s.mkdir("a");
    let b = s.mkdir("b");
    std::fs::write(a.join("hello"), "from a").unwrap();
    std::fs::write(b.join("base"), "from b").unwrap();
    (a, b, s.mkdir("m"))
}

fn assert_refused(args: &[&str], mountpoint: &Path, want: &str) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.starts_with("overlayfuse: "), "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: wanted '{want}' in: {err}");
    assert!(!is_mounted(mountpoint), "{args:?} mounted something");
}

#[test]
fn bad_input_is_one_line_exit_2_and_nothing_mounted() {
    let s = Scratch::new();
    let (a, b, m) = layers(&s);
    let (a, b, ms) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        m.to_str().unwrap(),
    );
    std::fs::write(s.path("file"), "x").unwrap();
    let missing = s.path("missing");
    let nested = s.mkdir("a/inner");
    let inside = s.mkdir("a/mnt");
    let lower_in_mp = s.mkdir("m2/lower");
    let cases: Vec<(Vec<String>, &Path, &str)> = vec![
        (
            vec![
                "-o".into(),
                format!("lowerdir={}", missing.display()),
                ms.into(),
            ],
            &m,
            "does not exist",
        ),
        (
            vec![
                "-o".into(),
                format!("lowerdir={}", s.path("file").display()),
                ms.into(),
            ],
            &m,
            "not a directory",
        ),
        (
            vec!["-o".into(), "lowerdir=relative/dir".into(), ms.into()],
            &m,
            "relative",
        ),
        (
            vec!["-o".into(), format!("lowerdir={a}"), "relative-mp".into()],
            &m,
            "relative",
        ),
        (
            vec!["-o".into(), format!("lowerdir={a}:{b}:{a}"), ms.into()],
            &m,
            "given twice",
        ),
        (
            vec![
                "-o".into(),
                format!("lowerdir={a}:{}", nested.display()),
                ms.into(),
            ],
            &m,
            "must not nest",
        ),
        (
            vec![
                "-o".into(),
                format!("lowerdir={a}"),
                inside.to_str().unwrap().into(),
            ],
            &inside,
            "lies inside lowerdir",
        ),
        (
            vec![
                "-o".into(),
                format!("lowerdir={}", lower_in_mp.display()),
                s.path("m2").to_str().unwrap().into(),
            ],
            &m,
            "inside the mount point",
        ),
        (
            vec![
                "-o".into(),
                format!("lowerdir={a},context=\"unterminated"),
                ms.into(),
            ],
            &m,
            "unterminated quote",
        ),
        (
            vec!["-o".into(), format!("lowerdir={a},frobnicate"), ms.into()],
            &m,
            "unknown option",
        ),
        (
            vec![
                "-o".into(),
                format!("lowerdir={a},threaded=many"),
                ms.into(),
            ],
            &m,
            "not a number",
        ),
        (
            vec!["-o".into(), format!("lowerdir={a}::{b}"), ms.into()],
            &m,
            "empty layer",
        ),
        (
            vec!["-o".into(), format!("lowerdir={a},upperdir={b}"), ms.into()],
            &m,
            "workdir",
        ),
        (
            vec!["-o".into(), "upperdir=/x,workdir=/y".into(), ms.into()],
            &m,
            "no lower layer",
        ),
        (
            vec![
                "mount".into(),
                "--lower".into(),
                a.into(),
                "--bogus".into(),
                ms.into(),
            ],
            &m,
            "--bogus",
        ),
        (
            vec!["mount".into(), "--lower".into(), a.into()],
            &m,
            "MOUNTPOINT",
        ),
        (vec!["-x".into(), ms.into()], &m, "unknown flag"),
        (
            vec![ms.into(), "extra".into(), "args".into()],
            &m,
            "too many",
        ),
        (vec![], &m, "no command"),
    ];
    for (args, mp, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(&args, mp, want);
    }
}

#[test]
fn help_and_version_exit_0() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["mount", "umount", "demo", "Examples", "lowerdir="] {
        assert!(text.contains(want), "--help lacks {want}");
    }
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("overlayfuse "));
}

/// Runs `cmd` with piped stdout/stderr and waits for EOF on both, failing after `limit`:
/// a daemon that kept our pipes open would hang this.
fn output_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()).unwrap());
    rx.recv_timeout(limit)
        .expect("the command (or a daemon holding its pipes) hung")
        .unwrap()
}

#[test]
fn background_mount_returns_when_live_and_holds_no_pipes() {
    let s = Scratch::new();
    let (a, b, m) = layers(&s);
    let mut cmd = Command::new(bin());
    cmd.arg("-o").arg(format!("lowerdir={}:{},,nodev,volatile,context=\"system_u:object_r:container_file_t:s0:c1,c2\",metacopy=on,redirect_dir=on,xino=off", a.display(), b.display())).arg(&m);
    let out = output_within(cmd, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Live the moment the command returned.
    assert!(is_mounted(&m));
    assert_eq!(std::fs::read_to_string(m.join("base")).unwrap(), "from b");
    let out = run(&["umount", m.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&m));
}

/// Starts a foreground daemon and waits until its mount is live.
fn foreground(lowers: &str, m: &Path) -> std::process::Child {
    let mut daemon = Command::new(bin());
    daemon.args(["mount", "--lower", lowers, "-f"]).arg(m);
    crate::util::serve_in_foreground(daemon, m, Duration::from_secs(20))
}

fn exit_status_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::process::ExitStatus {
    let mut status = None;
    wait_for(limit, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    match status {
        Some(s) => s,
        None => {
            child.kill().unwrap();
            panic!("daemon did not exit");
        }
    }
}

#[test]
fn sigterm_unmounts_and_exits_0() {
    let s = Scratch::new();
    let (a, _, m) = layers(&s);
    let mut child = foreground(a.to_str().unwrap(), &m);
    assert_eq!(std::fs::read_to_string(m.join("hello")).unwrap(), "from a");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(
        exit_status_within(&mut child, Duration::from_secs(20)).code(),
        Some(0)
    );
    assert!(!is_mounted(&m));
}

#[test]
fn umount_subcommand_ends_the_daemon_with_exit_0() {
    let s = Scratch::new();
    let (a, _, m) = layers(&s);
    let mut child = foreground(a.to_str().unwrap(), &m);
    let out = run(&["umount", m.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        exit_status_within(&mut child, Duration::from_secs(20)).code(),
        Some(0)
    );
    let out = run(&["umount", m.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "unmounting a plain directory is bad input"
    );
}

#[test]
fn fusermount3_and_umount8_end_the_daemon_with_exit_0() {
    for tool in [&["fusermount3", "-u"][..], &["umount"][..]] {
        let s = Scratch::new();
        let (a, _, m) = layers(&s);
        let mut child = foreground(a.to_str().unwrap(), &m);
        let st = Command::new(tool[0])
            .args(&tool[1..])
            .arg(&m)
            .status()
            .unwrap();
        assert!(st.success(), "{tool:?} failed");
        assert_eq!(
            exit_status_within(&mut child, Duration::from_secs(20)).code(),
            Some(0),
            "{tool:?}"
        );
    }
}

#[test]
fn mount_fuse3_form_works_through_mount_8() {
    // mount(8) runs mount.fuse3, which runs `PROG SOURCE MERGED -o OPTS`. mount(8) gives its
    // helpers a fixed PATH, so name the program by path in the `PROG#SOURCE` spelling.
    let s = Scratch::new();
    let (a, b, m) = layers(&s);
    let out = Command::new("mount")
        .args(["-t", "fuse"])
        .arg(format!("{}#overlayfuse", bin()))
        .arg(&m)
        .arg("-o")
        .arg(format!(
            "lowerdir={}:{},nodev,noatime",
            a.display(),
            b.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount -t fuse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _guard = util::Mounted { path: m.clone() };
    assert_eq!(std::fs::read_to_string(m.join("hello")).unwrap(), "from a");
    assert_eq!(std::fs::read_to_string(m.join("base")).unwrap(), "from b");
}

#[test]
fn the_demo_runs_and_cleans_up() {
    let out = run(&["demo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("etc/hosts") && text.contains("from init"),
        "{text}"
    );
    assert!(
        text.contains("etc/motd"),
        "the whited-out file should be listed as hidden: {text}"
    );
    let merged_line = text.lines().find(|l| l.contains("  file etc/motd"));
    assert!(
        merged_line.is_none(),
        "etc/motd shown in the merged view: {text}"
    );
}
