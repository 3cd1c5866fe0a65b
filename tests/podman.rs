//! podman with overlayfuse as its storage `mount_program`, as root and rootless: import, run,
//! exec, diff, commit, a multi-stage build, save/rmi/load, and two containers of one image.
//! Every image tree is compared with the same commands run in a plain host copy (chroot), and
//! with what podman's own kernel overlay driver makes of the same steps.
//!
//! Needs podman, runc, uidmap and busybox-static (`.ci/run` installs them); a missing tool
//! fails the test.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::tree::{self, Entry};

use crate::util::backing::{Backing, Fs};
use crate::util::{must, rootless_user};

/// Build steps of the first stage: each is one `RUN` and, for the reference, one chroot.
const FIRST: [&str; 4] = [
    "rm -rf /base/gone /base/rmfile && rm -rf /base/redo && mkdir -p /base/redo/new && echo fresh > /base/redo/new/file",
    "sed -i s/orig/changed/ /base/edit && echo line2 >> /base/app && chmod 640 /base/app && chown 1000:1000 /base/keep/a",
    "mv /base/movedir /base/moved && ln /base/keep/a /base/keep/hard && ln -s ../keep/a /base/redo/sym && setfattr -n user.test -v hello /base/edit",
    "echo artifact > /artifact && mkdir /built && echo b > /built/b && mkdir -p /base/moved/inner/more && echo m2 > /base/moved/inner/more/f && echo l > /base/l1 && ln /base/l1 /base/l2",
];
/// The last stage's step, after `COPY --from=first /artifact /built /opt/`.
const LAST: &str = "rm -rf /base/keep && mkdir /base/keep && echo again > /base/keep/b";
/// What a running container changes before `podman diff` and `commit`.
pub(crate) const CHANGES: &str = "rm /base/rmfile && rm -rf /base/gone && mkdir /base/gone && echo n > /base/gone/n && echo add > /new && echo mod >> /base/app && chmod 700 /base/redo";

pub(crate) fn need_tools() {
    for tool in ["podman", "runc", "newuidmap", "busybox"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap()
            .status
            .success();
        assert!(
            found,
            "{tool} is missing: apt-get install podman runc uidmap busybox-static (.ci/run does)"
        );
    }
}

/// A podman storage: ours (`mount_program`) or the kernel overlay driver, root or rootless.
pub(crate) struct Store {
    dir: PathBuf,
    user: Option<u32>,
    program: Option<PathBuf>,
}

impl Store {
    pub(crate) fn new(dir: PathBuf, user: Option<u32>, program: Option<PathBuf>) -> Store {
        fs::create_dir_all(dir.join("run")).unwrap();
        fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        if let Some(uid) = user {
            fs::create_dir_all(dir.join("home")).unwrap();
            must(
                Command::new("chown")
                    .arg("-R")
                    .arg(uid.to_string())
                    .arg(&dir),
            );
            let xdg = format!("/run/user/{uid}");
            fs::create_dir_all(&xdg).unwrap();
            must(Command::new("chown").arg(uid.to_string()).arg(&xdg));
        }
        Store { dir, user, program }
    }

