//! Small helpers shared by several modules: time stamps, sizes, hex, and
//! escaping what a peer sent before it reaches a terminal.

use std::borrow::Cow;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch now.
pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// "2026-11-22T01:02:03Z".
pub(crate) fn iso8601(secs: i64) -> String {
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        t / 3600,
        (t / 60) % 60,
        t % 60
    )
}

/// "20261122-010203", sortable, for backup ids.
pub(crate) fn compact_time(secs: i64) -> String {
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        t / 3600,
        (t / 60) % 60,
        t % 60
    )
}

/// A size for people, as lsblk and `ls -h` show it: "256 GiB", "1.5 TiB",
/// "477 GiB", "512 B" (whole units without a decimal, one decimal under 100).
/// The one size format of every command's output.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    let mut div = 1u64;
    while unit + 1 < UNITS.len() && bytes / div >= 1024 {
        div *= 1024;
        unit += 1;
    }
    if bytes.is_multiple_of(div) {
        return format!("{} {}", bytes / div, UNITS[unit]);
    }
    let v = bytes as f64 / div as f64;
    if v >= 100.0 {
        format!("{:.0} {}", v, UNITS[unit])
    } else {
        format!("{:.1} {}", v, UNITS[unit])
    }
}

/// A string that came from the peer (or from the other machine's firmware),
/// escaped when displayed: control characters (escape sequences, CR, LF, DEL,
/// C1) and invisible or direction-changing characters are shown as `\n`,
/// `\x1b`, `\u{202e}`, so a peer can neither drive the terminal nor forge a
/// line of our output. Width and alignment (`{:<20}`) apply to the escaped text.
/// JSON output does not need it: serde_json escapes control characters itself.
pub(crate) struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&printable(self.0))
    }
}

/// Characters that move text around or hide it without being control characters.
fn invisible(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// `s` with everything [`Escaped`] escapes escaped (borrowed when nothing is).
pub(crate) fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || invisible(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)))
            }
            c if c.is_control() || invisible(c) => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)))
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a panic said (its payload, as `panic!` and `assert!` make it).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_795_309_323), "2026-11-22T01:02:03Z");
        assert_eq!(compact_time(1_795_309_323), "20261122-010203");
    }

    #[test]
    fn escapes_what_the_peer_sent() {
        assert_eq!(Escaped("hostb").to_string(), "hostb");
        assert_eq!(
            Escaped("a\x1b[2J\r\nrestore of x completed\u{9b}\u{202e}").to_string(),
            "a\\x1b[2J\\r\\nrestore of x completed\\u{9b}\\u{202e}"
        );
        assert_eq!(format!("[{:<6}]", Escaped("a\tb")), "[a\\tb  ]");
        assert_eq!(printable("Grüße"), "Grüße");
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        // One format with `rescue disks` (it was "1.0 GiB" here, "1 GiB" there).
        assert_eq!(human_bytes(1 << 30), "1 GiB");
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(256 << 30), "256 GiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_bytes(512_110_190_592), "477 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }
}
