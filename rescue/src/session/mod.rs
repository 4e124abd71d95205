//! Getting a connected, introduced peer: set the stream up (or use --device),
//! open it, and exchange HELLO messages. Used by every command that talks to the
//! peer.

pub mod args;
pub mod auth;
pub(crate) mod streams;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::Root;
use crate::cancel::{self, Token};
use crate::exit::{self, Exit};
use crate::fabric::link::{self, Link};
use crate::proto::PROTOCOL;
use crate::proto::frame::{self, Header};
use crate::proto::msg::{self, ErrorMsg, Hello, Identity, Role, kind};
use crate::signals;
use crate::system::identity::{self, Describe};
use crate::wire::conn::{self, Closed, Conn, Event, expect_within};
use crate::wire::transport::{self, Endpoint, Stream};
pub use args::ConnectArgs;

/// A peer we are talking to. `conn` is declared first so it is dropped (the
/// device closed) before the link's ConfigFS groups are removed.
pub struct Session {
    pub conn: Conn,
    pub peer: Hello,
    pub me: Identity,
    pub link: Option<Link>,
}

impl Session {
    /// Ends the session politely (BYE), then tears the stream down.
    pub(crate) fn close(self) {
        let Session { conn, link, .. } = self;
        conn.close();
        drop(link);
    }
}

/// What our HELLO offers besides who we are: the streams we can use and
/// (serve) the token further streams of the session present.
#[derive(Default)]
struct Offer {
    streams: u32,
    session: String,
}

fn hello(role: Role, me: &Identity, offer: &Offer) -> Hello {
    Hello {
        protocol: PROTOCOL,
        // Frames carry the version and must match it exactly (frame.rs).
        min_protocol: PROTOCOL,
        role,
        identity: me.clone(),
        streams: offer.streams,
        session: offer.session.clone(),
    }
}

/// Exchanges HELLO. Ours is sent again when theirs arrives, in case the first
/// was lost before the peer was listening.
fn introduce(
    conn: &mut Conn,
    role: Role,
    me: &Identity,
    within: Option<Duration>,
    offer: &Offer,
) -> Result<Hello> {
    let ours = hello(role, me, offer);
    conn.send_json(kind::HELLO, &ours)?;
    let f = match within {
        Some(w) => expect_within(conn, kind::HELLO, w, "waiting for the peer's greeting")?,
        None => loop {
            match conn.next_event(Duration::from_secs(1)) {
                Some(Event::Frame(f)) if f.intact && f.header.kind == kind::HELLO => break f,
                Some(Event::Closed(c)) => return Err(c.into_error("waiting for a peer")),
                _ => {}
            }
        },
    };
    let theirs: Hello = msg::from_json(&f)?;
    conn.send_json(kind::HELLO, &ours)?;
    if theirs.protocol < 1 || theirs.min_protocol > PROTOCOL {
        let m = format!(
            "the peer speaks protocol {} (needs >= {}), this rescue speaks {PROTOCOL}: use the same rescue version on both machines",
            theirs.protocol, theirs.min_protocol
        );
        conn.send_error("version", &m);
        bail!("{m}");
    }
    if role != Role::Serve && theirs.role != Role::Serve {
        let m = format!(
            "the peer {} is running `rescue {}` too; one machine must run `rescue serve`",
            crate::util::Escaped(&theirs.identity.hostname),
            match theirs.role {
                Role::Backup => "backup",
                Role::Restore => "restore",
                Role::Serve => "serve",
            }
        );
        conn.send_error("role", &m);
        bail!("{m}");
    }
    eprintln!("connected to {}", theirs.identity.describe());
    conn.set_liveness(conn::peer_silence());
    Ok(theirs)
}

/// Connects as a client (backup, restore).
pub(crate) fn connect(root: &Root, args: &ConnectArgs, role: Role) -> Result<Session> {
    let s = connect_to(root, args, role)?;
    // From here on an interrupt cuts a transfer that the same command resumes.
    signals::set_resume_advice(Some(
        match role {
            Role::Restore => "Add --resume to the same command to continue where it stopped.",
            _ => "Run the same command again to resume.",
        }
        .into(),
    ));
    Ok(s)
}

