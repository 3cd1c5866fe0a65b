//! Seeded random operations, differentially: the same sequence runs on our mount and on the
//! kernel overlay over the same random layers; after every operation the results (value or
//! errno) and the whole trees must agree, and again after our mount is remounted.
//!
//! A failure names the seed and the number of operations that reproduce it (the shortest
//! failing prefix, since trees are compared after each one):
//! `OFS_SEED=<seed> OFS_OPS=<n> cargo test --test tests random_ops -- --nocapture`
//! (`OFS_HOLD=<seconds>` keeps both mounts up that long after a failure).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

use crate::util::backing::Backing;
use crate::util::{self, errno, tree, Layer, Opq, Pair, Wh};

/// xorshift64*: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const NAMES: [&str; 6] = ["a", "b", "c", "x", "y", "z"];

fn random_path(rng: &mut Rng) -> String {
    let depth = 1 + rng.below(3);
    (0..depth)
        .map(|_| *rng.pick(&NAMES))
        .collect::<Vec<_>>()
        .join("/")
}

/// Random lower layers over the same small namespace, with whiteouts and opaque dirs.
fn random_layers(rng: &mut Rng) -> Vec<Layer> {
    let mut layers = Vec::new();
    for l in 0..2 {
        let mut layer = Layer::default();
        let mut dirs: Vec<String> = Vec::new();
        let mut files: Vec<String> = Vec::new();
        for i in 0..14 {
            let p = random_path(rng);
            let parts: Vec<&str> = p.split('/').collect();
            let ancestors: Vec<String> = (1..parts.len()).map(|n| parts[..n].join("/")).collect();
            if ancestors.iter().any(|a| files.contains(a))
                || dirs.contains(&p)
                || files.contains(&p)
            {
                continue;
            }
            for a in ancestors {
                if !dirs.contains(&a) {
                    layer = layer.dir(&a);
                    dirs.push(a);
                }
            }
            layer = match rng.below(10) {
                0..=3 => {
                    let mut layer = layer.file_mode(&p, format!("{l}:{i}:{p}").as_bytes(), 0o644);
                    // Some files get more names: lower hard-link groups.
                    for _ in 0..rng.below(3) {
                        let alias = random_path(rng);
                        let parts: Vec<&str> = alias.split('/').collect();
                        let taken = files.contains(&alias) || dirs.contains(&alias) || alias == p;
                        let parents =
                            (1..parts.len()).all(|n| dirs.contains(&parts[..n].join("/")));
                        if parents && !taken {
                            layer = layer.hardlink(&alias, &p);
                            files.push(alias);
                        }
                    }
                    layer
                }
                4 => layer.symlink(&p, "x/../y"),
                5 if l == 0 => layer.whiteout(&p, Wh::Device),
                6 => layer.fifo(&p),
                _ => {
                    dirs.push(p.clone());
                    let layer = layer.dir(&p).xattr(&p, "user.d", &format!("{l}{i}"));
                    if l == 0 && rng.below(3) == 0 {
                        layer.opaque(&p, Opq::Trusted)
                    } else {
                        layer
                    }
                }
            };
            if !dirs.contains(&p) {
                files.push(p);
            }
        }
        layers.push(layer);
    }
    layers
}

/// One operation, described so a failure can be replayed by reading the log.
#[derive(Clone, Debug)]
enum Op {
    Write(String, Vec<u8>),
    Append(String, Vec<u8>),
    Truncate(String, u64),
    Unlink(String),
    Mkdir(String, u32),
    Rmdir(String),
    Rename(String, String, u32),
    Symlink(String, String),
    Link(String, String),
    Chmod(String, u32),
    Chown(String, u32, u32),
    Utimes(String, i64),
    SetXattr(String, String),
    RemoveXattr(String),
    Mkfifo(String),
    RemoveAll(String),
}

