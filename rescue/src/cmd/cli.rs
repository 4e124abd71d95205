//! The command line: clap definitions (whose doc comments are the help text) and
//! the dispatcher that PID-1 mode reuses.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::session::args::ConnectArgs;

/// Back up and restore whole disks over a USB4/Thunderbolt cable.
///
/// Two machines joined by a USB4/Thunderbolt cable (Linux >= 7.2, thunderbolt_stream)
/// copy disk images with no network: run `rescue serve --store DIR` on the machine
/// that keeps the images and `rescue backup` or `rescue restore` on the other.
///
/// Exit codes: 0 success; 1 error; 2 usage error; 3 completed, but some sectors
/// could not be read (see the mapfile); 4 verification failed; 5 the peer went away
/// (cable unplugged or peer stopped; run the same command again to resume);
/// 6 refused for safety (mounted, too small, not confirmed); 130 interrupted.
#[derive(Debug, Parser)]
#[command(
    name = "rescue",
    // "0.1.0 (commit 1d263ba)": the commit comes from rescue/build.rs.
    version = env!("RESCUE_VERSION"),
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Filesystem root for /sys, /proc, /dev and ConfigFS (for tests and chroots).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/",
        hide = true
    )]
    pub root: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show Thunderbolt domains, connected peers, stream services and streams.
    Status(StatusArgs),
    /// List the disks of this machine that can be backed up or restored to.
    Disks(DisksArgs),
    /// Keep backups: accept backups into a store and serve them to restoring peers.
    Serve(ServeArgs),
    /// Send disks of this machine to the peer running `rescue serve`.
    Backup(BackupArgs),
    /// Write a backup held by the peer back onto disks of this machine.
    Restore(RestoreArgs),
    /// Check a stored backup against its manifest and digests.
    Verify(VerifyArgs),
    /// Look after a store: list its backups and the space they take, remove old ones.
    Store(StoreArgs),
    /// Copy stdin to the peer and the peer's bytes to stdout, like `dd` on a stream.
    Cat(CatArgs),
    /// Set up or tear down a stream without using it, printing its /dev node.
    Link(LinkArgs),
    /// Run as the init process of the rescue initramfs (PID 1).
    Init(InitArgs),
}

/// What the command line asks for: a command, or the man pages and completions.
pub enum Parsed {
    Run(Cli),
    /// `rescue generate-docs DIR`: for packaging (scripts/build-deb.sh). Kept out of
    /// `Cli` so that the pages and completions made from `Cli` do not offer it.
    GenerateDocs(PathBuf),
}

/// Parses the process's arguments (exits with clap's message on a usage error).
pub fn parse() -> Parsed {
    use clap::{CommandFactory, FromArgMatches};
    let docs = clap::Command::new("generate-docs")
        .hide(true)
        .about("Write man/*.8 and completions/ (bash, zsh, fish) into DIR")
        .arg(
            clap::Arg::new("dir")
                .value_name("DIR")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf)),
        );
    let matches = Cli::command().subcommand(docs).get_matches();
    if let Some(("generate-docs", m)) = matches.subcommand()
        && let Some(dir) = m.get_one::<PathBuf>("dir")
    {
        return Parsed::GenerateDocs(dir.clone());
    }
    Parsed::Run(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

#[derive(Debug, Clone, Args, Default)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Args, Default)]
pub struct DisksArgs {
    /// Also show loop, ram, zram, optical and stacked (device-mapper, md RAID) devices.
    #[arg(long)]
    pub(crate) all: bool,
    /// Print JSON instead of text (sizes also in bytes and in the disk's own logical
    /// sectors, loop devices' backing files).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Directory that keeps the backups (DIR/<host>/<backup-id>/). It must exist
    /// (so a typo or an unmounted disk does not fill the rescue system's RAM)
    /// and be writable.
    #[arg(long, short = 's', value_name = "DIR")]
    pub store: PathBuf,

    /// Create the store directory (and its parents) if it does not exist.
    #[arg(long)]
    pub(crate) create: bool,

    /// Accept a backup larger than the store's free space. Zero chunks are
    /// stored as holes, so mostly empty disks need less than their size; if the
    /// store fills up, the backup stops and resumes once space is freed.
    #[arg(long)]
    pub(crate) no_space_check: bool,

    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Stop after one session instead of waiting for the next peer.
    #[arg(long)]
    pub once: bool,

    /// Let any peer list and restore the backups of HOST (`all`: of every host),
    /// and continue HOST's interrupted backups without their resume key.
    /// Without it a peer sees only its own machine's backups (same hostname and
    /// machine-id): allow a new machine restoring an old one's disks, or a rescue
    /// system (no machine-id) restoring its own. Repeatable, or comma-separated.
    #[arg(long = "allow-restore", value_name = "HOST|all", value_delimiter = ',')]
    pub(crate) allow_restore: Vec<String>,
}

#[derive(Debug, Clone, Args, Default)]
pub struct BackupArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// A label stored with the backup (e.g. "before-reinstall").
    #[arg(long, value_name = "NAME")]
    pub label: Option<String>,

    /// Start a new backup even if an interrupted one could be resumed.
    #[arg(long)]
    pub fresh: bool,

    /// Read and send every byte, also the free space of the filesystems rescue
    /// recognises (by default only their used blocks are copied; free space is
    /// stored as zeros).
    #[arg(long)]
    pub all_blocks: bool,
    /// Send every chunk. Without it, a machine whose earlier complete backup
    /// is on the peer (same machine-id, disks of the same serial and size)
    /// sends only the chunks that changed since; either way the peer stores a
    /// whole image.
    #[arg(long)]
    pub full: bool,

    /// Chunk size in KiB (the unit of verification and resume).
    #[arg(long, value_name = "KIB", default_value_t = 1024, hide = true)]
    pub chunk_kib: u32,

    /// Disks to send: /dev paths, names such as nvme0n1, or image files.
    /// Without any, every eligible disk (see `rescue disks`) is sent.
    #[arg(value_name = "DISK")]
    pub disks: Vec<String>,
}

