#!/usr/bin/env python3
"""QA rows of issue 11 on the moectl binary (each case named by its QA row):
- QA09: one bit flipped in a tensor's data inside a Megatron rank file: infer, export --to_hf and
  sft --load exit 2 with one line naming the file, the zip entry and the checksum mismatch, and
  export leaves no output directory and no .tmp behind.
- QA13: --max_shard_size past 1 PB (20000000000GB wrapped to one shard per tensor) exits 2.
- QA20_*: command-line mistakes give one `moectl: error:` line and exit 2: an unknown command
  lists the commands, an unknown flag names itself and the subcommand; a repeated flag keeps its
  last value while list options keep every value; --help still exits 0.
Usage: qa_io_test.py MOECTL SRC_DIR WORK_DIR"""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

MOECTL, SRC, WORK = (os.path.abspath(p) for p in sys.argv[1:4])
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what)


def run(args, rc=0, stdin=None):
    p = subprocess.run([MOECTL] + args, capture_output=True, text=True, cwd=WORK, input=stdin)
    assert p.returncode == rc, f"moectl {' '.join(args)}: exit {p.returncode}, expected {rc}\n{p.stderr[-3000:]}"
    return p


def one_error_line(tag, args, needles, stdin=None):
    """args exits 2 with exactly one stderr line, `moectl: error: ...`, holding every needle."""
    p = subprocess.run([MOECTL] + args, capture_output=True, text=True, cwd=WORK, input=stdin)
    lines = p.stderr.strip().splitlines()
    check(p.returncode == 2, f"{tag}: exit {p.returncode}, expected 2\n{p.stderr[-2000:]}")
    check(len(lines) == 1 and lines[0].startswith("moectl: error: "), f"{tag}: stderr is not one error line:\n{p.stderr[-2000:]}")
    for n in needles:
        check(n in p.stderr, f"{tag}: stderr lacks {n!r}:\n{p.stderr[-2000:]}")
    check(not re.search(r"\d{40}", p.stderr), f"{tag}: a huge number in the message:\n{p.stderr[-2000:]}")
    return lines[0] if lines else ""


hf, mc = os.path.join(WORK, "hf"), os.path.join(WORK, "mc")
run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", hf])
run(["export", "--model", hf, "--to_mcore", "true", "--output_dir", mc, "--ckpt_format", "torch"])

# --- QA09: a flipped bit in a storage of the rank file
bad = os.path.join(WORK, "bad")
shutil.copytree(mc, bad)
pt = os.path.join(bad, "iter_0000001", "mp_rank_00", "model_optim_rng.pt")
with zipfile.ZipFile(pt) as z:
    entry = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
