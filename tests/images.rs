//! `overlayfuse image`: an image built by podman (with deletions and re-created directories in
//! its layers) imported, mounted and compared with podman's own tree of it, exported and
//! loaded back into podman; and one test per kind of hostile input, fed through the command
//! line: each refused with exit status 2 and one line naming it, nothing entering the store.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

use crate::podman::{
    base_rootfs, comparable, containerfile, differences, need_tools, Store, CHANGES,
};
use crate::util::{self, must, tree, Scratch};

use overlayfuse::oci::tar::{Header, Kind, Writer};

fn ofs(store: &Path, args: &[&str]) -> Output {
    Command::new(util::bin())
        .arg("image")
        .arg("--store")
        .arg(store)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The lower dirs `image inspect` gives for `name`.
fn lowers(store: &Path, name: &str) -> Vec<PathBuf> {
    let v: serde_json::Value = serde_json::from_str(&ok(ofs(store, &["inspect", name]))).unwrap();
    v["lowerdir"]
        .as_str()
        .unwrap()
        .split(':')
        .map(PathBuf::from)
        .collect()
}

fn entries(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_podman_image_imports_mounts_as_podman_shows_it_and_exports_back() {
    need_tools();
    let scratch = tempfile::Builder::new()
        .prefix("ofs-img")
        .tempdir_in("/var/tmp")
        .unwrap();
    let work = scratch.path();
    fs::set_permissions(work, fs::Permissions::from_mode(0o755)).unwrap();
    let base = work.join("base");
    base_rootfs(&base);
    let ctx = work.join("p");
    fs::create_dir(&ctx).unwrap();
    must(
        Command::new("tar")
            .arg("-C")
            .arg(&base)
            .arg("-cf")
            .arg(ctx.join("base.tar"))
            .arg("."),
    );
    fs::write(ctx.join("Containerfile"), containerfile()).unwrap();
    let p = Store::new(ctx.clone(), None, None);
    p.run(&["import", "-q", "base.tar", "base:1"]);
    p.run(&["build", "-q", "--network", "none", "-t", "last:1", "."]);
    let podman_id = p.run(&["image", "inspect", "--format", "{{.Id}}", "last:1"]);
    let archive = work.join("last.tar");
    p.run(&[
        "save",
        "-q",
        "--format",
        "oci-archive",
        "-o",
        archive.to_str().unwrap(),
        "last:1",
    ]);
    let mnt = PathBuf::from(p.run(&["image", "mount", "last:1"]));
    let podman_tree = comparable(&tree::snapshot(&mnt));
    p.run(&["image", "unmount", "last:1"]);

    let store = work.join("store");
    let said = ok(ofs(&store, &["import", archive.to_str().unwrap()]));
    assert_eq!(said, format!("localhost/last:1 sha256:{podman_id}"));
    let listed = ok(ofs(&store, &["ls"]));
    assert!(
        listed.contains("localhost/last:1") && listed.contains(&podman_id[..12]),
        "{listed}"
    );

    // Our mount of the store's layers, and the kernel overlay's, show podman's tree.
    let layers = lowers(&store, "localhost/last:1");
    assert!(layers.len() >= 3, "{layers:?}");
    let ours_at = work.join("m-ours");
    let kernel_at = work.join("m-kernel");
    fs::create_dir(&ours_at).unwrap();
    fs::create_dir(&kernel_at).unwrap();
    {
        let _ours = util::mount_ours(&layers, &ours_at);
        let _kernel = util::mount_kernel(&layers, &kernel_at, &work.join("spare"));
        for (what, at) in [("overlayfuse", &ours_at), ("kernel overlay", &kernel_at)] {
            let got = comparable(&tree::snapshot(at));
            let diffs = differences(what, &got, &podman_tree, false);
            assert!(diffs.is_empty(), "{}", diffs.join("\n"));
        }
    }

    // Export, remove from podman, load: the same id, the same tree, and it runs.
    let out = work.join("export.tar");
    ok(ofs(
        &store,
        &["export", "localhost/last:1", "-o", out.to_str().unwrap()],
    ));
    p.run(&["rmi", "-f", "last:1"]);
    p.run(&["load", "-q", "-i", out.to_str().unwrap()]);
    let loaded_id = p.run(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "localhost/last:1",
    ]);
    assert_eq!(loaded_id, podman_id);
    let mnt = PathBuf::from(p.run(&["image", "mount", "localhost/last:1"]));
    let again = comparable(&tree::snapshot(&mnt));
    p.run(&["image", "unmount", "localhost/last:1"]);
    let diffs = differences("after export and load", &again, &podman_tree, false);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let ran = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "localhost/last:1",
        "cat",
        "/base/keep/b",
    ]);
    assert_eq!(ran, "again");

    run_image_like_podman(&p, &store, work);

    // A second name for the same image shares its layers; removing one keeps them.
    let layer_count = entries(&store.join("layers"));
    ok(ofs(
        &store,
        &["import", "--name", "copy:1", archive.to_str().unwrap()],
    ));
    assert_eq!(entries(&store.join("layers")), layer_count);
    ok(ofs(&store, &["rm", "localhost/last:1"]));
    assert_eq!(entries(&store.join("layers")), layer_count);
    let missing = ofs(&store, &["rm", "localhost/last:1"]);
    assert_eq!(missing.status.code(), Some(1));
    ok(ofs(&store, &["rm", "localhost/defaults:1", "built:1"]));
    ok(ofs(&store, &["rm", "copy:1"]));
    assert_eq!(entries(&store.join("layers")), 0);
    assert_eq!(entries(&store.join("blobs/sha256")), 0);
    assert_eq!(entries(&store.join("tmp")), 0);
    let _ = p.command().args(["system", "reset", "-f"]).output();
}