    pub(crate) fn command(&self) -> Command {
        let mut c = match self.user {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--init-groups")
                    .arg("podman")
                    .env("XDG_RUNTIME_DIR", format!("/run/user/{uid}"))
                    .env("HOME", self.dir.join("home"));
                c
            }
            None => Command::new("podman"),
        };
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            // Its own libpod state (default /run/libpod, shared by every root store).
            .arg("--tmpdir")
            .arg(self.dir.join("run/libpod"))
            .args(["--storage-driver", "overlay"]);
        if let Some(p) = &self.program {
            c.arg("--storage-opt")
                .arg(format!("overlay.mount_program={}", p.display()));
        }
        c.current_dir(&self.dir);
        c
    }

    /// Runs podman with `args`; its stdout.
    pub(crate) fn run(&self, args: &[&str]) -> String {
        let out = must(self.command().args(args));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// The base image: busybox, setfattr and a tree the steps change.
pub(crate) fn base_rootfs(dir: &Path) {
    for d in [
        "bin",
        "etc",
        "tmp",
        "usr/bin",
        "lib/x86_64-linux-gnu",
        "lib64",
        "base/keep",
        "base/gone/sub",
        "base/redo",
        "base/movedir/inner",
    ] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for app in [
        "sh", "ls", "cat", "echo", "rm", "mkdir", "mv", "chmod", "chown", "ln", "sed", "sleep",
        "true", "id",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(app)).unwrap();
    }
    for (from, to) in [
        ("/usr/bin/setfattr", "usr/bin/setfattr"),
        (
            "/lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/libc.so.6",
        ),
        ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
    ] {
        fs::copy(from, dir.join(to)).unwrap();
    }
    for (path, content) in [
        ("etc/motd", "hello\n"),
        ("base/keep/a", "keep\n"),
        ("base/gone/sub/x", "gone\n"),
        ("base/redo/old", "old\n"),
        ("base/movedir/inner/f", "m\n"),
        ("base/edit", "orig\n"),
        ("base/app", "line1\n"),
        ("base/rmfile", "rm\n"),
    ] {
        fs::write(dir.join(path), content).unwrap();
    }
    fs::set_permissions(dir.join("base/app"), fs::Permissions::from_mode(0o600)).unwrap();
    must(Command::new("chown").arg("7:7").arg(dir.join("base/redo")));
}

pub(crate) fn containerfile() -> String {
    let mut f = String::from("FROM base:1 AS first\n");
    for step in FIRST {
        f += &format!("RUN {step}\n");
    }
    f += &format!("\nFROM base:1\nCOPY --from=first /artifact /built /opt/\nRUN {LAST}\n");
    f
}

/// The reference trees: the same steps run by chroot in plain copies of the base.
fn reference(work: &Path, base: &Path) -> BTreeMap<&'static str, PathBuf> {
    let copy = |name: &str, from: &Path| {
        let to = work.join(name);
        must(Command::new("cp").arg("-a").arg(from).arg(&to));
        to
    };
    let chroot = |root: &Path, step: &str| {
        must(
            Command::new("chroot")
                .arg(root)
                .args(["/bin/sh", "-c", step]),
        );
    };
    let first = copy("ref-first", base);
    for step in FIRST {
        chroot(&first, step);
    }
    let last = copy("ref-last", base);
    fs::create_dir_all(last.join("opt")).unwrap();
    must(
        Command::new("cp")
            .arg("-a")
            .arg(first.join("artifact"))
            .arg(first.join("built/b"))
            .arg(last.join("opt")),
    );
    chroot(&last, LAST);
    let changed = copy("ref-changed", base);
    chroot(&changed, CHANGES);
    BTreeMap::from([("first", first), ("last", last), ("changed", changed)])
}

/// Files hard-linked by a RUN step to a file of an earlier layer. podman diffs the layers of
/// a mount program by walking two mounted trees, and a link adds no change it looks for to
/// the earlier name, so the layer holds only the new name, as a plain file: the image has
/// two files of one link each. The kernel driver reads its upper dir and keeps the link.
/// fuse-overlayfs gives the same as we do (checked by hand with 1.10).
const LINKED_ACROSS_LAYERS: [&str; 2] = ["base/keep/a", "base/keep/hard"];

/// What is compared of an image entry: all but times, directory link counts and the link
/// counts of [`LINKED_ACROSS_LAYERS`]; contents by length and digest.
pub(crate) fn comparable(t: &tree::Tree) -> BTreeMap<PathBuf, Entry> {
    t.entries
        .iter()
        .map(|(p, e)| {
            let mut e = e.clone();
            e.mtime = (0, 0);
            if e.kind == 'd' || LINKED_ACROSS_LAYERS.iter().any(|l| p == Path::new(l)) {
                e.nlink = 0;
            }
            e.content = e.content.map(|c| {
                let digest = c.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
                });
                format!("{} bytes, fnv {digest:016x}", c.len()).into_bytes()
            });
            (p.clone(), e)
        })
        .collect()
}

/// Paths podman adds to every image it builds or commits: mount points of its own (empty).
const PODMAN_SCAFFOLD: [&str; 8] = [
    "etc/mtab",
    "dev",
    "proc",
    "sys",
    "run",
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
];

