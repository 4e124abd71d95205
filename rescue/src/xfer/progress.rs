//! Progress display: an indicatif bar per disk on a terminal, and plain periodic
//! lines otherwise (a serial console or a log file is often not a TTY, and
//! indicatif draws nothing there).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::util::human_bytes;

/// Set by `force_lines`: plain lines whatever stderr is.
static FORCE_LINES: AtomicBool = AtomicBool::new(false);

/// Plain lines from now on, as `RESCUE_PLAIN=1` asks (a serial console is a
/// terminal, but one that logs and tests read).
pub(crate) fn force_lines() {
    FORCE_LINES.store(true, Ordering::Relaxed);
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Bars,
    Lines,
}

impl Style {
    /// Bars when stderr is a terminal, plain lines otherwise. As PID 1 the
    /// terminal is the kernel console, often a serial line read by a log or a
    /// test: plain lines there too.
    pub(crate) fn detect() -> Style {
        if std::env::var_os("RESCUE_PLAIN").is_some()
            || FORCE_LINES.load(Ordering::Relaxed)
            || !std::io::stderr().is_terminal()
            || std::process::id() == 1
        {
            Style::Lines
        } else {
            Style::Bars
        }
    }
}

struct Plain {
    last_print: Instant,
    pos: u64,
    started: Instant,
}

/// One disk's progress.
pub(crate) struct Bar {
    name: String,
    total: u64,
    bar: Option<ProgressBar>,
    plain: Option<Mutex<Plain>>,
    every: Duration,
}

impl Bar {
    /// The disk this bar is for.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub fn new(name: &str, total: u64, mode: Style) -> Bar {
        match mode {
            Style::Bars => {
                let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                pb.set_style(style);
                pb.set_prefix(name.to_string());
                Bar {
                    name: name.into(),
                    total,
                    bar: Some(pb),
                    plain: None,
                    every: Duration::ZERO,
                }
            }
            Style::Lines => Bar {
                name: name.into(),
                total,
                bar: None,
                plain: Some(Mutex::new(Plain {
                    last_print: Instant::now(),
                    pos: 0,
                    started: Instant::now(),
                })),
                every: Duration::from_secs(5),
            },
        }
    }

    pub(crate) fn set_position(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
            b.reset_eta();
        }
        if let Some(p) = &self.plain
            && let Ok(mut p) = p.lock()
        {
            p.pos = pos;
        }
    }

    pub(crate) fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        if let Some(p) = &self.plain
            && let Ok(mut p) = p.lock()
        {
            p.pos += n;
            if p.last_print.elapsed() >= self.every {
                p.last_print = Instant::now();
                eprintln!("{}", self.line(p.pos, p.started.elapsed()));
            }
        }
    }

    fn line(&self, pos: u64, elapsed: Duration) -> String {
        let pct = if self.total > 0 {
            pos as f64 * 100.0 / self.total as f64
        } else {
            100.0
        };
        let rate = pos as f64 / elapsed.as_secs_f64().max(0.001);
        let eta = if rate > 0.0 && self.total > pos {
            let s = ((self.total - pos) as f64 / rate) as u64;
            format!(", ETA {}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
        } else {
            String::new()
        };
        format!(
            "{}: {} / {} ({pct:.0}%), {}/s{eta}",
            self.name,
            human_bytes(pos),
            human_bytes(self.total),
            human_bytes(rate as u64)
        )
    }

    /// Prints a message without tearing the bar.
    pub(crate) fn println(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
