//! `overlayfuse run --image NAME`: an image of the store as the container's root. The run
//! itself is the ordinary one ([`crate::runtime`]); this module turns the image into its
//! request and, with `--commit`, the container's changes into a new image afterwards.
//!
//! - The lowers are the image's layers under an **init layer** made for the run, holding the
//!   container's own `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` (as docker's
//!   `-init` layer does): the container sees them, its upper does not carry them, and a
//!   commit leaves them out even where the command rewrote them.
//! - The image config's `Entrypoint` and `Cmd`, `Env`, `WorkingDir` and `User` are defaults:
//!   a command after `--` replaces `Cmd`, `--entrypoint` the entrypoint, `--env` adds to and
//!   overrides `Env`, `--cwd` and `--user` replace the others.
//! - The image's layers are held ([`Store::hold`]) for the whole run: removing the image
//!   meanwhile leaves them in place until the run ends.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::BufWriter;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::import::{check_name, unpack_layer, Packing};
use super::progress::Progress;
use super::store::{remove_tree, Blob, ImageRecord, LayerRecord, Store};
use crate::cli::optlist::join_layers;
use crate::cli::RunArgs;
use crate::config::run::{hostname, DEFAULT_HOSTNAME};
use crate::error::Error;
use crate::oci::digest::Hashing;
use crate::oci::Compression;

/// The files of the init layer, below `etc/`.
pub const INIT_FILES: [&str; 3] = ["hostname", "hosts", "resolv.conf"];

/// A run of an image, between [`prepare`] and [`finish`].
#[derive(Debug)]
pub struct ImageRun {
    /// The run's own directory: the init layer, and the upper and work dir of a commit.
    dir: PathBuf,
    store_dir: PathBuf,
    image: ImageRecord,
    config: Value,
    commit: Option<String>,
    /// Keeps the image's layers in the store while the run lasts.
    _hold: File,
}

fn setup(e: Error) -> Error {
    e.into_setup()
}

fn io_setup(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::setup(format!("cannot {what} '{}': {e}", path.display()))
}

/// Resolves `args` (with `--image`) into an ordinary run request over the image's layers.
pub fn prepare(args: &RunArgs) -> Result<(RunArgs, ImageRun), Error> {
    let name = args.image.as_deref().expect("prepare is for --image runs");
    if let Some(new) = &args.commit {
        check_name(new).map_err(setup)?;
    }
    let host = match &args.hostname {
        Some(h) => hostname(h)?,
        None => DEFAULT_HOSTNAME.to_owned(),
    };
    let store_dir = args.store.clone().unwrap_or_else(super::store::default_dir);
    let store = Store::open(&store_dir).map_err(setup)?;
    let catalog = store.catalog().map_err(setup)?;
    let image = catalog.get(name).cloned().ok_or_else(|| {
        Error::setup(format!(
            "no image named '{name}' in the store '{}': import it with 'overlayfuse image import'",
            store.root().display()
        ))
    })?;
    let config = store.json_blob(&image.config.digest).map_err(setup)?;
    let hold = store.hold(&image).map_err(setup)?;
    let layers = super::lower_dirs(&store, &image);
    let dir = crate::runtime::private_dir("overlayfuse-image")?;
    let run = ImageRun {
        dir,
        store_dir: store.root().to_path_buf(),
        image,
        config,
        commit: args.commit.clone(),
        _hold: hold,
    };
    drop(store);
    match resolve(args, &run, &layers, &host) {
        Ok(resolved) => Ok((resolved, run)),
        Err(e) => {
            let _ = remove_tree(&run.dir);
            Err(e)
        }
    }
}

