//! kill -9 of the daemon in the middle of changes: every file must afterwards be wholly old
//! or wholly new, and the next mount must clean the work dir and serve a consistent tree.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::backing::Backing;
use crate::util::{self, errno, Scratch};

/// Our daemon in the foreground, so the test holds its pid.
fn spawn_daemon(s: &Scratch, extra: &str) -> Child {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}{}{extra}",
        s.path("lower").display(),
        s.path("upper").display(),
        s.path("work").display(),
        if extra.is_empty() { "" } else { "," }
    );
    let mut daemon = Command::new(util::bin());
    daemon
        .args(["-f", "-o", &opts])
        .arg(s.path("merged"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    util::serve_in_foreground(daemon, &s.path("merged"), Duration::from_secs(10))
}

/// Kills the daemon with SIGKILL and takes its dead mount down.
fn kill_daemon(mut child: Child, s: &Scratch) {
    // SAFETY: test helper; signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let merged = s.path("merged");
    let c = std::ffi::CString::new(merged.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: test helper; NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    assert!(util::wait_for(Duration::from_secs(10), || {
        !util::is_mounted(&merged)
    }));
}

fn scratch() -> Scratch {
    scratch_on(None)
}

fn scratch_on(backing: Option<&Backing>) -> Scratch {
    let s = backing.map_or_else(Scratch::new, Backing::scratch);
    for d in ["lower", "upper", "work", "merged"] {
        s.mkdir(d);
    }
    s
}

/// A deterministic byte pattern, so "old" and "new" can be told apart everywhere.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ salt)
        .collect()
}

fn work_leftovers(s: &Scratch) -> Vec<PathBuf> {
    fs::read_dir(s.path("work/work"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn kill_during_a_256_mib_copy_up_leaves_old_or_new() {
    for attempt in 0..3 {
        let s = scratch();
        let old = pattern(256 << 20, 0);
        fs::write(s.path("lower/big"), &old).unwrap();
        let daemon = spawn_daemon(&s, "");
        let target = s.path("merged/big");
        let writer = std::thread::spawn(move || {
            let r = fs::OpenOptions::new()
                .append(true)
                .open(&target)
                .and_then(|mut f| f.write_all(b"new tail"));
            r.map_err(errno)
        });
        // Wait until the copy is under way in the work dir, then kill.
        let start = Instant::now();
        let mut seen = false;
        while start.elapsed() < Duration::from_secs(20) {
            let partial = fs::read_dir(s.path("work/work"))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
                })
                .unwrap_or(false);
            if partial {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        kill_daemon(daemon, &s);
        let _ = writer.join().unwrap();
        if !seen && attempt < 2 {
            // The copy finished before we looked: try again with a fresh tree.
            continue;
        }
        // The upper holds no torn copy: either nothing or the whole file.
        if let Ok(up) = fs::read(s.path("upper/big")) {
            assert!(
                up == old || up.len() == old.len() + 8,
                "torn upper file of {} bytes",
                up.len()
            );
            assert_eq!(&up[..old.len()], &old[..]);
        }
        // The next mount cleans the work dir and serves old or new.
        let daemon = spawn_daemon(&s, "");
        assert!(work_leftovers(&s).is_empty(), "{:?}", work_leftovers(&s));
        let mut now = Vec::new();
        fs::File::open(s.path("merged/big"))
            .unwrap()
            .read_to_end(&mut now)
            .unwrap();
        assert_eq!(&now[..old.len()], &old[..], "old data damaged");
        assert!(now.len() == old.len() || &now[old.len()..] == b"new tail");
        assert_eq!(
            fs::read(s.path("lower/big")).unwrap().len(),
            old.len(),
            "lower changed"
        );
        kill_daemon(daemon, &s);
        assert!(seen, "never caught the copy-up in progress");
        return;
    }
}

/// Files that move between names `a<i>` and `b<i>` (first copied up from the lower layer,
/// with whiteouts left behind) while the daemon is killed at some moment.
pub fn rename_storm(backing: Option<&Backing>, format: &str, seed: u64) {
    let s = scratch_on(backing);
    const N: usize = 40;
    for i in 0..N {
        fs::write(s.path(&format!("lower/a{i}")), pattern(4096 + i, i as u8)).unwrap();
    }
    let daemon = spawn_daemon(&s, format);
    let merged = s.path("merged");
    let storm = std::thread::spawn(move || {
        let mut names: Vec<bool> = vec![false; N];
        let mut x = seed;
        for done in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % N as u64) as usize;
            let (from, to) = if names[i] { ("b", "a") } else { ("a", "b") };
            let r = fs::rename(
                merged.join(format!("{from}{i}")),
                merged.join(format!("{to}{i}")),
            );
            if r.is_err() {
                return done;
            }
            names[i] = !names[i];
        }
        100_000
    });
    std::thread::sleep(Duration::from_millis(300 + seed * 97 % 700));
    kill_daemon(daemon, &s);
    let done = storm.join().unwrap();
    assert!(
        (50..100_000).contains(&done),
        "{format}: the kill did not land mid-storm ({done} renames)"
    );
    let daemon = spawn_daemon(&s, format);
    assert!(work_leftovers(&s).is_empty());
    let m = s.path("merged");
    let listed: Vec<String> = fs::read_dir(&m)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for i in 0..N {
        let a = m.join(format!("a{i}"));
        let b = m.join(format!("b{i}"));
        let here: Vec<&Path> = [a.as_path(), b.as_path()]
            .into_iter()
            .filter(|p| p.exists())
            .collect();
        assert_eq!(
            here.len(),
            1,
            "{format}: file {i} under {} names",
            here.len()
        );
        assert_eq!(
            fs::read(here[0]).unwrap(),
            pattern(4096 + i, i as u8),
            "{format}: file {i} damaged"
        );
        let name = here[0].file_name().unwrap().to_str().unwrap();
        assert!(
            listed.iter().any(|l| l == name),
            "{format}: {name} not listed"
        );
    }
    assert_eq!(listed.len(), N, "{format}: {listed:?}");
    kill_daemon(daemon, &s);
}

#[test]
fn kill_during_a_rename_storm_loses_and_duplicates_nothing() {
    for (seed, format) in ["markers=kernel", "markers=aufs", "markers=userxattr"]
        .iter()
        .enumerate()
    {
        rename_storm(None, format, seed as u64 + 1);
    }
}
