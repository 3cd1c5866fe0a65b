//! `overlayfuse demo`: builds three small image layers (a base, an init layer with
//! `/etc/hosts`, a container layer with a whiteout and an opaque directory), mounts them with
//! this binary under an empty writable upper layer, prints the merged view with the layer
//! each entry comes from, changes it (append, delete, re-create, rename a directory), shows
//! what landed in the upper layer, and unmounts.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Error;

/// The sample layers, topmost first: (name, files as (path, content); a path ending in `/`
/// is a directory).
const LAYERS: [(&str, &[(&str, &str)]); 3] = [
    (
        "container",
        &[
            ("etc/.wh.motd", ""),
            (
                "etc/os-release",
                "NAME=\"demo\"\nVERSION=\"2 (patched in the container)\"\n",
            ),
            ("var/cache/apt/", ""),
            ("var/cache/apt/.wh..wh..opq", ""),
            ("var/cache/apt/fresh.bin", "rebuilt cache\n"),
            ("app/hello.txt", "hello from the container layer\n"),
        ],
    ),
    (
        "init",
        &[
            ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
            ("etc/hostname", "demo\n"),
            ("etc/resolv.conf", "nameserver 127.0.0.53\n"),
        ],
    ),
    (
        "base",
        &[
            ("bin/sh", "#!/bin/true\n"),
            ("etc/os-release", "NAME=\"demo\"\nVERSION=\"1\"\n"),
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            ("etc/motd", "welcome to the base image\n"),
            ("usr/share/doc/README", "documentation of the base image\n"),
            ("var/cache/apt/pkgcache.bin", "stale cache\n"),
            ("var/cache/apt/srcpkgcache.bin", "stale cache\n"),
        ],
    ),
];

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |e| Error::runtime(format!("demo: cannot {what} '{}': {e}", path.display()))
}

fn build(root: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut dirs = Vec::new();
    for (name, files) in LAYERS {
        let layer = root.join(name);
        std::fs::create_dir_all(&layer).map_err(io("create", &layer))?;
        for (path, content) in files {
            let target = layer.join(path);
            if path.ends_with('/') {
                std::fs::create_dir_all(&target).map_err(io("create", &target))?;
                continue;
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io("create", parent))?;
            }
            std::fs::write(&target, content).map_err(io("write", &target))?;
        }
        dirs.push(layer);
    }
    Ok(dirs)
}

/// Every path below `root` (relative), with its metadata, in sorted order.
fn walk(root: &Path) -> Result<BTreeMap<PathBuf, std::fs::Metadata>, Error> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
            let entry = entry.map_err(io("list", &dir))?;
            let meta = entry.metadata().map_err(io("stat", &entry.path()))?;
            if meta.is_dir() {
                todo.push(entry.path());
            }
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap_or(&entry.path())
                .to_owned();
            out.insert(rel, meta);
        }
    }
    Ok(out)
}

fn is_marker(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".wh."))
}

/// Runs the demo in a fresh directory under the system temp dir and removes it afterwards.
pub fn run() -> Result<(), Error> {
    let root = std::env::temp_dir().join(format!("overlayfuse-demo-{}", std::process::id()));
    std::fs::create_dir_all(&root).map_err(io("create", &root))?;
    let result = show(&root);
    let _ = std::fs::remove_dir_all(&root);
    if result.is_ok() {
        println!("unmounted; removed {}", root.display());
    }
    result
}

