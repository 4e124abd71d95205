//! A session over several streams (protocol 6). Each HELLO says how many
//! streams its side can use and the session uses the smaller count; serve's
//! HELLO also carries a random token. The client opens each further stream
//! and sends JOIN {token, index} as its first message; serve answers with the
//! same JOIN on that stream once it belongs to the session, and only then does
//! either side send chunks over it. Requests, answers, ACKs and NAKs stay on
//! the first stream; chunks, addressed by (disk, offset), go round all of them
//! (`Conn::send_data`). A stream that does not join in time is left out: the
//! session goes on with the streams that did.

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::proto::frame::{self, FrameReader, Header, Read1};
use crate::proto::msg::{self, Join, kind};
use crate::wire::conn::{Conn, Event, peer_error};
use crate::wire::transport::{self, Stream};

/// Streams used when neither `--streams` nor `rescue.streams=` says: the
/// issue's "as many as the peer allows, at most 4".
pub(crate) const AUTO: u32 = 4;

/// How long a further stream may take to join the session.
pub(crate) const JOIN_WAIT: Duration = Duration::from_secs(10);

/// How many streams a session uses, from each side's HELLO (0: one).
pub(crate) fn agreed(ours: u32, theirs: u32) -> u32 {
    ours.max(1).min(theirs.max(1))
}

/// The first frame on a stream that is not yet part of the session.
fn first_frame(stream: &Stream, until: Instant) -> Result<frame::Frame> {
    let mut fr = FrameReader::new(stream.reader_until(until)?);
    match fr.read_frame() {
        Ok(Read1::Frame(f)) if f.intact => Ok(f),
        Ok(Read1::Frame(_)) => bail!("its first message arrived damaged"),
        Ok(Read1::Eof) => bail!("it closed before saying anything"),
        Err(e) => Err(anyhow::Error::new(e).context("reading its first message")),
    }
}

fn send_join(stream: &Stream, join: &Join) -> Result<()> {
    let mut w = stream.writer(crate::cancel::Token::new())?;
    frame::write_frame(&mut w, Header::new(kind::JOIN, 0, 0), &msg::to_json(join))?;
    Ok(())
}

/// Client: opens stream `index` with `open`, presents `session` and waits
/// for serve's answer.
fn join_one(stream: Stream, session: &str, index: u32) -> Result<Stream> {
    let join = Join {
        session: session.into(),
        stream: index,
    };
    send_join(&stream, &join)?;
    let f = first_frame(&stream, Instant::now() + JOIN_WAIT)?;
    match f.header.kind {
        kind::JOIN if msg::from_json::<Join>(&f)? == join => Ok(stream),
        kind::ERROR => Err(peer_error(&f)),
        k => bail!("the server answered {} instead of JOIN", kind::name(k)),
    }
}

/// Client: adds streams 1..n to `conn`, each opened by `open`. A stream that
/// cannot join is reported and the session goes on with those that did.
pub(crate) fn join_all(
    conn: &mut Conn,
    n: u32,
    session: &str,
    mut open: impl FnMut() -> Result<Stream>,
) -> Result<()> {
    for i in 1..n {
        match open().and_then(|s| join_one(s, session, i)) {
            Ok(s) => conn.add_stream(s)?,
            Err(e) if crate::cancel::is_interrupted(&e) => return Err(e),
            Err(e) => {
                eprintln!("stream {} of {n} did not join the session: {e:#}", i + 1);
                break;
            }
        }
    }
    tell(conn, n);
    Ok(())
}

fn tell(conn: &Conn, n: u32) {
    let got = conn.streams();
    if got > 1 || n > 1 {
        eprintln!("using {got} stream(s) of the {n} agreed");
    }
}

/// serve on a UNIX socket: takes the session's further streams (up to `n` in
/// all) from `l`, until the client's first request says it has joined all it
/// could. Anything else that connects meanwhile is another peer: it hears
/// that serve is busy with `host`.
pub(crate) fn accept_joins(
    l: &UnixListener,
    conn: &mut Conn,
    n: u32,
    session: &str,
    host: &str,
) -> Result<()> {
    let until = Instant::now() + JOIN_WAIT;
    let mut joined = vec![false; n as usize];
    while conn.streams() < n as usize && Instant::now() < until && !client_moved_on(conn) {
        let soon = until.min(Instant::now() + Duration::from_millis(200));
        let Some(s) = transport::accept_unix(l, None, Some(soon))? else {
            continue;
        };
        match first_frame(&s, until) {
            Ok(f) if f.header.kind == kind::JOIN => match msg::from_json::<Join>(&f) {
                Ok(j)
                    if j.session == session
                        && j.stream > 0
                        && j.stream < n
                        && !joined[j.stream as usize] =>
                {
                    send_join(&s, &j)?;
                    joined[j.stream as usize] = true;
                    conn.add_stream(s)?;
                }
                _ => eprintln!("a stream presented a JOIN for another session; closed"),
            },
            Ok(_) => super::tell_busy(s, host),
            Err(e) => eprintln!("a stream connected but did not join: {e:#}"),
        }
    }
    tell(conn, n);
    Ok(())
}

