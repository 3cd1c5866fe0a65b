//! The command line: argv in, a [`Command`] out. Only reads strings; no system calls.
//!
//! Three spellings of a mount are accepted (DESIGN.md §2): the `mount` subcommand, the
//! fuse-overlayfs form `overlayfuse -o lowerdir=... MERGED` that podman runs, and the
//! mount.fuse3 form `overlayfuse SOURCE MERGED -o ...` that `mount -t fuse.overlayfuse` and
//! fstab lines run.

pub mod optlist;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::error::Error;

/// A mount request as written, before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountArgs {
    /// `--lower A:B`, if given.
    pub lower: Option<String>,
    /// `--upper U`, if given.
    pub upper: Option<PathBuf>,
    /// `--work W`, if given.
    pub work: Option<PathBuf>,
    /// Every `-o` list, in order.
    pub options: Vec<String>,
    /// `-f`: stay in the foreground.
    pub foreground: bool,
    /// `-d`: debug output (implies foreground, as with libfuse).
    pub debug: bool,
    /// The mount.fuse3 source argument, if given.
    pub source: Option<String>,
    /// Where to mount.
    pub mountpoint: PathBuf,
}

/// What the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Mount layers.
    Mount(MountArgs),
    /// Unmount a merged directory.
    Umount(PathBuf),
    /// Build sample layers, mount them, show the merged view, unmount.
    Demo,
    /// Run a command in a container whose root is the merged tree.
    Run(Box<RunArgs>),
    /// List what an upper layer changes in its lowers.
    Diff(DiffArgs),
    /// Write an upper layer as an OCI layer tarball.
    Commit(CommitArgs),
    /// Import, list, inspect, remove or export images of a store.
    Image(ImageArgs),
    /// Print which kernel features this machine offers and which a mount will use.
    Features,
    /// Print the shell completion script for a shell.
    Completions(clap_complete::Shell),
    /// Write the manual pages into a directory.
    Manpages(PathBuf),
    /// Print this text (help or version) and exit 0.
    Print(String),
}

/// An `image` request as written.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct ImageArgs {
    /// The image store (default: /var/lib/overlayfuse as root, else
    /// $XDG_DATA_HOME/overlayfuse).
    #[arg(long, value_name = "DIR", global = true)]
    pub store: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// The `image` subcommands.
#[derive(Clone, Debug, PartialEq, Eq, clap::Subcommand)]
pub enum ImageCommand {
    /// Import an OCI archive (`podman save --format oci-archive`) or OCI image layout
    /// directory: every blob is checked against its digest, each layer unpacked once into
    /// the store, and the image recorded under its name. Prints the name and the image id.
    Import {
        /// The name to record it under (default: the name the archive gives it).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The archive file or layout directory.
        #[arg(value_name = "FILE|DIR")]
        source: PathBuf,
    },
    /// List the images of the store: name, id, layers, size.
    Ls,
    /// Print an image as JSON: its id, layers, layer directories (as a lowerdir) and config.
    Inspect {
        /// The image.
        name: String,
    },
    /// Remove images; layers and blobs another image uses stay.
    Rm {
        /// The images.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Write an image as an OCI archive, which `podman load` reads.
    Export {
        /// The image.
        name: String,
        /// The archive to write (replaced atomically).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
    },
}

/// A `commit` request as written.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct CommitArgs {
    /// Lower layers, colon-separated, topmost first (`\:` for a colon in a path).
    #[arg(long, value_name = "DIR[:DIR...]")]
    pub lower: String,
    /// The upper layer to write.
    #[arg(long, value_name = "DIR")]
    pub upper: PathBuf,
    /// The layer file: `.tar`, `.tar.gz` (or `.tgz`) or `.tar.zst`, replaced atomically.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
}

/// A `diff` request as written.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct DiffArgs {
    /// Lower layers, colon-separated, topmost first (`\:` for a colon in a path).
    #[arg(long, value_name = "DIR[:DIR...]")]
    pub lower: String,
    /// The upper layer whose changes to list.
    #[arg(long, value_name = "DIR")]
    pub upper: PathBuf,
    /// `text`: a line per change, `A`, `C` or `D` and the path, as `podman diff` prints
    /// them; `json`: `{"changed":[...],"added":[...],"deleted":[...]}`.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
}