raw = bytearray(open(pt, "rb").read())
h = entry.header_offset
assert raw[h:h + 4] == b"PK\x03\x04"
data = h + 30 + int.from_bytes(raw[h + 26:h + 28], "little") + int.from_bytes(raw[h + 28:h + 30], "little")
raw[data + entry.file_size // 2] ^= 0x04
open(pt, "wb").write(bytes(raw))
with zipfile.ZipFile(pt) as z:
    assert z.testzip() == entry.filename  # Python's own check sees the same corruption
needles = [pt, f"'{entry.filename}'", "checksum mismatch (file corrupted)"]
one_error_line("QA09 infer", ["infer", "--model", bad, "--max_new_tokens", "2"], needles, stdin="hi\n")
out = os.path.join(WORK, "bad_hf")
one_error_line("QA09 export --to_hf", ["export", "--mcore_model", bad, "--to_hf", "true", "--output_dir", out], needles)
left = [f for f in os.listdir(WORK) if f.startswith("bad_hf")]
check(left == [], f"QA09 export left {left} behind")
one_error_line("QA09 sft --load", ["sft", "--load", bad, "--dataset", "self-cognition#8", "--train_iters", "1",
                                   "--micro_batch_size", "1", "--global_batch_size", "1", "--max_length", "64",
                                   "--save", os.path.join(WORK, "bad_sft")], needles)
# the intact copy still converts (the check does not refuse good files)
run(["export", "--mcore_model", mc, "--to_hf", "true", "--output_dir", os.path.join(WORK, "good_hf")])

# --- QA13: --max_shard_size range
for size in ["20000000000GB", "1000001GB", "1e300", "inf", "nan", "0", "0.5", "-5GB", "5XB"]:
    one_error_line(f"QA13 --max_shard_size {size}", ["export", "--mcore_model", mc, "--to_hf", "true", "--output_dir",
                                                    os.path.join(WORK, "shard_hf"), "--max_shard_size", size],
                   ["--max_shard_size", size])
check(not os.path.exists(os.path.join(WORK, "shard_hf")), "QA13: a refused size wrote output")
p = run(["export", "--mcore_model", mc, "--to_hf", "true", "--output_dir", os.path.join(WORK, "shard_ok"),
         "--max_shard_size", "1000000GB"])
check(os.path.exists(os.path.join(WORK, "shard_ok", "model.safetensors")), "QA13: 1000000GB is one shard")
# QA20: not on a terminal, export prints one summary line, not a line per tenth
lines = p.stderr.strip().splitlines()
check(len(lines) == 1 and lines[0].startswith("to_hf: done"), f"QA20 export progress off a TTY:\n{p.stderr}")

# --- QA20: messages
commands = ["infer", "tokenize", "init", "export", "pt", "sft", "plan"]
one_error_line("QA20_unknown_command", ["frobnicate"], ["unknown command 'frobnicate'"] + commands)
one_error_line("QA20_no_command", [], ["command is required"] + commands)
one_error_line("QA20_unknown_flag", ["sft", "--model", hf, "--dataset", "dummy#4", "--bogus", "1"],
               ["unknown flag --bogus for 'moectl sft' (see moectl sft --help)"])
one_error_line("QA20_unknown_flag_export", ["export", "--bogus", "--output_dir", "x"],
               ["unknown flag --bogus for 'moectl export'"])
one_error_line("QA20_missing_required", ["export", "--to_hf", "true"], ["--output_dir", "moectl export --help"])
one_error_line("QA20_bad_number", ["sft", "--model", hf, "--dataset", "dummy#4", "--lr", "abc"], ["--lr", "abc"])
one_error_line("QA20_max_new_tokens", ["infer", "--model", hf, "--max_new_tokens", "0"], ["--max_new_tokens"])
for args in (["--help"], ["sft", "--help"], ["export", "--help"]):
    p = run(args)
    check("--" in p.stdout and p.stderr == "", f"QA20 {args}: help on stdout, nothing on stderr")
check("--max_shard_size" in run(["export", "--help"]).stdout, "QA20: export --help lists its flags")
check(run(["--version"]).stdout.startswith("moectl"), "QA20: --version")

# A repeated flag keeps its last value (swift's argparse); list options keep every value.
save = os.path.join(WORK, "last")
p = run(["sft", "--model", hf, "--dataset", "self-cognition#8", "dummy#8", "--model_name", "x", "y", "--model_author",
         "a", "b", "--train_iters", "1", "--lr", "5", "--lr", "0.002", "--micro_batch_size", "4", "--micro_batch_size",
         "1", "--global_batch_size", "2", "--max_length", "64", "--max_length", "96", "--save", save,
         "--recompute_granularity", "selective", "--recompute_modules", "core_attn", "moe_act"])
runs = [d for d in os.listdir(save) if d.startswith("v")]
args = json.load(open(os.path.join(save, runs[0], "args.json")))
check(args["lr"] == 0.002, f"QA20_repeated_flag: lr {args['lr']}, expected the last (0.002)")
check(args["micro_batch_size"] == 1, f"QA20_repeated_flag: micro_batch_size {args['micro_batch_size']}")
check(args["max_length"] == 96, f"QA20_repeated_flag: max_length {args['max_length']}")
check(args["dataset"] == ["self-cognition#8", "dummy#8"], f"QA20_list_option: dataset {args['dataset']}")
# --recompute_modules keeps every value too: a bad second value is still seen and named.
one_error_line("QA20_list_option_recompute", ["sft", "--model", hf, "--dataset", "dummy#8", "--train_iters", "1",
                                              "--micro_batch_size", "1", "--global_batch_size", "1", "--max_length",
                                              "64", "--save", os.path.join(WORK, "rc"), "--recompute_granularity",
                                              "selective", "--recompute_modules", "core_attn", "bogus_module"],
               ["--recompute_modules 'bogus_module'"])

if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
print("qa_io: all cases passed")
