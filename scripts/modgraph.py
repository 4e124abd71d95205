#!/usr/bin/env python3
"""modgraph.py: the import graph between rescue's top-level modules; fails on a circle.

rescue/src is layered (docs/ARCHITECTURE.md): each top-level module (`cmd`, `boot`,
`session`, `store`, `fabric`, `system`, `xfer`, `wire`, and the small ones beside
them) uses only modules below it. A `crate::X` path in module Y is an edge Y -> X.
Two modules that reach each other, directly or round a longer loop, are a circle:
neither can be read, tested or moved without the other. Test code (`#[cfg(test)]
mod tests` at the end of a file) does not count. Usage:

    scripts/modgraph.py [--print] [SRC]

SRC defaults to rescue/src. --print lists every module's edges. The exit status is
1 when there is a circle (each is listed with the lines that make it), 0 otherwise.
"""

import argparse
import collections
import os
import re
import sys

PATH = re.compile(r"\bcrate::(\w+)")
GROUP = re.compile(r"\buse crate::\{([^;]*)\}", re.S)
TESTS = re.compile(r"#\[cfg\(test\)\]\s*mod tests\b")
COMMENT = re.compile(r"//.*")


def edges(src):
    """{module: {used module: [file:line, ...]}} for the .rs files below src."""
    out = collections.defaultdict(lambda: collections.defaultdict(list))
    for dirpath, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, src)
            top = rel.split(os.sep)[0].removesuffix(".rs")
            if top in ("lib", "main"):
                continue
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            m = TESTS.search(text)
            if m:
                text = text[: m.start()]
            code = "\n".join(COMMENT.sub("", line) for line in text.splitlines())

            def add(name, pos):
                # `Root` and other re-exports at the crate root are not a module.
                if name != top and name[:1].islower():
                    out[top][name].append(f"{rel}:{code.count(chr(10), 0, pos) + 1}")

            for m in PATH.finditer(code):
                add(m.group(1), m.start())
            for m in GROUP.finditer(code):
                for part in re.split(r",(?![^{]*\})", m.group(1)):
                    name = re.match(r"\s*(\w+)", part)
                    if name:
                        add(name.group(1), m.start())
    return out


def circles(graph):
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    nodes = set(graph) | {w for ws in graph.values() for w in ws}
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="?", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "rescue", "src"))
    ap.add_argument("--print", action="store_true", help="list every module's edges")
    args = ap.parse_args()
    graph = edges(args.src)
    if args.print:
        for v in sorted(graph):
            print(f"{v} -> {', '.join(sorted(graph[v]))}")
    bad = circles(graph)
    for group in bad:
        print(f"import circle: {' <-> '.join(group)}")
        for a in group:
            for b in group:
                if b in graph[a]:
                    where = sorted(set(graph[a][b]))
                    more = f" (+{len(where) - 3} more)" if len(where) > 3 else ""
                    print(f"  {a} -> {b}: {', '.join(where[:3])}{more}")
    if bad:
        print("modgraph: a module below must not use one above it (docs/ARCHITECTURE.md)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
