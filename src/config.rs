//! [`MountConfig`]: a mount request validated as far as strings allow (pure: no system calls).
//! The checks that need the filesystem (existence, nesting, same device) are in
//! `crate::preflight`. [`run::RunConfig`] is the same for `overlayfuse run`.

pub mod run;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::optlist::{split_layers, split_options};
use crate::cli::MountArgs;
use crate::error::Error;
use crate::fs::idmap::{self, OneMap};
use crate::fs::owner_xattr;
use crate::fs::{Atime, MarkerFormat, View};

/// Kernel mount flags the user may choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountFlag {
    /// Allow device nodes (default off, as for every FUSE mount).
    Dev,
    /// Refuse device nodes.
    NoDev,
    /// Honour setuid/setgid bits (default off).
    Suid,
    /// Ignore setuid/setgid bits.
    NoSuid,
    /// Allow execution.
    Exec,
    /// Refuse execution.
    NoExec,
    /// Update access times.
    Atime,
    /// Never update access times.
    NoAtime,
}

/// A validated mount request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountConfig {
    /// Lower layers, topmost first, absolute.
    pub lowers: Vec<PathBuf>,
    /// The writable upper layer and its work dir, absolute.
    pub upper: Option<(PathBuf, PathBuf)>,
    /// The marker format to write (`None`: the best this process can).
    pub markers: Option<MarkerFormat>,
    /// Whether copy-ups are fsynced (off with `volatile` or `fsync=0`).
    pub fsync: bool,
    /// The merged directory, absolute.
    pub mountpoint: PathBuf,
    /// What `/proc/mounts` shows as the source.
    pub fsname: String,
    /// Stay in the foreground.
    pub foreground: bool,
    /// Debug logging.
    pub debug: bool,
    /// Kernel mount flags, in the order given.
    pub flags: Vec<MountFlag>,
    /// `allow_other` asked for explicitly (root mounts have it anyway).
    pub allow_other: bool,
    /// Request-serving threads.
    pub threads: usize,
    /// How long the kernel may cache entries and attributes.
    pub timeout: Duration,
    /// Whether open files do their I/O in the kernel, on the layer's file (`passthrough=`).
    pub passthrough: PassthroughMode,
    /// Read-only opens of lower files of a writable mount get passthrough too
    /// (`lower_passthrough`): a descriptor opened before a copy-up keeps reading the lower
    /// file's data.
    pub lower_passthrough: bool,
    /// Which transport carries requests and answers (`uring=`).
    pub uring: UringMode,
    /// How objects are shown: id mappings, `static_nlink`, `ino32_t`, `noxattrs`,
    /// `xattr_permissions`.
    pub view: View,
    /// Inodes the kernel and the daemon keep cached before the oldest unused ones are
    /// dropped (`max_inodes=`; 0: no limit).
    pub max_inodes: usize,
    /// Subdirectories read ahead of a tree walk (`readahead=`; 0: off).
    pub readahead: usize,
}

/// The `passthrough=` option: FUSE passthrough of reads, writes and mmap of open files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PassthroughMode {
    /// Used where the kernel and the process's privileges allow it; cached I/O otherwise.
    #[default]
    Auto,
    /// Required: the mount fails where it is not available.
    On,
    /// Never: every read and write goes through the daemon.
    Off,
}

/// The `uring=` option: FUSE over io_uring (Linux 6.14), one request queue per CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UringMode {
    /// Used where the kernel offers it; `/dev/fuse` otherwise.
    #[default]
    Auto,
    /// Required: the mount fails where the kernel does not offer it.
    On,
    /// Never: requests are read from `/dev/fuse`.
    Off,
}

/// Default kernel cache time for entries, attributes and negative entries: the lower layers
/// are frozen for the mount's life, so what the kernel caches stays true (a 1 s default made
/// a warm `stat` of 50,000 files 8x slower than fuse-overlayfs, whose default is 10^6 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(86_400);
/// Default `max_inodes`: about 48 MiB of daemon memory, far more inodes than a container's
/// working set, far fewer than a walk of a big image tree leaves cached.
pub const DEFAULT_MAX_INODES: usize = 1 << 18;

