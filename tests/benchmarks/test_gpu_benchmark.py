"""benchmarks/gpu.py's plumbing on CPU: launch/gpu_env.sh's flags, the cases, the JSON it writes.

The GPU figures themselves come from running it on a GPU host (BENCHMARKS.md).
"""

import json

import pytest

from benchmarks import gpu


def test_environment_is_launch_gpu_env_sh():
  env = gpu.gpu_environment()
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in env["XLA_FLAGS"]
  assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.92"


def test_cases_are_llama3_shaped_bf16_with_cudnn_attention():
  for _, size, seq_len, _, remat in gpu.CASES:
    model = gpu.model_for(size, remat, "cudnn")
    assert (model.dtype, model.param_dtype, model.attention) == ("bfloat16", "float32", "cudnn")
    assert model.vocab_size == 128_256 and 4096 <= seq_len <= 8192
  assert list(gpu.attempts("none")) == [("none", "cudnn"), ("full", "cudnn"),
                                        ("full", "blockwise")]


@pytest.mark.slow
def test_smoke_run_writes_one_json_with_a_row_per_case(tmp_path):
  out = tmp_path / "gpu.json"
  gpu.main(["--smoke", "--out", str(out), "--steps", "2", "--warmup", "1"])
  result = json.loads(out.read_text())
  assert "not an NVIDIA GPU" in result["cudnn_unsupported"]
  (row,) = result["cases"]
  assert row["global_batch"] == 8 and row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1
  assert [a["attention"] for a in row["attempts"]] == ["cudnn"]   # fell back, did not fail
