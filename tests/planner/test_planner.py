"""The planner's arithmetic, its named refusals, the launcher's JSON, and Llama 3's Table 4.

Pure arithmetic (no JAX compile): the whole file runs in about a second.
"""

import json

import pytest

from experiments import plan as plan_launcher
from llama3_jax.errors import UserError
from llama3_jax.model import SIZES
from llama3_jax.parallel.pipeline import Schedule
from llama3_jax.planner import Layout, get_hardware, memory, step_time, why_not
from llama3_jax.planner.layout import stage_layers
from llama3_jax.planner.search import evaluate
from llama3_jax.planner.step_time import Traffic, link, wire_bytes
from llama3_jax.planner import table4

H100 = get_hardware("h100")
M = 2**20


def test_table4_within_5_points_fits_and_ranks():
  predicted = [table4.predict(row) for row in table4.ROWS]
  for row, result in zip(table4.ROWS, predicted):
    assert result.fits, result.reason
    assert result.memory["total"] <= 80e9   # 80 GB in decimal bytes: 74.5 GiB
    assert abs(result.time["mfu"] - row.mfu) <= 0.05, (row, result.time["mfu"])
  mfus = [r.time["mfu"] for r in predicted]
  assert mfus[0] > mfus[1] > mfus[2]


def test_stage_layers_follow_llama3():
  assert stage_layers(126, 16) == [7] + [8] * 14 + [7]
  assert sum(stage_layers(30, 4)) == 30 and max(stage_layers(30, 4)) == 8
  assert stage_layers(32, 4) == [8] * 4


def test_memory_by_hand():
  """fsdp=8, fp32, no remat: parameters, moments and gradients are 1/8 of the model's."""
  model = SIZES["debug"]
  layout = Layout({"fsdp": 8}, seq_len=128, batch_tokens=8 * 128, fsdp_mode="zero3")
  parts = memory(model, layout)
  D, V, L = model.d_model, model.vocab_size, model.n_layers
  per_layer = 2 * D * model.n_heads * model.head_dim + 2 * D * model.n_kv_heads * \
      model.head_dim + 3 * D * model.ffn_dim + 2 * D
  params = L * per_layer + 2 * V * D + D
  assert parts["parameters"] == pytest.approx(params * 4 / 8)
  assert parts["optimizer state"] == pytest.approx(2 * params * 4 / 8)
  assert parts["gradients"] == pytest.approx(params * 4 / 8)
  llama3 = memory(model, Layout({"fsdp": 8}, 128, 8 * 128, fsdp_mode="llama3"))
  assert llama3["gathered weights"] == pytest.approx(params * 4)   # all of it, kept
  full = memory(model, Layout({"fsdp": 8}, 128, 8 * 128, remat="full"))
  assert full["activations"] < parts["activations"]


def test_bubble_and_links():
  layout = Layout({"tensor": 8, "stage": 16, "fsdp": 128}, 8192, 16 * M, micro_batches=16,
                  repeats=4)
  t = step_time(SIZES["llama3-405b"], layout, H100)
  assert t["bubble"] == pytest.approx(Schedule(16, 4, 16).bubble) == pytest.approx(15 / 64)
  assert link(layout, H100, "tensor")[0] == "nvlink"
  assert link(layout, H100, "stage")[0] == "network"
  assert link(Layout({"tensor": 4, "context": 2}, 8192, M), H100, "context")[0] == "nvlink"
  split = Layout({"tensor": 8, "fsdp": 2}, 8192, M, dcn={"tensor": 2})   # tensor over 2 nodes
  assert link(split, H100, "tensor")[0] == "network" and link(split, H100, "fsdp")[0] == "nvlink"
  assert wire_bytes(Traffic("fsdp", "all-gather", 800, ""), 8) == 700
  assert wire_bytes(Traffic("fsdp", "all-reduce", 800, ""), 8) == 1400
  assert 0 < t["mfu"] < 1 and t["tflops_per_gpu"] == pytest.approx(t["mfu"] * 989)


@pytest.mark.parametrize("sizes, seq, gpus, name", [
    ({"tensor": 8, "stage": 16, "fsdp": 64}, 8192, 16384, "gpus_not_product"),
    ({"tensor": 16, "fsdp": 1024}, 8192, None, None),          # 8 KV heads, 2 copies each: fine
    ({"tensor": 4, "fsdp": 1024}, 8192, None, None),
    ({"context": 16, "fsdp": 1024}, 1000, None, "seq_over_context"),
    ({"tensor": 3, "fsdp": 1024}, 8192, None, "tensor_split"),
])
def test_refusals_are_named(sizes, seq, gpus, name):
  reason = why_not(SIZES["llama3-405b"], Layout(sizes, seq, 16 * M), gpus)
  assert (reason and reason.name) == name


def test_tensor_over_kv_heads_without_whole_copies():
  model = SIZES["debug"].replace(n_heads=24, n_kv_heads=4, ffn_dim=360, vocab_size=504)
  assert why_not(model, Layout({"tensor": 6}, 128, 6 * 128)).name == "tensor_over_kv_heads"


def test_out_of_memory_is_a_reason():
  result = evaluate(SIZES["llama3-405b"], Layout({"tensor": 8, "fsdp": 2048}, 8192, 16 * M),
                    H100, 16384)
  assert result.reason.name == "out_of_memory" and "GiB" in result.reason.message


def test_unknown_hardware_lists_the_known():
  with pytest.raises(UserError, match="h100, h200, a100, b200"):
    get_hardware("tpu-v9")


def test_launcher_default_question(capsys):
  plan_launcher.main([])   # 405B on 16K H100s, 8K sequences, 16M-token batches
  out = capsys.readouterr().out
  assert "llama3-405b on 16,384 x H100" in out and "layouts fit" in out
  assert "(nothing written; --out FILE" in out


def test_launcher_json(capsys):
  plan_launcher.main(["--layout", "tensor=8,stage=16,fsdp=128", "--json"])
  (row,) = json.loads(capsys.readouterr().out)
  assert row["layout"] == {"tensor": 8, "stage": 16, "fsdp": 128}
  assert 0 < row["mfu"] < 1 and row["memory_gib"] > 0 and row["tflops_per_gpu"] > 0
  plan_launcher.main(["--size", "llama3-8b", "--gpus", "64", "--json", "--top", "3"])
  rows = json.loads(capsys.readouterr().out)
  assert len(rows) == 3 and rows[0]["mfu"] >= rows[1]["mfu"] >= rows[2]["mfu"]
  with pytest.raises(UserError, match="gpus_not_product"):
    plan_launcher.main(["--layout", "tensor=8,fsdp=4", "--gpus", "64"])
