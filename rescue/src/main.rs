//! The `rescue` binary: parses the command line and hands over to the library.
//! As PID 1 (or when called as `init`) it becomes the rescue system's init.

use std::process::ExitCode;

use rescue::cmd::cli::{Command, Parsed};
use rescue::{Root, exit};

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    if std::process::id() == 1 || argv0.ends_with("init") {
        rescue::boot::main();
    }
    let cli = match rescue::cmd::cli::parse() {
        Parsed::Run(cli) => cli,
        Parsed::GenerateDocs(dir) => return generate_docs(&dir),
    };
    if std::env::var_os("RESCUE_SIGNALS").is_some_and(|v| v == "init") {
        // PID 1's handling, for tests on the host: a signal stops the running
        // command (exit 130) and never kills the process.
        rescue::signals::install_cancel();
    } else {
        rescue::signals::install(rescue::fabric::link::teardown_all);
    }
    let root = Root::new(&cli.root);
    let result = match &cli.command {
        // Outside PID 1, `rescue init` is a dry run against --root (tests).
        Command::Init(args) => rescue::boot::command(&root, args),
        _ => rescue::cmd::run(&root, cli.command),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("rescue: {e:#}");
            ExitCode::from(exit::code_of(&e))
        }
    }
}

/// `rescue generate-docs DIR`: prints each file written.
fn generate_docs(dir: &std::path::Path) -> ExitCode {
    match rescue::cmd::docs::generate(dir) {
        Ok(paths) => {
            for p in paths {
                println!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rescue: {e:#}");
            ExitCode::from(exit::code_of(&e))
        }
    }
}