/// A `run` request as written, before validation (see `config::run`).
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct RunArgs {
    /// An image of the store as the root: its layers under an init layer (the container's
    /// /etc/hostname, /etc/hosts, /etc/resolv.conf), its Entrypoint, Cmd, Env, WorkingDir
    /// and User as defaults.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["lower", "rootfs", "upper"])]
    pub image: Option<String>,
    /// The image store of --image (default: /var/lib/overlayfuse as root, else
    /// $XDG_DATA_HOME/overlayfuse).
    #[arg(long, value_name = "DIR", requires = "image")]
    pub store: Option<PathBuf>,
    /// With --image: when the command exits 0, record the image plus the container's
    /// changes (one new layer) as image NEW.
    #[arg(long, value_name = "NEW", requires = "image")]
    pub commit: Option<String>,
    /// With --image: the program to run instead of the image's Entrypoint ('' for none);
    /// the image's Cmd is then dropped too.
    #[arg(long, value_name = "PROGRAM", requires = "image")]
    pub entrypoint: Option<String>,
    /// Lower layers, colon-separated, topmost first.
    #[arg(long, value_name = "DIR[:DIR...]", conflicts_with = "rootfs")]
    pub lower: Option<String>,
    /// Writable upper layer (default: a private one, removed afterwards).
    #[arg(long, value_name = "DIR", requires = "lower")]
    pub upper: Option<PathBuf>,
    /// Work directory of --upper, on the same filesystem.
    #[arg(long, value_name = "DIR", requires = "upper")]
    pub work: Option<PathBuf>,
    /// An existing directory to use as the root instead of layers.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Host name inside the container.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Network: `none` (a new namespace with loopback only, the default) or `host`.
    #[arg(long, value_name = "none|host")]
    pub net: Option<String>,
    /// System call filter: `default` refuses what podman's default profile refuses (module
    /// loading, keyrings, BPF, perf, ptrace, new namespaces, mounts, clocks, reboot, ...);
    /// `unconfined` runs without a filter.
    #[arg(long, value_name = "default|unconfined")]
    pub seccomp: Option<String>,
    /// User and group to run the command as, inside the container.
    #[arg(long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// An environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Memory limit, e.g. 256M (cgroup memory and memory+swap).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Most processes and threads at once.
    #[arg(long, value_name = "N")]
    pub pids: Option<String>,
    /// CPU time as a number of CPUs, e.g. 1.5.
    #[arg(long, value_name = "F")]
    pub cpus: Option<String>,
    /// A resource limit for the command, e.g. nofile=1024:4096 (repeatable).
    #[arg(long = "rlimit", value_name = "NAME=SOFT:HARD")]
    pub rlimits: Vec<String>,
    /// Bind a host path into the container, read-only with `:ro` (repeatable).
    #[arg(long = "bind", value_name = "SRC:DST[:ro]")]
    pub binds: Vec<String>,
    /// Use a user namespace: `auto` (when not root, the default), `always` or `never`.
    #[arg(long, value_name = "auto|always|never")]
    pub rootless: Option<String>,
    /// Keep the private upper layer made for --lower instead of removing it.
    #[arg(long, requires = "lower", conflicts_with = "upper")]
    pub keep_upper: bool,
    /// The command and its arguments, after `--` (with --image: replaces the image's Cmd).
    #[arg(last = true, required_unless_present = "image", value_name = "CMD")]
    pub command: Vec<OsString>,
}

const EXAMPLES: &str = "\
Examples:
  overlayfuse mount --lower /img/top:/img/base /mnt/merged
      read-only merged view of two layers (the leftmost is the top one)
  overlayfuse -o lowerdir=/img/top:/img/base /mnt/merged
      the same, as fuse-overlayfs and podman's mount_program spell it
  mount -t fuse.overlayfuse overlayfuse /mnt/merged -o lowerdir=/img/top:/img/base
      through mount.fuse3 (or an fstab line of type fuse.overlayfuse)
  overlayfuse mount --lower /img/base --upper /c/upper --work /c/work /mnt/merged
      a writable mount: changes land in /c/upper (/c/work: same filesystem, ours)
  overlayfuse umount /mnt/merged
  overlayfuse run --lower /img/top:/img/base --hostname box -- /bin/sh
      a container whose root is the merged tree (see 'overlayfuse run --help')
  overlayfuse diff --lower /img/base --upper /c/upper
      what /c/upper changes in /img/base: A, C or D and the path, one a line
  overlayfuse commit --lower /img/base --upper /c/upper -o layer.tar.gz
      the same changes as an OCI layer tarball (.tar, .tar.gz or .tar.zst)
  overlayfuse demo

