"""Loading straight onto shardings: a training checkpoint (Orbax) and a Hugging Face directory
(safetensors slices) read onto any layout give exactly the values of the whole-model load, each
array carries its target's sharding, and the whole model is never handed to a device."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from llama3_jax import hf
from llama3_jax.checkpoint.model import Pretrained, pretrained, load_model, load_params
from llama3_jax.checkpoint.run import model_meta
from llama3_jax.checkpoint.target import model_target
from llama3_jax.errors import UserError
from llama3_jax.model import ModelConfig, RewardModel, Transformer
from llama3_jax.objectives.dpo import DPOLoss
from llama3_jax.objectives.reward import RewardLoss
from llama3_jax.sharding import MeshConfig, make_mesh
from llama3_jax.train.setup import setup

# GQA, untied head, odd sizes: every HF layout (transposed, heads split, stacked) is exercised.
CONFIG = ModelConfig(vocab_size=96, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2,
                     head_dim=6, ffn_dim=56, max_seq_len=32)
LAYOUTS = [MeshConfig(fsdp=8), MeshConfig(fsdp=4, tensor=2), MeshConfig(fsdp=2, tensor=4),
           MeshConfig(data=2, fsdp=2, tensor=2), MeshConfig(stage=2, fsdp=4)]


def save_step(path, module, kind="lm"):
  """A checkpoint step as the training loop writes one: state/ (model) and meta/metadata."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save((path / "state").resolve(), {"model": nnx.state(module)})
  checkpointer.wait_until_finished()
  (path / "meta").mkdir()
  (path / "meta" / "metadata").write_text(json.dumps({"model": model_meta(CONFIG),
                                                       "model_kind": kind}))
  return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  """(the model, its HF directory, a workdir holding it as checkpoint step 7)."""
  root = tmp_path_factory.mktemp("sources")
  model = Transformer(CONFIG, rngs=nnx.Rngs(3))
  hf.save(model, CONFIG, root / "hf", max_shard_bytes=20_000)   # several files and an index
  save_step(root / "run" / "checkpoints" / "7", model)
  return model, root / "hf", root / "run"


def assert_loaded(params, target, reference):
  """`params` carry `target`'s shardings and dtypes, and equal `reference` bit for bit."""
  for x, t, r in zip(jax.tree.leaves(params), jax.tree.leaves(target),
                     jax.tree.leaves(reference), strict=True):
    assert x.sharding == t.sharding and x.dtype == t.dtype and x.shape == t.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(r))


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_both_sources_load_onto_any_layout_as_the_whole_model(sources, layout):
  model, hf_dir, run = sources
  whole = nnx.state(model)
  _, target = model_target(CONFIG, "lm", make_mesh(layout))
  assert any(t.sharding.shard_shape(t.shape) != t.shape for t in jax.tree.leaves(target))
  assert_loaded(load_params(hf_dir, target), target, whole)
  assert_loaded(load_params(run, target), target, whole)
  assert_loaded(nnx.state(hf.load(hf_dir, mesh=make_mesh(layout))[1]), target, whole)


def random_shardings(abstract, mesh, seed):
  """Each array split along random dims over random groups of the mesh's axes (that divide)."""
  rng = np.random.RandomState(seed)

  def spec(x):
    free, dims = list(mesh.axis_names), []
    for n in x.shape:
      groups = [g for k in (1, 2) for g in itertools.combinations(free, k)
                if n % np.prod([mesh.shape[a] for a in g]) == 0]
      group = groups[rng.randint(len(groups))] if groups and rng.rand() < 0.7 else None
      dims.append(group)
      free = [a for a in free if a not in (group or ())]
    return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                sharding=NamedSharding(mesh, PartitionSpec(*dims)))
  return jax.tree.map(spec, abstract)