fn random_op(rng: &mut Rng, i: usize) -> Op {
    let p = random_path(rng);
    let q = random_path(rng);
    match rng.below(17) {
        0 | 1 => Op::Write(p, format!("w{i}").into_bytes()),
        2 => Op::Append(p, format!("+{i}").into_bytes()),
        3 => Op::Truncate(p, rng.below(6)),
        4 | 5 => Op::Unlink(p),
        6 => Op::Mkdir(p, *rng.pick(&[0o755, 0o700, 0o1777])),
        7 => Op::Rmdir(p),
        8 | 9 => Op::Rename(
            p,
            q,
            *rng.pick(&[0, 0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE]),
        ),
        10 => Op::Symlink(p, q),
        11 => Op::Link(p, q),
        12 => Op::Chmod(p, *rng.pick(&[0o600, 0o755, 0o4755, 0o640])),
        13 => Op::Chown(p, rng.below(3) as u32 * 1000, rng.below(3) as u32 * 100),
        14 => Op::Utimes(p, 1_500_000_000 + rng.below(1_000_000) as i64),
        15 => match rng.below(3) {
            0 => Op::RemoveXattr(p),
            1 => Op::Mkfifo(p),
            _ => Op::SetXattr(p, format!("v{i}")),
        },
        _ => Op::RemoveAll(p),
    }
}

fn c(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

fn last() -> i32 {
    errno(std::io::Error::last_os_error())
}

fn ret(r: libc::c_int) -> Result<(), i32> {
    if r == 0 {
        Ok(())
    } else {
        Err(last())
    }
}

/// Applies `op` under mount `m`.
fn apply(m: &Path, op: &Op) -> Result<(), i32> {
    let j = |p: &str| m.join(p);
    match op {
        // O_NONBLOCK: opening a fifo for writing must not wait for a reader (ENXIO instead).
        Op::Write(p, d) => fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(j(p))
            .and_then(|mut f| f.write_all(d))
            .map_err(errno),
        Op::Append(p, d) => fs::OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(j(p))
            .and_then(|mut f| f.write_all(d))
            .map_err(errno),
        Op::Truncate(p, n) => fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(j(p))
            .and_then(|f| f.set_len(*n))
            .map_err(errno),
        Op::Unlink(p) => fs::remove_file(j(p)).map_err(errno),
        Op::Mkdir(p, mode) => {
            // SAFETY: test helper; NUL-terminated path.
            ret(unsafe { libc::mkdir(c(&j(p)).as_ptr(), *mode) })
        }
        Op::Rmdir(p) => fs::remove_dir(j(p)).map_err(errno),
        Op::Rename(a, b, flags) => {
            // SAFETY: test helper; NUL-terminated paths.
            ret(unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    c(&j(a)).as_ptr(),
                    libc::AT_FDCWD,
                    c(&j(b)).as_ptr(),
                    *flags,
                )
            })
        }
        Op::Symlink(p, t) => std::os::unix::fs::symlink(t, j(p)).map_err(errno),
        Op::Link(a, b) => fs::hard_link(j(a), j(b)).map_err(errno),
        Op::Chmod(p, mode) => {
            // SAFETY: test helper; NUL-terminated path (symlinks are followed, as chmod(1)).
            ret(unsafe { libc::chmod(c(&j(p)).as_ptr(), *mode) })
        }
        Op::Chown(p, u, g) => std::os::unix::fs::lchown(j(p), Some(*u), Some(*g)).map_err(errno),
        Op::Utimes(p, t) => {
            let ts = [
                libc::timespec {
                    tv_sec: *t,
                    tv_nsec: 7,
                },
                libc::timespec {
                    tv_sec: *t,
                    tv_nsec: 11,
                },
            ];
            // SAFETY: test helper; NUL-terminated path and two timespecs.
            ret(unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c(&j(p)).as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })
        }
        Op::SetXattr(p, v) => {
            // SAFETY: test helper; NUL-terminated strings, value readable for its length.
            ret(unsafe {
                libc::lsetxattr(
                    c(&j(p)).as_ptr(),
                    c"user.r".as_ptr(),
                    v.as_ptr().cast(),
                    v.len(),
                    0,
                )
            })
        }
        Op::RemoveXattr(p) => {
            // SAFETY: test helper; NUL-terminated strings.
            ret(unsafe { libc::lremovexattr(c(&j(p)).as_ptr(), c"user.d".as_ptr()) })
        }
        Op::Mkfifo(p) => {
            // SAFETY: test helper; NUL-terminated path.
            ret(unsafe { libc::mkfifo(c(&j(p)).as_ptr(), 0o640) })
        }
        Op::RemoveAll(p) => util::succeeds(
            Command::new("rm")
                .arg("-rf")
                .arg(j(p))
                .stderr(std::process::Stdio::null()),
        ),
    }
}

