#!/usr/bin/env python3
"""End-to-end tests of `moectl init` and `moectl infer` on the embedded tiny model, and of the
one-line errors (exit code 2) for bad model directories. Usage: cli_infer_test.py MOECTL SRC_DIR WORK_DIR"""
import json
import os
import shutil
import struct
import subprocess
import sys

MOECTL, SRC, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
TINY = os.path.join(SRC, "configs", "tiny-moe")
failures = []


def run(args, stdin=None, expect_rc=0):
    p = subprocess.run([MOECTL] + args, input=stdin, capture_output=True, text=True, timeout=300)
    if p.returncode != expect_rc:
        raise AssertionError(f"moectl {' '.join(args)}: exit {p.returncode}, wanted {expect_rc}\n"
                             f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")
    return p


def case(fn):
    try:
        fn()
        print(f"ok   {fn.__name__}")
    except AssertionError as e:
        failures.append(fn.__name__)
        print(f"FAIL {fn.__name__}: {e}")


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
MODEL = os.path.join(WORK, "tiny")


def test_init_writes_hf_dir():
    run(["init", "--config", TINY, "--output_dir", MODEL, "--torch_dtype", "bfloat16"])
    for f in ["config.json", "model.safetensors", "tokenizer.json"]:
        assert os.path.exists(os.path.join(MODEL, f)), f
    assert json.load(open(os.path.join(MODEL, "config.json")))["torch_dtype"] == "bfloat16"
    # refuses to overwrite without --overwrite
    p = run(["init", "--config", TINY, "--output_dir", MODEL], expect_rc=2)
    assert "--overwrite" in p.stderr


def write_rows(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


ROWS = [
    {"messages": [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am moectl."}]},
    {"query": "你好", "response": "你好！", "history": [["hi", "hello"]], "system": "Be brief."},
    {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Count to three."}]},
]


def test_batch_rows_and_logprobs():
    data, out = os.path.join(WORK, "rows.jsonl"), os.path.join(WORK, "out.jsonl")
    write_rows(data, ROWS)
    run(["infer", "--model", MODEL, "--val_dataset", data, "--result_path", out, "--max_new_tokens", "12",
         "--temperature", "0", "--repetition_penalty", "1.0", "--logprobs", "true", "--top_logprobs", "3"])
    res = [json.loads(l) for l in open(out)]
    assert len(res) == 3, len(res)
    assert res[0]["labels"] == "I am moectl." and res[1]["labels"] == "你好！" and res[2]["labels"] == ""
    for r in res:
        assert isinstance(r["response"], str)
        assert r["prompt_tokens"] > 3 and 0 <= r["completion_tokens"] <= 12
        assert r["finish_reason"] in ("stop", "length")
        content = r["logprobs"]["content"]
        assert len(content) == r["completion_tokens"]
        for t in content:
            assert t["logprob"] <= 0 and len(t["top_logprobs"]) == 3
            # greedy: the chosen token is the most likely one
            assert t["top_logprobs"][0]["id"] == t["id"], t
            assert abs(t["top_logprobs"][0]["logprob"] - t["logprob"]) < 1e-5
    # the history row's prompt includes the earlier turns
    assert res[1]["prompt_tokens"] > res[0]["prompt_tokens"] - 20
    # deterministic: same again
    out2 = os.path.join(WORK, "out2.jsonl")
    run(["infer", "--model", MODEL, "--val_dataset", data, "--result_path", out2, "--max_new_tokens", "12",
         "--temperature", "0", "--repetition_penalty", "1.0"])
    assert [json.loads(l)["response"] for l in open(out2)] == [r["response"] for r in res]


def test_sampling_is_seeded():
    data = os.path.join(WORK, "rows.jsonl")
    outs = []
    for i, seed in enumerate(["7", "7", "8"]):
        out = os.path.join(WORK, f"s{i}.jsonl")
        run(["infer", "--model", MODEL, "--val_dataset", data, "--result_path", out, "--max_new_tokens", "16",
             "--temperature", "1.0", "--top_k", "50", "--top_p", "0.95", "--repetition_penalty", "1.1",
             "--seed", seed])
        outs.append([json.loads(l)["response"] for l in open(out)])
    assert outs[0] == outs[1]
    assert outs[0] != outs[2], "different seeds gave identical samples"


def test_interactive_through_pipe():
    p = run(["infer", "--model", MODEL, "--max_new_tokens", "8", "--temperature", "0"],
            stdin="hello\nclear\nhi again\nexit\nnever read\n")
    assert p.stdout.count("<<< ") == 4, p.stdout  # before each of the four lines read
    assert p.stderr.count("[prefill ") == 2, p.stderr
    # EOF leaves cleanly too
    p = run(["infer", "--model", MODEL, "--max_new_tokens", "4", "--stream", "false"], stdin="one\n")
    assert p.stdout.count("<<< ") == 2


def test_raw_template_completion():
    p = run(["infer", "--model", MODEL, "--template", "raw", "--max_new_tokens", "5"], stdin="The answer is\n")
    assert p.stdout.startswith("<<< ")


# ---- bad input: exit 2, one line on stderr naming the file and the problem ----------------------

def bad_copy(name):
    d = os.path.join(WORK, name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(MODEL, d)
    return d


def expect_error(model_dir, *needles, extra=()):
    p = run(["infer", "--model", model_dir, "--max_new_tokens", "1"] + list(extra), stdin="x\n", expect_rc=2)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def read_st(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, header, data, header_len=None):
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", header_len if header_len is not None else len(h)) + h + data)


def test_truncated_safetensors():
    d = bad_copy("trunc")
    st = os.path.join(d, "model.safetensors")
    raw = open(st, "rb").read()
    open(st, "wb").write(raw[:len(raw) - 100])
    expect_error(d, "model.safetensors")


def test_header_longer_than_file():
    d = bad_copy("longheader")
    st = os.path.join(d, "model.safetensors")
    h, data = read_st(st)
    write_st(st, h, data, header_len=10**7)
    expect_error(d, "model.safetensors")


def test_overlapping_offsets():
    d = bad_copy("overlap")
    st = os.path.join(d, "model.safetensors")
    h, data = read_st(st)
    names = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
    a, b = names[0], names[1]
    size_b = h[b]["data_offsets"][1] - h[b]["data_offsets"][0]
    h[b]["data_offsets"] = [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + size_b]
    write_st(st, h, data)
    expect_error(d, "model.safetensors")


def test_unknown_dtype():
    d = bad_copy("dtype")
    st = os.path.join(d, "model.safetensors")
    h, data = read_st(st)
    h["model.norm.weight"]["dtype"] = "Q4_K"
    write_st(st, h, data)
    expect_error(d, "model.safetensors", "Q4_K")


def test_shape_size_mismatch():
    d = bad_copy("shapesize")
    st = os.path.join(d, "model.safetensors")
    h, data = read_st(st)
    h["model.norm.weight"]["shape"] = [h["model.norm.weight"]["shape"][0] * 2]
    write_st(st, h, data)
    expect_error(d, "model.safetensors", "model.norm.weight")


def test_shape_disagrees_with_config():
    d = bad_copy("cfgshape")
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["moe_intermediate_size"] = cfg["moe_intermediate_size"] * 2
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    expect_error(d, "experts.0", "config.json")


def test_tensor_missing_from_index():
    d = bad_copy("index")
    st = os.path.join(d, "model.safetensors")
    h, _ = read_st(st)
    names = [k for k in h if k != "__metadata__"]
    os.rename(st, os.path.join(d, "model-00001-of-00001.safetensors"))
    wm = {k: "model-00001-of-00001.safetensors" for k in names if k != "model.norm.weight"}
    json.dump({"metadata": {}, "weight_map": wm}, open(os.path.join(d, "model.safetensors.index.json"), "w"))
    expect_error(d, "model.norm.weight")


def test_config_not_json():
    d = bad_copy("notjson")
    open(os.path.join(d, "config.json"), "w").write("{ this is not json")
    expect_error(d, "config.json")


def test_unknown_model_type():
    d = bad_copy("mtype")
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["model_type"] = "gpt_neox"
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    expect_error(d, "config.json", "gpt_neox")


def test_missing_model_dir():
    expect_error(os.path.join(WORK, "does-not-exist"), "does-not-exist")


def test_bad_dataset_row():
    data = os.path.join(WORK, "bad.jsonl")
    open(data, "w").write('{"messages": [{"role": "user", "content": "hi"}]}\n{"prompt": "no"}\n')
    out = os.path.join(WORK, "never.jsonl")
    p = run(["infer", "--model", MODEL, "--val_dataset", data, "--result_path", out], expect_rc=2)
    assert "bad.jsonl:2" in p.stderr, p.stderr
    assert not os.path.exists(out), "a failed run left a result file"


def test_several_val_datasets_and_backends():
    # swift's list-valued --val_dataset: the rows of every file, in order; --infer_backend
    # transformers/pt is moectl's engine (the same answers), the others one line and exit 2.
    a, b = os.path.join(WORK, "va.jsonl"), os.path.join(WORK, "vb.jsonl")
    write_rows(a, ROWS[:2])
    write_rows(b, ROWS[2:])
    greedy = ["--max_new_tokens", "6", "--temperature", "0", "--repetition_penalty", "1.0"]
    one, two = os.path.join(WORK, "one.jsonl"), os.path.join(WORK, "two.jsonl")
    run(["infer", "--model", MODEL, "--val_dataset", os.path.join(WORK, "rows.jsonl"), "--result_path", one] + greedy)
    p = run(["infer", "--model", MODEL, "--val_dataset", a, b, "--result_path", two, "--infer_backend", "pt"] + greedy)
    assert "transformers" in p.stderr, p.stderr
    assert [json.loads(l) for l in open(two)] == [json.loads(l) for l in open(one)]
    for flags, word in ((["--infer_backend", "vllm"], "transformers"), (["--adapters", "lora_dir"], "LoRA"),
                        (["--infer_backend", "tgi"], "--infer_backend")):
        p = run(["infer", "--model", MODEL, "--val_dataset", a, "--result_path", os.path.join(WORK, "x.jsonl")] + flags,
                expect_rc=2)
        assert word in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not os.path.exists(os.path.join(WORK, "x.jsonl"))
    # a missing second file fails before any answer is written
    p = run(["infer", "--model", MODEL, "--val_dataset", a, os.path.join(WORK, "nope.jsonl"), "--result_path",
             os.path.join(WORK, "y.jsonl")], expect_rc=2)
    assert "nope.jsonl" in p.stderr and not os.path.exists(os.path.join(WORK, "y.jsonl")), p.stderr


def test_max_batch_size():
    # swift's --max_batch_size: rows decoded together give the answers they get one at a time
    # (greedy and seeded sampling), a row too long for the context keeps its error entry in place.
    rows = ROWS + [{"messages": [{"role": "user", "content": "word " * 5000}]}] + [
        {"messages": [{"role": "user", "content": f"Say {i} things about the number {i * 7}."}]} for i in range(6)]
    data = os.path.join(WORK, "batch_rows.jsonl")
    write_rows(data, rows)
    for mode in (["--temperature", "0", "--repetition_penalty", "1.0", "--logprobs", "true", "--top_logprobs", "2"],
                 ["--temperature", "0.9", "--top_k", "20", "--seed", "11", "--repetition_penalty", "1.05"]):
        outs = {}
        for n in ("1", "8", "-1", "3"):
            out = os.path.join(WORK, f"batch_{n}.jsonl")
            run(["infer", "--model", MODEL, "--val_dataset", data, "--result_path", out, "--max_new_tokens", "10",
                 "--max_batch_size", n] + mode)
            outs[n] = [json.loads(l) for l in open(out)]
        one = outs["1"]
        assert len(one) == len(rows) and one[3]["finish_reason"] == "error" and "context" in one[3]["error"], one[3]
        for n, got in outs.items():
            assert [r["response"] for r in got] == [r["response"] for r in one], (n, mode)
            assert [r["finish_reason"] for r in got] == [r["finish_reason"] for r in one], n
            for a, b in zip(got, one):
                for x, y in zip((a.get("logprobs") or {}).get("content", []), (b.get("logprobs") or {}).get("content", [])):
                    assert x["id"] == y["id"] and abs(x["logprob"] - y["logprob"]) < 1e-4, (n, x, y)
    p = run(["infer", "--model", MODEL, "--val_dataset", data, "--result_path", os.path.join(WORK, "z.jsonl"),
             "--max_batch_size", "0"], expect_rc=2)
    assert "--max_batch_size 0" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_device_flag():
    """--device: the speed line names where the model ran; a bad value or a missing GPU is one line
    naming the flag, exit 2, before anything is loaded or written."""
    p = run(["infer", "--model", MODEL, "--max_new_tokens", "4", "--device", "cpu"], stdin="hello\n")
    assert "| cpu]" in p.stderr, p.stderr
    for bad in ["gpu", "cuda:x"]:
        p = run(["infer", "--model", MODEL, "--device", bad], stdin="hello\n", expect_rc=2)
        assert f"--device {bad}" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    if subprocess.run(["sh", "-c", "nvidia-smi -L"], capture_output=True).returncode != 0:  # no GPU here
        out = os.path.join(WORK, "device_mcore")
        p = run(["export", "--model", MODEL, "--to_mcore", "true", "--output_dir", out, "--test_convert_precision",
                 "true", "--device", "cuda"], expect_rc=2)
        assert "--device cuda" in p.stderr and "--device cpu" in p.stderr, p.stderr
        assert not os.path.exists(out), "export wrote before refusing --device"


for t in [test_init_writes_hf_dir, test_batch_rows_and_logprobs, test_sampling_is_seeded,
          test_interactive_through_pipe, test_raw_template_completion, test_truncated_safetensors,
          test_header_longer_than_file, test_overlapping_offsets, test_unknown_dtype, test_shape_size_mismatch,
          test_shape_disagrees_with_config, test_tensor_missing_from_index, test_config_not_json,
          test_unknown_model_type, test_missing_model_dir, test_bad_dataset_row,
          test_several_val_datasets_and_backends, test_max_batch_size, test_device_flag]:
    case(t)
print(f"{len(failures)} failed" if failures else "all passed")
sys.exit(1 if failures else 0)