fn connect_to(root: &Root, args: &ConnectArgs, role: Role) -> Result<Session> {
    let me = identity::local(root);
    let wait = args.wait_timeout();
    match transport::endpoint(root, args.device.as_deref())? {
        Some(Endpoint::Unix(p)) => {
            let mut conn = Conn::new(Stream::connect_unix(&p, wait)?)?;
            let offer = Offer {
                streams: args.streams.unwrap_or(streams::AUTO),
                session: String::new(),
            };
            let within = Some(Duration::from_secs(30));
            let peer = introduce(&mut conn, role, &me, within, &offer)?;
            let n = streams::agreed(offer.streams, peer.streams);
            streams::join_all(&mut conn, n, &peer.session, || {
                Stream::connect_unix(&p, wait)
            })?;
            Ok(Session {
                conn,
                peer,
                me,
                link: None,
            })
        }
        Some(Endpoint::Device(dev)) => {
            let until = wait.map(|w| Instant::now() + w);
            let mut conn = Conn::new(Stream::open_named_device(root, &dev, until)?)?;
            let within = wait.or(Some(Duration::from_secs(300)));
            let peer = introduce(&mut conn, role, &me, within, &Offer::default())?;
            Ok(Session {
                conn,
                peer,
                me,
                link: None,
            })
        }
        None => {
            let mut link = Link::up(root, &args.link_opts(link::HopIds::Adopt, wait))?;
            link.announce();
            let offer = Offer {
                streams: args.streams.unwrap_or(streams::AUTO),
                session: String::new(),
            };
            let start = Instant::now();
            loop {
                let mut conn = Conn::new(Stream::open_device(&link.dev, None)?)?;
                let within = Some(Duration::from_secs(10));
                match introduce(&mut conn, role, &me, within, &offer) {
                    Ok(peer) => {
                        join_devices(root, &mut conn, &mut link, &offer, &peer)?;
                        return Ok(Session {
                            conn,
                            peer,
                            me,
                            link: Some(link),
                        });
                    }
                    Err(e) if cancel::is_interrupted(&e) => return Err(e),
                    Err(e) => {
                        if wait.is_some_and(|w| start.elapsed() >= w) {
                            return Err(e.context("the peer did not answer on the stream"));
                        }
                        eprintln!(
                            "no answer on {} yet; setting the stream up again",
                            link.dev.display()
                        );
                        drop(conn);
                        link.refresh(root, wait)?;
                    }
                }
            }
        }
    }
}

/// Client over ConfigFS: adopts the further streams serve's HELLO offered
/// (each published by serve under the name `link::stream_name` gives), opens
/// them and joins them to the session; those that do not join are removed.
fn join_devices(
    root: &Root,
    conn: &mut Conn,
    link: &mut Link,
    offer: &Offer,
    peer: &Hello,
) -> Result<()> {
    let n = streams::agreed(offer.streams, peer.streams);
    streams::join_all(conn, n, &peer.session, || {
        let dev = link.adopt_more(root, streams::JOIN_WAIT)?;
        Stream::open_device(&dev, Some(Instant::now() + streams::JOIN_WAIT))
    })?;
    link.truncate(conn.streams() as u32);
    link.announce_from(1);
    Ok(())
}

/// How long serve still waits for the next peer (`--wait`; unbounded without).
#[derive(Clone, Copy)]
struct Patience {
    wait: Option<Duration>,
    until: Option<Instant>,
}

impl Patience {
    fn new(wait: Option<Duration>) -> Self {
        Patience {
            wait,
            until: wait.map(|w| Instant::now() + w),
        }
    }

    fn over(&self) -> bool {
        self.until.is_some_and(|t| Instant::now() >= t)
    }

