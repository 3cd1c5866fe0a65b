//! The command, forked by init: takes the user and group, the working directory and a clean
//! environment, then execs. Set-up failures exit 125; a command that is not found exits 127
//! and one that cannot be executed 126, as in a shell.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::SigSet;
use nix::unistd::{Gid, Uid};

use crate::config::run::RunConfig;
use crate::error::SETUP_EXIT;
use crate::sys::container::restore_sigpipe;

/// `PATH` inside the container.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn die(code: i32, message: String) -> ! {
    eprintln!("overlayfuse run: {message}");
    std::process::exit(code)
}

/// Becomes the command, under the seccomp `filter` (none when empty); never returns.
pub fn exec(cfg: &RunConfig, filter: &[seccompiler::BpfProgram]) -> ! {
    let _ = SigSet::all().thread_unblock();
    if let Err(e) = restore_sigpipe() {
        die(SETUP_EXIT, format!("cannot reset SIGPIPE: {e}"));
    }
    if let Some((uid, gid)) = cfg.user {
        if let Err(e) = become_user(uid, gid) {
            die(
                SETUP_EXIT,
                format!("--user {uid}:{gid}: {e}: is the id mapped in the container?"),
            );
        }
    }
    if let Err(e) = nix::unistd::chdir(&cfg.cwd) {
        die(
            SETUP_EXIT,
            format!("--cwd '{}': {e} in the container", cfg.cwd.display()),
        );
    }
    let env = environment(cfg, std::env::var_os("TERM"));
    let argv: Vec<CString> = cfg.command.iter().map(|a| c_string(a)).collect();
    // Last, so that nothing of the set-up above runs under it.
    if let Err(e) = super::seccomp::apply(filter) {
        die(SETUP_EXIT, format!("cannot apply the seccomp filter: {e}"));
    }
    let program = &cfg.command[0];
    let err = run_program(program, &argv, &env);
    let shown = program.to_string_lossy();
    match err {
        Errno::ENOENT | Errno::ENOTDIR => die(
            127,
            format!("'{shown}': command not found in the container"),
        ),
        e => die(126, format!("'{shown}' cannot be executed: {e}")),
    }
}

fn c_string(s: &OsStr) -> CString {
    // Arguments from argv cannot hold NUL bytes.
    CString::new(s.as_bytes()).unwrap_or_default()
}

fn become_user(uid: u32, gid: u32) -> Result<(), Errno> {
    let setgroups_allowed =
        std::fs::read_to_string("/proc/self/setgroups").map_or(true, |s| s.trim() == "allow");
    if setgroups_allowed {
        nix::unistd::setgroups(&[Gid::from_raw(gid)])?;
    }
    let (g, u) = (Gid::from_raw(gid), Uid::from_raw(uid));
    nix::unistd::setresgid(g, g, g)?;
    nix::unistd::setresuid(u, u, u)
}

/// The command's environment: PATH, HOME, HOSTNAME and the caller's TERM, then `--env`
/// (which may override them).
fn environment(cfg: &RunConfig, term: Option<OsString>) -> Vec<CString> {
    let home = match cfg.user {
        Some((uid, _)) if uid != 0 => "/",
        _ => "/root",
    };
    let mut vars: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), PATH.into()),
        ("HOME".into(), home.into()),
        ("HOSTNAME".into(), cfg.hostname.clone().into()),
    ];
    if let Some(term) = term {
        vars.push(("TERM".into(), term));
    }
    for (k, v) in &cfg.env {
        vars.retain(|(name, _)| name != OsStr::new(k));
        vars.push((k.into(), v.into()));
    }
    vars.iter()
        .map(|(k, v)| {
            let mut item = k.as_bytes().to_vec();
            item.push(b'=');
            item.extend_from_slice(v.as_bytes());
            CString::new(item).unwrap_or_default()
        })
        .collect()
}

/// Execs `program`, searching the container's PATH when it has no slash, as execvp does.
/// Returns the error that explains why nothing ran.
fn run_program(program: &OsStr, argv: &[CString], env: &[CString]) -> Errno {
    if program.as_bytes().contains(&b'/') {
        return exec_path(Path::new(program), argv, env);
    }
    let path = env
        .iter()
        .find_map(|e| e.to_bytes().strip_prefix(b"PATH="))
        .map(|p| p.to_vec())
        .unwrap_or_else(|| PATH.as_bytes().to_vec());
    let mut result = Errno::ENOENT;
    for dir in path.split(|&b| b == b':') {
        let dir = if dir.is_empty() { b"." as &[u8] } else { dir };
        let candidate = Path::new(OsStr::from_bytes(dir)).join(program);
        match exec_path(&candidate, argv, env) {
            Errno::ENOENT | Errno::ENOTDIR => {}
            e => result = e,
        }
    }
    result
}

fn exec_path(path: &Path, argv: &[CString], env: &[CString]) -> Errno {
    let c = c_string(path.as_os_str());
    match nix::unistd::execve(&c, argv, env) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RunArgs;

    #[test]
    fn environment_is_clean_and_env_overrides() {
        let args = RunArgs {
            lower: Some("/a".into()),
            hostname: Some("box".into()),
            env: vec!["PATH=/bin".into(), "A=1".into()],
            command: vec!["sh".into()],
            ..RunArgs::default()
        };
        let cfg = RunConfig::from_args(&args).unwrap();
        let env: Vec<String> = environment(&cfg, Some("xterm".into()))
            .into_iter()
            .map(|c| c.into_string().unwrap())
            .collect();
        assert_eq!(
            env,
            [
                "HOME=/root",
                "HOSTNAME=box",
                "TERM=xterm",
                "PATH=/bin",
                "A=1"
            ]
        );
    }
}