/// `overlayfuse run --image` with `args` (then `--` and `cmd`, if any): its stdout.
fn run_image(store: &Path, args: &[&str], cmd: &[&str]) -> String {
    let mut c = Command::new(util::bin());
    c.arg("run").arg("--store").arg(store).args(args);
    if !cmd.is_empty() {
        c.arg("--").args(cmd);
    }
    ok(c.stdin(std::process::Stdio::null()).output().unwrap())
}

/// `run --image` against `podman run` of the same image: the command's output with the
/// image's defaults and with overrides, the init layer, and a `--commit` of a container's
/// changes against `podman commit` of the same changes, loaded back into podman.
fn run_image_like_podman(p: &Store, store: &Path, work: &Path) {
    // An image with every default set, on top of the one imported.
    let ctx = work.join("p");
    fs::write(
        ctx.join("Containerfile.defaults"),
        "FROM last:1\nENV FOO=bar GREETING=hello\nWORKDIR /base\nUSER 1000:1000\n\
         CMD [\"sh\", \"-c\", \"echo $FOO $GREETING; pwd; id -u; id -g; ls\"]\n",
    )
    .unwrap();
    p.run(&[
        "build",
        "-q",
        "--network",
        "none",
        "-f",
        "Containerfile.defaults",
        "-t",
        "defaults:1",
        ".",
    ]);
    let archive = work.join("defaults.tar");
    p.run(&[
        "save",
        "-q",
        "--format",
        "oci-archive",
        "-o",
        archive.to_str().unwrap(),
        "defaults:1",
    ]);
    ok(ofs(store, &["import", archive.to_str().unwrap()]));
    let podman_run = |args: &[&str]| {
        let mut all = vec!["run", "--rm", "--network", "none"];
        all.extend_from_slice(args);
        p.run(&all)
    };
    let image = "localhost/defaults:1";
    assert_eq!(
        run_image(store, &["--image", image], &[]),
        podman_run(&[image])
    );
    assert_eq!(
        run_image(
            store,
            &["--image", image, "--env", "FOO=baz", "--cwd", "/", "--user", "0"],
            &["sh", "-c", "echo $FOO $GREETING; pwd; id -u"]
        ),
        podman_run(&[
            "--env",
            "FOO=baz",
            "--workdir",
            "/",
            "--user",
            "0",
            image,
            "sh",
            "-c",
            "echo $FOO $GREETING; pwd; id -u"
        ])
    );
    assert_eq!(
        run_image(
            store,
            &["--image", image, "--entrypoint", "/bin/echo"],
            &["x"]
        ),
        podman_run(&["--entrypoint", "/bin/echo", image, "x"])
    );
    // The init layer: the container's own names.
    let names = run_image(
        store,
        &["--image", image, "--hostname", "box"],
        &["sh", "-c", "cat /etc/hostname; grep -c box /etc/hosts"],
    );
    assert_eq!(names, "box\n1");

    // One build step: the same changes committed by us and by podman.
    let changes = format!("{CHANGES} && echo 10.0.0.1 extra >> /etc/hosts");
    run_image(
        store,
        &["--image", "localhost/last:1", "--commit", "built:1"],
        &["sh", "-c", &changes],
    );
    p.run(&[
        "run",
        "--name",
        "changer",
        "--network",
        "none",
        "last:1",
        "sh",
        "-c",
        &changes,
    ]);
    p.run(&["commit", "-q", "changer", "pbuilt:1"]);
    p.run(&["rm", "changer"]);
    let failed = Command::new(util::bin())
        .args(["run", "--store"])
        .arg(store)
        .args([
            "--image",
            "localhost/last:1",
            "--commit",
            "never:1",
            "--",
            "sh",
            "-c",
            "touch /x; exit 3",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(3));
    assert!(
        !ok(ofs(store, &["ls"])).contains("never:1"),
        "a failed step was committed"
    );
    let out = work.join("built.tar");
    ok(ofs(
        store,
        &["export", "built:1", "-o", out.to_str().unwrap()],
    ));
    p.run(&["load", "-q", "-i", out.to_str().unwrap()]);
    let tree_of = |image: &str| {
        let mnt = PathBuf::from(p.run(&["image", "mount", image]));
        let t = comparable(&tree::snapshot(&mnt));
        p.run(&["image", "unmount", image]);
        t
    };
    let ours = tree_of("localhost/built:1");
    let theirs = tree_of("pbuilt:1");
    let diffs = differences("run --commit vs podman commit", &ours, &theirs, true);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let layer = lowers(store, "built:1")[0].clone();
    for name in ["hostname", "hosts", "resolv.conf"] {
        assert!(
            fs::symlink_metadata(layer.join("etc").join(name)).is_err(),
            "the committed layer carries /etc/{name}"
        );
    }
    // `podman diff` of the image (its top layer against the rest) and of podman's own
    // commit of the same changes, against `overlayfuse diff` of the store's layers.
    let all = lowers(store, "built:1");
    let rest: Vec<String> = all[1..].iter().map(|p| p.display().to_string()).collect();
    let ours_diff = ok(Command::new(util::bin())
        .args(["diff", "--lower", &rest.join(":"), "--upper"])
        .arg(&all[0])
        .output()
        .unwrap());
    let sorted = |text: String| {
        let mut v: Vec<String> = text.lines().map(str::to_owned).collect();
        v.sort();
        v
    };
    let ours_diff = sorted(ours_diff);
    assert_eq!(sorted(p.run(&["diff", "localhost/built:1"])), ours_diff);
    let podman_own = |line: &String| {
        [
            "/etc/hostname",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/run",
            "/dev",
            "/proc",
            "/sys",
            "/etc/mtab",
        ]
        .iter()
        .any(|s| line[2..].starts_with(s))
    };
    let theirs_diff: Vec<String> = sorted(p.run(&["diff", "pbuilt:1"]))
        .into_iter()
        .filter(|l| !podman_own(l))
        .collect();
    assert_eq!(
        ours_diff, theirs_diff,
        "overlayfuse diff (left), podman diff of podman's commit (right)"
    );
    assert_eq!(
        podman_run(&["localhost/built:1", "cat", "/new", "/base/gone/n"]),
        "add\nn"
    );
}

fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn entry(path: &str, kind: Kind) -> Header {
    Header {
        path: path.as_bytes().to_vec(),
        mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
        kind,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: Vec::new(),
    }
}

fn tarball(entries: &[(Header, &[u8])]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    for (h, data) in entries {
        w.append(h, Some(&mut &data[..])).unwrap();
    }
    w.finish().unwrap()
}

/// An OCI image layout at `dir` with one uncompressed layer `layer`; `diff_id` overrides the
/// diff id its config lists. Returns the layer blob's path.
fn layout(dir: &Path, layer: &[u8], diff_id: Option<&str>) -> PathBuf {
    let own = sha256(layer);
    layout_packed(
        dir,
        layer,
        "application/vnd.oci.image.layer.v1.tar",
        diff_id.unwrap_or(&own),
    )
}

/// An OCI image layout at `dir` with one layer blob `blob` of media type `media_type`, whose
/// config lists `diff_id`. Returns the layer blob's path.
fn layout_packed(dir: &Path, layer: &[u8], media_type: &str, diff_id: &str) -> PathBuf {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha256(bytes);
        fs::write(blobs.join(&d[7..]), bytes).unwrap();
        d
    };
    let layer_digest = put(layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "config": {"Cmd": ["/bin/sh"]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": media_type, "digest": layer_digest, "size": layer.len()}],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = put(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "hostile:1"}}],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    blobs.join(&layer_digest[7..])
}

/// Imports the layout `dir` into a new store and checks the refusal: exit 2, one line
/// saying `saying`, and nothing entering the store.
fn refused(s: &Scratch, dir: &Path, saying: &str) {
    let store = s.path("store");
    let out = ofs(&store, &["import", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(saying), "'{err}' does not say '{saying}'");
    assert_eq!(
        entries(&store.join("layers")),
        0,
        "a layer entered the store"
    );
    assert_eq!(
        entries(&store.join("tmp")),
        0,
        "work in progress was left behind"
    );
    assert_eq!(entries(&store.join("blobs/sha256")), 0, "blobs were kept");
    assert!(
        ok(ofs(&store, &["ls"])).lines().count() == 1,
        "an image was recorded"
    );
    fs::remove_dir_all(&store).unwrap();
}

#[test]
fn hostile_layer_entries_are_refused_by_name_and_nothing_enters_the_store() {
    let s = Scratch::new();
    let outside = s.mkdir("outside");
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "absolute",
            tarball(&[(entry("/etc/x", Kind::File(1)), b"x")]),
            "entry '/etc/x': an absolute path".into(),
        ),
        (
            "dotdot",
            tarball(&[(entry("a/../../x", Kind::File(1)), b"x")]),
            "entry 'a/../../x'".into(),
        ),
        (
            "symlinked parent",
            tarball(&[
                (
                    entry(
                        "s",
                        Kind::Symlink(outside.as_os_str().as_encoded_bytes().to_vec()),
                    ),
                    b"",
                ),
                (entry("s/planted", Kind::File(1)), b"x"),
            ]),
            "entry 's/planted': its parent 's' is not a directory".into(),
        ),
        (
            "hard link out",
            tarball(&[(
                entry("h", Kind::HardLink(b"../../../etc/passwd".to_vec())),
                b"",
            )]),
            "entry 'h'".into(),
        ),
        (
            "duplicate",
            tarball(&[
                (entry("f", Kind::File(1)), b"1"),
                (entry("f", Kind::File(1)), b"2"),
            ]),
            "entry 'f': a second entry of this name".into(),
        ),
    ];
    for (what, layer, saying) in cases {
        let dir = s.path(&format!("layout-{}", what.replace(' ', "-")));
        layout(&dir, &layer, None);
        refused(&s, &dir, &saying);
    }
    assert_eq!(
        entries(&outside),
        0,
        "something was written outside the layer"
    );
}

#[test]
fn blobs_that_do_not_match_their_digests_are_refused() {
    let s = Scratch::new();
    let layer = tarball(&[(entry("f", Kind::File(4)), b"data")]);
    let tampered = s.path("tampered");
    let blob = layout(&tampered, &layer, None);
    let mut bytes = fs::read(&blob).unwrap();
    let at = bytes.len() - 1100;
    bytes[at] ^= 1;
    fs::write(&blob, bytes).unwrap();
    refused(&s, &tampered, "does not match its digest");
    // The right blob, but a config that lists another diff id.
    let wrong = s.path("wrong-diff-id");
    let other = format!("sha256:{}", "0".repeat(64));
    layout(&wrong, &layer, Some(&other));
    refused(&s, &wrong, "not to the diff id the config lists");
    // A tampered archive: the blob inside does not hash to its name.
    let good = s.path("good");
    let blob = layout(&good, &layer, None);
    fs::write(&blob, b"other").unwrap();
    let archive = s.path("tampered.tar");
    must(
        Command::new("tar")
            .arg("-C")
            .arg(&good)
            .arg("-cf")
            .arg(&archive)
            .arg("."),
    );
    refused(&s, &archive, "does not match its digest");
}

#[test]
fn sparse_entries_unpack_and_an_impossible_one_is_refused() {
    let s = Scratch::new();
    let src = s.mkdir("src");
    // A sparse file of 4 MiB with 4 KiB of data at its end, archived by GNU tar as sparse.
    must(
        Command::new("truncate")
            .args(["-s", "4M"])
            .arg(src.join("holes")),
    );
    must(Command::new("sh").arg("-c").arg(format!(
        "printf end | dd of={} bs=1 seek=4194301 conv=notrunc 2>/dev/null",
        src.join("holes").display()
    )));
    // `holes` archived by GNU tar as a sparse entry, as the one layer of layout `name`.
    let sparse_layout = |name: &str| {
        let layer = s.path(&format!("{name}.tar"));
        must(
            Command::new("tar")
                .arg("-C")
                .arg(&src)
                .args(["--format=gnu", "-S", "-cf"])
                .arg(&layer)
                .arg("holes"),
        );
        let dir = s.path(name);
        layout(&dir, &fs::read(&layer).unwrap(), None);
        dir
    };
    let dir = sparse_layout("layout-sparse");
    let store = s.path("store");
    ok(ofs(&store, &["import", dir.to_str().unwrap()]));
    let l = lowers(&store, "hostile:1");
    let data = fs::read(l[0].join("holes")).unwrap();
    assert_eq!(data.len(), 4 << 20);
    assert!(data.ends_with(b"end") && data[..(4 << 20) - 3].iter().all(|b| *b == 0));
    fs::remove_dir_all(&store).unwrap();

    // A sparse entry of 8 TiB: more than the store's filesystem has free.
    must(
        Command::new("truncate")
            .args(["-s", "8T"])
            .arg(src.join("holes")),
    );
    let dir = sparse_layout("layout-huge");
    refused(
        &s,
        &dir,
        "entry 'holes': 8796093022208 bytes, more than the",
    );
}

#[test]
fn device_nodes_are_refused_to_a_user_namespace_root() {
    let s = Scratch::new();
    let dir = s.path("layout-dev");
    layout(
        &dir,
        &tarball(&[(entry("null", Kind::Char(1, 3)), b"")]),
        None,
    );
    // Root of a user namespace, as rootless podman is: no CAP_MKNOD where it counts.
    let store = s.path("userstore");
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user"])
        .arg(util::bin())
        .args(["image", "--store"])
        .arg(&store)
        .arg("import")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("entry 'null': a device node, which only root can make"),
        "{err}"
    );
    assert_eq!(entries(&store.join("layers")), 0);
    assert_eq!(entries(&store.join("tmp")), 0);
}

