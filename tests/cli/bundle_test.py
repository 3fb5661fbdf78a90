#!/usr/bin/env python3
"""Issue 17: `cmake --install BUILD --prefix DIR` makes a relocatable bundle.

1. ldd on the bundled binary and on every bundled library resolves each dependency to a file in
   the bundle, except the C runtime (libc, libm, libdl, libpthread, librt, the dynamic loader) and
   the NVIDIA driver's libcuda.
2. The bundle runs with the system's library directories hidden: a chroot holding only the bundle,
   the C runtime files and a tiny model runs `moectl --version` and a CPU `infer` whose greedy
   answers equal the build tree's. The build tree's own binary copied into the same chroot must
   fail to start (the control that shows the chroot hides the system's libraries).

Needs root or unprivileged user namespaces (unshare); skips (exit 77) without them.
Usage: bundle_test.py MOECTL SRC_DIR WORK_DIR BUILD_DIR"""
import json
import os
import re
import shutil
import subprocess
import sys

MOECTL, SRC, WORK, BUILD = (os.path.abspath(p) for p in sys.argv[1:5])
ROOT = os.path.join(WORK, "root")
PREFIX_IN_ROOT = "/opt/moectl"
PREFIX = ROOT + PREFIX_IN_ROOT
# The files a target machine provides: the C runtime and the driver's libcuda.
SYSTEM = re.compile(r"^(linux-vdso\.so|ld-linux-x86-64\.so|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libcuda\.so)")


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


def must(cmd, **kw):
    p = run(cmd, **kw)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p


def ldd(path):
    """[(soname, resolved path or None)] as the loader on this machine resolves them."""
    out = must(["ldd", path]).stdout
    deps = []
    for line in out.splitlines():
        line = line.strip()
        m = re.match(r"(\S+) => (not found|\S+)", line)
        if m:
            deps.append((m.group(1), None if m.group(2) == "not found" else m.group(2)))
        elif line:
            deps.append((os.path.basename(line.split()[0]), line.split()[0]))
    return deps


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(ROOT)
must(["cmake", "--install", BUILD, "--prefix", PREFIX])
binary = os.path.join(PREFIX, "bin", "moectl")
failures = []

# 1. ldd: everything but the system set resolves inside the bundle.
system_files = set()
libdir = os.path.join(PREFIX, "lib")
objects = [binary] + [os.path.join(libdir, f) for f in sorted(os.listdir(libdir))
                      if not os.path.islink(os.path.join(libdir, f))]
for obj in objects:
    for name, path in ldd(obj):
        if SYSTEM.match(name):
            if path and os.path.isabs(path):
                system_files.add(path)
        elif path is None:
            failures.append(f"{os.path.basename(obj)}: {name} not found")
        elif not os.path.realpath(path).startswith(PREFIX + "/"):
            failures.append(f"{os.path.basename(obj)}: {name} resolves outside the bundle, to {path}")
bundled = set(os.listdir(libdir))
for want in ["libopenblas.so.0", "libstdc++.so.6", "libgomp.so.1", "libspdlog.so.1.10", "libpcre2-8.so.0"]:
    if want not in bundled:
        failures.append(f"{want} is not in the bundle")
print(f"ldd: {len(objects)} objects, {len(bundled)} names in lib/, system files {sorted(system_files)}")
if failures:
    sys.exit("FAIL\n" + "\n".join(failures))

# 2. The chroot: the bundle, the C runtime at the paths the loader expects, a model, a dataset.
for f in system_files:
    dest = ROOT + f
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copy(os.path.realpath(f), dest)
model = os.path.join(ROOT, "model")
must([MOECTL, "init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", model])
with open(os.path.join(ROOT, "q.jsonl"), "w") as f:
    for q in ["Who are you?", "Count to three.", "你好"]:
        f.write(json.dumps({"messages": [{"role": "user", "content": q}]}, ensure_ascii=False) + "\n")
infer = ["infer", "--val_dataset", "/q.jsonl", "--temperature", "0", "--max_new_tokens", "12", "--model", "/model",
         "--result_path"]
host = [a.replace("/q.jsonl", ROOT + "/q.jsonl").replace("/model", model) for a in infer]
must([MOECTL] + host + [os.path.join(WORK, "host.jsonl")])

# A fresh mount and PID namespace with its own /proc (the loader reads /proc/self/exe to expand
# $ORIGIN; every real machine has /proc), as root or in a user namespace.
CHROOT, UNSHARE = shutil.which("chroot") or "/usr/sbin/chroot", shutil.which("unshare") or "unshare"
os.makedirs(os.path.join(ROOT, "proc"))
ns = [UNSHARE] + ([] if os.geteuid() == 0 else ["-r"]) + ["-m", "-p", "-f", f"--mount-proc={ROOT}/proc"]
if run(ns + ["true"]).returncode != 0:
    print("SKIP: the chroot needs mount namespaces (root, or unshare -r)")
    sys.exit(77)
chroot = ns + [CHROOT, ROOT]
env = {"PATH": PREFIX_IN_ROOT + "/bin", "HOME": "/", "OMP_NUM_THREADS": "1"}

os.makedirs(os.path.join(ROOT, "control"))
shutil.copy(MOECTL, os.path.join(ROOT, "control", "moectl"))
p = run(chroot + ["/control/moectl", "--version"], env=env)
if p.returncode == 0 or "shared object" not in p.stderr:
    sys.exit(f"control: the build tree's moectl started in the chroot (exit {p.returncode}: {p.stderr.strip()}); "
             "the chroot does not hide the system's libraries")
print("control: the build tree's moectl fails in the chroot:", p.stderr.strip().splitlines()[0])

p = must(chroot + [PREFIX_IN_ROOT + "/bin/moectl", "--version"], env=env)
print("bundle in chroot:", p.stdout.strip())
must(chroot + [PREFIX_IN_ROOT + "/bin/moectl"] + infer + ["/out.jsonl"], env=env)
got = [json.loads(l)["response"] for l in open(os.path.join(ROOT, "out.jsonl"))]
want = [json.loads(l)["response"] for l in open(os.path.join(WORK, "host.jsonl"))]
if got != want:
    sys.exit(f"FAIL: the bundle's answers differ from the build tree's\n{got}\n{want}")
print("infer in chroot: same greedy answers as the build tree", got)
print(f"bundle size {sum(os.path.getsize(os.path.join(libdir, f)) for f in bundled) / 2**20:.0f} MiB in lib/")
shutil.rmtree(WORK, ignore_errors=True)  # 600 MiB with cuBLAS