def test_any_slicing_of_any_axis_reads_the_right_values(sources):
  """Shardings no rule table makes (head_dim split, rows and columns over several axes): the
  HF slice arithmetic holds for every dim of every tensor layout."""
  model, hf_dir, _ = sources
  mesh = jax.make_mesh((2, 2, 2), ("a", "b", "c"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  _, whole = model_target(CONFIG)
  split = set()
  for seed in range(6):
    target = random_shardings(whole, mesh, seed)
    split |= {(i, s) for i, t in enumerate(jax.tree.leaves(target))
              for s in range(len(t.shape)) if t.sharding.spec[s] if s < len(t.sharding.spec)}
    assert_loaded(load_params(hf_dir, target), target, nnx.state(model))
  dims = sum(len(t.shape) for t in jax.tree.leaves(whole))
  assert len(split) > dims // 2   # most dims of most tensors were split by some draw


def local_shard_bytes(target) -> int:
  """The bytes of the distinct shards of `target` that this process's devices hold."""
  total = 0
  for t in jax.tree.leaves(target):
    indices = {tuple(s.indices(n)[:2] for s, n in zip(index, t.shape))
               for index in t.sharding.addressable_devices_indices_map(t.shape).values()}
    total += sum(np.prod([b - a for a, b in index]) for index in indices) * t.dtype.itemsize
  return int(total)


class Reads:
  """Every slice read from a safetensors file (checkpoint/hf/layout.read_part), in bytes."""

  def __init__(self, monkeypatch):
    from llama3_jax.checkpoint.hf import weights
    self.sizes, original = [], weights.read_part

    def read_part(*args):
      part = original(*args)
      self.sizes.append(part.nbytes)
      return part
    monkeypatch.setattr(weights, "read_part", read_part)


def test_each_shard_is_read_once_and_only_its_slices(sources, monkeypatch):
  model, hf_dir, _ = sources
  model_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
  reads = Reads(monkeypatch)
  _, target = model_target(CONFIG, "lm", make_mesh(MeshConfig(fsdp=8)))
  load_params(hf_dir, target)
  # fsdp=8 splits every tensor 8 ways: each read is one layer's slice of 1/8 of a tensor.
  assert sum(reads.sizes) == local_shard_bytes(target) == model_bytes
  assert max(reads.sizes) * 8 <= CONFIG.vocab_size * CONFIG.d_model * 4
  reads.sizes.clear()
  _, target = model_target(CONFIG, "lm", make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)))
  load_params(hf_dir, target)   # a shard held by two devices (data) is read once
  assert sum(reads.sizes) == local_shard_bytes(target) == model_bytes


def test_dtype_is_the_targets(sources, tmp_path):
  model, hf_dir, run = sources
  bf16 = CONFIG.replace(param_dtype="bfloat16")
  _, target = model_target(bf16, "lm", make_mesh(MeshConfig(fsdp=4, tensor=2)))
  reference = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), nnx.state(model))
  assert_loaded(load_params(hf_dir, target), target, reference)
  assert_loaded(load_params(run, target), target, reference)
  # and a bf16 file read into fp32
  hf.save(model, CONFIG, tmp_path / "bf16", dtype="bfloat16")
  _, target = model_target(CONFIG, "lm", make_mesh(MeshConfig(fsdp=8)))
  assert_loaded(load_params(tmp_path / "bf16", target), target,
                jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), reference))


class Recorder:
  """Every array our code hands to JAX whole (device_put, jnp.asarray/array) that has the shape
  of a parameter the target shards: what loading onto one device and then resharding does."""

  def __init__(self, monkeypatch, target):
    self.sharded = {t.shape for t in jax.tree.leaves(target)
                    if t.sharding.shard_shape(t.shape) != t.shape}
    self.whole = []
    for module, name in ((jax, "device_put"), (jnp, "asarray"), (jnp, "array")):
      monkeypatch.setattr(module, name, self.wrap(getattr(module, name)))

  def wrap(self, original):
    def recorded(x, *args, **kwargs):
      for leaf in jax.tree.leaves(x):
        if isinstance(leaf, jax.core.Tracer):   # inside a traced function: not a transfer
          continue
        unsharded = not isinstance(leaf, jax.Array) or leaf.sharding.is_fully_replicated
        if getattr(leaf, "shape", None) in self.sharded and unsharded:
          self.whole.append(leaf.shape)
      return original(x, *args, **kwargs)
    return recorded


@pytest.mark.parametrize("source", ["hf", "run"])
def test_the_whole_model_never_goes_to_a_device(sources, monkeypatch, source):
  """Fine-tuning's start, as the loop makes it (`pretrained` -> `Setup.init_state`): the old
  path (load onto device 0, device_put onto the mesh) hands every weight whole to JAX."""
  model, hf_dir, run = sources
  path = hf_dir if source == "hf" else run
  s = setup(CONFIG, MeshConfig(fsdp=4, tensor=2))
  recorder = Recorder(monkeypatch, s.pretrained_target)
  assert recorder.sharded   # most weights are sharded on this layout
  state = s.init_state(pretrained(path, CONFIG))
  assert recorder.whole == []
  assert_loaded(state["model"], s.abstract_state["model"], nnx.state(model))
  # The check can fail: the old path trips it.
  s.init_state(nnx.state(load_model(run)[1]))
  assert recorder.whole