/// Default `readahead`: subdirectories read ahead of a tree walk.
pub const DEFAULT_READAHEAD: usize = 8;

/// Default number of request threads.
pub const DEFAULT_THREADS: usize = 2;
const MAX_THREADS: usize = 64;
/// Most lower layers accepted (the kernel overlay's own limit is 500).
pub const MAX_LOWERS: usize = 500;

/// Options that kernel overlayfs, SELinux or mount(8) pass and that have no meaning here.
const IGNORED_KEYS: [&str; 16] = [
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "metacopy",
    "redirect_dir",
    "index",
    "xino",
    "nfs_export",
    "uuid",
    "verity",
    "fast_ino",
    "writeback",
    "comment",
    "max_idle_threads",
    "plugins",
];
const IGNORED_FLAGS: [&str; 16] = [
    "rw",
    "lazytime",
    "nodiratime",
    "diratime",
    "sync",
    "async",
    "dirsync",
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "users",
    "owner",
    "group",
];

#[derive(Default)]
struct Layers {
    lower: Option<String>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
}

fn set_once<T>(slot: &mut Option<T>, value: T, what: &str) -> Result<(), Error> {
    if slot.is_some() {
        return Err(Error::usage(format!("{what} is given twice: give it once")));
    }
    *slot = Some(value);
    Ok(())
}

fn absolute(path: &Path, what: &str) -> Result<PathBuf, Error> {
    if path.as_os_str().is_empty() {
        return Err(Error::usage(format!(
            "{what} is empty: give an absolute directory path"
        )));
    }
    if !path.is_absolute() {
        return Err(Error::invalid(format!(
            "{what} '{}' is a relative path: give an absolute path",
            path.display()
        )));
    }
    Ok(path.to_owned())
}

