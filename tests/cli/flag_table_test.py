#!/usr/bin/env python3
"""Every flag of Megatron-SWIFT's parameter list (seed 003) and of its quick start's commands is
accepted by the moectl command it belongs to, in one of four classes visible in --help (issue 19):
implemented; a performance or bookkeeping knob ("GPU knob:" / "Knob:"); an architecture flag
checked against config.json ("Architecture:"); a feature moectl does not have yet ("Not yet in
moectl:"). The table below is the expected class of each; a flag missing from --help, or in
another class than the table says, fails. Where the seed documents sit beside the repository
(../shared/seeds), every "- name:" entry of the seed's list must be in the table.
Usage: flag_table_test.py MOECTL SRC_DIR WORK_DIR"""
import os
import re
import subprocess
import sys

MOECTL, SRC = sys.argv[1:3]
SEED = os.path.join(SRC, "..", "shared", "seeds", "003_82bce5feea8c7260.txt")
failures = []

I, K, A, L = "implemented", "knob", "architecture", "later"
SFT = {
    # training, data, checkpoints, logging
    "recompute_modules": I, "tensorboard_dir": I, "optimizer": I, "seed": I, "seq_length": I, "lr_decay_style": I,
    "adam_beta1": I, "adam_beta2": I, "adam_eps": I, "sgd_momentum": I, "ckpt_format": I,
    "distributed_timeout_minutes": I, "tensorboard_log_interval": I, "log_timers_to_tensorboard": I,
    "no_log_learning_rate_to_tensorboard": I, "log_validation_ppl_to_tensorboard": I, "log_memory_to_tensorboard": I,
    "log_throughput": I, "log_params_norm": I, "exit_on_missing_checkpoint": I, "moe_token_dispatcher_type": I, "moe_router_load_balancing_type": I, "moe_z_loss_coeff": I,
    "moe_expert_capacity_factor": I, "add_version": I, "max_epochs": I, "calculate_per_token_loss": I,
    "streaming": I, "overlap_grad_reduce": I, "overlap_param_gather": I,
    # knobs: GPU kernel choices and bookkeeping of the Python pipeline
    "deterministic_mode": K, "no_masked_softmax_fusion": K, "no_bias_dropout_fusion": K, "no_bias_swiglu_fusion": K,
    "no_rope_fusion": K, "no_gradient_accumulation_fusion": K, "dataloader_type": K, "manual_gc": K,
    "manual_gc_interval": K, "use_cpu_initialization": K, "no_create_attention_mask_in_dataloader": K,
    "no_initialization": K, "auto_detect_ckpt_format": K, "distributed_backend": K, "tp_comm_overlap": K,
    "tensorboard_queue_size": K, "logging_level": K, "bf16": K,
    "apply_query_key_layer_scaling": K, "attention_softmax_in_fp32": K, "transformer_impl": K, "moe_grouped_gemm": K,
    "moe_shared_expert_overlap": K, "lazy_tokenize": K,
    # features moectl does not have yet
    "wandb_project": L,
    "wandb_exp_name": L, "wandb_save_dir": L, "fp16": L,
    # architecture, checked against config.json
    "extra_megatron_kwargs": A, "num_layers": A, "hidden_size": A, "ffn_hidden_size": A, "num_attention_heads": A,
    "group_query_attention": A, "num_query_groups": A, "max_position_embeddings": A, "position_embedding_type": A,
    "rotary_base": A, "rotary_percent": A, "normalization": A, "norm_epsilon": A, "swiglu": A,
    "untie_embeddings_and_output_weights": A, "disable_bias_linear": A, "add_qkv_bias": A, "attention_dropout": A,
    "hidden_dropout": A, "kv_channels": A, "qk_layernorm": A, "padded_vocab_size": A, "rope_scaling": A,
    "model_type": A, "num_experts": A, "moe_ffn_hidden_size": A, "moe_shared_expert_intermediate_size": A,
    "moe_router_topk": A, "moe_router_pre_softmax": A,
    # the quick start's sft command and swift 4.x's renames
    "load": I, "dataset": I, "tensor_model_parallel_size": I, "micro_batch_size": I, "global_batch_size": I,
    "recompute_granularity": I, "train_iters": I, "eval_iters": I, "finetune": I, "cross_entropy_loss_fusion": K,
    "lr": I, "lr_warmup_iters": I, "min_lr": I, "save": I, "save_interval": I, "max_length": I, "system": I,
    "num_workers": K, "no_save_optim": I, "no_save_rng": I, "dataset_num_proc": I, "model_author": I, "model_name": I,
    "dataloader_num_workers": K, "megatron_extra_kwargs": A, "report_to": I,
}
# Uneven pipeline stages become real flags with pipeline parallelism.
SFT_EITHER = {"decoder_first_pipeline_num_layers": {L, I}, "decoder_last_pipeline_num_layers": {L, I}}
EXPORT = {"model": I, "mcore_model": I, "to_mcore": I, "to_hf": I, "torch_dtype": I, "output_dir": I,
          "test_convert_precision": I, "exist_ok": I, "thread_count": I, "ckpt_format": I}
