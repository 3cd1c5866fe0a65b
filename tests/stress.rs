//! Load: fsx on a merged file that starts in a lower layer, and several processes creating,
//! renaming and deleting in one directory at once.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::util::{self, Layer, Pair};

/// The fsx binary: `$FSX`, `fsx` on PATH, or where `.ci/run` installs it.
fn fsx() -> PathBuf {
    if let Some(p) = std::env::var_os("FSX") {
        return p.into();
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/opt/fsx/bin"])
    {
        let p = PathBuf::from(dir).join("fsx");
        if p.is_file() {
            return p;
        }
    }
    panic!("fsx is not installed: run `cargo install fsx --root /opt/fsx` (.ci/run does)");
}

#[test]
fn fsx_100k_operations_on_a_file_from_a_lower_layer() {
    let content: Vec<u8> = (0..262_144u32).map(|i| (i * 7 % 251) as u8).collect();
    let lower = Layer::default().file_mode("data/f", &content, 0o644);
    let pair = Pair::writable(&[lower], "");
    let artifacts = pair.scratch.mkdir("fsx");
    let out = Command::new(fsx())
        .args(["-N", "100000", "-S", "2026", "-q", "-P"])
        .arg(&artifacts)
        .arg(pair.o("data/f"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fsx failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The lower file is untouched; the merged file is the upper copy.
    assert_eq!(fs::read(pair.scratch.path("o0/data/f")).unwrap(), content);
    assert_eq!(
        fs::read(pair.o("data/f")).unwrap(),
        fs::read(pair.scratch.path("ou/data/f")).unwrap()
    );
}

#[test]
fn concurrent_creates_renames_and_deletes_lose_nothing() {
    let mut lower = Layer::default();
    for i in 0..200 {
        lower = lower.file(&format!("d/l{i}"), &format!("lower {i}"));
    }
    let pair = Pair::writable(&[lower], "");
    let dir = pair.o("d");
    // Four workers, each with its own names, all in one directory: create, rename twice,
    // delete every other one; lower files are renamed (copy-up + whiteout) and deleted.
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                for i in 0..300 {
                    let a = dir.join(format!("w{w}-{i}"));
                    let b = dir.join(format!("w{w}-{i}.moved"));
                    fs::write(&a, format!("{w}/{i}")).unwrap();
                    fs::rename(&a, &b).unwrap();
                    if i % 2 == 0 {
                        fs::remove_file(&b).unwrap();
                    }
                }
                for i in (w..200).step_by(4) {
                    let l = dir.join(format!("l{i}"));
                    if i % 3 == 0 {
                        fs::remove_file(&l).unwrap();
                    } else {
                        fs::rename(&l, dir.join(format!("l{i}.moved"))).unwrap();
                    }
                }
            })
        })
        .collect();
    let lister = {
        let dir = dir.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                for e in fs::read_dir(&dir).unwrap() {
                    let _ = e.unwrap().metadata();
                }
            }
        })
    };
    let done = util::wait_for(Duration::from_secs(300), || {
        workers.iter().all(|w| w.is_finished())
    });
    assert!(done, "workers still running after 300 s: deadlock?");
    for w in workers {
        w.join().unwrap();
    }
    lister.join().unwrap();
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want = Vec::new();
    for w in 0..4 {
        for i in (1..300).step_by(2) {
            want.push(format!("w{w}-{i}.moved"));
        }
    }
    for i in 0..200 {
        if i % 3 != 0 {
            want.push(format!("l{i}.moved"));
        }
    }
    want.sort();
    assert_eq!(names, want);
    for w in 0..4 {
        assert_eq!(
            fs::read_to_string(dir.join(format!("w{w}-1.moved"))).unwrap(),
            format!("{w}/1")
        );
    }
    assert_eq!(fs::read_to_string(dir.join("l1.moved")).unwrap(), "lower 1");
    let mut pair = pair;
    pair.remount_ours(1, "");
    let mut again: Vec<String> = fs::read_dir(pair.o("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    again.sort();
    assert_eq!(again, want);
}
