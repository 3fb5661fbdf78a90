#!/usr/bin/env python3
"""Regressions for the inference defects of the 2026-12 QA pass (shared/reference/qa-2026-12.md),
one test per QA number, plus the REPL habits swift users bring (empty lines, CRLF, result paths).
Each asserts the exit code, the one-line stderr message and what is on disk afterwards.
Usage: qa_infer_test.py MOECTL SRC_DIR WORK_DIR"""
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys

MOECTL, SRC, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
TINY = os.path.join(SRC, "configs", "tiny-moe")
failures = []


def run(args, stdin=None, expect_rc=0, cwd=None, timeout=300):
    data = stdin.encode() if isinstance(stdin, str) else stdin
    try:
        p = subprocess.run([MOECTL] + args, input=data, capture_output=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"moectl {' '.join(args)[:300]}: still running after {timeout} s")
    p.stdout_b = p.stdout
    p.stdout, p.stderr = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    if p.returncode != expect_rc:
        raise AssertionError(f"moectl {' '.join(args)[:300]}: exit {p.returncode}, wanted {expect_rc}\n"
                             f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")
    return p


def one_error_line(p, *needles):
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"wanted one stderr line, got {lines}"
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def case(fn):
    try:
        fn()
        print(f"ok   {fn.__name__}")
    except Exception as e:  # a crash (e.g. a missing result file) is a failure too
        failures.append(fn.__name__)
        print(f"FAIL {fn.__name__}: {e}")


def no_tmp_left(d):
    left = [f for f in os.listdir(d) if f.endswith(".tmp")]
    assert not left, f"left behind in {d}: {left}"


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
MODEL = os.path.join(WORK, "tiny")
run(["init", "--config", TINY, "--output_dir", MODEL])

# The same model with a 256-token context, so "beyond the context" needs only a few KB.
SHORT = os.path.join(WORK, "tiny-ctx256")
shutil.copytree(MODEL, SHORT)
cfg = json.load(open(os.path.join(SHORT, "config.json")))
cfg["max_position_embeddings"] = 256
json.dump(cfg, open(os.path.join(SHORT, "config.json"), "w"))
LONG_LINE = " ".join(f"w{i}x" for i in range(1500))  # well over 256 tokens

GREEDY = ["--temperature", "0", "--max_new_tokens", "4"]


def write_rows(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def error_lines(p):
    return [l for l in p.stderr.splitlines() if l.startswith("moectl: error")]


def test_qa8_bad_line_is_refused_alone():
    p = run(["infer", "--model", MODEL] + GREEDY, stdin=b"bad \xff\nWho are you?\nexit\n")
    errs = error_lines(p)
    assert len(errs) == 1, p.stderr  # the bad line only, not every later turn
    # offset 4 is the 0xff in the line itself, not in the rendered prompt
    assert "not valid UTF-8" in errs[0] and "offset 4" in errs[0], errs[0]
    assert p.stderr.count("[prefill ") == 1, p.stderr  # "Who are you?" was answered


def test_qa11_long_line_refused_and_session_goes_on():
    p = run(["infer", "--model", SHORT] + GREEDY, stdin=LONG_LINE + "\nhello\nexit\n")
    errs = error_lines(p)
    assert len(errs) == 1, p.stderr
    m = re.search(r"the prompt is (\d+) tokens.*max_position_embeddings.* 256 tokens", errs[0])
    assert m and int(m.group(1)) > 256, errs[0]
    assert p.stderr.count("[prefill ") == 1, p.stderr  # "hello" was answered


def test_qa11_long_row_gets_an_error_entry():
    data, out = os.path.join(WORK, "long_rows.jsonl"), os.path.join(WORK, "long_out.jsonl")
    write_rows(data, [{"query": "hi"}, {"query": LONG_LINE}, {"query": "bye"}])
    p = run(["infer", "--model", SHORT, "--val_dataset", data, "--result_path", out] + GREEDY)
    assert "long_rows.jsonl:2" in p.stderr and "256" in p.stderr, p.stderr  # the row named by file:line
    res = [json.loads(l) for l in open(out)]
    assert len(res) == 3, res
    assert res[1]["response"] is None and res[1]["finish_reason"] == "error", res[1]
    assert "256" in res[1]["error"] and "max_position_embeddings" in res[1]["error"], res[1]
    for r in (res[0], res[2]):
        assert isinstance(r["response"], str) and r["finish_reason"] in ("stop", "length"), r
    no_tmp_left(WORK)


def test_qa11_5mb_row_at_full_context():
    # The QA's 5 MB row died with std::bad_alloc and left a .tmp: now it is tokenized, refused
    # for that row before any prefill, and the next row is answered.
    data, out = os.path.join(WORK, "huge_rows.jsonl"), os.path.join(WORK, "huge_out.jsonl")
    write_rows(data, [{"query": "abc def " * (5 << 17)}, {"query": "hi"}])
    # refused after tokenizing (about a second); before, a 3.2M-token prefill ran for hours
    p = run(["infer", "--model", MODEL, "--val_dataset", data, "--result_path", out] + GREEDY, timeout=60)
    assert "4096" in p.stderr, p.stderr
    res = [json.loads(l) for l in open(out)]
    assert res[0]["finish_reason"] == "error" and "4096" in res[0]["error"], res[0]["error"]
    assert isinstance(res[1]["response"], str)
    no_tmp_left(WORK)


def test_qa11_max_new_tokens_clipped_to_context():
    data, out = os.path.join(WORK, "clip_rows.jsonl"), os.path.join(WORK, "clip_out.jsonl")
    write_rows(data, [{"query": " ".join(f"w{i}x" for i in range(60))}])
    p = run(["infer", "--model", SHORT, "--val_dataset", data, "--result_path", out, "--temperature", "0",
             "--max_new_tokens", "4000"])
    assert "max_new_tokens(4000)" in p.stderr, p.stderr
    r = json.loads(open(out).readline())
    assert r["prompt_tokens"] + r["completion_tokens"] <= 256, r


BAD_FLAGS = [
    ("--temperature", "nan", ">= 0"), ("--temperature", "inf", ">= 0"), ("--temperature", "-1", ">= 0"),
    ("--top_p", "2", "<= 1"), ("--top_p", "0", "> 0"), ("--top_p", "-1", "> 0"), ("--top_p", "nan", "> 0"),
    ("--repetition_penalty", "0", "> 0"), ("--repetition_penalty", "-1", "> 0"),
    ("--repetition_penalty", "nan", "> 0"), ("--top_k", "-1", ">= 0"), ("--max_new_tokens", "0", "1 to"),
    ("--max_new_tokens", "-5", "1 to"), ("--top_logprobs", "-1", "0 to 20"),
]


def test_qa14_flags_refused_with_flag_and_range():
    for flag, value, rng in BAD_FLAGS:
        p = run(["infer", "--model", MODEL, flag, value], stdin="hi\n", expect_rc=2)
        line = one_error_line(p, flag, rng)
        assert len(line) < 160 and "179769" not in line, line
        assert "<<< " not in p.stdout, f"{flag} {value}: the REPL started before the check"


def test_bad_cpu_isa_is_one_line():
    env = dict(os.environ, MOE_CPU_ISA="avx9")
    p = subprocess.run([MOECTL, "infer", "--model", MODEL], input=b"hi\n", capture_output=True, env=env, timeout=300)
    p.stderr = p.stderr.decode(errors="replace")
    assert p.returncode == 2, (p.returncode, p.stderr[-500:])
    one_error_line(p, "MOE_CPU_ISA=avx9", "avx2")
    assert "<<< " not in p.stdout.decode(errors="replace"), "the REPL started before the check"


def test_qa14_generation_config_values_name_the_file():
    d = os.path.join(WORK, "badgen")
    shutil.copytree(MODEL, d)
    gen = os.path.join(d, "generation_config.json")
    for field, value, rng in [("top_p", 2, "<= 1"), ("temperature", -1, ">= 0"), ("repetition_penalty", 0, "> 0")]:
        json.dump({"do_sample": True, field: value}, open(gen, "w"))
        p = run(["infer", "--model", d], stdin="hi\n", expect_rc=2)
        one_error_line(p, "generation_config.json", field, rng)


def read_st(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return raw[:8 + n], json.loads(raw[8:8 + n]), bytearray(raw[8 + n:])


def test_qa16_nan_weights_stop_with_one_line():
    d = os.path.join(WORK, "nanw")
    shutil.copytree(MODEL, d)
    st = os.path.join(d, "model.safetensors")
    head, h, data = read_st(st)
    t = h["model.norm.weight"]
    nan = {"BF16": b"\xc0\x7f", "F16": b"\x00\x7e", "F32": b"\x00\x00\xc0\x7f"}[t["dtype"]]
    b, e = t["data_offsets"]
    data[b:e] = nan * ((e - b) // len(nan))
    open(st, "wb").write(head + bytes(data))
    p = run(["infer", "--model", d] + GREEDY, stdin="hi\nhi again\n", expect_rc=2)
    one_error_line(p, d, "NaN")
    assert b"\0" not in p.stdout_b, p.stdout_b
    out = os.path.join(WORK, "nan_out.jsonl")
    data_file = os.path.join(WORK, "nan_rows.jsonl")
    write_rows(data_file, [{"query": "hi"}])
    p = run(["infer", "--model", d, "--val_dataset", data_file, "--result_path", out] + GREEDY, expect_rc=2)
    one_error_line(p, "NaN")
    assert not os.path.exists(out)
    no_tmp_left(WORK)


def test_qa17_result_path_checked_up_front():
    data = os.path.join(WORK, "rows17.jsonl")
    write_rows(data, [{"query": "hi"}])
    p = run(["infer", "--model", MODEL, "--val_dataset", data, "--result_path", WORK] + GREEDY, expect_rc=2)
    one_error_line(p, "--result_path", "is a directory")
    p = run(["infer", "--model", MODEL, "--val_dataset", data, "--result_path", WORK + "/"] + GREEDY, expect_rc=2)
    one_error_line(p, "--result_path", "is a directory")
    p = run(["infer", "--model", MODEL, "--val_dataset", data, "--result_path",
             os.path.join(WORK, "nodir", "out.jsonl")] + GREEDY, expect_rc=2)
    one_error_line(p, "--result_path", "does not exist")
    assert not os.path.exists(os.path.join(WORK, "nodir"))
    if os.geteuid() != 0:  # root may write anywhere
        ro = os.path.join(WORK, "readonly")
        os.makedirs(ro, exist_ok=True)
        os.chmod(ro, 0o555)
        p = run(["infer", "--model", MODEL, "--val_dataset", data, "--result_path",
                 os.path.join(ro, "out.jsonl")] + GREEDY, expect_rc=2)
        one_error_line(p, "--result_path", "not writable")
        os.chmod(ro, 0o755)
    no_tmp_left(WORK)
    # the good path: written whole, nothing beside it
    out = os.path.join(WORK, "ok17.jsonl")
    run(["infer", "--model", MODEL, "--val_dataset", data, "--result_path", out] + GREEDY)
    assert len(open(out).readlines()) == 1
    no_tmp_left(WORK)


def test_qa19_decode_id_out_of_range():
    vocab = None
    for ids, bad in [("[99999999,-1]", "99999999"), ("[5,-1]", "-1"), ("[4294967296]", "4294967296")]:
        p = run(["tokenize", "--model", MODEL, "--text", ids, "--decode", "true"], expect_rc=2)
        line = one_error_line(p, f"id {bad}", "out of range")
        m = re.search(r"vocab has (\d+) ids", line)
        assert m, line
        vocab = int(m.group(1))
    p = run(["tokenize", "--model", MODEL, "--text", f"[0,{vocab - 1}]", "--decode", "true"])
    assert "text" in json.loads(p.stdout)
    p = run(["tokenize", "--model", MODEL, "--text", f"[{vocab}]", "--decode", "true"], expect_rc=2)
    one_error_line(p, f"id {vocab}")


def test_empty_lines_skipped_and_crlf_exit():
    p = run(["infer", "--model", MODEL] + GREEDY, stdin="\n   \r\nhello\r\nexit\r\nnever read\n")
    assert p.stderr.count("[prefill ") == 1, p.stderr  # only "hello" was sent
    assert p.stdout.count("<<< ") == 4, p.stdout  # '', '   ', hello, exit: 'never read' is not read
    assert not error_lines(p), p.stderr


def test_val_dataset_without_result_path_writes_infer_result():
    data = os.path.join(WORK, "rows_default.jsonl")
    write_rows(data, [{"query": "hi"}, {"query": "bye"}])
    cwd = os.path.join(WORK, "cwd")
    os.makedirs(cwd)
    p = run(["infer", "--model", MODEL, "--val_dataset", data] + GREEDY, cwd=cwd)
    files = glob.glob(os.path.join(cwd, "result", "tiny", "infer_result", "*.jsonl"))
    assert len(files) == 1, (files, p.stderr)
    assert re.fullmatch(r"\d{8}-\d{6}\.jsonl", os.path.basename(files[0])), files[0]
    assert len(open(files[0]).readlines()) == 2
    assert files[0] in p.stderr, p.stderr  # the path is printed
    no_tmp_left(os.path.dirname(files[0]))
    # a checkpoint written by a run (it holds args.json) gets the results inside it, as swift does
    ck = os.path.join(WORK, "ckpt")
    shutil.copytree(MODEL, ck)
    open(os.path.join(ck, "args.json"), "w").write("{}")
    p = run(["infer", "--model", ck, "--val_dataset", data] + GREEDY, cwd=cwd)
    files = glob.glob(os.path.join(ck, "infer_result", "*.jsonl"))
    assert len(files) == 1 and files[0] in p.stderr, (files, p.stderr)


def test_result_path_in_interactive_mode_gets_the_turns():
    out = os.path.join(WORK, "repl.jsonl")
    p = run(["infer", "--model", MODEL, "--result_path", out] + GREEDY, stdin="hello\nhow are you\nexit\n")
    turns = [json.loads(l) for l in open(out)]
    assert len(turns) == 2, turns
    assert [m["role"] for m in turns[1]["messages"]] == ["user", "assistant", "user", "assistant"], turns[1]
    assert turns[1]["messages"][2]["content"] == "how are you"
    assert turns[1]["messages"][3]["content"] == turns[1]["response"]
    assert out in p.stderr
    # a second session appends, as swift does
    run(["infer", "--model", MODEL, "--result_path", out] + GREEDY, stdin="again\n")
    assert len(open(out).readlines()) == 3
    no_tmp_left(WORK)


for t in [test_qa8_bad_line_is_refused_alone, test_qa11_long_line_refused_and_session_goes_on,
          test_qa11_long_row_gets_an_error_entry, test_qa11_5mb_row_at_full_context,
          test_qa11_max_new_tokens_clipped_to_context, test_qa14_flags_refused_with_flag_and_range,
          test_bad_cpu_isa_is_one_line,
          test_qa14_generation_config_values_name_the_file, test_qa16_nan_weights_stop_with_one_line,
          test_qa17_result_path_checked_up_front, test_qa19_decode_id_out_of_range,
          test_empty_lines_skipped_and_crlf_exit, test_val_dataset_without_result_path_writes_infer_result,
          test_result_path_in_interactive_mode_gets_the_turns]:
    case(t)
print(f"{len(failures)} failed" if failures else "all passed")
sys.exit(1 if failures else 0)