Mount options (-o, comma-separated): lowerdir=A:B, upperdir=U, workdir=W, ro, debug,
  threaded=N, timeout=SECONDS, max_inodes=N (cached inodes kept before the oldest unused
  ones are dropped; default 262144, 0: no limit; needs Linux 6.18), readahead=N (subdirectories
  read ahead of a tree walk; default 8, 0: none), dev, nodev, suid, nosuid, exec, noexec,
  relatime, strictatime, noatime, atime,
  allow_other, fsync=0|1, volatile, markers=auto|kernel|userxattr|aufs (how whiteouts and
  opaque dirs are written; userxattr is a synonym of markers=userxattr), passthrough=auto|on|off,
  lower_passthrough (passthrough for lower files of writable mounts too; while one is open
  for reading, opens for writing and truncates of it fail with ETXTBSY), uidmapping=DISK:SHOWN:LEN[:...], gidmapping=..., squash_to_root, squash_to_uid=N,
  squash_to_gid=N, static_nlink, ino32_t, noxattrs, xattr_permissions=1|2 (as fuse-overlayfs);
  options of the kernel overlay and of SELinux that do not apply (context=, metacopy=,
  redirect_dir=, index=, xino=, ...) are accepted and ignored. Without -f the command returns once the mount is live.";

#[derive(Debug, Parser)]
#[command(
    name = "overlayfuse",
    version,
    about = "A union filesystem in userspace with the semantics of the kernel's overlayfs",
    after_help = EXAMPLES,
)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Mount layers as one merged directory.
    Mount {
        /// Lower layers, colon-separated, topmost first (`\:` for a colon in a path).
        #[arg(long, value_name = "DIR[:DIR...]")]
        lower: Option<String>,
        /// Writable upper layer.
        #[arg(long, value_name = "DIR")]
        upper: Option<PathBuf>,
        /// Work directory, on the upper layer's filesystem.
        #[arg(long, value_name = "DIR")]
        work: Option<PathBuf>,
        /// Mount options, comma-separated (repeatable).
        #[arg(short = 'o', value_name = "OPTS")]
        options: Vec<String>,
        /// Stay in the foreground instead of returning once mounted.
        #[arg(short, long)]
        foreground: bool,
        /// Debug output on stderr (implies --foreground).
        #[arg(short, long)]
        debug: bool,
        /// The merged directory.
        mountpoint: PathBuf,
    },
    /// Unmount a merged directory; its daemon then exits.
    Umount {
        /// The merged directory.
        mountpoint: PathBuf,
    },
    /// Build sample image layers, mount them, show the merged view and where each entry
    /// comes from, then unmount.
    Demo,
    /// Run a command in a container whose root is the merged tree of the layers: new mount,
    /// pid, uts, ipc, net and cgroup namespaces, pivot_root, cgroup limits. Exit status: the
    /// command's, 128+N if a signal N killed it, 125 when the container cannot be set up.
    #[command(after_help = RUN_EXAMPLES)]
    Run(Box<RunArgs>),
    /// List what an upper layer changes in its lowers, as `podman diff` does for a container:
    /// `A` added, `C` changed, `D` deleted, one path a line (no mount needed; every marker
    /// format is read).
    Diff(DiffArgs),
    /// Write what an upper layer changes in its lowers as an OCI layer tarball: changed and
    /// added objects whole (owner, mode, mtime, xattrs, hard links, devices, fifos),
    /// deletions as `.wh.NAME`, directories made anew with `.wh..wh..opq`; the same layers
    /// give the same bytes.
    Commit(CommitArgs),
    /// OCI images in a local store: import an OCI archive or layout (every digest checked,
    /// each layer unpacked once), list, inspect, remove, export for podman load.
    Image(ImageArgs),
    /// Print which kernel features this machine offers and which of them a mount will use
    /// (passthrough, FUSE over io_uring, the *xattrat calls, mount_setattr, inode pruning),
    /// each with the reason when it will not.
    Features,
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (overlayfuse.1 and one per subcommand) into DIR.
    Manpages {
        /// Where to write them (for example /usr/local/share/man/man1).
        dir: PathBuf,
    },
}