    fn left(&self) -> Option<Duration> {
        self.until
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// Ends serve once the wait is over: an error when no peer came at all.
    fn give_up(&self, served: u64) -> Result<()> {
        let secs = self.wait.unwrap_or_default().as_secs();
        if served == 0 {
            return Err(Exit::new(
                exit::PEER_GONE,
                format!(
                    "no peer connected within {secs}s (--wait {secs}): start `rescue backup` or \
                     `rescue restore` on the other machine, or give a longer --wait (0 waits for ever)"
                ),
            )
            .into());
        }
        eprintln!("no further peer within {secs}s (--wait {secs}); stopping");
        Ok(())
    }
}

/// Runs `handle` for every peer that connects, until it returns false, (with
/// `once`) after the first session, or when no peer comes within `--wait`.
pub fn serve(
    root: &Root,
    args: &ConnectArgs,
    once: bool,
    handle: impl FnMut(Session) -> Result<bool>,
) -> Result<()> {
    let mut sv = Serving {
        me: identity::local(root),
        streams: args.streams.unwrap_or(streams::AUTO),
        once,
        served: 0,
        patience: Patience::new(args.serve_wait()),
        handle,
    };
    match transport::endpoint(root, args.device.as_deref())? {
        Some(Endpoint::Unix(p)) => sv.on_unix(&p),
        Some(Endpoint::Device(p)) => sv.on_device(root, &p, None),
        None => {
            let opts = args.link_opts(link::HopIds::Publish, sv.patience.wait);
            let mut link = Link::up(root, &opts)?;
            link.publish_more(root, sv.streams);
            link.announce();
            // `link` lives until serve ends: its groups go after the devices close.
            let dev = link.dev.clone();
            sv.on_device(root, &dev, Some(&mut link))
        }
    }
}

/// What serve keeps from one peer to the next.
struct Serving<F> {
    me: Identity,
    /// The streams a session may use (one on a device given with --device).
    streams: u32,
    once: bool,
    /// Sessions run so far.
    served: u64,
    patience: Patience,
    handle: F,
}

impl<F: FnMut(Session) -> Result<bool>> Serving<F> {
    /// Runs one session; whether to wait for another. A session's error ends
    /// serve only with --once or when the user stopped it.
    fn run(&mut self, conn: Conn, peer: Hello) -> Result<bool> {
        self.served += 1;
        let s = Session {
            conn,
            peer,
            me: self.me.clone(),
            link: None,
        };
        let more = match (self.handle)(s) {
            Ok(more) => more && !self.once,
            // The user stopped serve, not only this session.
            Err(e) if self.once || cancel::is_interrupted(&e) => return Err(e),
            Err(e) => {
                eprintln!("session ended with an error: {e:#}");
                true
            }
        };
        self.patience = Patience::new(self.patience.wait);
        Ok(more)
    }

    /// Serves on a UNIX socket at `p` (removed when serve ends); a peer that
    /// connects during a session is told the server is busy.
    fn on_unix(&mut self, p: &Path) -> Result<()> {
        let l = transport::listen_unix(p)?;
        eprintln!("waiting for a peer on {} (Ctrl-C to stop)", p.display());
        let _cleanup = RemoveOnDrop(p.to_path_buf());
        // A peer that connected while the last session was closing.
        let mut next: Option<Stream> = None;
        loop {
            let stream = match next.take() {
                Some(s) => Some(s),
                None => transport::accept_unix(&l, None, self.patience.until)?,
            };
            let Some(stream) = stream else {
                return self.patience.give_up(self.served);
            };
            let mut conn = Conn::new(stream)?;
            let offer = Offer {
                streams: self.streams,
                session: auth::new_key()?,
            };
            let within = Some(Duration::from_secs(30));
            let greeting = introduce(&mut conn, Role::Serve, &self.me, within, &offer);
            let peer = match greeting {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("a peer connected but the greeting failed: {e:#}");
                    continue;
                }
            };
            let host = peer.identity.hostname.clone();
            let n = streams::agreed(offer.streams, peer.streams);
            streams::accept_joins(&l, &mut conn, n, &offer.session, &host)?;
            conn.require_progress(conn::peer_progress());
            let over = Token::new();
            let (more, waiting) = std::thread::scope(|sc| {
                let busy = sc.spawn(|| answer_busy(&l, &host, &over));
                let more = self.run(conn, peer);
                over.stop();
                (more, busy.join().ok().flatten())
            });
            next = waiting;
            if !more? {
                return Ok(());
            }
        }
    }

