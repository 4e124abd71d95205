//! The shell-style pattern matcher modules.alias needs (`*`, `?`, `[...]`), so PID 1
//! can match device modaliases without libc's fnmatch or kmod.

/// Whether `text` matches `pattern` as fnmatch(3) would without flags.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where to resume after the last `*`: the pattern index after it and the text
    // index it currently swallows up to. One star of backtracking is enough because
    // a later star can always absorb what an earlier one would have.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi + 1, ti));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == b'[' {
                        // An unterminated class is a literal '['.
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                b'\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == t[ti] {
                        pi += 2;
                        ti += 1;
                        continue;
                    }
                }
                c => {
                    if c == t[ti] {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Matches one byte against the class starting at `p[start] == '['`. Returns whether
/// it matched and the index after the class, or `None` if the class is unterminated.
fn class_match(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &b = p.get(i)?;
        if b == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&e| e != b']') {
            let hi = p[i + 2];
            if b <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if b == c {
                matched = true;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match as m;

    #[test]
    fn literals_and_wildcards() {
        assert!(m("abc", "abc"));
        assert!(!m("abc", "abd"));
        assert!(!m("abc", "abcd"));
        assert!(m("a*", "a"));
        assert!(m("a*c", "abbbc"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("*", ""));
        assert!(!m("?", ""));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*b*c", "xxaxxbxxcxx"));
    }

    #[test]
    fn classes() {
        assert!(m("v[0-9]x", "v5x"));
        assert!(!m("v[0-9]x", "vax"));
        assert!(m("v[!0-9]x", "vax"));
        assert!(m("[]]", "]"));
        assert!(m("a[", "a["));
    }

    #[test]
    fn real_modalias() {
        let pat = "pci:v*d*sv*sd*bc01sc08i02*";
        let dev = "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02";
        assert!(m(pat, dev));
        assert!(!m("pci:v*d*sv*sd*bc01sc06i01*", dev));
        assert!(m(
            "usb:v*p*d*dc*dsc*dp*ic08isc06ip50in*",
            "usb:v0781p5581d0100dc00dsc00dp00ic08isc06ip50in00"
        ));
        assert!(m("virtio:d00000002v*", "virtio:d00000002v00001AF4"));
    }
}
