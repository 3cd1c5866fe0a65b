//! [`RunConfig`]: an `overlayfuse run` request validated as far as strings allow (pure: no
//! system calls). Every error is a set-up error (exit 125).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::cli::optlist::split_layers;
use crate::cli::RunArgs;
use crate::error::Error;

/// Where the container's root comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootSource {
    /// Layers to mount with overlayfuse.
    Layers {
        /// `--lower` as given (validated), topmost first.
        lower: String,
        /// `--upper` and `--work`; `None`: a private pair made for this run.
        upper: Option<(PathBuf, PathBuf)>,
        /// Keep the private upper afterwards (`--keep-upper`).
        keep_upper: bool,
    },
    /// An existing directory (`--rootfs`).
    Dir(PathBuf),
}

/// The container's network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// A new network namespace with only the loopback interface, up.
    None,
    /// The host's network namespace.
    Host,
}

/// Whether the container gets a user namespace (`--rootless`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rootless {
    /// When not run as root.
    Auto,
    /// Always, also as root.
    Always,
    /// Never: only root can run containers then.
    Never,
}

/// Cgroup limits; `None` leaves a resource unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// Memory (and memory plus swap) in bytes.
    pub memory: Option<u64>,
    /// Tasks at once.
    pub pids: Option<u64>,
    /// CPU time as a number of CPUs.
    pub cpus: Option<f64>,
}

impl Limits {
    /// True when any limit is set, so a cgroup is needed.
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.pids.is_some() || self.cpus.is_some()
    }
}

/// A resource limit for the command (`--rlimit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    /// The `RLIMIT_*` resource.
    pub resource: libc::__rlimit_resource_t,
    /// Soft limit (`u64::MAX`: unlimited).
    pub soft: u64,
    /// Hard limit (`u64::MAX`: unlimited).
    pub hard: u64,
}

/// A host path bound into the container (`--bind`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Host path, absolute.
    pub source: PathBuf,
    /// Path inside the container, absolute.
    pub target: PathBuf,
    /// Read-only.
    pub readonly: bool,
}

/// A validated `run` request.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// The root.
    pub root: RootSource,
    /// Host name inside.
    pub hostname: String,
    /// Network.
    pub net: Network,
    /// User and group of the command inside (`None`: 0:0).
    pub user: Option<(u32, u32)>,
    /// Working directory inside, absolute.
    pub cwd: PathBuf,
    /// `--env` variables, in order.
    pub env: Vec<(String, String)>,
    /// Cgroup limits.
    pub limits: Limits,
    /// Resource limits.
    pub rlimits: Vec<Rlimit>,
    /// Bind mounts, in order.
    pub binds: Vec<Bind>,
    /// User namespace choice.
    pub rootless: Rootless,
    /// Whether the default seccomp filter applies (`--seccomp default`, the default).
    pub seccomp: bool,
    /// The command and its arguments.
    pub command: Vec<OsString>,
}

/// Host name when `--hostname` is not given.
pub const DEFAULT_HOSTNAME: &str = "overlayfuse";
/// Period of the CPU bandwidth controller, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

const RLIMITS: [(&str, libc::__rlimit_resource_t); 16] = [
    ("as", libc::RLIMIT_AS),
    ("core", libc::RLIMIT_CORE),
    ("cpu", libc::RLIMIT_CPU),
    ("data", libc::RLIMIT_DATA),
    ("fsize", libc::RLIMIT_FSIZE),
    ("locks", libc::RLIMIT_LOCKS),
    ("memlock", libc::RLIMIT_MEMLOCK),
    ("msgqueue", libc::RLIMIT_MSGQUEUE),
    ("nice", libc::RLIMIT_NICE),
    ("nofile", libc::RLIMIT_NOFILE),
    ("nproc", libc::RLIMIT_NPROC),
    ("rss", libc::RLIMIT_RSS),
    ("rtprio", libc::RLIMIT_RTPRIO),
    ("rttime", libc::RLIMIT_RTTIME),
    ("sigpending", libc::RLIMIT_SIGPENDING),
    ("stack", libc::RLIMIT_STACK),
];