fn show(root: &Path) -> Result<(), Error> {
    let layers = build(root)?;
    let merged = root.join("merged");
    std::fs::create_dir_all(&merged).map_err(io("create", &merged))?;
    println!("overlayfuse demo: three image layers in {}", root.display());
    println!("  container (top): rewrites etc/os-release, whites out etc/motd (.wh.motd),");
    println!("                   makes var/cache/apt opaque (.wh..wh..opq), adds app/");
    println!("  init:            etc/hosts, etc/hostname, etc/resolv.conf");
    println!("  base (bottom):   bin, etc, usr, var");

    // Which layer holds each real inode: the merged view keeps the real st_ino.
    let mut origin: BTreeMap<u64, &str> = BTreeMap::new();
    let mut in_layers: BTreeSet<PathBuf> = BTreeSet::new();
    for (dir, (name, _)) in layers.iter().zip(LAYERS).rev() {
        for (rel, meta) in walk(dir)? {
            origin.insert(meta.ino(), name);
            if !is_marker(&rel) {
                in_layers.insert(rel);
            }
        }
    }

    let exe = std::env::current_exe().map_err(|e| Error::runtime(format!("demo: {e}")))?;
    let lower = layers
        .iter()
        .map(|l| l.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let (upper, work) = (root.join("upper"), root.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(io("create", d))?;
    }
    let status = Command::new(&exe)
        .args(["mount", "--lower", &lower])
        .arg("--upper")
        .arg(&upper)
        .arg("--work")
        .arg(&work)
        .arg(&merged)
        .status()
        .map_err(|e| Error::runtime(format!("demo: cannot run {}: {e}", exe.display())))?;
    if !status.success() {
        return Err(Error::runtime(
            "demo: the mount failed (see the message above)",
        ));
    }
    let listing = walk(&merged);
    let changed = listing.is_ok().then(|| change(&merged));
    let upper_tree = walk(&upper);
    let unmounted = crate::daemon::umount(&merged);
    let listing = listing?;
    changed.unwrap_or(Ok(()))?;
    let upper_tree = upper_tree?;
    unmounted?;

    println!(
        "\nmerged view ({} entries), mounted at {}:",
        listing.len(),
        merged.display()
    );
    for (rel, meta) in &listing {
        let from = origin.get(&meta.ino()).copied().unwrap_or("?");
        let (kind, size) = if meta.is_dir() {
            ("dir ", String::new())
        } else {
            ("file", format!("{} B", meta.len()))
        };
        println!("  {kind} {:<32} {:>6}  from {from}", rel.display(), size);
    }
    let hidden: Vec<_> = in_layers
        .iter()
        .filter(|p| !listing.contains_key(*p))
        .collect();
    println!("\nhidden by a whiteout or an opaque directory above them:");
    for path in hidden {
        println!("  {}", path.display());
    }
    println!("\nchanged through the mount:");
    for (what, _) in CHANGES {
        println!("  {what}");
    }
    println!("\nwhat landed in the upper layer (the lower layers are untouched):");
    for (rel, meta) in &upper_tree {
        let kind = match meta.mode() & libc::S_IFMT {
            libc::S_IFDIR => "dir     ".to_string(),
            libc::S_IFCHR if meta.rdev() == 0 => "whiteout".to_string(),
            _ if is_marker(rel) => "marker  ".to_string(),
            _ => format!("{:<8}", format!("{} B", meta.len())),
        };
        println!("  {kind} {}", rel.display());
    }
    Ok(())
}

/// One change the demo makes through the mount.
type Change = fn(&Path) -> std::io::Result<()>;

/// The changes the demo makes through the mount, described.
const CHANGES: [(&str, Change); 4] = [
    (
        "appended a user to etc/passwd (copy-up of a base file)",
        |m| {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(m.join("etc/passwd"))?
                .write_all(b"demo:x:1000:1000::/home/demo:/bin/sh\n")
        },
    ),
    ("deleted usr/share/doc (whiteout)", |m| {
        std::fs::remove_dir_all(m.join("usr/share/doc"))
    }),
    (
        "re-created usr/share/doc with one new file (opaque directory)",
        |m| {
            std::fs::create_dir(m.join("usr/share/doc"))?;
            std::fs::write(m.join("usr/share/doc/NEW"), "written after the delete\n")
        },
    ),
    (
        "renamed the merged directory etc to etc.old (the kernel overlay says EXDEV)",
        |m| std::fs::rename(m.join("etc"), m.join("etc.old")),
    ),
];

fn change(merged: &Path) -> Result<(), Error> {
    for (what, f) in CHANGES {
        f(merged).map_err(|e| Error::runtime(format!("demo: {what}: {e}")))?;
    }
    Ok(())
}
