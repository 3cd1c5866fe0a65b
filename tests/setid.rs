//! Setuid and setgid bits, differentially: every change of a file's data or owner clears them
//! on our mount exactly as on the kernel overlay, for callers inside and outside the file's
//! group and with and without `CAP_FSETID`, through passthrough and without it; and setuid
//! and setgid executables run as on the kernel overlay on a `suid` mount.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::util::{Layer, Pair};

/// Modes the files start with: group-only setgid, setuid, both, group-executable setgid, and
/// all bits.
const MODES: [u32; 5] = [0o2666, 0o4666, 0o6666, 0o2676, 0o6777];

/// Each change, as xfs_io commands (`SRC` stands for a file of the same mount), or a shell
/// command on `F` (the file).
const CHANGES: [&[&str]; 11] = [
    &["pwrite 0 10"],
    &["pwrite -V 2 0 10"],
    &["truncate 5"],
    &["falloc 0 8192"],
    &["falloc -k 0 8192"],
    &["fpunch 0 4096"],
    &["fzero 0 4096"],
    &["copy_range -s 0 -d 0 -l 3 SRC"],
    &["mmap -w 0 4096", "mwrite 0 10", "msync -s 0 4096", "munmap"],
    &["sh", ": > F"],
    &["sh", "echo y >> F"],
];

/// Who makes the change, as setpriv arguments: a stranger (outside group 0, the files'), a
/// member of group 0, and root.
const CALLERS: [&[&str]; 3] = [
    &["--reuid=1000", "--regid=1000", "--clear-groups"],
    &["--reuid=1000", "--regid=1000", "--groups=0"],
    &["--reuid=0", "--regid=0", "--clear-groups"],
];

/// Runs `change` on `file` as `caller`; the exit status is compared, not required.
fn apply(caller: &[&str], change: &[&str], file: &Path, src: &Path) -> bool {
    let mut cmd = Command::new("setpriv");
    cmd.args(caller);
    if change[0] == "sh" {
        cmd.arg("sh")
            .arg("-c")
            .arg(change[1].replace('F', file.to_str().unwrap()));
    } else {
        cmd.arg("xfs_io");
        for c in change {
            cmd.arg("-c").arg(c.replace("SRC", src.to_str().unwrap()));
        }
        cmd.arg(file);
    }
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("setpriv and xfs_io (util-linux, xfsprogs: .ci/run installs them)")
        .success()
}

/// The file names of every case: one file per mode, change and caller, in the lower layer
/// (`l…`, so the change copies it up) and made through the mount (`u…`, on the upper).
fn cases() -> Vec<(
    String,
    u32,
    &'static [&'static str],
    &'static [&'static str],
)> {
    let mut out = Vec::new();
    for (m, &mode) in MODES.iter().enumerate() {
        for (c, &change) in CHANGES.iter().enumerate() {
            for (w, &caller) in CALLERS.iter().enumerate() {
                out.push((format!("{m}-{c}-{w}"), mode, change, caller));
            }
        }
    }
    out
}