impl RunConfig {
    /// Validates a `run` request.
    pub fn from_args(args: &RunArgs) -> Result<RunConfig, Error> {
        Ok(RunConfig {
            root: root_source(args)?,
            hostname: match &args.hostname {
                Some(h) => hostname(h)?,
                None => DEFAULT_HOSTNAME.to_owned(),
            },
            net: match args.net.as_deref() {
                None | Some("none") => Network::None,
                Some("host") => Network::Host,
                Some(other) => return Err(bad(format!("--net {other}: use none or host"))),
            },
            user: args.user.as_deref().map(user).transpose()?,
            cwd: match &args.cwd {
                Some(c) => absolute(Path::new(c), "--cwd")?,
                None => PathBuf::from("/"),
            },
            env: args.env.iter().map(|e| env(e)).collect::<Result<_, _>>()?,
            limits: Limits {
                memory: args.memory.as_deref().map(size).transpose()?,
                pids: args.pids.as_deref().map(pids).transpose()?,
                cpus: args.cpus.as_deref().map(cpus).transpose()?,
            },
            rlimits: args
                .rlimits
                .iter()
                .map(|r| rlimit(r))
                .collect::<Result<_, _>>()?,
            binds: args
                .binds
                .iter()
                .map(|b| bind(b))
                .collect::<Result<_, _>>()?,
            rootless: match args.rootless.as_deref() {
                None | Some("auto") => Rootless::Auto,
                Some("always") => Rootless::Always,
                Some("never") => Rootless::Never,
                Some(other) => {
                    return Err(bad(format!(
                        "--rootless {other}: use auto, always or never"
                    )))
                }
            },
            seccomp: match args.seccomp.as_deref() {
                None | Some("default") => true,
                Some("unconfined") => false,
                Some(other) => {
                    return Err(bad(format!("--seccomp {other}: use default or unconfined")))
                }
            },
            command: if args.command.is_empty() {
                return Err(bad("no command given: put it after --, e.g. -- /bin/sh"));
            } else {
                args.command.clone()
            },
        })
    }
}

fn bad(message: impl Into<String>) -> Error {
    Error::setup(message)
}

fn absolute(path: &Path, what: &str) -> Result<PathBuf, Error> {
    if !path.is_absolute() {
        return Err(bad(format!(
            "{what} '{}' is not an absolute path: give one starting with /",
            path.display()
        )));
    }
    Ok(path.to_owned())
}

fn root_source(args: &RunArgs) -> Result<RootSource, Error> {
    match (&args.lower, &args.rootfs) {
        (Some(lower), None) => {
            for layer in split_layers(lower, "--lower").map_err(Error::into_setup)? {
                absolute(&layer, "--lower layer")?;
            }
            let upper = match (&args.upper, &args.work) {
                (Some(u), Some(w)) => Some((absolute(u, "--upper")?, absolute(w, "--work")?)),
                (None, None) => None,
                _ => return Err(bad("--upper needs --work (and --work needs --upper)")),
            };
            if upper.is_some() && args.keep_upper {
                return Err(bad(
                    "--keep-upper is for the private upper: with --upper the layer is yours and kept anyway",
                ));
            }
            Ok(RootSource::Layers {
                lower: lower.clone(),
                upper,
                keep_upper: args.keep_upper,
            })
        }
        (None, Some(dir)) => Ok(RootSource::Dir(absolute(dir, "--rootfs")?)),
        (None, None) => Err(bad("no root given: use --lower A:B or --rootfs DIR")),
        (Some(_), Some(_)) => Err(bad("--lower and --rootfs exclude each other: give one")),
    }
}

pub(crate) fn hostname(name: &str) -> Result<String, Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.']);
    if !ok {
        return Err(bad(format!(
            "--hostname '{name}': use 1 to 64 letters, digits, '-' and '.'"
        )));
    }
    Ok(name.to_owned())
}

fn number(text: &str, what: &str) -> Result<u32, Error> {
    text.parse()
        .map_err(|_| bad(format!("{what} '{text}' is not a number: ids are numeric")))
}

fn user(spec: &str) -> Result<(u32, u32), Error> {
    match spec.split_once(':') {
        Some((u, g)) => Ok((number(u, "--user uid")?, number(g, "--user gid")?)),
        None => {
            let uid = number(spec, "--user uid")?;
            Ok((uid, uid))
        }
    }
}

fn env(item: &str) -> Result<(String, String), Error> {
    match item.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(bad(format!("--env '{item}': write KEY=VALUE"))),
    }
}