impl MountConfig {
    /// Validates a mount request.
    pub fn from_args(args: &MountArgs) -> Result<MountConfig, Error> {
        let mut layers = Layers {
            lower: args.lower.clone(),
            upper: args.upper.clone(),
            work: args.work.clone(),
        };
        let mut cfg = MountConfig {
            lowers: Vec::new(),
            upper: None,
            markers: None,
            fsync: true,
            mountpoint: absolute(&args.mountpoint, "mount point")?,
            fsname: args.source.clone().unwrap_or_else(|| "overlayfuse".into()),
            foreground: args.foreground || args.debug,
            debug: args.debug,
            flags: Vec::new(),
            allow_other: false,
            threads: DEFAULT_THREADS,
            timeout: DEFAULT_TIMEOUT,
            passthrough: PassthroughMode::Auto,
            lower_passthrough: false,
            uring: UringMode::Auto,
            view: View::default(),
            max_inodes: DEFAULT_MAX_INODES,
            readahead: DEFAULT_READAHEAD,
        };
        for list in &args.options {
            for item in split_options(list)? {
                cfg.apply(&item, &mut layers)?;
            }
        }
        let lower = layers.lower.ok_or_else(|| {
            Error::usage("no lower layer: give --lower DIR[:DIR...] or -o lowerdir=DIR[:DIR...]")
        })?;
        for path in split_layers(&lower, "lowerdir")? {
            cfg.lowers.push(absolute(&path, "lowerdir")?);
        }
        if cfg.lowers.len() > MAX_LOWERS {
            return Err(Error::invalid(format!(
                "{} lower layers given, at most {MAX_LOWERS} are supported: flatten some layers",
                cfg.lowers.len()
            )));
        }
        match (layers.upper, layers.work) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(Error::usage(
                    "upperdir needs a workdir on the same filesystem: add it",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::usage(
                    "workdir is given without upperdir: add upperdir or drop workdir",
                ))
            }
            (Some(u), Some(w)) => {
                cfg.upper = Some((absolute(&u, "upperdir")?, absolute(&w, "workdir")?));
            }
        }
        if cfg.lower_passthrough && cfg.passthrough == PassthroughMode::Off {
            return Err(Error::usage(
                "lower_passthrough needs passthrough: drop passthrough=off or lower_passthrough",
            ));
        }
        Ok(cfg)
    }

    fn apply(&mut self, item: &str, layers: &mut Layers) -> Result<(), Error> {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        let need = |v: Option<&str>| -> Result<String, Error> {
            match v {
                Some(v) if !v.is_empty() => Ok(v.to_owned()),
                _ => Err(Error::usage(format!(
                    "option '{key}' needs a value: {key}=VALUE"
                ))),
            }
        };
        // A count option, where 0 means `zero`.
        let count = |v: String, what: &str, zero: &str| -> Result<usize, Error> {
            v.parse().map_err(|_| {
                Error::usage(format!(
                    "{key}={v} is not a number: give a count of {what}, or 0 for {zero}"
                ))
            })
        };
        let flag = |v: Option<&str>| -> Result<(), Error> {
            match v {
                None => Ok(()),
                Some(_) => Err(Error::usage(format!(
                    "option '{key}' takes no value: write '{key}'"
                ))),
            }
        };
        match key {
            "lowerdir" => set_once(&mut layers.lower, need(value)?, "lowerdir")?,
            "upperdir" => set_once(&mut layers.upper, need(value)?.into(), "upperdir")?,
            "workdir" => set_once(&mut layers.work, need(value)?.into(), "workdir")?,
            "ro" => {
                flag(value)?;
                self.view.read_only = true;
            }
            "relatime" | "strictatime" => {
                flag(value)?;
                self.view.atime = match key {
                    "relatime" => Atime::Relative,
                    _ => Atime::Strict,
                };
            }
            "debug" => {
                flag(value)?;
                self.debug = true;
                self.foreground = true;
            }
            "allow_other" | "allow_root" | "default_permissions" => {
                flag(value)?;
                self.allow_other |= key == "allow_other";
            }
            "dev" | "nodev" | "suid" | "nosuid" | "exec" | "noexec" | "atime" | "noatime" => {
                flag(value)?;
                self.flags.push(match key {
                    "dev" => MountFlag::Dev,
                    "nodev" => MountFlag::NoDev,
                    "suid" => MountFlag::Suid,
                    "nosuid" => MountFlag::NoSuid,
                    "exec" => MountFlag::Exec,
                    "noexec" => MountFlag::NoExec,
                    "atime" => MountFlag::Atime,
                    _ => MountFlag::NoAtime,
                });
                match key {
                    "atime" => self.view.atime = Atime::Relative,
                    "noatime" => self.view.atime = Atime::Never,
                    _ => {}
                }
            }
            "threaded" | "threads" => {
                let n: usize = need(value)?.parse().map_err(|_| {
                    Error::usage(format!(
                        "{key}={} is not a number: give 1 to {MAX_THREADS}",
                        value.unwrap_or("")
                    ))
                })?;
                // fuse-overlayfs spells "single-threaded" threaded=0.
                self.threads = n.clamp(1, MAX_THREADS);
            }
            "max_inodes" => self.max_inodes = count(need(value)?, "inodes", "no limit")?,
            "readahead" => self.readahead = count(need(value)?, "directories", "none")?,
            "timeout" => {
                let v = need(value)?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| {
                        Error::usage(format!(
                            "timeout={v} is not a number of seconds: e.g. timeout=1"
                        ))
                    })?;
                self.timeout = Duration::from_secs_f64(secs.min(86_400.0));
            }
            "fsync" => match value {
                Some("0") => self.fsync = false,
                Some("1") => self.fsync = true,
                _ => {
                    return Err(Error::usage(
                        "fsync takes 0 or 1: fsync=0 skips syncs on copy-up",
                    ))
                }
            },
            "volatile" => {
                flag(value)?;
                self.fsync = false;
            }
            "passthrough" => {
                self.passthrough = match value {
                    Some("auto") => PassthroughMode::Auto,
                    Some("on") => PassthroughMode::On,
                    Some("off") => PassthroughMode::Off,
                    _ => {
                        return Err(Error::usage(
                            "passthrough takes auto, on or off: auto uses it where available",
                        ))
                    }
                }
            }
            "lower_passthrough" => {
                flag(value)?;
                self.lower_passthrough = true;
            }
            "uring" => {
                self.uring = match value {
                    Some("auto") => UringMode::Auto,
                    Some("on") => UringMode::On,
                    Some("off") => UringMode::Off,
                    _ => {
                        return Err(Error::usage(
                            "uring takes auto, on or off: auto uses FUSE over io_uring where \
                             the kernel offers it",
                        ))
                    }
                }
            }
            "uidmapping" | "gidmapping" => {
                let v = need(value)?;
                let ranges = idmap::parse_ranges(&v).map_err(|e| {
                    Error::usage(format!(
                        "{key}={v}: {e}: write DISK:SHOWN:LEN triplets, e.g. {key}=0:100000:65536"
                    ))
                })?;
                self.id_map(key).ranges = ranges;
            }
            "squash_to_uid" | "squash_to_gid" => {
                let v = need(value)?;
                let id = v.parse().map_err(|_| {
                    Error::usage(format!("{key}={v} is not a numeric id: e.g. {key}=1000"))
                })?;
                self.id_map(key).squash = Some(id);
            }
            "squash_to_root" => {
                flag(value)?;
                // squash_to_uid= and squash_to_gid= win, in whatever order they come.
                self.view.ids.uids.squash.get_or_insert(0);
                self.view.ids.gids.squash.get_or_insert(0);
            }
            "static_nlink" => {
                flag(value)?;
                self.view.static_nlink = true;
            }
            "ino32_t" => {
                flag(value)?;
                self.view.ino32 = true;
            }
            "noacl" => {
                flag(value)?;
                self.view.no_acl = true;
            }
            "noxattrs" => {
                self.view.no_xattrs = match value {
                    None | Some("1") => true,
                    Some("0") => false,
                    Some(_) => {
                        return Err(Error::usage(
                            "noxattrs takes 0 or 1: noxattrs=1 turns xattrs off",
                        ))
                    }
                }
            }
            "userxattr" => {
                flag(value)?;
                self.markers.get_or_insert(MarkerFormat::UserXattr);
            }
            "markers" => {
                let v = need(value)?;
                self.markers = MarkerFormat::parse(&v).ok_or_else(|| {
                    Error::usage(format!(
                        "markers={v} is unknown: give auto, kernel, userxattr or aufs"
                    ))
                })?;
            }
            "xattr_permissions" => {
                self.view.owner_xattr = match value {
                    Some("0") => None,
                    Some("1") => Some(owner_xattr::PRIVILEGED),
                    Some("2") => Some(owner_xattr::USER),
                    _ => {
                        return Err(Error::usage(
                            "xattr_permissions takes 0, 1 (security. xattr) or 2 (user. xattr)",
                        ))
                    }
                }
            }
            k if IGNORED_KEYS.contains(&k) || IGNORED_FLAGS.contains(&k) || k.starts_with("x-") => {
                log::debug!("ignoring option '{item}'");
            }
            _ => {
                return Err(Error::usage(format!(
                    "unknown option '{key}'; see 'overlayfuse --help' for the options"
                )))
            }
        }
        Ok(())
    }
}