@pytest.mark.slow   # two objectives' init programs compile
@pytest.mark.parametrize("objective", ["reward", "dpo"])
def test_reward_backbone_and_dpo_reference_load_sharded(sources, objective):
  """A reward model's backbone and DPO's policy and frozen reference start from the model,
  read onto their own layout, equal to the old whole-model start."""
  model, hf_dir, run = sources
  loss = RewardLoss() if objective == "reward" else DPOLoss(reference="in_step")
  s = setup(CONFIG, MeshConfig(fsdp=4, tensor=2), objective=loss)
  for path in (hf_dir, run):
    state = s.init_state(Pretrained(path))
    old = s.init_state(nnx.state(model))
    for x, t, r in zip(jax.tree.leaves(state), jax.tree.leaves(s.abstract_state),
                       jax.tree.leaves(old), strict=True):
      assert x.sharding == t.sharding
      np.testing.assert_array_equal(np.asarray(x), np.asarray(r))
    if objective == "reward":
      assert_loaded(state["model"]["backbone"], s.pretrained_target, nnx.state(model))
    else:
      assert_loaded(state["frozen"], s.pretrained_target, nnx.state(model))
      assert_loaded(state["model"], s.pretrained_target, nnx.state(model))


def test_reward_models_load_sharded_from_both_sources(tmp_path):
  rm = RewardModel(CONFIG, rngs=nnx.Rngs(5))
  hf.save(rm, CONFIG, tmp_path / "hf")
  save_step(tmp_path / "run", rm, "reward")
  mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
  _, target = model_target(CONFIG, "reward", mesh)
  from_hf = load_params(tmp_path / "hf", target)
  reference = nnx.state(rm)
  reference["backbone"]["lm_head_dv"] = jnp.zeros_like(reference["backbone"]["lm_head_dv"])
  assert_loaded(from_hf, target, reference)   # HF has no LM head for a classifier: zeros
  assert_loaded(load_params(tmp_path / "run", target), target, nnx.state(rm))
  config, loaded = load_model(tmp_path / "run", kind="reward", mesh=mesh)
  assert config == CONFIG and isinstance(loaded, RewardModel)


def test_another_model_is_refused_before_anything_is_read(sources, monkeypatch, tmp_path):
  model, hf_dir, run = sources
  monkeypatch.setattr("llama3_jax.checkpoint.model.restore_params", None)   # not reached
  monkeypatch.setattr("llama3_jax.checkpoint.hf.read_params", None)
  wider = CONFIG.replace(ffn_dim=64)
  _, target = model_target(wider, "lm", make_mesh(MeshConfig(fsdp=8)))
  for path in (hf_dir, run):
    with pytest.raises(UserError, match=r"holds a model of other shapes than the one it is "
                       r"read into \(blocks.mlp.w_down_fd.*: \(4, 56, 32\), not \(4, 64, 32\)\)"
                       r".*model.size=\"init\""):
      load_params(path, target)
    with pytest.raises(UserError, match="other shapes"):
      pretrained(path, wider)
  _, reward_target = model_target(CONFIG, "reward")
  with pytest.raises(UserError, match="holds a language model .policy., not a reward model"):
    load_params(run, reward_target)
  with pytest.raises(UserError, match="holds a language model .policy., not a reward model"):
    load_params(hf_dir, reward_target)
  with pytest.raises(FileNotFoundError, match="averaged_params does not exist"):
    pretrained(run, CONFIG, averaged=True)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_params(tmp_path / "nowhere", target)
  # A layout that does not fit the model: one line naming the sizes, before any read.
  with pytest.raises(UserError, match=r"does not fit: n_heads=4 is not divisible by tensor=8"):
    load_model(run, mesh=make_mesh(MeshConfig(fsdp=1, tensor=8)))
  with pytest.raises(UserError, match=r"d_model=32 is not divisible by fsdp=\d+"):
    hf.load(hf_dir, mesh=jax.sharding.Mesh(np.array(jax.devices()[:6]).reshape(1, 6, 1, 1, 1),
                                           ("data", "fsdp", "stage", "context", "tensor")))


def test_the_anneals_average_loads_sharded(sources, tmp_path):
  model, _, run = sources
  averaged = Transformer(CONFIG, rngs=nnx.Rngs(9))
  checkpointer = ocp.StandardCheckpointer()   # as RunCheckpoints.export_average writes it
  checkpointer.save((tmp_path / "averaged_params").resolve(), nnx.state(averaged))
  checkpointer.wait_until_finished()
  (tmp_path / "checkpoints").symlink_to(run / "checkpoints")
  _, target = model_target(CONFIG, "lm", make_mesh(MeshConfig(fsdp=2, tensor=4)))
  assert_loaded(load_params(tmp_path, target, averaged=True), target, nnx.state(averaged))
  assert_loaded(load_params(tmp_path, target), target, nnx.state(model))
