#!/usr/bin/env python3
"""--streaming true (issue 19): the dataset read lazily, in file order, one pass at a time.
- lazy: a file whose row 41 is not JSON fails up front without streaming (naming file:41), but
  trains with --streaming when the run takes fewer rows than that;
- in order: iteration 1 of a streamed run is the file's first global batch: its loss and grad
  norm equal a run (shuffled, but the batch is the same set) over a file of those rows alone;
- wrap-around: a stream shorter than the run starts again (every iteration trains);
- exact resume: 3 + 3 iterations (the data position re-read up to where it stopped) equal 6;
- refused in one line, exit 2, no run dir: no --train_iters (the length is unknown), with
  --packing, with --split_dataset_ratio; args.json records streaming;
- DP2 streams the same batches as one process (when MPIEXEC is given).
Usage: streaming_test.py MOECTL SRC_DIR WORK_DIR [MPIEXEC]"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_runs import check, run, run_dir, rel  # noqa: E402
import train_runs  # noqa: E402

MOECTL, SRC, WORK, MPIEXEC = train_runs.setup(sys.argv)


def train_log(save):
    rows = [json.loads(l) for l in open(os.path.join(run_dir(save), "logging.jsonl"))]
    return [(r["iteration"], r["loss"], r["grad_norm"]) for r in rows if "grad_norm" in r]


run(["init", "--config", os.path.join(SRC, "configs", "tiny-moe"), "--output_dir", "m", "--torch_dtype", "float32"])
rows = [{"query": f"question {i}: " + "why " * (i % 5), "response": f"answer {i} " + "because " * (i % 7)}
        for i in range(40)]
with open(os.path.join(WORK, "data.jsonl"), "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
    f.write("{not json\n")  # row 41
with open(os.path.join(WORK, "head4.jsonl"), "w") as f:
    for r in rows[:4]:
        f.write(json.dumps(r) + "\n")
with open(os.path.join(WORK, "six.jsonl"), "w") as f:
    for r in rows[:6]:
        f.write(json.dumps(r) + "\n")
BASE = ["sft", "--model", "m", "--micro_batch_size", "2", "--global_batch_size", "4", "--log_interval", "1",
        "--lr", "1e-3", "--lr_warmup_iters", "0", "--save_safetensors", "false", "--eval_interval", "0",
        "--torch_dtype", "float32"]

# Lazy: the bad row is never read by a short streamed run.
p = run(BASE + ["--dataset", "data.jsonl", "--train_iters", "3", "--save", "eager"], expect=2)
check("data.jsonl:41" in p.stderr and not os.path.exists(os.path.join(WORK, "eager")),
      f"without streaming the bad row 41 fails up front: {p.stderr.strip()[:120]}")
run(BASE + ["--dataset", "data.jsonl", "--train_iters", "3", "--streaming", "true", "--save", "lazy"])
check(len(train_log("lazy")) == 3, "--streaming trains 3 iterations (12 rows) without reading row 41")
a = json.load(open(os.path.join(run_dir("lazy"), "args.json")))
check(a.get("streaming") is True, "args.json records streaming true")
run(BASE + ["--dataset", "data.jsonl", "--train_iters", "1", "--streaming", "true", "--dataloader_type", "external",
            "--save", "external"])
check(json.load(open(os.path.join(run_dir("external"), "args.json"))).get("dataloader_type") == "external",
      "--dataloader_type external (swift's with --streaming) is accepted with it and recorded")

# In order: iteration 1 is the first 4 rows of the file.
run(BASE + ["--dataset", "head4.jsonl", "--train_iters", "1", "--save", "head4"])
s, h = train_log("lazy")[0], train_log("head4")[0]
check(rel(s[1], h[1]) < 1e-6 and rel(s[2], h[2]) < 1e-5,
      f"iteration 1 streams the file's first 4 rows: loss {s[1]} / {h[1]}, grad norm {s[2]} / {h[2]}")

# Wrap-around: 6 rows, 4 iterations of 4.
p = run(BASE + ["--dataset", "six.jsonl", "--train_iters", "4", "--streaming", "--save", "wrap"])
check(len(train_log("wrap")) == 4 and "epoch 1 reads it again" in p.stderr,
      "a stream of 6 rows serves 16: it starts again at its end")

# Exact resume: 3 + 3 == 6 (the stream re-read up to the saved position).
sched = ["--dataset", "data.jsonl", "--streaming", "true", "--lr_decay_iters", "6", "--save_interval", "3"]
run(BASE + sched + ["--train_iters", "6", "--save", "full"])
run(BASE + sched + ["--train_iters", "3", "--save", "half"])
run(BASE[:1] + ["--load", run_dir("half"), "--finetune", "false"] + BASE[3:] + sched +
    ["--train_iters", "6", "--save", "resumed"])
full, resumed = train_log("full"), train_log("resumed")
check(full[3:] == resumed[-3:] and len(full) == 6, f"resumed iterations 4-6 equal the uninterrupted run's: {resumed[-3:]}")

# Refusals: one line, exit 2, no run dir.
for flags, words in ((["--dataset", "data.jsonl", "--streaming"], ["--streaming", "--train_iters"]),
                     (["--dataset", "data.jsonl", "--streaming", "--train_iters", "2", "--packing"],
                      ["--streaming", "--packing"]),
                     (["--dataset", "data.jsonl", "--streaming", "--train_iters", "2", "--split_dataset_ratio", "0.1"],
                      ["--streaming", "--split_dataset_ratio 0.1", "--val_dataset"])):
    p = run(BASE + flags + ["--save", "refused"], expect=2)
    check(all(w in p.stderr for w in words) and len(p.stderr.strip().splitlines()) == 1
          and not os.path.exists(os.path.join(WORK, "refused")), f"{' '.join(flags[2:])}: {p.stderr.strip()}")

if MPIEXEC:
    run(BASE + ["--dataset", "data.jsonl", "--train_iters", "3", "--streaming", "true", "--save", "dp2"], np=2)
    one, two = train_log("lazy"), train_log("dp2")
    worst = max(max(rel(x[1], y[1]), rel(x[2], y[2])) for x, y in zip(one, two))
    check(len(two) == 3 and worst < 1e-5, f"DP2 streams the batches of one process (worst {worst:.1e})")
else:
    print("(no MPIEXEC: the DP2 check is skipped)")

train_runs.finish("--streaming")