/// Parses a size such as `256M`, `1g`, `512KiB` or `1048576` into bytes.
pub fn size(text: &str) -> Result<u64, Error> {
    let lower = text.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(digits_end);
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => u32::MAX,
    };
    let value: Option<u64> = digits.parse().ok();
    match value.and_then(|v| v.checked_mul(1u64.checked_shl(shift)?)) {
        Some(bytes) if bytes >= 1 << 20 => Ok(bytes),
        Some(_) => Err(bad(format!(
            "--memory {text} is below 1M: give a larger size"
        ))),
        None => Err(bad(format!(
            "--memory '{text}' is not a size: write e.g. 256M or 2G"
        ))),
    }
}

fn pids(text: &str) -> Result<u64, Error> {
    match text.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(bad(format!(
            "--pids '{text}': give a whole number of 1 or more"
        ))),
    }
}

fn cpus(text: &str) -> Result<f64, Error> {
    match text.parse::<f64>() {
        Ok(n) if (0.01..=4096.0).contains(&n) => Ok(n),
        _ => Err(bad(format!(
            "--cpus '{text}': give a number such as 0.5 or 2, at least 0.01"
        ))),
    }
}

fn rlimit_value(text: &str, item: &str) -> Result<u64, Error> {
    if text == "unlimited" || text == "-1" {
        return Ok(u64::MAX);
    }
    text.parse().map_err(|_| {
        bad(format!(
            "--rlimit '{item}': limits are numbers or 'unlimited'"
        ))
    })
}

fn rlimit(item: &str) -> Result<Rlimit, Error> {
    let (name, values) = item.split_once('=').ok_or_else(|| {
        bad(format!(
            "--rlimit '{item}': write NAME=SOFT:HARD, e.g. nofile=1024:4096"
        ))
    })?;
    let key = name.to_ascii_lowercase();
    let key = key.strip_prefix("rlimit_").unwrap_or(&key);
    let resource = RLIMITS
        .iter()
        .find(|(n, _)| *n == key)
        .map(|(_, r)| *r)
        .ok_or_else(|| {
            let names: Vec<&str> = RLIMITS.iter().map(|(n, _)| *n).collect();
            bad(format!(
                "--rlimit '{name}' is not a limit: use one of {}",
                names.join(", ")
            ))
        })?;
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (rlimit_value(s, item)?, rlimit_value(h, item)?),
        None => {
            let v = rlimit_value(values, item)?;
            (v, v)
        }
    };
    if soft > hard {
        return Err(bad(format!(
            "--rlimit '{item}': the soft limit exceeds the hard one"
        )));
    }
    Ok(Rlimit {
        resource,
        soft,
        hard,
    })
}

