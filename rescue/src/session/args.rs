//! The options every command that talks to the peer shares (`--device`,
//! `--peer`, `--name`, `--streams`, `--wait`): how to reach it. They live here,
//! not in `cmd::cli`, because `session` and PID 1's command line build them too.

use std::time::Duration;

use clap::Args;

use crate::fabric::link::{HopIds, LinkOpts};

/// How to reach the peer: automatic stream set-up, an existing device, or a socket.
#[derive(Debug, Clone, Args, Default)]
pub struct ConnectArgs {
    /// Use this stream instead of setting one up: a device such as /dev/tbstream0,
    /// or unix:PATH for a UNIX socket (serve listens there, the others connect).
    #[arg(long, short = 'd', value_name = "D")]
    pub device: Option<String>,

    /// The peer's stream service (e.g. 0-1.0) when several peers are connected.
    #[arg(long, value_name = "SERVICE")]
    pub peer: Option<String>,

    /// Name of the stream in ConfigFS (at most 8 characters).
    #[arg(long, value_name = "NAME", default_value = "backup")]
    pub name: String,

    /// Streams to spread the data over (1 to 8; serve: at most this many per
    /// session). Default: as many as both sides and the free HopIDs and DMA
    /// rings allow, at most 4. Set up automatically, stream i is NAME cut to 7
    /// characters with i appended (backup, backup1, ...); always one over
    /// --device /dev/tbstreamN.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=8))]
    pub streams: Option<u32>,

    /// How long to wait for the peer to appear, in seconds (0 waits forever).
    /// Default: 300 for the commands that connect; serve waits forever unless
    /// given, and with it gives up when no peer comes (exit 5).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,
}

impl ConnectArgs {
    /// How long a connecting command waits for the peer (300 s by default).
    pub(crate) fn wait_timeout(&self) -> Option<Duration> {
        let w = self.wait.unwrap_or(300);
        (w > 0).then(|| Duration::from_secs(w))
    }

    /// How long serve waits for the next peer: for ever unless --wait is given.
    pub(crate) fn serve_wait(&self) -> Option<Duration> {
        self.wait.filter(|&w| w > 0).map(Duration::from_secs)
    }

    /// The stream these options name (`--peer`, `--name`), removed again when
    /// the `Link` is dropped; `wait` bounds the wait for the peer (None: for ever).
    pub(crate) fn link_opts(&self, role: HopIds, wait: Option<Duration>) -> LinkOpts {
        LinkOpts {
            peer: self.peer.clone(),
            name: self.name.clone(),
            wait,
            role,
            teardown: true,
        }
    }
}