#[test]
fn a_running_container_keeps_its_image_layers_when_the_image_is_removed() {
    let s = Scratch::new();
    let dir = busybox_layout(&s, "layout");
    let store = s.path("store");
    ok(ofs(&store, &["import", dir.to_str().unwrap()]));
    let layers = lowers(&store, "hostile:1");
    let mut running = Command::new(util::bin())
        .args(["run", "--store"])
        .arg(&store)
        .args([
            "--image",
            "hostile:1",
            "--",
            "/bin/sh",
            "-c",
            "read x; cat /data",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Removed while it runs: the catalog forgets it, the layers stay for the container.
    assert!(util::wait_for(std::time::Duration::from_secs(20), || {
        fs::read_dir(store.join("inuse")).is_ok_and(|d| d.count() == 1)
    }));
    ok(ofs(&store, &["rm", "hostile:1"]));
    assert!(layers[0].is_dir(), "a layer in use was removed");
    use std::io::Write;
    running.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = running.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept");
    // The next collection, once the run is over, takes them.
    let other = s.path("other");
    layout(&other, &tarball(&[(entry("x", Kind::File(1)), b"x")]), None);
    ok(ofs(
        &store,
        &["import", "--name", "other:1", other.to_str().unwrap()],
    ));
    ok(ofs(&store, &["rm", "other:1"]));
    assert!(!layers[0].exists(), "the layer outlived its last user");
    assert_eq!(entries(&store.join("inuse")), 0);
}

/// A layout of one layer holding a static busybox as `/bin/sh` and `/data`.
fn busybox_layout(s: &Scratch, name: &str) -> PathBuf {
    let busybox = fs::read("/bin/busybox").expect("busybox-static is installed");
    let mut bin = entry("bin/busybox", Kind::File(busybox.len() as u64));
    bin.mode = 0o755;
    // A file of a user other than root.
    let mut app = entry("app", Kind::File(1));
    app.uid = 1000;
    app.gid = 1000;
    let layer = tarball(&[
        (entry("bin", Kind::Dir), b""),
        (bin, &busybox),
        (entry("bin/sh", Kind::Symlink(b"busybox".to_vec())), b""),
        (entry("data", Kind::File(4)), b"kept"),
        (entry("gone", Kind::File(1)), b"g"),
        (app, b"a"),
    ]);
    let dir = s.path(name);
    layout(&dir, &layer, None);
    dir
}

#[test]
fn a_user_imports_runs_and_commits_an_image_rootless() {
    let s = Scratch::new();
    let uid = util::rootless_user();
    let dir = busybox_layout(&s, "layout");
    let tmp = s.mkdir("tmp");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
    let store = s.mkdir("store");
    must(Command::new("chown").arg(uid.to_string()).arg(&store));
    must(Command::new("chmod").args(["-R", "a+rX"]).arg(s.dir.path()));
    let as_user = |args: &[&str]| {
        let out = Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(util::bin())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("TMPDIR", &tmp)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        ok(out)
    };
    let st = store.to_str().unwrap();
    as_user(&["image", "--store", st, "import", dir.to_str().unwrap()]);
    let markers = fs::read_to_string(store.join("markers")).unwrap();
    assert_ne!(
        markers.trim(),
        "kernel",
        "a user cannot write trusted.overlay xattrs"
    );
    let said = as_user(&[
        "run",
        "--store",
        st,
        "--image",
        "hostile:1",
        "--commit",
        "next:1",
        "--",
        "/bin/sh",
        "-c",
        "id -u; cat /data; echo; cat /etc/hostname; echo new > /new; rm /gone; \
         mkdir /owned; echo o > /owned/f; chown -R 1000:1000 /owned",
    ]);
    let mut lines = said.lines();
    assert_eq!(lines.next(), Some("0"), "{said}");
    assert_eq!(lines.next(), Some("kept"), "{said}");
    assert_eq!(lines.next(), Some("overlayfuse"), "{said}");
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("next:1 sha256:")),
        "{said}"
    );
    let top = lowers(&store, "next:1")[0].clone();
    assert_eq!(fs::read(top.join("new")).unwrap(), b"new\n");
    let in_next = |script: &str| {
        as_user(&[
            "run", "--store", st, "--image", "next:1", "--", "/bin/sh", "-c", script,
        ])
    };
    // Owners are the container's: from the image, and from what the container made.
    let owners = in_next("stat -c %u:%g /app /owned/f /new");
    assert_eq!(owners, "1000:1000\n1000:1000\n0:0");
    let again = in_next("cat /new; ls /gone 2>/dev/null || echo deleted");
    assert_eq!(again, "new\ndeleted");
    assert_eq!(entries(&tmp), 0, "the run's directories were left behind");
}

