//! The `overlayfuse` binary: parse, dispatch, and turn an error into one line and an exit
//! status (2 for bad input, 1 for a refusal by the system).

use overlayfuse::cli::{self, Command};
use overlayfuse::config::run::RunConfig;
use overlayfuse::config::MountConfig;
use overlayfuse::error::Error;
use overlayfuse::{commit, daemon, demo, diff, features, image, logger, manual, runtime};

fn run() -> Result<(), Error> {
    match cli::parse(std::env::args_os().collect())? {
        Command::Print(text) => {
            print!("{text}");
            Ok(())
        }
        Command::Mount(args) => daemon::mount(&MountConfig::from_args(&args)?),
        Command::Umount(path) => daemon::umount(&path),
        Command::Demo => demo::run(),
        Command::Diff(args) => diff::run(&args),
        Command::Commit(args) => commit::run(&args),
        Command::Image(args) if !nix::unistd::geteuid().is_root() => {
            // As a user: in a user namespace mapped as rootless runs are, so image files keep
            // their owners (the user's subordinate ids) and can be removed again.
            let code = runtime::as_mapped_root(|| exit_status(image::run(&args)))?;
            std::process::exit(code);
        }
        Command::Image(args) => image::run(&args),
        Command::Features => {
            features::run();
            Ok(())
        }
        Command::Completions(shell) => {
            manual::completions(shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages(dir) => manual::write_pages(&dir),
        Command::Run(args) if args.image.is_some() => {
            let (resolved, image_run) = image::run::prepare(&args)?;
            let code = RunConfig::from_args(&resolved).and_then(|cfg| runtime::run(&cfg));
            let code = match code {
                Ok(code) => code,
                Err(e) => {
                    let _ = image::run::finish(image_run, None);
                    return Err(e);
                }
            };
            image::run::finish(image_run, Some(code))?;
            std::process::exit(code);
        }
        Command::Run(args) => {
            let cfg = RunConfig::from_args(&args)?;
            let code = runtime::run(&cfg)?;
            std::process::exit(code);
        }
    }
}

/// The exit status of `result`, its error printed.
fn exit_status(result: Result<(), Error>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            // An empty message was printed by another process of the command already.
            if !e.message.is_empty() {
                eprintln!("overlayfuse: {e}");
            }
            e.exit_code()
        }
    }
}

fn main() {
    logger::init();
    std::process::exit(exit_status(run()));
}