fn resolve(
    args: &RunArgs,
    run: &ImageRun,
    layers: &[PathBuf],
    host: &str,
) -> Result<RunArgs, Error> {
    let init = run.dir.join("init");
    write_init_layer(&init, layers, host, args.net.as_deref() == Some("host"))?;
    let mut lowers = vec![init];
    lowers.extend(layers.iter().cloned());
    let cfg = &run.config["config"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let entrypoint = match &args.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => strings(&cfg["Entrypoint"]),
    };
    let mut command: Vec<OsString> = entrypoint.into_iter().map(OsString::from).collect();
    if !args.command.is_empty() {
        command.extend(args.command.iter().cloned());
    } else if args.entrypoint.is_none() {
        command.extend(strings(&cfg["Cmd"]).into_iter().map(OsString::from));
    }
    if command.is_empty() {
        return Err(Error::setup(format!(
            "the image '{}' has no Entrypoint or Cmd: give the command after --",
            run.image.name
        )));
    }
    let mut env = strings(&cfg["Env"]);
    env.extend(args.env.iter().cloned());
    let cwd = args.cwd.clone().or_else(|| {
        cfg["WorkingDir"]
            .as_str()
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
    });
    let user = match &args.user {
        Some(u) => Some(u.clone()),
        None => match cfg["User"].as_str().filter(|u| !u.is_empty()) {
            Some(spec) => Some(numeric_user(spec, layers)?),
            None => None,
        },
    };
    let (upper, work) = match &run.commit {
        Some(_) => {
            let (u, w) = (run.dir.join("upper"), run.dir.join("work"));
            for d in [&u, &w] {
                std::fs::create_dir(d).map_err(|e| io_setup("make", d, e))?;
            }
            copy_root_attrs(layers, &u)?;
            (Some(u), Some(w))
        }
        None => (None, None),
    };
    Ok(RunArgs {
        lower: Some(join_layers(&lowers)),
        upper,
        work,
        image: None,
        store: None,
        commit: None,
        entrypoint: None,
        command,
        env,
        cwd,
        user,
        ..args.clone()
    })
}

/// The topmost layer's own `rel` (a directory), or `None` where no layer has it.
fn topmost(layers: &[PathBuf], rel: &str) -> Option<std::fs::Metadata> {
    layers
        .iter()
        .find_map(|l| std::fs::symlink_metadata(l.join(rel)).ok())
        .filter(|m| m.is_dir())
}

/// Gives `dir` the owner and mode of the image's root (the topmost layer's).
fn copy_root_attrs(layers: &[PathBuf], dir: &Path) -> Result<(), Error> {
    if let Some(m) = topmost(layers, "") {
        copy_attrs(&m, dir)?;
    }
    Ok(())
}

fn copy_attrs(m: &std::fs::Metadata, dir: &Path) -> Result<(), Error> {
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(dir, Some(m.uid()), Some(m.gid()))
            .map_err(|e| io_setup("set the owner of", dir, e))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(m.mode() & 0o7777))
        .map_err(|e| io_setup("set the mode of", dir, e))
}

/// The init layer at `init`: `etc/hostname`, `etc/hosts` and `etc/resolv.conf` for a
/// container named `host`; its root and `etc` take the image's owners and modes, so the
/// merged tree shows the image's.
fn write_init_layer(
    init: &Path,
    layers: &[PathBuf],
    host: &str,
    host_net: bool,
) -> Result<(), Error> {
    let etc = init.join("etc");
    std::fs::create_dir_all(&etc).map_err(|e| io_setup("make", &etc, e))?;
    let mut hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{host}\n"
    );
    if host_net {
        // The host's own names too, as podman gives a container on the host's network.
        if let Ok(h) = std::fs::read_to_string("/etc/hosts") {
            hosts.push_str(&h);
        }
    }
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for (name, text) in [
        ("hostname", format!("{host}\n")),
        ("hosts", hosts),
        ("resolv.conf", resolv),
    ] {
        let p = etc.join(name);
        std::fs::write(&p, text).map_err(|e| io_setup("write", &p, e))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| io_setup("set the mode of", &p, e))?;
    }
    copy_root_attrs(layers, init)?;
    if let Some(m) = topmost(layers, "etc") {
        copy_attrs(&m, &etc)?;
    }
    Ok(())
}

/// `User` of an image config as `UID:GID`: numbers as they are, names looked up in the
/// image's `/etc/passwd` and `/etc/group`.
fn numeric_user(spec: &str, layers: &[PathBuf]) -> Result<String, Error> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let lookup = |file: &str, name: &str, field: usize| -> Result<u32, Error> {
        if let Ok(n) = name.parse::<u32>() {
            return Ok(n);
        }
        let text = image_file(layers, file).unwrap_or_default();
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(field)?.parse().ok())
            .ok_or_else(|| {
                Error::setup(format!(
                    "the image's user '{spec}': no '{name}' in its /{file}: give --user UID:GID"
                ))
            })
    };
    let uid = lookup("etc/passwd", user, 2)?;
    let gid = match group {
        Some(g) => lookup("etc/group", g, 2)?,
        // The user's primary group, from passwd (a number given alone is its own group).
        None if user.parse::<u32>().is_ok() => uid,
        None => lookup("etc/passwd", user, 3)?,
    };
    Ok(format!("{uid}:{gid}"))
}