/// Runs the shell command `cmd` with a terminal as its stdin, stdout and stderr (`script`);
/// what it printed there.
fn on_a_terminal(cmd: &str) -> String {
    ok(Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap())
}

#[test]
fn imports_and_commits_show_progress_on_a_terminal_only() {
    let s = Scratch::new();
    let dir = busybox_layout(&s, "layout");
    let cmd = format!(
        "{} image --store {} import {}",
        util::bin(),
        s.path("tty-store").display(),
        dir.display()
    );
    let out = on_a_terminal(&cmd);
    assert!(
        out.contains("layer 1/1 sha256:") && out.contains(" MiB"),
        "{out}"
    );
    // And a commit of a layer.
    let lower = s.mkdir("lower");
    let upper = s.mkdir("upper");
    fs::write(upper.join("big"), vec![1u8; 3 << 20]).unwrap();
    let cmd = format!(
        "{} commit --lower {} --upper {} -o {}",
        util::bin(),
        lower.display(),
        upper.display(),
        s.path("layer.tar").display()
    );
    let out = on_a_terminal(&cmd);
    assert!(out.contains("writing ") && out.contains(" MiB"), "{out}");
    let plain = ofs(&s.path("plain-store"), &["import", dir.to_str().unwrap()]);
    assert!(plain.status.success());
    assert!(
        !String::from_utf8_lossy(&plain.stderr).contains("MiB"),
        "progress written off a terminal"
    );
}

#[test]
fn gzip_and_zstd_layers_import() {
    let s = Scratch::new();
    let tar = tarball(&[(entry("f", Kind::File(4)), b"data")]);
    let diff_id = sha256(&tar);
    let gzip = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    let zstd = zstd::encode_all(&tar[..], 3).unwrap();
    for (what, blob, media_type) in [
        ("gzip", gzip, "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("zstd", zstd, "application/vnd.oci.image.layer.v1.tar+zstd"),
        (
            "docker",
            tarball(&[(entry("f", Kind::File(4)), b"data")]),
            "application/vnd.docker.image.rootfs.diff.tar",
        ),
    ] {
        let dir = s.path(what);
        layout_packed(&dir, &blob, media_type, &diff_id);
        let store = s.path(&format!("store-{what}"));
        ok(ofs(
            &store,
            &["import", "--name", what, dir.to_str().unwrap()],
        ));
        assert_eq!(
            fs::read(lowers(&store, what)[0].join("f")).unwrap(),
            b"data",
            "{what}"
        );
    }
    // A media type that is no layer is refused.
    let dir = s.path("odd");
    layout_packed(&dir, &tar, "application/vnd.example.thing", &diff_id);
    refused(&s, &dir, "which is not a layer tarball");
}
