"""Hostile input through the real command lines: every launcher in experiments/ given a bad flag,
config, data file, checkpoint or path ends with exit code 2 and exactly one stderr line,
`error: ...`, naming the file or field, no traceback, and a workdir it was pointed at keeps its
checkpoints and metrics byte for byte (llama3_jax/cli.py is the one place that says so).

Each case runs in its own subprocess (2 at a time) on its own copy of one small trained run;
every case fails before anything compiles but the two that resume a run (they compile while
the checkpoint's model is read), so the table costs mostly Python and JAX imports.
"""

import concurrent.futures
import gzip
import hashlib
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from llama3_jax import hf
from llama3_jax.checkpoint.model import load_model, run_tokenizer
from llama3_jax.data.corpus import embedded_corpus
from llama3_jax.data.prepare import prepare
from llama3_jax.data.tokenizers import train_sentencepiece
from llama3_jax.model.reward import RewardModel
from llama3_jax.train.loop import train
from llama3_jax.train.config import run_config
from tests.runtime import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
TC = "tests/runtime/tiny_config.py"
DEBUG = "experiments/configs/llama3_debug.py"
STAGE = '({"until_tokens": None, "batch_tokens": 128, "seq_len": 16, "mixture": %s},)'

# (id, module, arguments, what stderr's line must name). {RUN} is a copy of a 2-step run of
# tests/runtime/tiny_config.py, {IN} the folder of bad inputs, {OUT} a new folder for the case,
# {TOK} the run's tokenizer, {OWN} the case's own copy of good inputs it might destroy (raw/,
# prompts.jsonl, prepared/: data prepared with {TOK}), checked byte for byte like {RUN}.
CASES = [
    # ---- pretrain: the command line and the config file
    ("config-missing", "pretrain", ["--config", "{IN}/nowhere.py", "--workdir", "{RUN}"],
     "{IN}/nowhere.py does not exist"),
    ("config-syntax", "pretrain", ["--config", "{IN}/syntax.py", "--workdir", "{RUN}"],
     "{IN}/syntax.py:1: invalid syntax"),
    ("config-raises", "pretrain", ["--config", "{IN}/raises.py", "--workdir", "{RUN}"],
     "{IN}/raises.py:2: get_config raised ZeroDivisionError"),
    ("config-arg", "pretrain", ["--config", f"{DEBUG}:foo=bar", "--workdir", "{RUN}"],
     "unknown config argument 'foo'"),
    ("config-arg-value", "pretrain", ["--config", f"{DEBUG}:steps=x", "--workdir", "{RUN}"],
     f"{DEBUG}:steps=x: get_config raised ValueError"),
    ("positional", "pretrain", ["--config", TC, "--workdir", "{RUN}", "extra"],
     "unexpected arguments: ['extra']"),
    ("unknown-flag", "pretrain", ["--config", TC, "--nosuch", "--workdir", "{RUN}"], "nosuch"),
    ("unknown-field", "pretrain", ["--config", TC, "--config.train.stepz=3", "--workdir", "{RUN}"],
     "--config.train.stepz: the config has no field 'stepz'"),
    ("unknown-field-default-config", "pretrain", ["--config.train.stepz=3", "--workdir", "{RUN}"],
     "--config.train.stepz: the config has no field 'stepz'"),
    ("field-type", "pretrain", ["--config", TC, "--config.train.steps=abc", "--workdir", "{RUN}"],
     "--config.train.steps=abc"),
    ("stages-not-dicts", "pretrain", ["--config", TC, "--config.train.stages=5", "--workdir",
                                      "{RUN}"], "train.stages[0]=5 is not a stage"),
    ("stages-positional", "pretrain", ["--config", TC, "--config.train.stages=((None,128,16),)",
                                       "--workdir", "{RUN}"], "train.stages[0]=(None, 128, 16)"),
    ("stage-missing-source", "pretrain", ["--config", TC, "--config.train.stages="
                                          + STAGE % '{"nosuch": 1.0}', "--workdir", "{RUN}"],
     "nosuch"),
    ("stage-longer-than-model", "pretrain", ["--config", TC, "--config.model.max_seq_len=8",
                                             "--workdir", "{RUN}"],
     "train.stages[0].seq_len=16 exceeds model.max_seq_len=8"),
    ("micro-batches", "pretrain", ["--config", TC, "--config.train.micro_batches=5",
                                   "--workdir", "{RUN}"], "train.micro_batches=5"),
    ("d-model-over-fsdp", "pretrain", ["--config", TC, "--config.model.d_model=34",
                                       "--workdir", "{RUN}"],
     "d_model=34 is not divisible by fsdp=4"),
    ("pipeline-chunks-over-layers", "pretrain", ["--config", TC, "--config.mesh.fsdp=2",
                                                 "--config.mesh.stage=2",
                                                 "--config.sharding.pipeline_repeats=2",
                                                 "--workdir", "{RUN}"],
     "n_layers=2 cannot fill stage=2 x pipeline_repeats=2 = 4 layer chunks"),
    ("peak-lr", "pretrain", ["--config", TC, "--config.train.peak_lr=-1", "--workdir", "{RUN}"],
     "train.peak_lr=-1"),
    ("mesh", "pretrain", ["--config", TC, "--config.mesh.tensor=3", "--workdir", "{RUN}"],
     "multiply to 12, but there are 8 devices"),
    ("model-size", "pretrain", ["--config", TC, "--config.model.size=llama9", "--workdir", "{RUN}"],
     "model.size='llama9'"),
    ("dry-run-devices", "pretrain", ["--config", "experiments/configs/llama3_405b.py",
                                     "--dry-run", "--dry-run-devices", "12"],
     "multiply to 16384, but there are 12 devices"),
    # ---- pretrain: data
    ("data-missing", "pretrain", ["--config", TC, "--config.data.path={IN}/nowhere", "--workdir",
                                  "{RUN}"], "{IN}/nowhere/manifest.json does not exist"),
    ("manifest-truncated", "pretrain", ["--config", TC, "--config.data.path={IN}/data_badjson",
                                        "--workdir", "{RUN}"],
     "{IN}/data_badjson/manifest.json is not valid JSON"),
    ("manifest-field", "pretrain", ["--config", TC, "--config.data.path={IN}/data_badfield",
                                    "--workdir", "{RUN}"],
     "{IN}/data_badfield/manifest.json is not a valid manifest: sources.general.shards"),
    ("shard-truncated", "pretrain", ["--config", TC, "--config.data.path={IN}/data_halfshard",
                                     "--workdir", "{RUN}"],
     "{IN}/data_halfshard/math/shard-00000.array_record of source 'math' cannot be read"),
    ("shard-tiny", "pretrain", ["--config", TC, "--config.data.path={IN}/data_tinyshard",
                                "--workdir", "{RUN}"],
     "{IN}/data_tinyshard/code/shard-00000.array_record of source 'code' cannot be read"),
    ("shard-missing", "pretrain", ["--config", TC, "--config.data.path={IN}/data_noshard",
                                   "--workdir", "{RUN}"],
     "{IN}/data_noshard/code/shard-00000.array_record of source 'code' does not exist"),
    # ---- pretrain: the workdir
    ("workdir-is-a-file", "pretrain", ["--config", TC, "--workdir", "{IN}/good.jsonl"],
     "workdir {IN}/good.jsonl is a file"),
    ("workdir-under-a-file", "pretrain", ["--config", TC, "--workdir", "{IN}/good.jsonl/run"],
     "workdir {IN}/good.jsonl/run cannot be written"),
    ("workdir-read-only", "pretrain", ["--config", TC, "--workdir", "/sys/llama3_jax_run"],
     "workdir /sys/llama3_jax_run cannot be written"),
    ("workdir-other-model", "pretrain", ["--config", TC, "--config.model.n_layers=3",
                                         "--workdir", "{RUN}"],
     "holds checkpoints of another model (n_layers=2 (now 3))"),
    ("workdir-other-streams", "pretrain", ["--config", TC, "--config.data.streams=4",
                                           "--workdir", "{RUN}"], "data.streams=8, now 4"),
    # ---- prepare_data
    ("prepare-no-arguments", "prepare_data", [], "the following arguments are required"),
    ("prepare-input-missing", "prepare_data", ["--input", "{IN}/nowhere", "--tokenizer", "{TOK}",
                                               "--out", "{OUT}"],
     "input {IN}/nowhere does not exist"),
    ("prepare-truncated-gz-strict", "prepare_data", ["--input", "{IN}/raw", "--tokenizer", "{TOK}",
                                                     "--out", "{OUT}", "--strict"],
     "{IN}/raw/trunc.jsonl.gz:"),
    ("prepare-shard-index", "prepare_data", ["--input", "{IN}/raw", "--tokenizer", "{TOK}", "--out",
                                             "{OUT}", "--shard-index", "3", "--shard-count", "2"],
     "--shard-index 3 with --shard-count 2"),
    ("prepare-tokenizer-missing", "prepare_data", ["--input", "{IN}/raw", "--tokenizer",
                                                   "{IN}/nowhere.model", "--out", "{OUT}"],
     "{IN}/nowhere.model does not exist"),
    ("prepare-tokenizer-not-one", "prepare_data", ["--input", "{IN}/raw", "--tokenizer",
                                                   "{IN}/good.jsonl", "--out", "{OUT}"],
     "{IN}/good.jsonl is not a Hugging Face tokenizer.json"),   # it starts with "{"
    ("prepare-source-name", "prepare_data", ["--input", "{IN}/raw", "--tokenizer", "{TOK}",
                                             "--out", "{OUT}", "--source", "my source"],
     "--source 'my source'"),
    ("prepare-workers", "prepare_data", ["--input", "{IN}/raw", "--tokenizer", "{TOK}", "--out",
                                         "{OUT}", "--workers", "x"], "argument --workers"),
    # ---- train_tokenizer
    ("tokenizer-empty-input", "train_tokenizer", ["--input", "{IN}/empty.txt", "--vocab-size",
                                                  "100", "--out", "{OUT}/t.model"],
     "--input {IN}/empty.txt: no text"),
    ("tokenizer-no-vocab-size", "train_tokenizer", ["--input", "{IN}/good.jsonl", "--out",
                                                    "{OUT}/t.model"], "--vocab-size"),
    # ---- curate
    ("curate-input-missing", "curate", ["--input", "{IN}/nowhere", "--out", "{OUT}"],
     "{IN}/nowhere"),
    ("curate-unknown-field", "curate", ["--input", "{IN}/raw", "--out", "{OUT}",
                                        "--config.minhash.nosuch=1"], "--config.minhash.nosuch"),
    ("curate-positional", "curate", ["--input", "{IN}/raw", "--out", "{OUT}", "extra"],
     "unexpected arguments ['extra']"),
    # ---- average_checkpoints
    ("average-other-model", "average_checkpoints", ["{RUN}", "{IN}/other_model", "--out",
                                                    "{OUT}/a"],
     "{IN}/other_model holds another model than {RUN}"),
    ("average-corrupt", "average_checkpoints", ["{RUN}", "{IN}/ck_corrupt", "--out", "{OUT}/a"],
     "checkpoint {IN}/ck_corrupt cannot be read"),
    ("average-not-a-checkpoint", "average_checkpoints", ["{IN}/raw", "--out", "{OUT}/a"],
     "{IN}/raw is neither a checkpoint step directory"),
    ("average-out-exists", "average_checkpoints", ["{RUN}", "--out", "{IN}/raw"],
     "--out {IN}/raw exists"),
    # ---- generate
    ("generate-checkpoint-missing", "generate", ["--checkpoint", "{IN}/nowhere"],
     "checkpoint {IN}/nowhere does not exist"),
    ("generate-checkpoint-corrupt", "generate", ["--checkpoint", "{IN}/ck_corrupt", "--prompt",
                                                 "x"], "checkpoint {IN}/ck_corrupt cannot be read"),
    ("generate-prompts-bad", "generate", ["--checkpoint", "{RUN}", "--prompts",
                                          "{IN}/prompts.jsonl"], "{IN}/prompts.jsonl:2"),
    ("generate-prompts-missing", "generate", ["--checkpoint", "{RUN}", "--prompts",
                                              "{IN}/nowhere.jsonl"],
     "--prompts {IN}/nowhere.jsonl"),
    ("generate-flag-value", "generate", ["--checkpoint", "{RUN}", "--max-new-tokens=abc"],
     "--max-new-tokens=abc"),
    ("generate-mesh", "generate", ["--checkpoint", "{RUN}", "--mesh", "fsdp=x"],
     "--mesh: bad entry 'fsdp=x'"),
    ("generate-positional", "generate", ["--checkpoint", "{RUN}", "extra"],
     "unexpected arguments: ['extra']"),
    ("generate-hf-config-json", "generate", ["--hf", "{IN}/hf_badjson", "--prompt", "x"],
     "{IN}/hf_badjson/config.json is not valid JSON"),
    ("generate-hf-config-field", "generate", ["--hf", "{IN}/hf_nofield", "--prompt", "x"],
     "{IN}/hf_nofield/config.json lacks the field 'hidden_size'"),
    ("generate-hf-truncated", "generate", ["--hf", "{IN}/hf_truncated", "--prompt", "x"],
     "{IN}/hf_truncated/model.safetensors cannot be read"),
    # ---- export_hf
    ("export-out-exists", "export_hf", ["--checkpoint", "{RUN}", "--out", "{IN}/raw"],
     "--out {IN}/raw exists and is not empty"),
    ("export-checkpoint-missing", "export_hf", ["--checkpoint", "{IN}/nowhere", "--out", "{OUT}/h"],
     "checkpoint {IN}/nowhere does not exist"),
    ("export-positional", "export_hf", ["--checkpoint", "{RUN}", "extra"],
     "unexpected arguments: ['extra']"),
    # ---- inspect_sharding, demo
    ("inspect-heads-over-tensor", "inspect_sharding", ["--size", "debug", "--mesh", "tensor=3"],
     "would refuse this layout"),
    ("inspect-d-model-over-fsdp", "inspect_sharding", ["--size", "debug", "--mesh", "fsdp=3"],
     "d_model=160 is not divisible by fsdp=3"),
    ("inspect-mesh-entry", "inspect_sharding", ["--mesh", "foo=3"], "--mesh: bad entry 'foo=3'"),
    ("demo-size", "demo", ["--size", "nosuch"], "argument --size"),
    # ---- plan (the layout planner: arithmetic only)
    ("plan-hardware", "plan", ["--hardware", "tpu9"],
     "unknown hardware 'tpu9': choose one of h100"),
    ("plan-layout-gpus", "plan", ["--layout", "tensor=8,stage=16,fsdp=64", "--gpus", "16384"],
     "gpus_not_product"),
    ("plan-layout-context", "plan", ["--layout", "context=16,fsdp=1024", "--seq", "1000"],
     "seq_over_context"),
    ("plan-layout-entry", "plan", ["--layout", "pipe=16"], "--layout: bad entry 'pipe=16'"),
    ("plan-batch-tokens", "plan", ["--batch-tokens", "lots"],
     "--batch-tokens 'lots' is not a count"),
    # ---- sft, dpo (they start from {RUN}; the workdir is a new one)
    ("sft-init-missing", "sft", ["--config.init.path={IN}/nowhere", "--workdir", "{OUT}/w"],
     "init.path {IN}/nowhere does not exist"),
    ("sft-bad-conversations", "sft", ["--config.init.path={RUN}",
                                      "--config.data.path={IN}/bad_sft.jsonl", "--workdir",
                                      "{OUT}/w"], "no usable examples in {IN}/bad_sft.jsonl"),
    ("sft-not-utf8", "sft", ["--config.init.path={RUN}", "--config.data.path={IN}/latin1.jsonl",
                             "--workdir", "{OUT}/w"],
     "{IN}/latin1.jsonl:1: not UTF-8 (invalid continuation byte at byte 46)"),
    ("sft-workdir-is-pretraining", "sft", ["--config.init.path={RUN}", "--workdir", "{RUN}"],
     "--workdir {RUN} holds a pre-training run, not an SFT run"),
    ("dpo-workdir-is-sft", "dpo", ["--config.init.path={RUN}", "--workdir", "{IN}/sft_run"],
     "--workdir {IN}/sft_run holds an SFT run, not a DPO run"),
    ("pretrain-workdir-is-sft", "pretrain", ["--config", TC, "--workdir", "{IN}/sft_run"],
     "--workdir {IN}/sft_run holds an SFT run, not pre-training"),
    ("pretrain-workdir-is-a-stage", "pretrain", ["--config", TC, "--workdir", "{IN}/stage_run"],
     "--workdir {IN}/stage_run holds a post-training run, not pre-training"),
    ("dpo-beta", "dpo", ["--config.init.path={RUN}", "--config.dpo.beta=0", "--workdir",
                         "{OUT}/w"], "dpo.beta=0.0 must be > 0"),
    ("dpo-data-not-conversations", "dpo", ["--config.init.path={RUN}", "--config.data.path={IN}/raw",
                                           "--workdir", "{OUT}/w"],
     "data.path {IN}/raw is neither a JSONL file of conversations"),
    # ---- reward_model, rejection_sample, posttrain
    ("rm-init-missing", "reward_model", ["--config.init.path={IN}/nowhere", "--workdir",
                                         "{OUT}/w"], "init.path {IN}/nowhere does not exist"),
    ("rm-one-response", "reward_model", ["--config.init.path={RUN}", "--config.data.path="
                                         "{IN}/one_response.jsonl", "--workdir", "{OUT}/w"],
     "no usable examples in {IN}/one_response.jsonl"),
    ("rm-tied-responses", "reward_model", ["--config.init.path={RUN}", "--config.data.path="
                                           "{IN}/tied.jsonl", "--workdir", "{OUT}/w"],
     "no usable examples in {IN}/tied.jsonl"),
    ("rs-policy-missing", "rejection_sample", ["--policy", "{IN}/nowhere", "--out", "{OUT}/r"],
     "--policy {IN}/nowhere is not a training workdir"),
    ("rs-policy-as-reward-model", "rejection_sample", ["--policy", "{RUN}", "--reward_model",
                                                       "{RUN}", "--out", "{OUT}/r"],
     "holds a language model (policy), not a reward model"),
    ("rs-no-samples", "rejection_sample", ["--samples", "0", "--out", "{OUT}/r"],
     "needs samples >= 1"),
    ("rs-bad-prompts", "rejection_sample", ["--policy", "{RUN}", "--reward_model", "{RUN}",
                                            "--prompts", "{IN}/prompts.jsonl", "--out",
                                            "{OUT}/r"], "{IN}/prompts.jsonl:1: no 'messages'"),
    ("posttrain-no-rounds", "posttrain", ["--config.rounds=0", "--workdir", "{OUT}/w"],
     "rounds=0"),
    ("posttrain-init-missing", "posttrain", ["--config.init_path={IN}/nowhere", "--workdir",
                                             "{OUT}/w"],
     "init_path {IN}/nowhere is not a training workdir"),
    # ---- scaling_laws
    ("scaling-fit-only-missing", "scaling_laws", ["--fit-only", "--workdir", "{OUT}/w"],
     "{OUT}/w/sweep.jsonl does not exist"),
    ("scaling-budget-too-small", "scaling_laws", ["--budgets", "1e9,1e10,1e11", "--workdir",
                                                  "{OUT}/w"], "too small for the model family"),
    ("scaling-budgets-not-numbers", "scaling_laws", ["--budgets", "1e12,lots", "--workdir",
                                                     "{OUT}/w"], "not a list of numbers"),
    # ---- evaluate
    ("evaluate-task-missing", "evaluate", ["--checkpoint", "{RUN}", "--tasks",
                                           "{IN}/nowhere.jsonl"],
     "task file {IN}/nowhere.jsonl does not exist"),
    ("evaluate-gold", "evaluate", ["--checkpoint", "{RUN}", "--tasks", "{IN}/badgold.jsonl"],
     "{IN}/badgold.jsonl:1: gold=3 is not an index"),
    ("evaluate-not-prepared", "evaluate", ["--checkpoint", "{RUN}", "--contamination", "{IN}/raw"],
     "{IN}/raw is not prepared pre-training data"),
    # ---- issue 31: no output replaces, deletes or lies inside an input
    ("export-out-is-run", "export_hf", ["--checkpoint", "{RUN}", "--out", "{RUN}", "--overwrite"],
     "--out {RUN} is the input --checkpoint {RUN}"),
    ("export-out-holds-run", "export_hf", ["--checkpoint", "{RUN}/checkpoints/2", "--out", "{RUN}",
                                           "--overwrite"],
     "--out {RUN} holds the input --checkpoint {RUN}/checkpoints/2"),
    ("export-out-in-checkpoints", "export_hf", ["--checkpoint", "{RUN}", "--out",
                                                "{RUN}/checkpoints", "--overwrite"],
     "--out {RUN}/checkpoints lies inside the input --checkpoint {RUN}"),
    ("average-out-a-new-step", "average_checkpoints", ["{RUN}", "--out", "{RUN}/checkpoints/3"],
     "--out {RUN}/checkpoints/3 lies inside the input checkpoint {RUN}"),
    ("generate-out-is-prompts", "generate", ["--checkpoint", "{RUN}", "--prompts",
                                             "{OWN}/prompts.jsonl", "--out", "{OWN}/prompts.jsonl"],
     "--out {OWN}/prompts.jsonl is the input --prompts {OWN}/prompts.jsonl"),
    ("generate-out-exists", "generate", ["--checkpoint", "{RUN}", "--prompts",
                                         "{OWN}/prompts.jsonl", "--out", "{OWN}/raw/good.jsonl"],
     "--out {OWN}/raw/good.jsonl exists: pass --overwrite"),
    ("generate-out-run-metrics", "generate", ["--checkpoint", "{RUN}", "--prompts",
                                              "{OWN}/prompts.jsonl", "--out",
                                              "{RUN}/metrics.jsonl", "--overwrite"],
     "--out {RUN}/metrics.jsonl lies inside the input --checkpoint {RUN}"),
    ("rs-out-is-policy", "rejection_sample", ["--policy", "{RUN}", "--reward_model", "{RUN}",
                                              "--out", "{RUN}"],
     "--out {RUN} is the input --policy {RUN}"),
    ("curate-out-is-input", "curate", ["--input", "{OWN}/raw", "--out", "{OWN}/raw"],
     "--out {OWN}/raw is the input --input {OWN}/raw"),
    ("curate-out-inside-input", "curate", ["--input", "{OWN}/raw", "--out", "{OWN}/raw/clean"],
     "--out {OWN}/raw/clean lies inside the input --input {OWN}/raw"),
    ("prepare-out-is-input", "prepare_data", ["--input", "{OWN}/raw", "--tokenizer", "{TOK}",
                                              "--out", "{OWN}/raw"],
     "--out {OWN}/raw is the input --input {OWN}/raw"),
    ("prepare-other-tokenizer", "prepare_data", ["--input", "{OWN}/raw", "--tokenizer",
                                                 "{IN}/other.model", "--out", "{OWN}/prepared",
                                                 "--source", "web"],
     "{IN}/other.model is a different tokenizer: use another --out directory"),
    # ---- issue 31: one check of sampling settings (top_p 0 is not "no limit")
    ("generate-top-p-0", "generate", ["--checkpoint", "{RUN}", "--prompt", "x", "--top-p", "0"],
     "top_p in (0, 1]"),
    ("rs-top-p-0", "rejection_sample", ["--top_p", "0", "--out", "{OUT}/r"], "top_p in (0, 1]"),
    # ---- issue 31: checkpoint and log settings that keep nothing
    ("checkpoint-keep-0", "pretrain", ["--config", TC, "--config.checkpoint.max_to_keep=0",
                                       "--workdir", "{RUN}"],
     "checkpoint.max_to_keep=0 keeps no checkpoint"),
    ("checkpoint-keep-negative", "pretrain", ["--config", TC, "--config.checkpoint.max_to_keep=-1",
                                              "--workdir", "{RUN}"],
     "checkpoint.max_to_keep=-1 keeps no checkpoint"),
    ("checkpoint-every-0", "pretrain", ["--config", TC, "--config.checkpoint.every_steps=0",
                                        "--workdir", "{RUN}"], "checkpoint.every_steps=0 must be"),
    ("checkpoint-keep-period-0", "pretrain", ["--config", TC, "--config.checkpoint.keep_period=0",
                                              "--workdir", "{RUN}"],
     "checkpoint.keep_period=0 must be"),
    ("log-every-0", "pretrain", ["--config", TC, "--config.log.every_steps=0", "--workdir",
                                 "{RUN}"], "log.every_steps=0 must be"),
    # ---- issue 31: said where it is wrong, before any work, no value replaced
    ("config-no-get-config", "pretrain", ["--config", "{IN}/noget.py", "--config.train.steps=3",
                                          "--workdir", "{RUN}"],
     "--config {IN}/noget.py defines no get_config"),
    ("none-for-no-field", "pretrain", ["--config", TC, "--config.train.warmup_tokenz=None",
                                       "--workdir", "{RUN}"], "--config.train.warmup_tokenz"),
    ("dry-run-devices-negative", "pretrain", ["--dry-run", "--dry-run-devices=-4"],
     "--dry-run-devices=-4 must be >= 0"),
    ("plan-gpus-0", "plan", ["--gpus", "0"], "--gpus=0 must be >= 1"),
    ("plan-gpus-negative", "plan", ["--gpus", "-8"], "--gpus=-8 must be >= 1"),
    ("plan-micro-batches-0", "plan", ["--layout", "tensor=8,stage=16,fsdp=128",
                                      "--micro-batches", "0"], "--micro-batches=0 must be >= 1"),
    ("plan-repeats-0", "plan", ["--repeats", "0"], "--repeats=0 must be >= 1"),
    ("plan-top-negative", "plan", ["--top", "-2"], "--top=-2 must be >= 1"),
    ("curate-nothing-valid", "curate", ["--input", "{IN}/junk", "--out", "{OUT}/c"],
     "--input {IN}/junk: not one valid document in 2 files"),
    ("curate-dead-link-strict", "curate", ["--input", "{IN}/junk", "--out", "{OUT}/c", "--strict"],
     "{IN}/junk/loop.jsonl: a link that leads nowhere"),
    ("scaling-record-without-loss", "scaling_laws", ["--fit-only", "--sweep",
                                                     "{IN}/sweep_noloss.jsonl", "--workdir",
                                                     "{OUT}/w"], "record 2 (p1) lacks 'loss'"),
    ("scaling-nan-loss", "scaling_laws", ["--fit-only", "--sweep", "{IN}/sweep_nan.jsonl",
                                          "--workdir", "{OUT}/w"],
     "record 2 (p1) has loss=nan, not a positive finite number"),
    ("scaling-zero-budget", "scaling_laws", ["--fit-only", "--sweep", "{IN}/sweep_zero.jsonl",
                                             "--workdir", "{OUT}/w"],
     "record 2 (p1) has budget=0, not a positive finite number"),
    ("scaling-replicates-0", "scaling_laws", ["--fit-only", "--sweep", "{IN}/sweep_nan.jsonl",
                                              "--workdir", "{OUT}/w", "--replicates", "0"],
     "--replicates=0 must be >= 1"),
    ("tokenizer-vocab-unfilled", "train_tokenizer", ["--input", "{IN}/good.jsonl", "--vocab-size",
                                                     "100000", "--out", "{OUT}/t.model"],
     "--input {IN}/good.jsonl: the text fills only"),
    ("tokenizer-out-over-input", "train_tokenizer", ["--input", "{OWN}/raw", "--vocab-size", "300",
                                                     "--out", "{OWN}/raw/good.jsonl"],
     "--out {OWN}/raw/good.jsonl lies inside the input --input {OWN}/raw"),
    ("evaluate-answer-pattern", "evaluate", ["--checkpoint", "{RUN}", "--tasks", "arith_gen",
                                             "--answer_pattern", "("],
     "--answer_pattern '(' is not a regular expression"),
    ("evaluate-shots-negative", "evaluate", ["--checkpoint", "{RUN}", "--shots", "-1"],
     "--shots=-1 must be >= 0"),
    ("evaluate-max-new-tokens-0", "evaluate", ["--checkpoint", "{RUN}", "--tasks", "arith_gen",
                                               "--max_new_tokens", "0"],
     "--max_new_tokens=0 must be >= 1"),
    ("evaluate-out-read-only", "evaluate", ["--checkpoint", "{RUN}", "--tasks", "arith", "--out",
                                            "/sys/llama3_jax/r.json"],
     "--out /sys/llama3_jax/r.json cannot be written"),
    ("evaluate-out-run-metrics", "evaluate", ["--checkpoint", "{RUN}", "--tasks", "arith",
                                              "--out", "{RUN}/metrics.jsonl"],
     "--out {RUN}/metrics.jsonl lies inside the input --checkpoint {RUN}"),
    ("evaluate-samples-over-task", "evaluate", ["--checkpoint", "{RUN}", "--tasks",
                                                "{OWN}/task.jsonl", "--log_samples",
                                                "{OWN}/task.jsonl"],
     "--log_samples {OWN}/task.jsonl is the input --tasks {OWN}/task.jsonl"),
    ("evaluate-one-choice", "evaluate", ["--checkpoint", "{RUN}", "--tasks",
                                         "{IN}/onechoice.jsonl"],
     "{IN}/onechoice.jsonl:1: 1 choice; give two or more choices"),
    ("evaluate-hf-reward-model", "evaluate", ["--hf", "{IN}/hf_reward", "--tasks", "arith"],
     "{IN}/hf_reward holds a reward model, not a language model (policy)"),
    ("generate-hf-reward-model", "generate", ["--hf", "{IN}/hf_reward", "--prompt", "x"],
     "{IN}/hf_reward holds a reward model, not a language model (policy)"),
    ("generate-out-read-only", "generate", ["--checkpoint", "{RUN}", "--prompts",
                                            "{OWN}/prompts.jsonl", "--out",
                                            "/sys/llama3_jax/g.jsonl"],
     "--out /sys/llama3_jax/g.jsonl cannot be written"),
    ("generate-max-new-tokens-0", "generate", ["--checkpoint", "{RUN}", "--prompt", "hi",
                                               "--max-new-tokens", "0"],
     "--max-new-tokens=0 must be >= 1"),
    ("sft-init-reward-hf", "sft", ["--config.init.path={IN}/hf_reward", "--workdir", "{OUT}/w"],
     "{IN}/hf_reward holds a reward model, not a language model (policy)"),
]