fn bind(item: &str) -> Result<Bind, Error> {
    let parts: Vec<&str> = item.split(':').collect();
    let readonly = match parts.get(2).copied() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => {
            return Err(bad(format!(
                "--bind '{item}': write SRC:DST, SRC:DST:ro or SRC:DST:rw (no ':' in paths)"
            )))
        }
    };
    if parts.len() < 2 || parts.len() > 3 {
        return Err(bad(format!("--bind '{item}': write SRC:DST[:ro]")));
    }
    let target = absolute(Path::new(parts[1]), "--bind target")?;
    if target == Path::new("/") {
        return Err(bad(format!("--bind '{item}': the target may not be /")));
    }
    Ok(Bind {
        source: absolute(Path::new(parts[0]), "--bind source")?,
        target,
        readonly,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(lower: &str) -> RunArgs {
        RunArgs {
            lower: Some(lower.to_owned()),
            command: vec!["/bin/true".into()],
            ..RunArgs::default()
        }
    }

    #[test]
    fn defaults() {
        let cfg = RunConfig::from_args(&args("/a:/b")).unwrap();
        assert_eq!(cfg.hostname, DEFAULT_HOSTNAME);
        assert_eq!(cfg.net, Network::None);
        assert_eq!(cfg.cwd, PathBuf::from("/"));
        assert_eq!(cfg.rootless, Rootless::Auto);
        assert!(!cfg.limits.any());
        assert!(matches!(cfg.root, RootSource::Layers { upper: None, .. }));
    }

    #[test]
    fn sizes() {
        assert_eq!(size("256M").unwrap(), 256 << 20);
        assert_eq!(size("1g").unwrap(), 1 << 30);
        assert_eq!(size("2048KiB").unwrap(), 2 << 20);
        assert_eq!(size("2097152").unwrap(), 2 << 20);
        for bad in ["", "M", "12Q", "-5M", "1k", "99999999999999T"] {
            assert!(size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_and_rlimits() {
        let mut a = args("/a");
        a.memory = Some("64m".into());
        a.pids = Some("16".into());
        a.cpus = Some("1.5".into());
        a.rlimits = vec![
            "nofile=64:128".into(),
            "RLIMIT_CORE=0".into(),
            "stack=unlimited".into(),
        ];
        let cfg = RunConfig::from_args(&a).unwrap();
        assert_eq!(cfg.limits.memory, Some(64 << 20));
        assert_eq!(cfg.limits.pids, Some(16));
        assert_eq!(cfg.limits.cpus, Some(1.5));
        assert_eq!(
            cfg.rlimits[0],
            Rlimit {
                resource: libc::RLIMIT_NOFILE,
                soft: 64,
                hard: 128
            }
        );
        assert_eq!(cfg.rlimits[1].hard, 0);
        assert_eq!(cfg.rlimits[2].soft, u64::MAX);
        for (field, value) in [
            ("pids", "0"),
            ("cpus", "0"),
            ("cpus", "nan"),
            ("rlimit", "nofile=9:1"),
            ("rlimit", "files=1"),
        ] {
            let mut a = args("/a");
            match field {
                "pids" => a.pids = Some(value.into()),
                "cpus" => a.cpus = Some(value.into()),
                _ => a.rlimits = vec![value.into()],
            }
            let err = RunConfig::from_args(&a).unwrap_err();
            assert_eq!(err.exit_code(), 125, "{field}={value}");
        }
    }

    #[test]
    fn users_binds_env_hostnames() {
        let mut a = args("/a");
        a.user = Some("1000".into());
        a.binds = vec!["/data:/mnt/data:ro".into(), "/x:/y".into()];
        a.env = vec!["A=b=c".into()];
        a.hostname = Some("box-1.local".into());
        let cfg = RunConfig::from_args(&a).unwrap();
        assert_eq!(cfg.user, Some((1000, 1000)));
        assert!(cfg.binds[0].readonly && !cfg.binds[1].readonly);
        assert_eq!(cfg.env, vec![("A".to_owned(), "b=c".to_owned())]);
        for (field, value) in [
            ("user", "root"),
            ("bind", "rel:/x"),
            ("bind", "/a:/b:rx"),
            ("bind", "/a:/"),
            ("env", "=x"),
            ("env", "NOVALUE"),
            ("hostname", "-x"),
            ("hostname", "a b"),
            ("cwd", "tmp"),
            ("net", "bridge"),
            ("rootless", "sometimes"),
        ] {
            let mut a = args("/a");
            match field {
                "user" => a.user = Some(value.into()),
                "bind" => a.binds = vec![value.into()],
                "env" => a.env = vec![value.into()],
                "hostname" => a.hostname = Some(value.into()),
                "cwd" => a.cwd = Some(value.into()),
                "net" => a.net = Some(value.into()),
                _ => a.rootless = Some(value.into()),
            }
            let err = RunConfig::from_args(&a).unwrap_err();
            assert_eq!(err.exit_code(), 125, "{field}={value}");
            assert!(!err.message.contains('\n'));
        }
    }

    #[test]
    fn roots() {
        let mut a = args("relative");
        assert!(RunConfig::from_args(&a).is_err());
        a.lower = None;
        assert!(RunConfig::from_args(&a).is_err());
        a.rootfs = Some("/srv/root".into());
        let cfg = RunConfig::from_args(&a).unwrap();
        assert_eq!(cfg.root, RootSource::Dir("/srv/root".into()));
        let mut a = args("/a");
        a.upper = Some("/u".into());
        assert!(RunConfig::from_args(&a).is_err());
        a.work = Some("/w".into());
        let cfg = RunConfig::from_args(&a).unwrap();
        assert!(matches!(
            cfg.root,
            RootSource::Layers { upper: Some(_), .. }
        ));
    }
}
