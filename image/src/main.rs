//! The `image` command: builds the rescue initramfs, lists existing ones (and prints
//! their files or a module decompressed), and packs the test rigs' small ones.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rescue_image::{Compress, Options, PackOptions, build, list, pack};

/// Build the usb4rescue initramfs (newc cpio, xz or gzip), reproducibly and without root.
#[derive(Debug, Parser)]
#[command(name = "image", version)]
struct Cli {
    /// List an image instead of building one (same as `image list FILE`).
    #[arg(long, value_name = "FILE", exclusive = true)]
    list: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build an initramfs.
    Build {
        /// Kernel directory holding lib/modules/<kver>/ (as scripts/fetch-kernel.sh prints).
        #[arg(long, value_name = "DIR")]
        kernel_dir: PathBuf,
        /// Kernel release, when lib/modules holds several.
        #[arg(long, value_name = "KVER")]
        kver: Option<String>,
        /// The static rescue binary, installed as /init.
        #[arg(long, value_name = "PATH")]
        rescue: PathBuf,
        /// An out-of-tree module to add under lib/modules/<kver>/extra/ (repeatable).
        #[arg(long = "extra-module", value_name = "PATH.ko")]
        extra_module: Vec<PathBuf>,
        /// Another kernel module to include with its dependencies (repeatable).
        #[arg(long = "module", value_name = "NAME")]
        module: Vec<String>,
        /// Compression of the archive.
        #[arg(long, value_enum, default_value = "xz")]
        compress: Compress,
        /// Output file.
        #[arg(short = 'o', long, value_name = "OUT")]
        output: PathBuf,
        /// Print every module included.
        #[arg(long, short = 'v')]
        verbose: bool,
    },
    /// Pack a small uncompressed initramfs from files and kernel modules to load
    /// (the test rigs' busybox guests): the modules decompressed as
    /// lib/modules/NAME.ko, their load order (dependencies first) in
    /// lib/modules/load.list, and /dev/console and /dev/null.
    Pack {
        /// Kernel directory holding lib/modules/<kver>/ (needed for modules only).
        #[arg(long, value_name = "DIR")]
        kernel_dir: Option<PathBuf>,
        /// Kernel release, when lib/modules holds several.
        #[arg(long, value_name = "KVER")]
        kver: Option<String>,
        /// An in-tree module to load, after its dependencies (repeatable).
        #[arg(long, value_name = "NAME")]
        load: Vec<String>,
        /// An out-of-tree module file to load last; refused when built for another
        /// kernel (repeatable).
        #[arg(long = "load-ko", value_name = "PATH.ko")]
        load_ko: Vec<PathBuf>,
        /// A directory to create, 0755 (repeatable).
        #[arg(long = "dir", value_name = "DEST")]
        dirs: Vec<String>,
        /// A file to add, 0644 (repeatable).
        #[arg(long = "file", value_name = "SRC=DEST")]
        files: Vec<String>,
        /// An executable to add, 0755 (repeatable).
        #[arg(long = "exec", value_name = "SRC=DEST")]
        execs: Vec<String>,
        /// A symbolic link to add (repeatable).
        #[arg(long = "symlink", value_name = "DEST=TARGET")]
        symlinks: Vec<String>,
        /// Output file.
        #[arg(short = 'o', long, value_name = "OUT")]
        output: PathBuf,
    },
    /// List the contents of an image, with its size and compression.
    List {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Write a kernel module file decompressed (.ko, .ko.xz, .ko.gz) to standard
    /// output, or with MEMBER that file of an image as archived.
    Cat {
        /// The module file, or with MEMBER the image.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// A regular file in the image, by its path there (as `image list` shows it).
        #[arg(value_name = "MEMBER")]
        member: Option<String>,
    },
}

fn mtime() -> Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.trim().is_empty() => s.trim().parse().context("SOURCE_DATE_EPOCH"),
        _ => Ok(0),
    }
}

fn list_file(file: &std::path::Path) -> Result<()> {
    let l = rescue_image::read_image(file)?;
    print!("{}", list::render(&l));
    Ok(())
}

/// `A=B` as (A, B); `what` names the flag in the error.
fn pair(spec: &str, what: &str) -> Result<(String, String)> {
    match spec.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.into(), b.into())),
        _ => anyhow::bail!("{what} {spec:?}: expected two parts joined by '='"),
    }
}

fn run_pack(
    mut opts: PackOptions,
    files: &[String],
    execs: &[String],
    symlinks: &[String],
    output: &std::path::Path,
) -> Result<()> {
    for (specs, perm, what) in [(files, 0o644, "--file"), (execs, 0o755, "--exec")] {
        for spec in specs {
            let (src, dest) = pair(spec, what)?;
            opts.files.push((src.into(), dest, perm));
        }
    }
    for spec in symlinks {
        opts.symlinks.push(pair(spec, "--symlink")?);
    }
    let (a, p) = pack(&opts)?;
    let raw = a.to_newc(0);
    rescue_image::build::write_file(output, &raw)?;
    println!(
        "packed {}: {} bytes; modules in load order: {}{}",
        output.display(),
        raw.len(),
        if p.modules.is_empty() {
            "-".into()
        } else {
            p.modules.join(" ")
        },
        if p.builtin.is_empty() {
            String::new()
        } else {
            format!("; built in: {}", p.builtin.join(" "))
        },
    );
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    if let Some(f) = cli.list {
        return list_file(&f);
    }
    match cli.command {
        None => anyhow::bail!("nothing to do: use `image build ...` or `image list FILE`"),
        Some(Cmd::List { file }) => list_file(&file),
        Some(Cmd::Cat { file, member }) => {
            let bytes = list::cat(&file, member.as_deref())?;
            std::io::stdout()
                .write_all(&bytes)
                .context("writing to standard output")
        }
        Some(Cmd::Pack {
            kernel_dir,
            kver,
            load,
            load_ko,
            dirs,
            files,
            execs,
            symlinks,
            output,
        }) => {
            let opts = PackOptions {
                kernel_dir,
                kver,
                load,
                load_ko,
                dirs,
                ..Default::default()
            };
            run_pack(opts, &files, &execs, &symlinks, &output)
        }
        Some(Cmd::Build {
            kernel_dir,
            kver,
            rescue,
            extra_module,
            module,
            compress,
            output,
            verbose,
        }) => {
            let opts = Options {
                kernel_dir,
                kver,
                rescue,
                extra_modules: extra_module,
                modules: module,
                compress,
                mtime: mtime()?,
            };
            let s = build(&opts, &output)?;
            if verbose {
                for m in &s.modules {
                    println!("module {m}");
                }
            }
            println!(
                "kernel {}: {} modules; built in: {}; not in this kernel: {}",
                s.kver,
                s.modules.len(),
                if s.builtin.is_empty() {
                    "-".into()
                } else {
                    s.builtin.join(" ")
                },
                if s.missing.is_empty() {
                    "-".into()
                } else {
                    s.missing.join(" ")
                },
            );
            println!(
                "wrote {}: {} bytes ({:.2} MiB; {} bytes uncompressed)",
                output.display(),
                s.compressed,
                s.compressed as f64 / 1048576.0,
                s.uncompressed
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("image: {e:#}");
            ExitCode::FAILURE
        }
    }
}
