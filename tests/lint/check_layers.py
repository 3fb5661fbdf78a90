#!/usr/bin/env python3
"""Arrows go down (DESIGN.md section 2): each libmoe/<layer> may include only its own headers and
those of the layers below it. Every library target has libmoe/ on its include path, so the
compiler cannot refuse an upward #include; this check does. Prints each offending file:line and
include and exits 1; exits 0 when every include points down.

Usage: check_layers.py [LIBMOE_DIR]   (default: libmoe/ beside this script's tests/ folder)
"""
import pathlib
import re
import sys

# What each layer may use directly, as DESIGN.md's table says; closed transitively below.
MAY_USE = {
    "core": [],
    "io": ["core"],
    "text": ["core", "io"],
    "kernels": ["core"],
    "dist": ["core"],
    "model": ["core", "kernels", "dist"],
    "checkpoint": ["core", "io", "text", "model"],
    "train": ["core", "io", "text", "kernels", "dist", "model", "checkpoint"],
    "infer": ["model", "checkpoint", "text"],
    "plan": ["model"],
}


def allowed(layer, seen=None):
    seen = set() if seen is None else seen
    for below in MAY_USE[layer]:
        if below not in seen:
            seen.add(below)
            allowed(below, seen)
    return seen | {layer}


def main():
    root = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2] / "libmoe"
    include = re.compile(r'^\s*#\s*include\s*"([a-z_]+)/')
    bad = []
    for layer_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        layer = layer_dir.name
        if layer not in MAY_USE:
            bad.append(f"{layer_dir}: a layer missing from this check's table (add it as in DESIGN.md section 2)")
            continue
        ok = allowed(layer)
        for f in sorted(layer_dir.rglob("*")):
            if f.suffix not in (".h", ".cpp", ".cu", ".cuh", ".in"):
                continue
            for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                m = include.match(line)
                if m and m.group(1) in MAY_USE and m.group(1) not in ok:
                    bad.append(f"{f.relative_to(root.parent)}:{n}: {layer} includes {line.strip()[len('#include '):]}"
                               f" ({m.group(1)} is not below {layer}; {layer} may use {', '.join(sorted(ok - {layer})) or 'nothing'})")
    for b in bad:
        print(b)
    if bad:
        print(f"{len(bad)} include(s) point up the layer table (DESIGN.md section 2)")
        return 1
    print(f"layer includes: every include under {root} points down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
