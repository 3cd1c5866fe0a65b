//! The supervisor: the process the user started. It stays in the host's namespaces, makes
//! the cgroup, writes the id maps, forwards signals to the container's init, and returns the
//! exit status: the command's, 128+N for signal N, 125 when set-up failed.

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::{AccessFlags, Pid};

use super::cgroup::Cgroup;
use super::link::{Link, REFUSED};
use super::userns::{self, IdMaps};
use super::workspace::Workspace;
use super::{keeper, status_code, waited_signals};
use crate::config::run::{RootSource, Rootless, RunConfig};
use crate::error::{Error, SETUP_EXIT};
use crate::sys::container::{fork, PidFd};

/// Seconds a command may outlive a `SIGTERM` sent to the run before it is killed.
pub const STOP_GRACE_SECONDS: u32 = 10;

/// Runs `cfg`'s command in a container and returns its exit status.
pub fn run(cfg: &RunConfig) -> Result<i32, Error> {
    let root = nix::unistd::geteuid().is_root();
    let user_namespace = match cfg.rootless {
        Rootless::Auto => !root,
        Rootless::Always => true,
        Rootless::Never if !root => {
            return Err(Error::setup(
                "--rootless never needs root: run as root, or drop --rootless never",
            ))
        }
        Rootless::Never => false,
    };
    for bind in &cfg.binds {
        if let Err(e) = std::fs::metadata(&bind.source) {
            return Err(Error::setup(format!(
                "--bind source '{}': {e}: give an existing host path",
                bind.source.display()
            )));
        }
    }
    let uses_fuse = matches!(cfg.root, RootSource::Layers { .. });
    if user_namespace
        && uses_fuse
        && nix::unistd::access("/dev/fuse", AccessFlags::R_OK | AccessFlags::W_OK).is_err()
    {
        return Err(Error::setup(
            "a rootless run mounts FUSE inside its user namespace and needs read-write access \
             to /dev/fuse: make it mode 0666 (Debian's udev rule does), or use --rootfs",
        ));
    }
    let maps = user_namespace.then(userns::for_caller);
    let workspace = Workspace::prepare(&cfg.root)?;
    let cgroup = if cfg.limits.any() {
        match Cgroup::create(
            &cfg.limits,
            &format!("overlayfuse-run-{}", std::process::id()),
        ) {
            Ok(cg) => Some(cg),
            Err(e) => {
                workspace.remove();
                return Err(e);
            }
        }
    } else {
        None
    };
    let code = supervise(cfg, &workspace, maps, cgroup.as_ref());
    if let Some(cg) = &cgroup {
        cg.remove();
    }
    // The keeper removes the private directories from inside the user namespace; this is
    // for a keeper that died first.
    workspace.remove();
    code
}

fn supervise(
    cfg: &RunConfig,
    workspace: &Workspace,
    maps: Option<IdMaps>,
    cgroup: Option<&Cgroup>,
) -> Result<i32, Error> {
    let mut signals = waited_signals();
    signals.add(Signal::SIGALRM);
    signals
        .thread_block()
        .map_err(|e| Error::setup(format!("cannot block signals: {e}")))?;
    let (mut ours, theirs) = Link::pair()?;
    let keeper = match fork().map_err(|e| Error::setup(format!("cannot fork: {e}")))? {
        None => {
            drop(ours);
            let code = keeper::run(cfg, workspace, maps.is_some(), theirs);
            std::process::exit(code);
        }
        Some(pid) => pid,
    };
    drop(theirs);
    let init = serve_requests(&mut ours, keeper, maps.as_ref(), cgroup);
    drop(ours);
    let mut stopping = false;
    loop {
        let sig = signals
            .wait()
            .map_err(|e| Error::setup(format!("cannot wait for signals: {e}")))?;
        if sig == Signal::SIGCHLD {
            match waitpid(keeper, Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => {
                    if let Some(code) = status_code(status) {
                        return Ok(code);
                    }
                }
                Err(_) => return Ok(SETUP_EXIT),
            }
        } else if let Some(init) = &init {
            if sig == Signal::SIGALRM {
                // The grace period after SIGTERM is over: end the container, as `podman
                // stop` does.
                let _ = init.signal(Signal::SIGKILL);
                continue;
            }
            let _ = init.signal(sig);
            if sig == Signal::SIGTERM && !stopping {
                stopping = true;
                nix::unistd::alarm::set(STOP_GRACE_SECONDS);
            }
        }
    }
}

/// Answers the keeper's requests until it closes the link; returns a descriptor of the
/// container's init once it has joined the cgroup (signals through it cannot reach another
/// process that reuses init's pid after it ends).
fn serve_requests(
    link: &mut Link,
    keeper: Pid,
    maps: Option<&IdMaps>,
    cgroup: Option<&Cgroup>,
) -> Option<PidFd> {
    let mut init = None;
    while let Some(request) = link.receive() {
        let result = match request.split_once(' ') {
            None if request == "userns" => match maps {
                Some(m) => m.apply(keeper.as_raw()),
                None => Err(Error::setup("no user namespace was planned")),
            },
            Some(("join", pid)) => match pid.parse::<i32>() {
                Ok(pid) => PidFd::open(Pid::from_raw(pid))
                    .map_err(|e| Error::setup(format!("cannot open init's pid descriptor: {e}")))
                    .and_then(|fd| {
                        init = Some(fd);
                        cgroup.map_or(Ok(()), |cg| cg.add(pid))
                    }),
                Err(_) => Err(Error::setup(format!("bad pid '{pid}' from the keeper"))),
            },
            _ => Err(Error::setup(format!(
                "unknown request '{request}' from the keeper"
            ))),
        };
        let answer = match result {
            Ok(()) => "ok",
            Err(e) => {
                eprintln!("overlayfuse run: {e}");
                REFUSED
            }
        };
        if link.send(answer).is_err() {
            break;
        }
    }
    init
}