/// The image's file `rel` (under `etc/`), read from the topmost layer that has it, unless
/// a layer above deletes it or makes its directory opaque.
fn image_file(layers: &[PathBuf], rel: &str) -> Option<String> {
    let (dir, name) = rel.rsplit_once('/')?;
    for layer in layers {
        let p = layer.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => return std::fs::read_to_string(&p).ok(),
            // A whiteout (char 0/0) or anything else hides the lower ones.
            Ok(_) => return None,
            Err(_) => {}
        }
        if layer.join(dir).join(format!(".wh.{name}")).exists() {
            return None;
        }
        if is_opaque(&layer.join(dir)) {
            return None;
        }
    }
    None
}

fn is_opaque(dir: &Path) -> bool {
    if dir.join(".wh..wh..opq").exists() {
        return true;
    }
    let Ok(d) = crate::sys::Dir::open_root(dir) else {
        return false;
    };
    crate::fs::marker::OPAQUE_XATTRS
        .iter()
        .any(|a| d.xattr_get(OsStr::new(a)).is_ok_and(|v| v == b"y"))
}

/// Ends an image run whose command exited with `code` (`None`: it never ran): commits the
/// container's changes as a new image where `--commit` asked and the command succeeded,
/// then removes the run's directory.
///
/// As a user, this happens as root of a user namespace mapped as the run's was
/// ([`crate::runtime::as_mapped_root`]): the upper's files made by the container's other
/// users belong to the user's subordinate ids, which only there read as the container's ids
/// (the layer records those) and can be removed.
pub fn finish(run: ImageRun, code: Option<i32>) -> Result<(), Error> {
    let work = || {
        let result = match (&run.commit, code) {
            (Some(new), Some(0)) => commit(&run, new),
            (Some(new), Some(code)) => {
                log::warn!("not committed as '{new}': the command exited {code}");
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = remove_tree(&run.dir) {
            log::warn!("{}", e.message);
        }
        result
    };
    if nix::unistd::geteuid().is_root() || run.commit.is_none() {
        return work();
    }
    let status = crate::runtime::as_mapped_root(|| match work() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("overlayfuse: {e}");
            e.exit_code()
        }
    })?;
    match status {
        0 => Ok(()),
        // Printed by the helper already.
        _ => Err(Error::runtime("")),
    }
}