INFER = {"model": I, "stream": I, "temperature": I, "max_new_tokens": I, "infer_backend": I, "max_batch_size": I,
         "val_dataset": I, "result_path": I, "adapters": L, "top_k": I, "top_p": I, "repetition_penalty": I,
         "logprobs": I, "top_logprobs": I, "system": I, "template": I, "seed": I}


def help_classes(cmd):
    """flag -> class, from `moectl CMD --help` (each option's description, continuation lines joined)."""
    out = subprocess.run([MOECTL, cmd, "--help"], capture_output=True, text=True).stdout
    desc, cur = {}, []
    for line in out.splitlines():
        m = re.match(r"\s+(--[a-z0-9_]+(?:,\s*--[a-z0-9_]+)*)\s*(?:[A-Z][A-Z_:]*(?:\s|$))?(.*)$", line)
        if m and line.lstrip().startswith("--"):
            cur = [n[2:] for n in re.split(r",\s*", m.group(1))]
            for n in cur:
                desc[n] = m.group(2)
        elif cur and line.strip():
            for n in cur:
                desc[n] += " " + line.strip()
    classes = {}
    for flag, d in desc.items():
        if "Not yet in moectl:" in d:
            classes[flag] = L
        elif "Architecture:" in d:
            classes[flag] = A
        elif "knob:" in d or "Knob:" in d:
            classes[flag] = K
        else:
            classes[flag] = I
    return classes


# The seed's parameter list: every "- name:" entry must be in the table (so a new seed flag is seen).
if os.path.exists(SEED):
    seed = open(SEED, encoding="utf-8").read()
    listed = set(re.findall(r"^\s*- *\*{0,2}([a-z][a-z0-9_]+)\*{0,2}\s*[:：]", seed, re.M))
    listed.discard("moe_ffn_hidden_siz")  # the doc's own truncation of moe_ffn_hidden_size
    unknown = sorted(listed - set(SFT) - set(SFT_EITHER))
    print(("ok   " if not unknown else "FAIL ") + f"the seed's {len(listed)} listed flags are in the table {unknown}")
    if unknown:
        failures.append(f"seed flags missing from the table: {unknown}")
else:
    print(f"(no {SEED} here: the table alone is checked)")

for cmd, table, either in (("sft", SFT, SFT_EITHER), ("pt", SFT, SFT_EITHER), ("export", EXPORT, {}),
                           ("infer", INFER, {})):
    got = help_classes(cmd)
    wrong = []
    for flag, want in list(table.items()) + [(f, c) for f, c in either.items()]:
        have = got.get(flag)
        ok = have in want if isinstance(want, set) else have == want
        if not ok:
            wrong.append(f"--{flag}: {have or 'unknown'} (want {want})")
    counts = {c: sum(1 for f in table if got.get(f) == c) for c in (I, K, A, L)}
    print(("ok   " if not wrong else "FAIL ") + f"moectl {cmd}: {len(table) + len(either)} flags, {counts}")
    for w in wrong:
        print("     " + w)
    if wrong:
        failures.append(cmd)

if failures:
    sys.exit(f"failures: {failures}")
print("every flag of the parameter list is accepted in its class")