const RUN_EXAMPLES: &str = "\
Examples:
  overlayfuse run --lower /img/app:/img/base -- /bin/sh -c 'echo hello > /tmp/x'
      a private upper layer is made and removed afterwards (--keep-upper keeps it)
  overlayfuse run --lower /img/base --upper /c/up --work /c/work --memory 256M --pids 64 -- make
  overlayfuse run --rootfs /srv/root --net host --user 1000:1000 --bind /data:/data:ro -- ls /data
  overlayfuse run --image localhost/app:1
      the image's Entrypoint and Cmd, in its layers (see 'overlayfuse image --help')
  overlayfuse run --image base --commit base-built -- make
      one build step: the changes of a successful run become image base-built
As a user other than root, the container runs in a user namespace that maps the user to root
and, through newuidmap/newgidmap, the user's /etc/subuid and /etc/subgid ranges to 1 and up.";

const SUBCOMMANDS: [&str; 13] = [
    "mount",
    "image",
    "umount",
    "demo",
    "run",
    "diff",
    "commit",
    "features",
    "completions",
    "manpages",
    "help",
    "--help",
    "-h",
];

/// The command line's definition, for generating manual pages and completions.
pub fn definition() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Parses the whole argv (program name first).
///
/// Errors in a `run` command line are set-up errors (exit 125), so that they cannot be taken
/// for the status of the command it would have run.
pub fn parse(args: Vec<OsString>) -> Result<Command, Error> {
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    if first == "run" {
        return parse_subcommand(args).map_err(Error::into_setup);
    }
    if args.len() < 2 || SUBCOMMANDS.contains(&first) || first == "--version" || first == "-V" {
        return parse_subcommand(args);
    }
    parse_legacy(&args[1..])
}

fn parse_subcommand(args: Vec<OsString>) -> Result<Command, Error> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind as K;
            return match e.kind() {
                K::DisplayHelp | K::DisplayVersion => Ok(Command::Print(e.to_string())),
                K::DisplayHelpOnMissingArgumentOrSubcommand => Err(Error::usage(
                    "no command given: try 'overlayfuse mount --lower DIR MERGED' or --help",
                )),
                _ => {
                    // clap's message spans lines before its usage block; fold it into one.
                    let text = e.to_string();
                    let body = text
                        .split("\n\nUsage:")
                        .next()
                        .unwrap_or("invalid arguments");
                    let body = body.trim_start_matches("error: ");
                    let line = body.split_whitespace().collect::<Vec<_>>().join(" ");
                    Err(Error::usage(format!("{line}; see 'overlayfuse --help'")))
                }
            };
        }
    };
    Ok(match cli.command {
        Sub::Mount {
            lower,
            upper,
            work,
            options,
            foreground,
            debug,
            mountpoint,
        } => Command::Mount(MountArgs {
            lower,
            upper,
            work,
            options,
            foreground,
            debug,
            source: None,
            mountpoint,
        }),
        Sub::Umount { mountpoint } => Command::Umount(mountpoint),
        Sub::Demo => Command::Demo,
        Sub::Run(args) => Command::Run(args),
        Sub::Diff(args) => Command::Diff(args),
        Sub::Commit(args) => Command::Commit(args),
        Sub::Image(args) => Command::Image(args),
        Sub::Features => Command::Features,
        Sub::Completions { shell } => Command::Completions(shell),
        Sub::Manpages { dir } => Command::Manpages(dir),
    })
}