pub(crate) fn differences(
    what: &str,
    got: &BTreeMap<PathBuf, Entry>,
    want: &BTreeMap<PathBuf, Entry>,
    scaffold: bool,
) -> Vec<String> {
    let skip = |p: &Path| scaffold && PODMAN_SCAFFOLD.iter().any(|s| p.starts_with(s));
    let mut out = Vec::new();
    for (p, w) in want.iter().filter(|(p, _)| !skip(p)) {
        match got.get(p) {
            None => out.push(format!("{what}: {} missing", p.display())),
            Some(g) if g != w => out.push(format!(
                "{what}: {}\n   image {g:?}\n   want  {w:?}",
                p.display()
            )),
            Some(_) => {}
        }
    }
    for p in got.keys().filter(|p| !skip(p) && !want.contains_key(*p)) {
        out.push(format!("{what}: {} should not be there", p.display()));
    }
    out
}

/// The tree of `image` of `from`, as the kernel overlay driver shows it: mounted in `from`
/// where it is that driver's store (`kernel` `None`), else after a `podman save` from `from`
/// and a `podman load` into `kernel`.
fn image_tree(from: &Store, image: &str, kernel: Option<&Store>, scratch: &Path) -> tree::Tree {
    let Some(kernel) = kernel else {
        let mnt = PathBuf::from(from.run(&["image", "mount", image]));
        let t = tree::snapshot(&mnt);
        from.run(&["image", "unmount", image]);
        return t;
    };
    // Saved by id, so the archive carries no name that could meet one of `kernel`'s.
    let id = from.run(&["image", "inspect", "--format", "{{.Id}}", image]);
    let archive = scratch.join(format!("{id}.tar"));
    let _ = fs::remove_file(&archive);
    from.run(&["save", "-q", "-o", archive.to_str().unwrap(), &id]);
    kernel.run(&["load", "-q", "-i", archive.to_str().unwrap()]);
    let mnt = PathBuf::from(kernel.run(&["image", "mount", &id]));
    let t = tree::snapshot(&mnt);
    kernel.run(&["image", "unmount", &id]);
    kernel.run(&["rmi", "-f", &id]);
    t
}

/// What a flow saw: `podman diff` of the changed container, `overlayfuse diff` of its layers,
/// and the image trees.
struct Seen {
    diff: Vec<String>,
    layer_diff: Vec<String>,
    images: BTreeMap<&'static str, BTreeMap<PathBuf, Entry>>,
}

/// `podman diff` of the changed container as every mount program gets it: podman walks the
/// container's and the image's mounted trees (its kernel driver reads the upper dir instead
/// and reports `/base/gone` deleted and then added, never its old child).
const MOUNT_PROGRAM_DIFF: [&str; 9] = [
    "A /base/gone/n",
    "A /new",
    "C /base",
    "C /base/app",
    "C /base/gone",
    "C /base/redo",
    "C /etc",
    "D /base/gone/sub",
    "D /base/rmfile",
];

/// What podman puts in every container's upper layer and leaves out of `podman diff`.
const PODMAN_OWN: [&str; 8] = [
    "/dev",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/mtab",
    "/proc",
    "/run",
    "/run/.containerenv",
    "/sys",
];