/// The container's upper as a new layer on the image, recorded as `new`.
fn commit(run: &ImageRun, new: &str) -> Result<(), Error> {
    let upper = run.dir.join("upper");
    // The init layer's files are the container's, never the image's.
    for name in INIT_FILES {
        let p = upper.join("etc").join(name);
        if std::fs::symlink_metadata(&p).is_ok() {
            std::fs::remove_file(&p).map_err(|e| {
                Error::runtime(format!(
                    "cannot drop '{}' from the commit: {e}",
                    p.display()
                ))
            })?;
        }
    }
    let store = Store::open(&run.store_dir)?;
    let lowers = super::lower_dirs(&store, &run.image);
    let (upper_layer, lower_layers) = crate::diff::open_layers(&join_layers(&lowers), &upper)?;
    // The layer, gzipped, into the store's tmp/: its digest and diff id.
    let scratch = store.scratch("commit")?;
    let tmp = scratch.join("layer");
    let written = (|| -> Result<(String, String, u64), Error> {
        let fail = |e: String| Error::runtime(format!("cannot write the committed layer: {e}"));
        let created = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| fail(e.to_string()))?;
        let file = Hashing::new(BufWriter::new(created));
        let (diff_id, file) = Compression::Gzip
            .wrap(file, |w| {
                let mut tar = Hashing::new(w);
                crate::oci::layer::write_layer(&upper_layer, &lower_layers, &mut tar)
                    .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
                Ok::<_, std::io::Error>(tar.finish().0)
            })
            .map_err(|e| fail(e.to_string()))?;
        let (digest, buf) = file.finish();
        let f = buf.into_inner().map_err(|e| fail(e.error().to_string()))?;
        f.sync_all().map_err(|e| fail(e.to_string()))?;
        let size = f.metadata().map_err(|e| fail(e.to_string()))?.len();
        Ok((digest, diff_id, size))
    })();
    let (digest, diff_id, size) = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = remove_tree(&scratch);
            return Err(e);
        }
    };
    store.commit_blob(&tmp, &digest)?;
    let _ = remove_tree(&scratch);
    let blob = Blob {
        digest,
        size,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
    };
    if !store.layer_dir(&diff_id).is_dir() {
        unpack_layer(
            &store,
            &blob,
            Packing::Gzip,
            &diff_id,
            "commit",
            &mut Progress::for_stderr(),
        )
        .map_err(|e| Error::runtime(format!("cannot unpack the committed layer: {e}")))?;
    }
    let mut config = run.config.clone();
    let now = rfc3339_now();
    push(
        &mut config["rootfs"]["diff_ids"],
        Value::from(diff_id.clone()),
    );
    push(
        &mut config["history"],
        serde_json::json!({"created": now, "created_by": "overlayfuse run --commit"}),
    );
    config["created"] = Value::from(now);
    let config_bytes = serde_json::to_vec(&config).expect("a JSON value encodes");
    let config_blob = Blob {
        digest: digest_of(&config_bytes),
        size: config_bytes.len() as u64,
        media_type: run.image.config.media_type.clone(),
    };
    let mut manifest = store.json_blob(&run.image.manifest.digest)?;
    manifest["config"]["digest"] = Value::from(config_blob.digest.clone());
    manifest["config"]["size"] = Value::from(config_blob.size);
    push(
        &mut manifest["layers"],
        serde_json::json!({"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size}),
    );
    let manifest_bytes = serde_json::to_vec(&manifest).expect("a JSON value encodes");
    let manifest_blob = Blob {
        digest: digest_of(&manifest_bytes),
        size: manifest_bytes.len() as u64,
        media_type: run.image.manifest.media_type.clone(),
    };
    store.put_blob(&config_blob.digest, &config_bytes)?;
    store.put_blob(&manifest_blob.digest, &manifest_bytes)?;
    let mut layers = run.image.layers.clone();
    layers.push(LayerRecord { blob, diff_id });
    let mut catalog = store.catalog()?;
    let replaced = catalog.put(ImageRecord {
        name: new.to_owned(),
        manifest: manifest_blob,
        config: config_blob.clone(),
        layers,
    });
    store.save_catalog(&catalog)?;
    if replaced.is_some() {
        store.collect_garbage(&catalog)?;
    }
    println!("{new} {}", config_blob.digest);
    Ok(())
}

fn push(v: &mut Value, item: Value) {
    match v.as_array_mut() {
        Some(a) => a.push(item),
        None => *v = Value::Array(vec![item]),
    }
}

fn digest_of(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut h = Hashing::new(std::io::sink());
    h.write_all(bytes).expect("a sink takes everything");
    h.finish().0
}

/// Now as RFC 3339 in UTC (`2026-12-07T13:05:00Z`), as image configs give times.
fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_user_resolve_through_the_image_files() {
        let t = tempfile::tempdir().unwrap();
        let top = t.path().join("top");
        let base = t.path().join("base");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(
            base.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(base.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let layers = [top.clone(), base];
        assert_eq!(numeric_user("app", &layers).unwrap(), "1000:1001");
        assert_eq!(numeric_user("app:staff", &layers).unwrap(), "1000:50");
        assert_eq!(numeric_user("7", &layers).unwrap(), "7:7");
        assert_eq!(numeric_user("7:9", &layers).unwrap(), "7:9");
        assert!(numeric_user("nobody", &layers).is_err());
        // Deleted above: not found.
        std::fs::write(top.join("etc/.wh.passwd"), "").unwrap();
        assert!(numeric_user("app", &layers).is_err());
    }

    #[test]
    fn times_are_rfc3339() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
