#!/usr/bin/env python3
"""fnlen.py: lists every Rust function longer than a limit outside tests; fails if any.

The house rule is "functions under 100 lines". clippy's too_many_lines counts only
lines with code on them, so a long function padded with comments passes it; this
counts raw lines, from the line of `fn` to the line of its closing brace.

Tests do not count: files under a tests/ directory, `#[cfg(test)]` items (the usual
`mod tests`) and `#[test]` functions. Usage:

    scripts/fnlen.py [--limit N] [--all] [PATH...]

PATH defaults to the repository's tracked *.rs files. The exit status is 1 when a
function is over the limit (default 100), 0 otherwise; --all lists every function
(longest first) rather than only those over the limit.
"""

import argparse
import os
import re
import subprocess
import sys

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def tokens(src):
    """Yields (kind, text, line) for the tokens that matter here: identifiers,
    punctuation and `#[`...`]` attributes; strings, chars and comments are skipped
    (so braces inside them do not count)."""
    i, line, n = 0, 1, len(src)
    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    line += src[i] == "\n"
                    i += 1
        elif c in "rb" and re.match(r"(br|r)#*\"", src[i:i + 300]):
            m = re.match(r"(br|r)(#*)\"", src[i:])
            end = src.find('"' + m.group(2), i + m.end())
            end = n if end < 0 else end + 1 + len(m.group(2))
            line += src.count("\n", i, end)
            i = end
        elif c == '"' or (c == "b" and src.startswith('b"', i)):
            j = i + (2 if c == "b" else 1)
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            line += src.count("\n", i, j)
            i = j + 1
        elif c == "'" or (c == "b" and src.startswith("b'", i)):
            # A char literal ('x', '\n', '\u{..}') or a lifetime ('a): a lifetime has
            # no closing quote right after its name.
            j = i + (2 if c == "b" else 1)
            m = re.match(r"\\u\{[0-9a-fA-F]*\}'|\\.'|[^\\']'", src[j:j + 12])
            i = j + m.end() if m else j
        elif IDENT.match(c):
            m = IDENT.match(src, i)
            yield "ident", m.group(0), line
            i = m.end()
        elif c.isdigit():
            m = re.match(r"[0-9][0-9A-Za-z_.]*", src[i:])
            i += m.end()
        else:
            yield "punct", c, line
            i += 1


def functions(path):
    """Yields (name, first line, last line) for each function with a body outside
    test code in one file."""
    with open(path, encoding="utf-8") as f:
        toks = list(tokens(f.read()))
    stack = []  # one entry per open brace: the function it opens, or None
    skip_depth = None  # brace depth below which everything is test code
    pending_test = False  # a #[cfg(test)] or #[test] attribute waits for its item
    i = 0
    while i < len(toks):
        kind, text, line = toks[i]
        if text == "#" and i + 1 < len(toks) and toks[i + 1][1] in "[!":
            # An attribute: read it whole to see whether it marks test code.
            j = i + (3 if toks[i + 1][1] == "!" else 2)
            depth, words = 1, []
            while j < len(toks) and depth:
                depth += {"[": 1, "]": -1}.get(toks[j][1], 0)
                words.append(toks[j][1])
                j += 1
            attr = " ".join(words)
            if attr.startswith("test ]") or re.match(r"cfg \( (all \( )?test\b", attr):
                pending_test = True
            i = j
            continue
        if text == "{":
            owner = None
            if pending_test and skip_depth is None:
                skip_depth = len(stack)
            pending_test = False
            stack.append(owner)
        elif text == "}":
            if stack:
                owner = stack.pop()
                if owner and skip_depth is None:
                    yield owner[0], owner[1], line
                if skip_depth is not None and len(stack) <= skip_depth:
                    skip_depth = None
        elif text == ";":
            pending_test = False
        elif kind == "ident" and text == "fn" and i + 1 < len(toks) and toks[i + 1][0] == "ident":
            name = toks[i + 1][1]
            # The body is the first `{` at this nesting; a `;` first means no body.
            j, paren = i + 2, 0
            while j < len(toks):
                t = toks[j][1]
                if t in "([<":
                    paren += 1 if t != "<" else 0
                elif t in ")]":
                    paren -= 1
                elif paren == 0 and t in "{;":
                    break
                j += 1
            if j < len(toks) and toks[j][1] == "{":
                if pending_test and skip_depth is None:
                    skip_depth = len(stack)
                pending_test = False
                stack.append((name, line))
                i = j + 1
                continue
        i += 1


def top():
    return subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                          text=True, check=True).stdout.strip()


def tracked_sources():
    out = subprocess.run(["git", "-C", top(), "ls-files", "*.rs"], capture_output=True,
                         text=True, check=True).stdout.split()
    return [os.path.join(top(), p) for p in out]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--all", action="store_true", help="list every function")
    ap.add_argument("paths", nargs="*")
    args = ap.parse_args()
    paths = args.paths or tracked_sources()
    cwd = os.getcwd()
    found = []
    for p in paths:
        if "tests" in os.path.relpath(p, top()).split(os.sep):
            continue
        for name, first, last in functions(p):
            found.append((last - first + 1, os.path.relpath(p, cwd), first, name))
    found.sort(key=lambda f: (-f[0], f[1], f[2]))
    over = [f for f in found if f[0] > args.limit]
    for lines, path, first, name in found if args.all else over:
        print(f"{lines:5} {path}:{first} {name}")
    if over:
        print(f"fnlen: {len(over)} function(s) over {args.limit} lines", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