/// The whole flow on store `s`; trees are read through `kernel`, a root store of podman's
/// kernel overlay driver (`None`: this is that store).
fn flow(label: &str, s: &Store, kernel: Option<&Store>, work: &Path) -> Seen {
    let mut images = BTreeMap::new();
    println!("[{label}] podman import of the base rootfs");
    s.run(&[
        "import",
        "-q",
        work.join("base.tar").to_str().unwrap(),
        "base:1",
    ]);

    println!(
        "[{label}] podman build: {} RUN steps, COPY --from, one more RUN",
        FIRST.len()
    );
    s.run(&[
        "build",
        "-q",
        "--network",
        "none",
        "--target",
        "first",
        "-t",
        "first:1",
        ".",
    ]);
    s.run(&["build", "-q", "--network", "none", "-t", "last:1", "."]);

    println!("[{label}] run, exec and diff of a container of the base image");
    let ctr = s.run(&["run", "-d", "--network", "none", "base:1", "sleep", "600"]);
    s.run(&["exec", &ctr, "sh", "-c", CHANGES]);
    let mut diff: Vec<String> = s.run(&["diff", &ctr]).lines().map(str::to_owned).collect();
    diff.sort();
    println!("[{label}] overlayfuse diff of the container's upper and lower layers");
    let layers = s.run(&[
        "inspect",
        "--format",
        "{{.GraphDriver.Data.LowerDir}} {{.GraphDriver.Data.UpperDir}}",
        &ctr,
    ]);
    let (lower, upper) = layers.split_once(' ').expect("LowerDir and UpperDir");
    let out =
        must(Command::new(crate::util::bin()).args(["diff", "--lower", lower, "--upper", upper]));
    let mut layer_diff: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !PODMAN_OWN.contains(&&l[2..]))
        .map(str::to_owned)
        .collect();
    layer_diff.sort();
    println!("[{label}] commit of that container");
    s.run(&["commit", "-q", &ctr, "changed:1"]);
    s.run(&["rm", "-f", "-t", "0", &ctr]);

    println!("[{label}] two containers of one image do not see each other's writes");
    let c1 = s.run(&["run", "-d", "--network", "none", "last:1", "sleep", "600"]);
    let c2 = s.run(&["run", "-d", "--network", "none", "last:1", "sleep", "600"]);
    s.run(&[
        "exec",
        &c1,
        "sh",
        "-c",
        "echo one > /opt/artifact && rm /base/edit",
    ]);
    s.run(&["exec", &c2, "sh", "-c", "echo two > /new"]);
    let c1_sees = s.run(&[
        "exec",
        &c1,
        "sh",
        "-c",
        "cat /opt/artifact; ls /new 2>&1; cat /base/edit 2>&1; true",
    ]);
    let c2_sees = s.run(&["exec", &c2, "sh", "-c", "cat /opt/artifact /new /base/edit"]);
    assert_eq!(c2_sees, "artifact\ntwo\norig", "[{label}] container 2 sees");
    assert!(
        c1_sees.starts_with("one\n") && !c1_sees.contains("two"),
        "[{label}] {c1_sees}"
    );
    s.run(&["rm", "-f", "-t", "0", &c1, &c2]);

    for image in ["first:1", "last:1", "changed:1"] {
        let t = image_tree(s, image, kernel, work);
        images.insert(image, comparable(&t));
    }
    println!("[{label}] save, rmi, load: the image comes back the same");
    let archive = work.join(format!("{label}-roundtrip.tar"));
    s.run(&["save", "-o", archive.to_str().unwrap(), "last:1"]);
    s.run(&["rmi", "last:1"]);
    s.run(&["load", "-q", "-i", archive.to_str().unwrap()]);
    let again = comparable(&image_tree(s, "last:1", kernel, work));
    let changed = differences("after load", &again, &images["last:1"], false);
    assert!(changed.is_empty(), "[{label}] {}", changed.join("\n"));
    let out = s.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "last:1",
        "cat",
        "/opt/artifact",
        "/base/keep/b",
    ]);
    assert_eq!(
        out, "artifact\nagain",
        "[{label}] a container of the loaded image"
    );
    Seen {
        diff,
        layer_diff,
        images,
    }
}

/// What every flow is checked against: the base rootfs and its Containerfile, the same steps
/// run in host copies, and the flow of podman's kernel overlay driver (root, in /var/tmp).
struct Setup {
    scratch: tempfile::TempDir,
    program: PathBuf,
    refs: BTreeMap<&'static str, PathBuf>,
    kernel: Store,
    k: Seen,
}

impl Setup {
    fn new() -> Setup {
        need_tools();
        let scratch = tempfile::Builder::new()
            .prefix("ofs-pm")
            .tempdir_in("/var/tmp")
            .unwrap();
        let work = scratch.path();
        fs::set_permissions(work, fs::Permissions::from_mode(0o755)).unwrap();
        // A copy every user may run (the build tree may not be reachable by the rootless user).
        let program = work.join("overlayfuse");
        fs::copy(crate::util::bin(), &program).unwrap();
        fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();

        let base = work.join("base");
        base_rootfs(&base);
        must(
            Command::new("tar")
                .arg("-C")
                .arg(&base)
                .arg("-cf")
                .arg(work.join("base.tar"))
                .arg("."),
        );
        fs::write(work.join("Containerfile"), containerfile()).unwrap();
        let refs = reference(work, &base);
        let kernel = Store::new(Setup::store_dir(work, &work.join("k")), None, None);
        let k = flow("kernel driver, root", &kernel, None, &kernel.dir);
        println!(
            "[kernel driver] diff of the changed container: {:?}",
            k.diff
        );
        // podman's kernel driver reads the upper dir too: the two must agree.
        assert_eq!(
            k.layer_diff, k.diff,
            "overlayfuse diff (left) and podman diff (right) of the kernel driver's layers"
        );
        Setup {
            scratch,
            program,
            refs,
            kernel,
            k,
        }
    }

