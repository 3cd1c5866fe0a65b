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

fn main() {
    logger::init();
    if let Err(e) = run() {
        eprintln!("overlayfuse: {e}");
        std::process::exit(e.exit_code());
    }
}