def _truncate(path: pathlib.Path, keep: float = 0.5) -> None:
  data = path.read_bytes()
  path.write_bytes(data[:int(len(data) * keep)])


def _corrupt_checkpoint(step: pathlib.Path) -> None:
  for file in step.glob("state/**/d/*"):
    file.write_bytes(file.read_bytes()[:20])


def _bad_data(inputs: pathlib.Path, corpus: pathlib.Path) -> None:
  for name in ("badjson", "badfield", "halfshard", "tinyshard", "noshard"):
    shutil.copytree(corpus, inputs / f"data_{name}", ignore=shutil.ignore_patterns("raw"))
  _truncate(inputs / "data_badjson" / "manifest.json", 0.1)
  manifest = json.loads((corpus / "manifest.json").read_text())
  manifest["sources"]["general"]["shards"] = 3
  (inputs / "data_badfield" / "manifest.json").write_text(json.dumps(manifest))
  _truncate(inputs / "data_halfshard" / "math" / "shard-00000.array_record")
  _truncate(inputs / "data_tinyshard" / "code" / "shard-00000.array_record", 0.0005)
  (inputs / "data_noshard" / "code" / "shard-00000.array_record").unlink()


def _bad_hf(inputs: pathlib.Path, run: pathlib.Path) -> None:
  config, model = load_model(run)
  hf.save(model, config, inputs / "hf_good", tokenizer=run_tokenizer(run))
  for name in ("badjson", "nofield", "truncated"):
    shutil.copytree(inputs / "hf_good", inputs / f"hf_{name}")
  _truncate(inputs / "hf_badjson" / "config.json", 0.3)
  fields = json.loads((inputs / "hf_good" / "config.json").read_text())
  del fields["hidden_size"]
  (inputs / "hf_nofield" / "config.json").write_text(json.dumps(fields))
  _truncate(inputs / "hf_truncated" / "model.safetensors")
  hf.save(RewardModel(config, rngs=nnx.Rngs(0)), config, inputs / "hf_reward",
          tokenizer=run_tokenizer(run))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, job_env):
  """The trained run and every bad input the cases name."""
  run = tmp_path_factory.mktemp("run")
  cfg = tiny_config.get_config()
  cfg.train.steps = 2
  train(run_config(cfg), run)
  inputs = tmp_path_factory.mktemp("inputs")
  lines = "".join(json.dumps({"text": f"document {i} " * 20}) + "\n" for i in range(50))
  (inputs / "good.jsonl").write_text(lines)
  (inputs / "raw").mkdir()
  (inputs / "raw" / "good.jsonl").write_text(lines)
  zipped = gzip.compress(lines.encode())
  (inputs / "raw" / "trunc.jsonl.gz").write_bytes(zipped[:len(zipped) // 2])
  (inputs / "empty.txt").write_text("")
  points = [{"name": f"p{i}", "budget": 1e12, "params": 1e6 * 2**i, "tokens": 1e12 / 6e6 / 2**i,
             "loss": 3.0} for i in range(3)]
  for name, field, value in (("noloss", "loss", None), ("nan", "loss", float("nan")),
                             ("zero", "budget", 0)):
    bad = [dict(p) for p in points]
    bad[1].pop(field) if value is None else bad[1].update({field: value})
    (inputs / f"sweep_{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in bad))
  (inputs / "junk").mkdir()   # no valid document: an empty file, a bad line, a looping link
  (inputs / "junk" / "empty.jsonl").write_text("")
  (inputs / "junk" / "bad.jsonl").write_text("not json\n")
  (inputs / "junk" / "loop.jsonl").symlink_to("loop.jsonl")
  (inputs / "syntax.py").write_text("def get_config(:\n  pass\n")
  (inputs / "raises.py").write_text("def get_config(arg=None):\n  return 1 / 0\n")
  (inputs / "noget.py").write_text("steps = 3\n")
  (inputs / "prompts.jsonl").write_text('{"prompt": "fine"}\n{"text": "no prompt"}\n')
  (inputs / "bad_sft.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
  (inputs / "latin1.jsonl").write_bytes('{"messages": [{"role": "user", "content": "café"}, '
                                        '{"role": "assistant", "content": "ok"}]}\n'
                                        .encode("latin-1"))
  prompt = [{"role": "user", "content": "What is 2 + 2?"}]
  (inputs / "one_response.jsonl").write_text(json.dumps({"messages": prompt, "chosen": "4"}) + "\n")
  (inputs / "tied.jsonl").write_text(json.dumps({"messages": prompt, "chosen": "4",
                                                 "rejected": " 4"}) + "\n")
  (inputs / "badgold.jsonl").write_text('{"query": "q", "choices": ["a", "b"], "gold": 3}\n')
  (inputs / "onechoice.jsonl").write_text('{"query": "q", "choices": ["a"], "gold": 0}\n')
  shutil.copytree(run / "checkpoints" / "2", inputs / "ck_corrupt")
  shutil.copytree(run, inputs / "sft_run")        # an SFT stage's workdir, as its launcher marks it
  (inputs / "sft_run" / "stage.json").write_text('{"kind": "sft"}\n')
  shutil.copytree(run, inputs / "stage_run")      # a stage's, unmarked: its data lies inside it
  for meta in (inputs / "stage_run" / "checkpoints").glob("*/meta/metadata"):
    fields = json.loads(meta.read_text())
    fields["config"]["data"]["path"] = str(inputs / "stage_run" / "data")
    meta.write_text(json.dumps(fields))
  _corrupt_checkpoint(inputs / "ck_corrupt")
  ocp.StandardCheckpointer().save((inputs / "other_model" / "state").resolve(),
                                  {"model": {"w": np.zeros(3, np.float32)}})
  _bad_data(inputs, embedded_corpus())
  _bad_hf(inputs, run)
  tokenizer = run_tokenizer(run).path
  words = [" ".join(f"w{(i * 7 + j) % 61}" for j in range(8 + i % 9)) for i in range(60)]
  train_sentencepiece(words * 3, 320, inputs / "other.model")
  own = tmp_path_factory.mktemp("own")   # copied for each case: it may destroy them
  shutil.copytree(inputs / "raw", own / "raw", ignore=shutil.ignore_patterns("*.gz"))
  (own / "prompts.jsonl").write_text('{"prompt": "The history of"}\n')
  (own / "task.jsonl").write_text('{"query": "2 + 2 =", "choices": [" 4", " 5"], "gold": 0}\n')
  prepare(own / "raw", tokenizer, own / "prepared", log=lambda *_: None)
  return {"run": run, "inputs": inputs, "tokenizer": tokenizer, "own": own,
          "inputs_before": _fingerprint_all(inputs), "env": {**job_env, "HF_HUB_OFFLINE": "1"}}


def _fingerprint(workdir: pathlib.Path) -> dict:
  """sha256 of every file a run must never lose or change: checkpoints, metrics, average."""
  files = [workdir / "metrics.jsonl", *sorted((workdir / "checkpoints").rglob("*")),
           *sorted((workdir / "averaged_params").rglob("*"))]
  return {str(f.relative_to(workdir)): hashlib.sha256(f.read_bytes()).hexdigest()
          for f in files if f.is_file()}


def _fingerprint_all(folder: pathlib.Path) -> dict:
  return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
          for f in sorted(folder.rglob("*")) if f.is_file()}


def _run_case(case, setup, base: pathlib.Path) -> dict:
  _, module, args, _ = case
  run, out, own = base / "run", base / "out", base / "own"
  shutil.copytree(setup["run"], run)
  shutil.copytree(setup["own"], own)
  before, own_before = _fingerprint(run), _fingerprint_all(own)
  places = {"RUN": str(run), "IN": str(setup["inputs"]), "OUT": str(out),
            "TOK": str(setup["tokenizer"]), "OWN": str(own)}

  def fill(text):
    for key, value in places.items():
      text = text.replace(f"{{{key}}}", value)
    return text

  result = subprocess.run([sys.executable, "-m", f"experiments.{module}", *map(fill, args)],
                          cwd=ROOT, env=setup["env"], capture_output=True, text=True, check=False,
                          timeout=300)
  return {"result": result, "unchanged": _fingerprint(run) == before, "fill": fill,
          "own_unchanged": _fingerprint_all(own) == own_before,
          "stale": sorted(str(p) for p in out.rglob("*.tmp")) if out.exists() else []}


@pytest.fixture(scope="module")
def outcomes(setup, tmp_path_factory):
  """Every case, 2 subprocesses at a time (the 2 CPU cores of CI)."""
  base = tmp_path_factory.mktemp("cases")
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = {case[0]: pool.submit(_run_case, case, setup, base / case[0]) for case in CASES}
    return {name: future.result() for name, future in futures.items()}


def test_enough_cases():
  assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
  modules = {c[1] for c in CASES}
  assert modules == {p.stem for p in (ROOT / "experiments").glob("*.py")
                     if not p.stem.startswith("_")}   # _finetune: shared code, not a launcher


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, outcomes):
  outcome = outcomes[case[0]]
  result = outcome["result"]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
  assert outcome["fill"](case[3]) in lines[0]
  assert outcome["unchanged"], "the run's checkpoints or metrics changed"
  assert outcome["own_unchanged"], "the case's own inputs changed"
  assert not outcome["stale"], outcome["stale"]


@pytest.mark.slow
def test_unreadable_checkpoints_are_one_error_without_orbax_noise(setup, tmp_path):
  """Every checkpoint of a run unreadable: the one error (pretrain refuses to start over), the
  warnings of what was set aside, and none of the dozens of "Event loop is closed" tracebacks
  TensorStore's reads in flight print after a failed restore (checkpoint/manager.py)."""
  run = tmp_path / "run"
  shutil.copytree(setup["run"], run)
  for step in (run / "checkpoints").iterdir():
    _corrupt_checkpoint(step)
  result = subprocess.run([sys.executable, "-m", "experiments.pretrain", "--config", TC,
                           "--workdir", str(run)], cwd=ROOT, env=setup["env"],
                          capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"error: no usable checkpoint in {run / 'checkpoints'}")
  assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr


@pytest.mark.slow
def test_no_case_changed_the_shared_inputs(setup, outcomes):
  assert _fingerprint_all(setup["inputs"]) == setup["inputs_before"]