fn run_changes(extra: &str) {
    let mut lower = Layer::default().file("src", "src");
    for (name, mode, _, _) in cases() {
        lower = lower.file_mode(&format!("l{name}"), &[0; 16384], mode);
    }
    let pair = Pair::writable(&[lower], extra);
    for m in [pair.o(""), pair.k("")] {
        fs::set_permissions(&m, fs::Permissions::from_mode(0o777)).unwrap();
        for (name, mode, _, _) in cases() {
            let f = m.join(format!("u{name}"));
            fs::write(&f, [0; 16384]).unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    let mut modes: [BTreeMap<String, (bool, u32)>; 2] = Default::default();
    for (side, m) in [pair.o(""), pair.k("")].iter().enumerate() {
        for (name, _, change, caller) in cases() {
            for prefix in ["l", "u"] {
                let f = m.join(format!("{prefix}{name}"));
                let ok = apply(caller, change, &f, &m.join("src"));
                let mode = fs::metadata(&f).unwrap().mode() & 0o7777;
                let what = format!("{prefix}{name} {mode:o}? {change:?} by {caller:?}");
                modes[side].insert(what, (ok, mode));
            }
        }
    }
    let [ours, kernel] = modes;
    let differ: Vec<_> = ours
        .iter()
        .zip(&kernel)
        .filter(|(o, k)| o != k)
        .map(|((what, o), (_, k))| {
            format!("{what}: ours {} {:o}, kernel {} {:o}", o.0, o.1, k.0, k.1)
        })
        .collect();
    assert!(
        differ.is_empty(),
        "with '{extra}' (ok, mode) differ from the kernel overlay in {} cases:\n{}",
        differ.len(),
        differ.join("\n")
    );
    // The stranger's write cleared group-only setgid: the case that was wrong.
    assert_eq!(
        fs::metadata(pair.o("l0-0-0")).unwrap().mode() & 0o7777,
        0o666
    );
}

#[test]
fn data_changes_clear_setuid_and_setgid_as_the_kernel_overlay_does() {
    run_changes("");
}

#[test]
fn data_changes_clear_setuid_and_setgid_also_without_passthrough() {
    run_changes("passthrough=off");
}

#[test]
fn chown_by_owner_and_root_clears_as_the_kernel_overlay_does() {
    let changes: [(&str, &[&str]); 4] = [
        (
            "owner-chgrp",
            &[
                "--reuid=1000",
                "--regid=1000",
                "--groups=1000",
                "chgrp",
                "1000",
            ],
        ),
        (
            "owner-same",
            &[
                "--reuid=1000",
                "--regid=1000",
                "--clear-groups",
                "chown",
                "1000",
            ],
        ),
        (
            "root-chown",
            &[
                "--reuid=0",
                "--regid=0",
                "--keep-groups",
                "chown",
                "2000:2000",
            ],
        ),
        (
            "root-same",
            &["--reuid=0", "--regid=0", "--keep-groups", "chgrp", "0"],
        ),
    ];
    let modes = [0o6755, 0o2755, 0o2744, 0o6744, 0o4755, 0o2666];
    let mut lower = Layer::default();
    for (i, mode) in modes.iter().enumerate() {
        for (what, _) in &changes {
            let name = format!("{what}-{i}");
            lower = lower.file_mode(&name, b"x", *mode).owner(&name, 1000, 0);
        }
    }
    let pair = Pair::writable(&[lower], "");
    for m in [pair.o(""), pair.k("")] {
        for (i, _) in modes.iter().enumerate() {
            for (what, args) in &changes {
                let f = m.join(format!("{what}-{i}"));
                let st = Command::new("setpriv")
                    .args(*args)
                    .arg(&f)
                    .status()
                    .unwrap();
                assert!(st.success(), "{what} of {}", f.display());
            }
        }
    }
    pair.assert_same_tree();
    let mode = |n: &str| fs::metadata(pair.o(n)).unwrap().mode() & 0o7777;
    // The owner outside the old group loses group-only setgid; root keeps it.
    assert_eq!(mode("owner-chgrp-5"), 0o666);
    assert_eq!(mode("root-chown-2"), 0o2744);
}

#[test]
fn setuid_and_setgid_programs_run_as_on_the_kernel_overlay_on_a_suid_mount() {
    let id = fs::read("/usr/bin/id").unwrap();
    let lower = Layer::default()
        .file_mode("suid-id", &id, 0o4755)
        .file_mode("sgid-id", &id, 0o2755)
        .owner("sgid-id", 0, 42)
        .file_mode("spoiled-id", &id, 0o6757);
    let pair = Pair::writable(&[lower], "suid");
    let run = |m: &Path, prog: &str| {
        let out = Command::new("setpriv")
            .args(["--reuid=1000", "--regid=1000", "--clear-groups"])
            .arg(m.join(prog))
            .output()
            .unwrap();
        assert!(out.status.success(), "{prog}");
        String::from_utf8(out.stdout).unwrap()
    };
    for m in [pair.o(""), pair.k("")] {
        // A stranger's append (a trailing byte an ELF program ignores) clears both bits.
        let st = Command::new("setpriv")
            .args(["--reuid=1000", "--regid=1000", "--clear-groups", "sh", "-c"])
            .arg(format!(
                "printf '\\0' >> {}",
                m.join("spoiled-id").display()
            ))
            .status()
            .unwrap();
        assert!(st.success());
    }
    pair.assert_same_tree();
    for prog in ["suid-id", "sgid-id", "spoiled-id"] {
        assert_eq!(run(&pair.o(""), prog), run(&pair.k(""), prog), "{prog}");
    }
    assert!(run(&pair.o(""), "suid-id").contains("euid=0(root)"));
    assert!(run(&pair.o(""), "sgid-id").contains("egid=42"));
    assert!(!run(&pair.o(""), "spoiled-id").contains("euid="));
}
