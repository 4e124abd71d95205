//! Runs a parsed command and returns its exit code. The binary and PID-1 mode
//! both come through here; each command is a module of its own.

pub mod backup;
pub(crate) mod cat;
pub mod cli;
pub mod docs;
pub(crate) mod restore;
pub(crate) mod restore_free;
pub mod serve;
pub(crate) mod verify;

use anyhow::Result;

use crate::Root;
use crate::cmd::cli::{Command, LinkAction, LinkArgs};
use crate::exit::{self, Exit};
use crate::fabric::link::{self, Link};

/// Runs `cmd` against the system below `root`.
pub fn run(root: &Root, cmd: Command) -> Result<u8> {
    match cmd {
        Command::Status(a) => {
            let s = crate::fabric::status::collect(root);
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", crate::fabric::status::render(&s));
            }
            Ok(exit::OK)
        }
        Command::Disks(a) => {
            let d = crate::system::disks::list(root, a.all)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print!("{}", crate::system::disks::render_table(&d));
            }
            Ok(exit::OK)
        }
        Command::Serve(a) => crate::cmd::serve::run(root, &a),
        Command::Backup(a) => crate::cmd::backup::run(root, &a)
            .map_err(|e| exit::advise_resume(e, "run the same command again to resume")),
        Command::Restore(a) => crate::cmd::restore::run(root, &a).map_err(|e| {
            exit::advise_resume(
                e,
                "add --resume to the same command to continue where it stopped",
            )
        }),
        Command::Verify(a) => crate::cmd::verify::run(&a.dir),
        Command::Store(a) => match a.action {
            cli::StoreAction::List { dir } => crate::store::keep::list(&dir),
            cli::StoreAction::Prune {
                dir,
                keep,
                keep_days,
                dry_run,
            } => crate::store::keep::prune(&dir, keep, keep_days, dry_run),
        },
        Command::Cat(a) => crate::cmd::cat::run(root, &a),
        Command::Link(a) => link_cmd(root, &a),
        Command::Init(_) => Err(Exit::new(
            exit::USAGE,
            "`rescue init` only runs as the init process (PID 1)",
        )
        .into()),
    }
}

/// `rescue link up|down`.
fn link_cmd(root: &Root, a: &LinkArgs) -> Result<u8> {
    if a.connect.device.is_some() {
        // A wrong path is named as such; a right one is still not link's business.
        crate::wire::transport::endpoint(root, a.connect.device.as_deref())?;
        return Err(Exit::new(
            exit::USAGE,
            "`rescue link` sets a stream up from --peer and --name; --device names one \
             that exists already: give it to serve, backup, restore or cat instead",
        )
        .into());
    }
    match a.action {
        LinkAction::Up => {
            let opts = a
                .connect
                .link_opts(link::HopIds::Auto, a.connect.wait_timeout());
            let mut l = Link::up(root, &opts)?;
            l.keep();
            println!("{}", l.dev.display());
            eprintln!(
                "stream {}/{} ready (HopIDs in {} out {}); remove it with `rescue link down --peer {} --name {}`",
                l.service, l.name, l.in_hopid, l.out_hopid, l.service, l.name
            );
            Ok(exit::OK)
        }
        LinkAction::Down => {
            let service = match &a.connect.peer {
                Some(p) => p.clone(),
                None => service_of(root, &a.connect.name)?,
            };
            link::remove(root, &service, &a.connect.name)?;
            eprintln!("removed stream {service}/{}", a.connect.name);
            Ok(exit::OK)
        }
    }
}

/// The peer service of the one stream set up under `name` (`link down` without
/// --peer); none or several is a usage error.
fn service_of(root: &Root, name: &str) -> Result<String> {
    let matching: Vec<String> = link::configured(root)
        .into_iter()
        .filter(|(_, n)| n == name)
        .map(|(s, _)| s)
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Exit::new(exit::USAGE, format!("no stream named {name:?} is set up")).into()),
        many => Err(Exit::new(
            exit::USAGE,
            format!(
                "streams named {name:?} exist for {}: choose with --peer",
                many.join(", ")
            ),
        )
        .into()),
    }
}
