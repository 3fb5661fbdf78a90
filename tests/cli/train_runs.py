"""What the CLI training tests share: a fresh work directory, moectl runs (under mpirun for several
processes, one BLAS/OpenMP thread each, as root allowed), a run's directory and logged iterations,
a torch_dist checkpoint's model read by the independent reader (dcp_reader.py), the comparison of
two runs, and the pass/fail report.

A test calls setup(sys.argv) first (MOECTL SRC_DIR WORK_DIR [MPIEXEC]), check() for every result,
and finish() last."""
import glob
import json
import os
import shutil
import subprocess
import sys

import dcp_reader

MOECTL = SRC = WORK = MPIEXEC = None
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
ENV.pop("NPROC_PER_NODE", None)
failures = []


def setup(argv):
    """The paths from the command line, WORK emptied; returns (MOECTL, SRC, WORK, MPIEXEC)."""
    global MOECTL, SRC, WORK, MPIEXEC
    MOECTL, SRC, WORK = (os.path.abspath(p) for p in argv[1:4])
    MPIEXEC = argv[4] if len(argv) > 4 else None
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    return MOECTL, SRC, WORK, MPIEXEC


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def finish(what):
    """Exit 1 naming the failures, or say that every check of `what` passed."""
    if failures:
        print(f"{len(failures)} failure(s):\n  " + "\n  ".join(failures))
        sys.exit(1)
    print(f"all {what} checks passed")


def mpirun(np):
    return [MPIEXEC, "-np", str(np), "--oversubscribe"] if np > 1 else []


def run(args, np=1, env=None, expect=0):
    """moectl ARGS in WORK on `np` processes; asserts exit status `expect` (None: any)."""
    p = subprocess.run(mpirun(np) + [MOECTL] + args, capture_output=True, text=True, cwd=WORK, env=env or ENV,
                       timeout=300)
    if expect is not None:
        assert p.returncode == expect, f"np {np} moectl {' '.join(args)}: exit {p.returncode}\n{p.stderr[-3000:]}"
    return p


def run_dir(save):
    """The one run directory (v0-...) that --save SAVE made."""
    dirs = sorted(glob.glob(os.path.join(WORK, save, "v*")))
    assert len(dirs) == 1, f"{save}: run dirs {dirs}"
    return dirs[0]


def stopped_at(save, it, last):
    """A copy of run SAVE's directory as if the run had stopped after saving iteration `it`: the
    tracker says `it` and the checkpoint of iteration `last` is gone. Returns its path."""
    dst = os.path.join(WORK, save + "_half", "v0-saved")
    shutil.copytree(run_dir(save), dst)
    open(os.path.join(dst, "latest_checkpointed_iteration.txt"), "w").write(str(it))
    shutil.rmtree(os.path.join(dst, f"iter_{last:07d}"))
    return dst


def log_rows(save):
    return [json.loads(l) for l in open(os.path.join(run_dir(save), "logging.jsonl"))]


def train_log(save):
    """(loss, grad norm) of every logged training iteration."""
    return [(r["loss"], r["grad_norm"]) for r in log_rows(save) if "grad_norm" in r]


def rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def worst(a, b):
    """The largest relative difference of two train_log()s, loss and grad norm alike."""
    return max((max(rel(x[0], y[0]), rel(x[1], y[1])) for x, y in zip(a, b)), default=0.0)


def dist_model(save, it):
    """A torch_dist checkpoint's model tensors (global keys) read by the independent reader."""
    it_dir = os.path.join(run_dir(save), f"iter_{it:07d}")
    return {k: v for k, v in dcp_reader.read_checkpoint(it_dir)[0].items() if not k.startswith("optimizer.")}


def same_run(ref, got, what, tol=1e-5, weights_at=None, model=dist_model, keys=None):
    """Runs `ref` and `got` logged the same losses and grad norms (to `tol` relative), with `keys`
    (a compiled regex) also every logged number whose key it matches in the training and
    evaluation lines, and, with `weights_at`, saved the same weights at that iteration
    (`model(save, it)` reads them). Returns the worst relative difference of the logged numbers and
    the weights' (None without `weights_at`)."""
    import torch
    a, b = train_log(ref), train_log(got)
    check(len(a) == len(b) and len(a) > 0, f"{what}: {len(b)} logged iterations, expected {len(a)}")
    w = worst(a, b)
    check(w <= tol, f"{what}: loss and grad norm per iteration within {tol} (worst {w:.2e})")
    if keys:
        ra, rb = log_rows(ref), log_rows(got)
        pairs = [(k, x[k], y.get(k, float("inf"))) for x, y in zip(ra, rb) for k in x if keys.match(k)]
        names = sorted({k for k, _, _ in pairs})
        w = max(w, max((rel(u, v) for _, u, v in pairs), default=0.0))
        check(len(ra) == len(rb) and names, f"{what}: {len(rb)} logged lines, expected {len(ra)}")
        check(w <= tol, f"{what}: {', '.join(names)} within {tol} (worst {w:.2e})")
    if not weights_at:
        return w, None
    # Relative in L2 over the whole model: Adam turns a gradient that is zero in exact arithmetic
    # but not in rounding (the key bias's: softmax ignores a shift shared by every key) into a full
    # lr step of either sign, so an element-wise measure would compare the rounding of two
    # summation orders, not the layouts.
    wa, wb = model(ref, weights_at), model(got, weights_at)
    check(sorted(wa) == sorted(wb), f"{what}: the checkpoints hold the same tensors")
    num = den = 0.0
    for k, t in wa.items():
        if torch.is_tensor(t) and t.is_floating_point() and k in wb:
            if t.shape != wb[k].shape:
                check(False, f"{what}: {k} shape {tuple(wb[k].shape)}, expected {tuple(t.shape)}")
                continue
            num += ((t.double() - wb[k].double()) ** 2).sum().item()
            den += (t.double() ** 2).sum().item()
    d = (num / max(den, 1e-30)) ** 0.5
    check(d <= tol, f"{what}: final weights within {tol} (|dw|/|w| = {d:.2e})")
    return w, d