    /// Makes `dir` a store directory with the build context in it.
    fn store_dir(work: &Path, dir: &Path) -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::copy(work.join("Containerfile"), dir.join("Containerfile")).unwrap();
        fs::copy(work.join("base.tar"), dir.join("base.tar")).unwrap();
        dir.to_owned()
    }

    /// A store of ours in `dir`, root (`user` `None`) or rootless.
    fn ours(&self, dir: &Path, user: Option<u32>) -> Store {
        let dir = Setup::store_dir(self.scratch.path(), dir);
        Store::new(dir, user, Some(self.program.clone()))
    }

    /// Runs the flow on `store` and says how it differs from the host copies, the mount
    /// program diff and the kernel driver's images.
    fn check(&self, label: &str, store: &Store) -> Vec<String> {
        let mut failures = Vec::new();
        let o = flow(label, store, Some(&self.kernel), &store.dir);
        for (image, name) in [
            ("first:1", "first"),
            ("last:1", "last"),
            ("changed:1", "changed"),
        ] {
            println!("[{label}] {image}: compared with the same steps in a host copy ({name})");
            let want = comparable(&tree::snapshot(&self.refs[name]));
            failures.extend(differences(
                &format!("[{label}] {image} vs host copy"),
                &o.images[image],
                &want,
                true,
            ));
        }
        println!("[{label}] podman diff: compared with what podman's tree walk must report");
        if o.diff != MOUNT_PROGRAM_DIFF {
            failures.push(format!("[{label}] podman diff: {:?}", o.diff));
        }
        println!("[{label}] overlayfuse diff of the layers we wrote: as podman's kernel driver");
        if o.layer_diff != self.k.diff {
            failures.push(format!("[{label}] overlayfuse diff: {:?}", o.layer_diff));
        }
        for (image, want) in &self.k.images {
            println!("[{label}] {image}: compared with podman's kernel overlay driver");
            failures.extend(differences(
                &format!("[{label}] {image}"),
                &o.images[image],
                want,
                false,
            ));
        }
        let _ = store.command().args(["rm", "-a", "-f", "-t", "0"]).output();
        let _ = store.command().args(["system", "reset", "-f"]).output();
        failures
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self
            .kernel
            .command()
            .args(["rm", "-a", "-f", "-t", "0"])
            .output();
        let _ = self
            .kernel
            .command()
            .args(["system", "reset", "-f"])
            .output();
    }
}

#[test]
fn podman_mount_program_root_and_rootless() {
    let setup = Setup::new();
    let work = setup.scratch.path();
    let uid = rootless_user();
    let mut failures = Vec::new();
    for (label, user) in [
        ("overlayfuse, root", None),
        ("overlayfuse, rootless", Some(uid)),
    ] {
        let dir = work.join(if user.is_some() { "r" } else { "o" });
        failures.extend(setup.check(label, &setup.ours(&dir, user)));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same flow with podman's storage on each backing filesystem: ext4, xfs, btrfs, tmpfs
/// and a kernel overlay mount (podman in a container, its storage on the container's root),
/// as root, and rootless on the kernel overlay mount.
#[test]
fn podman_mount_program_on_every_backing_filesystem() {
    let setup = Setup::new();
    let mut failures = Vec::new();
    for fs in Fs::ALL {
        let backing = Backing::new(fs);
        let store = setup.ours(&backing.path("storage"), None);
        failures.extend(setup.check(&format!("overlayfuse, root, {fs:?}"), &store));
    }
    // Rootless podman in a pod: an unprivileged user's storage on the container's root.
    let nested = Backing::new(Fs::Overlay);
    let store = setup.ours(&nested.path("storage"), Some(rootless_user()));
    failures.extend(setup.check("overlayfuse, rootless, Overlay", &store));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