    /// Serves on the stream device `dev`, opened again for every peer: named
    /// with --device (one stream, checked to be one), or the first of `link`'s
    /// streams, whose further streams are opened beside it and offered.
    fn on_device(&mut self, root: &Root, dev: &Path, mut link: Option<&mut Link>) -> Result<()> {
        loop {
            eprintln!("waiting for a peer on {} (Ctrl-C to stop)", dev.display());
            let opened = if link.is_none() {
                Stream::open_named_device(root, dev, self.patience.until)
            } else {
                Stream::open_device(dev, self.patience.until)
            };
            let mut conn = match opened.and_then(Conn::new) {
                Ok(c) => c,
                Err(e) if cancel::is_interrupted(&e) => return Err(e),
                Err(_) if self.patience.over() => return self.patience.give_up(self.served),
                Err(e) => {
                    if self.once || exit::code_of(&e) == exit::USAGE {
                        return Err(e);
                    }
                    eprintln!("{e:#}; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let extra = match link.as_deref_mut() {
                Some(l) => open_extra(l),
                None => Vec::new(),
            };
            let offer = Offer {
                streams: 1 + extra.len() as u32,
                session: if extra.is_empty() {
                    String::new()
                } else {
                    auth::new_key()?
                },
            };
            let within = self.patience.left();
            let peer = match introduce(&mut conn, Role::Serve, &self.me, within, &offer) {
                Ok(p) => p,
                Err(e) if cancel::is_interrupted(&e) => return Err(e),
                Err(_) if self.patience.over() => return self.patience.give_up(self.served),
                Err(e) => {
                    if self.once {
                        return Err(e);
                    }
                    eprintln!("{e:#}");
                    drop(conn);
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            };
            let n = streams::agreed(offer.streams, peer.streams);
            // Streams the client did not join stay open until the session
            // ends: a close would write to a peer that never opened them.
            let _idle = streams::accept_on_devices(&mut conn, extra, n, &offer.session);
            conn.require_progress(conn::peer_progress());
            if !self.run(conn, peer)? {
                return Ok(());
            }
        }
    }
}

/// How long serve waits for a further stream's device to open once the first
/// is open (they attach to the peer together).
const EXTRA_OPEN_WAIT: Duration = Duration::from_secs(5);

/// serve: opens `link`'s further streams for a session. The first that does
/// not open (its DMA rings are allocated then: none may be left) ends the
/// list, and it and those after it are removed, with one line saying why.
fn open_extra(link: &mut Link) -> Vec<Stream> {
    let mut open = Vec::new();
    for dev in link.extra_devs() {
        match Stream::open_device(&dev, Some(Instant::now() + EXTRA_OPEN_WAIT)) {
            Ok(s) => open.push(s),
            Err(e) => {
                let n = 1 + open.len() as u32;
                eprintln!(
                    "using {n} stream(s): opening {} failed: {e:#}",
                    dev.display()
                );
                link.truncate(n);
                break;
            }
        }
    }
    open
}

/// How long a peer that connects during a session waits before it is told the
/// server is busy: a session whose client has just left ends within it (the
/// next command of a script must not be turned away).
const BUSY_GRACE: Duration = Duration::from_secs(3);

/// While a session runs, tells each other peer that connects to the socket who
/// holds the server and to try again, instead of leaving it to time out waiting
/// for a greeting: serve runs one session at a time. Returns a peer that came
/// while the session was ending, for serve to take next.
fn answer_busy(l: &UnixListener, host: &str, over: &Token) -> Option<Stream> {
    while let Ok(Some(stream)) = transport::accept_unix(l, Some(over), None) {
        let t = Instant::now();
        while t.elapsed() < BUSY_GRACE && !over.stopped() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if over.stopped() {
            return Some(stream);
        }
        tell_busy(stream, host);
    }
    None
}

/// Tells a peer that connected during another peer's session (for `host`)
/// to try again later, and closes its stream.
fn tell_busy(stream: Stream, host: &str) {
    let why = msg::to_json(&ErrorMsg {
        code: "busy".into(),
        message: format!("busy with a session for {host}; try again when it is over"),
    });
    if let Stream::Unix(mut s) = stream {
        // A peer that does not read must not hold this thread either.
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        let _ = frame::write_frame(&mut s, Header::new(kind::ERROR, 0, 0), &why);
        let _ = frame::write_frame(&mut s, Header::new(kind::BYE, 0, 0), &[]);
    }
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits for the next control request of a session (serve side). Returns None
/// when the peer said goodbye or closed.
pub(crate) fn next_request(conn: &mut Conn) -> Result<Option<crate::proto::frame::Frame>> {
    loop {
        match conn.next_event(Duration::from_secs(1)) {
            Some(Event::Frame(f)) => {
                if !f.intact {
                    conn.stats
                        .corrupt_frames
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                match f.header.kind {
                    kind::BYE => return Ok(None),
                    kind::HELLO | kind::ACK | kind::NAK | kind::CHUNK | kind::PING => continue,
                    _ => return Ok(Some(f)),
                }
            }
            Some(Event::Closed(c)) => {
                if let Closed::Gone(why) = &c {
                    eprintln!("the peer is gone: {why}");
                }
                return Ok(None);
            }
            _ => {}
        }
    }
}

/// Reads a yes/no style confirmation from stdin.
pub(crate) fn confirm(prompt: &str) -> Result<bool> {
    use std::io::{BufRead, Write};
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the answer")?;
    Ok(line.trim().eq_ignore_ascii_case("yes"))
}