/// What `mv` does on the kernel overlay when rename(2) of a directory says EXDEV: copy
/// everything with its metadata, then remove the source. `cp` may complain about names the
/// kernel lists but cannot stat (whiteouts in a directory only the upper holds); those are
/// not part of its merged tree, so its status is not the verdict: the tree comparison is.
fn kernel_move(m: &Path, a: &str, b: &str) -> Result<(), i32> {
    let _ = Command::new("cp")
        .arg("-a")
        .arg("--no-target-directory")
        .arg(m.join(a))
        .arg(m.join(b))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    util::succeeds(Command::new("rm").arg("-rf").arg(m.join(a)))
}

/// Runs `ops` random operations of `seed`, with our side on `backing` (default: /tmp).
pub fn run_seed(backing: Option<&Backing>, seed: u64, ops: usize) {
    let mut rng = Rng::new(seed);
    let layers = random_layers(&mut rng);
    // Each seed writes markers in one of our formats (the one the filesystem takes, where it
    // holds no whiteout devices); the kernel always in its own.
    let format = match backing {
        Some(b) if !b.holds_device_whiteouts() => "markers=auto",
        _ => ["markers=kernel", "markers=aufs", "markers=userxattr"][seed as usize % 3],
    };
    // Link counts of lower hard-link groups are the kernel's with the inode index; with
    // redirect_dir it renames merged directories itself, keeping links to names outside.
    let mut pair = Pair::writable_on(backing, &layers, format, "index=on,redirect_dir=on");
    let mut log: Vec<String> = Vec::new();
    let (ours_at, kernel_at) = (pair.o(""), pair.k(""));
    let fail = |log: &[String], why: String| -> ! {
        if let Some(secs) = env("OFS_HOLD") {
            // Leave both mounts up for a look before the guards take them down.
            eprintln!(
                "holding {} and {} for {secs} s",
                ours_at.display(),
                kernel_at.display()
            );
            std::thread::sleep(std::time::Duration::from_secs(secs));
        }
        panic!(
            "seed {seed} ({format}): operation {} of the shortest failing prefix differs: {why}\n\
             replay: OFS_SEED={seed} OFS_OPS={} cargo test --test tests random_ops -- --nocapture\n\
             operations:\n{}",
            log.len(),
            log.len(),
            log.join("\n")
        )
    };
    for i in 0..ops {
        let op = random_op(&mut rng, i);
        let k = apply(&pair.kernel.path, &op);
        let o = match (&op, k) {
            // The kernel cannot rename a directory that merges lower layers; mv copies.
            (Op::Rename(a, b, 0), Err(libc::EXDEV)) if util::lstat(&pair.k(b)).is_err() => {
                let k = kernel_move(&pair.kernel.path, a, b);
                let o = apply(&pair.ours.path, &op);
                log.push(format!("{op:?} (kernel: EXDEV, then cp -a + rm -r: {k:?})"));
                if o != k {
                    fail(&log, format!("ours {o:?}, kernel {k:?}"));
                }
                o
            }
            (_, Err(libc::EXDEV)) => {
                log.push(format!("{op:?} (kernel: EXDEV; skipped)"));
                continue;
            }
            (_, k) => {
                let o = apply(&pair.ours.path, &op);
                log.push(format!("{op:?} -> {k:?}"));
                if o != k {
                    fail(&log, format!("ours {o:?}, kernel {k:?}"));
                }
                o
            }
        };
        let _ = o;
        if let Err(msg) = compare(&pair) {
            fail(&log, msg);
        }
    }
    pair.remount_ours(2, format);
    if let Err(msg) = compare(&pair) {
        fail(&log, format!("after remounting ours: {msg}"));
    }
}

/// Compares both trees, turning a difference (or a walk that fails) into a message.
fn compare(pair: &Pair) -> Result<(), String> {
    std::panic::catch_unwind(|| {
        // Directory link counts are left out: the kernel's renamed directories stay merged
        // (one link) where ours are copied up whole (docs/semantics.md).
        let no_dir_links = |mut t: tree::Tree| {
            for e in t.entries.values_mut().filter(|e| e.kind == 'd') {
                e.nlink = 0;
            }
            t
        };
        let ours = no_dir_links(tree::snapshot(&pair.ours.path));
        let kernel = no_dir_links(tree::snapshot_with(&pair.kernel.path, true));
        tree::assert_equal(&ours, &kernel);
    })
    .map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn random_operations_match_the_kernel_overlay() {
    if let Some(seed) = env("OFS_SEED") {
        run_seed(None, seed, env("OFS_OPS").unwrap_or(400) as usize);
        return;
    }
    for seed in 1..=12 {
        run_seed(None, seed, 400);
    }
}