/// serve on stream devices (ConfigFS): `extra` are streams 1.. of the
/// session, already open; takes those of the first `n` whose first message
/// is the client's JOIN for this `session` and that stream, in order, until
/// the client's first request says it joined all it could (a client that
/// could not adopt one, or an older one that joins none) or `JOIN_WAIT`
/// passes. Returns the streams left out, for the caller to hold open.
pub(crate) fn accept_on_devices(
    conn: &mut Conn,
    extra: Vec<Stream>,
    n: u32,
    session: &str,
) -> Vec<Stream> {
    let until = Instant::now() + JOIN_WAIT;
    let mut idle = Vec::new();
    let mut moved_on = false;
    for (i, s) in (1..).zip(extra) {
        while i < n
            && !moved_on
            && Instant::now() < until
            && !s.readable_within(Duration::from_millis(200))
        {
            moved_on = client_moved_on(conn);
        }
        if i >= n || moved_on || Instant::now() >= until {
            idle.push(s);
            continue;
        }
        match first_frame(&s, until).and_then(|f| match f.header.kind {
            kind::JOIN => Ok(msg::from_json::<Join>(&f)?),
            k => bail!("it sent {} instead of JOIN", kind::name(k)),
        }) {
            Ok(j) if j.session == session && j.stream == i => match send_join(&s, &j) {
                Ok(()) => match conn.add_stream(s) {
                    Ok(()) => continue,
                    Err(e) => eprintln!("stream {} could not join: {e:#}", i + 1),
                },
                Err(e) => {
                    eprintln!("stream {} could not join: {e:#}", i + 1);
                    idle.push(s);
                }
            },
            Ok(_) => {
                eprintln!(
                    "stream {} presented a JOIN for another session or stream",
                    i + 1
                );
                idle.push(s);
            }
            Err(e) => {
                eprintln!("stream {} did not join: {e:#}", i + 1);
                idle.push(s);
            }
        }
    }
    tell(conn, n);
    idle
}

/// Whether the client sent something other than its HELLO on the first
/// stream (its first request: it joined every stream it could). That frame
/// stays for the session.
fn client_moved_on(conn: &mut Conn) -> bool {
    loop {
        match conn.next_event(Duration::ZERO) {
            Some(Event::Frame(f)) if f.intact && f.header.kind == kind::HELLO => continue,
            Some(Event::Frame(f)) => {
                conn.put_back(f);
                return true;
            }
            Some(_) => return true,
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn write(s: &mut UnixStream, kind: u8, body: &[u8]) {
        frame::write_frame(s, Header::new(kind, 0, 0), body).unwrap();
    }

    /// serve on devices: stream 2 joins; stream 3 never does (its client
    /// could not adopt it, or the peer published fewer than it offered), and
    /// serve stops waiting for it as soon as the client's first request
    /// arrives, which stays for the session.
    #[test]
    fn serve_takes_the_joins_that_come_and_goes_on_at_the_first_request() {
        let (first, mut client) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(Stream::Unix(first)).unwrap();
        let (s1, mut c1) = UnixStream::pair().unwrap();
        let (s2, _c2) = UnixStream::pair().unwrap();
        let join = Join {
            session: "token".into(),
            stream: 1,
        };
        write(&mut c1, kind::JOIN, &msg::to_json(&join));
        write(&mut client, kind::LIST, b"{}");
        let t = Instant::now();
        let extra = vec![Stream::Unix(s1), Stream::Unix(s2)];
        let idle = accept_on_devices(&mut conn, extra, 3, "token");
        assert!(
            t.elapsed() < JOIN_WAIT / 2,
            "waited for a stream that never joins"
        );
        assert_eq!((conn.streams(), idle.len()), (2, 1));
        let answer = first_frame(&Stream::Unix(c1), Instant::now() + JOIN_WAIT).unwrap();
        assert_eq!(msg::from_json::<Join>(&answer).unwrap(), join);
        match conn.next_event(Duration::from_secs(5)) {
            Some(Event::Frame(f)) => assert_eq!(f.header.kind, kind::LIST),
            _ => panic!("the first request was lost"),
        }
    }

    /// A JOIN with another session's token, or for another stream, is not
    /// taken.
    #[test]
    fn serve_refuses_a_join_of_another_session() {
        let (first, _client) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(Stream::Unix(first)).unwrap();
        let (s1, mut c1) = UnixStream::pair().unwrap();
        let (s2, mut c2) = UnixStream::pair().unwrap();
        for (c, session, stream) in [(&mut c1, "other", 1), (&mut c2, "token", 1)] {
            let join = Join {
                session: session.into(),
                stream,
            };
            write(c, kind::JOIN, &msg::to_json(&join));
        }
        let extra = vec![Stream::Unix(s1), Stream::Unix(s2)];
        let idle = accept_on_devices(&mut conn, extra, 3, "token");
        assert_eq!((conn.streams(), idle.len()), (1, 2));
    }

    #[test]
    fn the_smaller_count_wins_and_absent_is_one() {
        assert_eq!(agreed(4, 2), 2);
        assert_eq!(agreed(1, 4), 1);
        assert_eq!(agreed(4, 0), 1);
        assert_eq!(agreed(0, 3), 1);
    }
}