#[derive(Debug, Clone, Args, Default)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Only list the backups the peer holds.
    #[arg(long)]
    pub list: bool,

    /// Backup to restore (as listed); the newest complete one of this host by default.
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,

    /// Host whose backups to list or restore (default: this machine's hostname).
    #[arg(long, value_name = "HOST")]
    pub(crate) host: Option<String>,

    /// Write backed-up disk NAME onto TARGET (a disk or an image file). Repeatable.
    /// Without it, each disk goes to the local disk with the same serial number.
    #[arg(long = "map", value_name = "NAME=TARGET")]
    pub map: Vec<String>,

    /// Do not ask for confirmation before overwriting.
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// After writing, read every target back and compare it with the backup's digest.
    #[arg(long)]
    pub verify: bool,

    /// On a larger target, extend the partition that ends last to the new end
    /// of the disk: a GPT partition, or an MBR primary one (up to 2 TiB with
    /// 512-byte sectors; a logical one is not grown, said so). Its filesystem
    /// is not grown: the summary says how.
    #[arg(long)]
    pub grow: bool,

    /// The targets already hold part of this backup (an earlier restore was cut
    /// short): read them first, compare every chunk with the digests the backup
    /// recorded, and transfer only the chunks that differ.
    #[arg(long)]
    pub resume: bool,

    /// When the store cannot produce a chunk intact (its bytes no longer match
    /// the digest recorded at backup time), write everything else, zeros there,
    /// and a GNU ddrescue mapfile of what is missing (exit 3). Without it the
    /// restore stops at that chunk, naming it and its partition (exit 4).
    #[arg(long)]
    pub(crate) skip_damaged: bool,

    /// The mapfile --skip-damaged writes (PATH.NAME per disk with several
    /// disks). Default: TARGET.map beside an image file, NAME.map in the
    /// current directory for a disk.
    #[arg(long, value_name = "PATH", requires = "skip_damaged")]
    pub(crate) damaged_map: Option<PathBuf>,

    /// A used-block backup (the default of `rescue backup`) did not copy the free
    /// space of the filesystems it recognised. Without this option the target's
    /// bytes there are left as they are; with it they are written as zeros.
    #[arg(long, conflicts_with = "discard")]
    pub(crate) zero_free: bool,

    /// Discard (BLKDISCARD, TRIM) the free space a used-block backup did not copy,
    /// where the target supports it; elsewhere it is left as it is (and you are told).
    #[arg(long)]
    pub(crate) discard: bool,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// A backup directory (holding manifest.json), or a store to check every backup in.
    #[arg(value_name = "DIR")]
    pub(crate) dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub(crate) action: StoreAction,
}

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum StoreAction {
    /// Every backup per host: status, size of its disks and the space it really
    /// takes (extents shared with other backups, e.g. an incremental backup's
    /// reflinks on btrfs or XFS, are shown and counted once in the total).
    List {
        /// The store directory (as given to `rescue serve --store`).
        #[arg(value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// Remove old complete backups. Never removes the newest complete backup
    /// of a host, a backup that is not complete (being written, or resumable),
    /// or one `rescue serve` is using. Each backup is a whole image, so
    /// removing one never breaks another.
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true)))]
    Prune {
        /// The store directory (as given to `rescue serve --store`).
        #[arg(value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Keep the N newest complete backups of each host (at least 1).
        #[arg(long, value_name = "N", group = "what")]
        keep: Option<usize>,
        /// Remove complete backups finished more than D days ago.
        #[arg(long, value_name = "D", group = "what")]
        keep_days: Option<u64>,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Clone, Args, Default)]
pub struct CatArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

#[derive(Debug, Clone, Args)]
pub struct LinkArgs {
    /// up: create the stream in ConfigFS; down: remove it.
    #[arg(value_enum)]
    pub(crate) action: LinkAction,

    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LinkAction {
    Up,
    Down,
}

#[derive(Debug, Clone, Args, Default)]
pub struct InitArgs {
    /// Do not mount /proc, /sys, /dev (for testing init mode outside an initramfs).
    #[arg(long, hide = true)]
    pub(crate) no_mount: bool,
    /// Run the boot-time flow from a dracut hook, not as PID 1: rd.usb4rescue=MODE and
    /// rd.usb4rescue.* from /proc/cmdline, the USB4STREAM stack, ConfigFS, the mode on
    /// this console, then power off or reboot if asked; else return so the boot goes on.
    #[arg(long, conflicts_with = "no_mount")]
    pub(crate) dracut: bool,
    /// Print the kernel modules the boot flow loads before the hardware's drivers
    /// (ConfigFS and the USB4STREAM stack), one per line, and exit; the dracut
    /// module installs these.
    #[arg(long, conflicts_with_all = ["no_mount", "dracut"])]
    pub(crate) stack_modules: bool,
}
