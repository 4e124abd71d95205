//! `rescue cat`: raw bytes both ways between stdin/stdout and the peer, with the
//! stream set up automatically, so `tar`, `dd` and `gzip` pipelines work as in
//! the upstream examples. No protocol: the other side may be `dd` or `cat`.

use std::io::{self, Read, Write};
use std::thread;

use anyhow::{Context, Result};

use crate::Root;
use crate::cancel::{self, Interrupted, Token};
use crate::cmd::cli::CatArgs;
use crate::exit;
use crate::fabric::link::{self, Link};
use crate::wire::transport::{self, Endpoint, Stream};

pub(crate) fn run(root: &Root, args: &CatArgs) -> Result<u8> {
    let c = &args.connect;
    let mut _link = None;
    let stream = match transport::endpoint(root, c.device.as_deref())? {
        Some(Endpoint::Unix(p)) => Stream::connect_unix(&p, c.wait_timeout())?,
        Some(Endpoint::Device(p)) => Stream::open_named_device(root, &p, None)?,
        None => {
            let l = Link::up(root, &c.link_opts(link::HopIds::Auto, c.wait_timeout()))?;
            eprintln!("stream {}/{} is {}", l.service, l.name, l.dev.display());
            let s = Stream::open_device(&l.dev, None)?;
            _link = Some(l);
            s
        }
    };
    let stop = Token::interruptible();
    let mut reader = stream.reader(stop.clone())?;
    let mut writer = stream.raw_writer()?;
    // stdin -> peer. When stdin ends after sending something, the stream is
    // closed so the peer reads EOF, as `dd of=/dev/tbstreamN` would do.
    let stop_up = stop.clone();
    let up = thread::spawn(move || -> io::Result<u64> {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            writer.write_all(&buf[..n])?;
            total += n as u64;
        }
        if total > 0 {
            stop_up.stop();
        }
        Ok(total)
    });
    // peer -> stdout, until the peer closes, or stdin is done after sending.
    let mut stdout = io::stdout().lock();
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0u64;
    let mut failure = None;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                stdout.write_all(&buf[..n]).context("writing to stdout")?;
                received += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    stdout.flush().ok();
    stop.stop();
    stream.shutdown();
    let sent = if up.is_finished() {
        match up.join() {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                eprintln!("rescue cat: sending failed: {e}");
                return Ok(exit::PEER_GONE);
            }
            Err(_) => 0,
        }
    } else {
        0
    };
    eprintln!("rescue cat: {sent} bytes sent, {received} bytes received");
    if let Some(e) = failure {
        if e.raw_os_error() == Some(libc::ENXIO) {
            eprintln!("rescue cat: the peer is gone (cable unplugged or peer stopped)");
            return Ok(exit::PEER_GONE);
        }
        if !cancel::is_stopped(&e) {
            eprintln!("rescue cat: {e}");
            return Ok(exit::ERROR);
        }
    }
    if cancel::interrupted() {
        return Err(Interrupted::new("interrupted").into());
    }
    Ok(exit::OK)
}