impl MountConfig {
    /// The user mapping for a `uid...` option, the group mapping for a `gid...` one.
    fn id_map(&mut self, key: &str) -> &mut OneMap {
        if key.contains("uid") {
            &mut self.view.ids.uids
        } else {
            &mut self.view.ids.gids
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(options: &[&str]) -> MountArgs {
        MountArgs {
            options: options.iter().map(|s| s.to_string()).collect(),
            mountpoint: "/m".into(),
            ..MountArgs::default()
        }
    }

    #[test]
    fn podman_style_options_are_accepted() {
        let cfg = MountConfig::from_args(&args(&[
            "lowerdir=/l1:/l2,,context=\"system_u:object_r:container_file_t:s0:c1,c2\",nodev,metacopy=on,redirect_dir=on,index=off,xino=off,userxattr,x-systemd.automount",
        ]))
        .unwrap();
        assert_eq!(cfg.lowers, vec![PathBuf::from("/l1"), "/l2".into()]);
        assert_eq!(cfg.flags, vec![MountFlag::NoDev]);
    }

    #[test]
    fn lower_from_flag_and_option_conflict() {
        let mut a = args(&["lowerdir=/x"]);
        a.lower = Some("/y".into());
        assert!(MountConfig::from_args(&a)
            .unwrap_err()
            .message
            .contains("twice"));
    }

    #[test]
    fn relative_and_missing_paths_are_refused() {
        assert_eq!(
            MountConfig::from_args(&args(&["lowerdir=rel"]))
                .unwrap_err()
                .exit_code(),
            2
        );
        assert!(MountConfig::from_args(&args(&["ro"]))
            .unwrap_err()
            .message
            .contains("no lower"));
        let mut a = args(&["lowerdir=/a"]);
        a.mountpoint = "m".into();
        assert!(MountConfig::from_args(&a)
            .unwrap_err()
            .message
            .contains("relative"));
    }

    #[test]
    fn malformed_options_are_refused_with_one_line() {
        for bad in [
            "lowerdir=/a,bogus",
            "lowerdir=/a,threaded=x",
            "lowerdir=/a,timeout=-1",
            "lowerdir=/a,fsync=2",
            "lowerdir=/a,ro=1",
            "lowerdir=",
            "lowerdir=/a,upperdir=/u",
            "lowerdir=/a,workdir=/w",
            "lowerdir=/a,upperdir=/u,workdir=w",
            "lowerdir=/a,markers=bogus",
            "lowerdir=/a,passthrough=maybe",
            "lowerdir=/a,passthrough",
            "lowerdir=/a,lower_passthrough=1",
            "lowerdir=/a,lower_passthrough,passthrough=off",
            "lowerdir=/a,uring=maybe",
            "lowerdir=/a,uring",
            "lowerdir=/a,uidmapping=0:1",
            "lowerdir=/a,gidmapping=0:1:1:0:5:1",
            "lowerdir=/a,squash_to_uid=x",
            "lowerdir=/a,squash_to_root=1",
            "lowerdir=/a,noxattrs=2",
            "lowerdir=/a,xattr_permissions=3",
            "lowerdir=/a,xattr_permissions",
            "lowerdir=/a,max_inodes=-1",
            "lowerdir=/a,max_inodes",
            "lowerdir=/a,readahead=many",
            "lowerdir=/a,readahead",
        ] {
            let e = MountConfig::from_args(&args(&[bad])).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
            assert!(!e.to_string().contains('\n'), "{bad}");
        }
    }

    #[test]
    fn rootless_options_of_fuse_overlayfs_are_read() {
        let cfg = MountConfig::from_args(&args(&[
            "lowerdir=/a,uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1,squash_to_uid=7,squash_to_root,static_nlink,ino32_t,noxattrs=1,noacl,xattr_permissions=2",
        ]))
        .unwrap();
        let v = &cfg.view;
        assert_eq!(v.ids.uids.ranges.len(), 2);
        assert_eq!(v.ids.uids.ranges[1].shown, 100000);
        assert_eq!(v.ids.gids.ranges.len(), 1);
        assert_eq!((v.ids.uids.squash, v.ids.gids.squash), (Some(7), Some(0)));
        assert!(v.static_nlink && v.ino32 && v.no_xattrs && v.no_acl);
        assert_eq!(v.owner_xattr, Some(owner_xattr::USER));
    }

    #[test]
    fn numbers_and_flags_are_read() {
        let cfg = MountConfig::from_args(&args(&[
            "lowerdir=/a,threaded=4,timeout=2.5,debug,allow_other,max_inodes=1000,readahead=0,uring=off",
        ]))
        .unwrap();
        assert_eq!(cfg.threads, 4);
        assert_eq!(cfg.max_inodes, 1000);
        assert_eq!(cfg.readahead, 0);
        assert_eq!(cfg.timeout, Duration::from_millis(2500));
        assert!(cfg.debug && cfg.foreground && cfg.allow_other);
        assert_eq!(cfg.uring, UringMode::Off);
    }
}