/// The fuse-overlayfs and mount.fuse3 forms: flags `-o OPTS`, `-oOPTS`, `-f`, `-d`, then one
/// or two positional arguments, in any order.
fn parse_legacy(args: &[OsString]) -> Result<Command, Error> {
    let mut out = MountArgs::default();
    let mut positional: Vec<OsString> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(text) = arg.to_str() else {
            positional.push(arg.clone());
            continue;
        };
        match text {
            "-o" => {
                let list = it.next().ok_or_else(|| {
                    Error::usage("-o needs an option list, e.g. -o lowerdir=/a:/b")
                })?;
                let list = list
                    .to_str()
                    .ok_or_else(|| Error::usage("-o list is not UTF-8"))?;
                out.options.push(list.to_owned());
            }
            "-f" | "--foreground" => out.foreground = true,
            "-d" | "--debug" => out.debug = true,
            "-h" | "--help" => {
                return parse_subcommand(vec!["overlayfuse".into(), "--help".into()])
            }
            "-V" | "--version" => {
                return Ok(Command::Print(format!(
                    "overlayfuse {}\n",
                    env!("CARGO_PKG_VERSION")
                )))
            }
            s if s.starts_with("-o") => out.options.push(s[2..].to_owned()),
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(Error::usage(format!(
                    "unknown flag '{s}'; see 'overlayfuse --help'"
                )))
            }
            _ => positional.push(arg.clone()),
        }
    }
    match positional.len() {
        1 => out.mountpoint = PathBuf::from(&positional[0]),
        2 => {
            out.source = Some(positional[0].to_string_lossy().into_owned());
            out.mountpoint = PathBuf::from(&positional[1]);
        }
        0 => {
            return Err(Error::usage(
                "no mount point given: overlayfuse -o lowerdir=DIR MERGED",
            ))
        }
        _ => {
            return Err(Error::usage(format!(
                "too many arguments ({}): give [SOURCE] MERGED and options with -o",
                positional.len()
            )))
        }
    }
    Ok(Command::Mount(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<OsString> {
        std::iter::once("overlayfuse")
            .chain(s.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn mount(s: &[&str]) -> MountArgs {
        match parse(argv(s)).unwrap() {
            Command::Mount(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_mount_subcommand_takes_flags() {
        let m = mount(&["mount", "--lower", "/a:/b", "-o", "ro", "-f", "/m"]);
        assert_eq!(m.lower.as_deref(), Some("/a:/b"));
        assert_eq!(m.options, vec!["ro"]);
        assert!(m.foreground);
        assert_eq!(m.mountpoint, PathBuf::from("/m"));
    }

    #[test]
    fn the_fuse_overlayfs_form_is_a_mount() {
        let m = mount(&["-o", "lowerdir=/a,upperdir=/u,workdir=/w", "/m"]);
        assert_eq!(m.options, vec!["lowerdir=/a,upperdir=/u,workdir=/w"]);
        assert_eq!(m.source, None);
        let m = mount(&["-olowerdir=/a", "-f", "/m"]);
        assert_eq!(m.options, vec!["lowerdir=/a"]);
    }

    #[test]
    fn the_mount_fuse3_form_has_a_source() {
        let m = mount(&["overlayfuse", "/m", "-o", "rw,lowerdir=/a"]);
        assert_eq!(m.source.as_deref(), Some("overlayfuse"));
        assert_eq!(m.mountpoint, PathBuf::from("/m"));
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        for bad in [
            &["-o"][..],
            &["-x", "/m"],
            &["-o", "lowerdir=/a"],
            &["a", "b", "c"],
        ] {
            let e = parse(argv(bad)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
            assert!(!e.message.contains('\n'));
        }
        let e = parse(argv(&["mount", "--bogus", "/m"])).unwrap_err();
        assert!(e.message.contains("--bogus"), "{e}");
    }

    #[test]
    fn help_and_version_print() {
        assert!(
            matches!(parse(argv(&["--help"])).unwrap(), Command::Print(t) if t.contains("Examples"))
        );
        assert!(
            matches!(parse(argv(&["--version"])).unwrap(), Command::Print(t) if t.contains("overlayfuse"))
        );
        assert!(matches!(
            parse(argv(&["-o", "x", "--version"])).unwrap(),
            Command::Print(_)
        ));
    }

    #[test]
    fn umount_and_demo() {
        assert_eq!(
            parse(argv(&["umount", "/m"])).unwrap(),
            Command::Umount("/m".into())
        );
        assert_eq!(parse(argv(&["demo"])).unwrap(), Command::Demo);
    }
}
