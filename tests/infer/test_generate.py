"""KV-cache generation equals recomputing the full forward pass, on one device and sharded; the
same tokens as `transformers`; sampling draws from the truncated distribution, per-request
seeds; prefix-shared samples equal independent requests; no recompile per token.

fp32 on CPU: the cached and the full pass differ only in summation order (~1e-6 of logits of
size ~1); 1e-5 relative to the largest logit catches a wrong mask, slot or position (O(1e-1)).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llama3_jax.infer import kv_cache
from llama3_jax.infer.generate import Generator, Sampling, bucket
from llama3_jax.infer.sampling import sample, truncated_logits
from llama3_jax.model import ModelConfig, RopeScaling, Transformer
from llama3_jax.sharding import MeshConfig

MODEL = ModelConfig(vocab_size=98, d_model=40, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=6,
                    ffn_dim=72, max_seq_len=64, init_std=0.2)
PROMPTS = [[5, 9, 2], [1, 2, 3, 4, 5, 6, 7], list(range(10, 22))]   # 3, 7 and 12 tokens
NEW = 8


@functools.cache
def model(config=MODEL):
  return Transformer(config, rngs=nnx.Rngs(0))


@functools.cache
def forward(m):
  """The full forward pass, compiled once: a row padded to the context (causal attention: the
  padding after a token changes nothing before it)."""
  graphdef, state = nnx.split(m)
  run = jax.jit(lambda state, tokens_bt: nnx.merge(graphdef, state)(tokens_bt))
  return lambda seq: np.asarray(run(state, np.array([seq + [0] * (m.config.max_seq_len -
                                                                      len(seq))])))[0]


def full_recompute(m, prompt, steps):
  """Greedy decoding by the full forward pass on the growing sequence: (tokens, logits)."""
  seq, logits = list(prompt), []
  for _ in range(steps):
    last = forward(m)(seq)[len(seq) - 1]
    logits.append(last)
    seq.append(int(last.argmax()))
  return seq[len(prompt):], np.stack(logits)


def assert_like_full_recompute(results, m=None):
  m = model() if m is None else m
  for prompt, result in zip(PROMPTS, results, strict=True):
    tokens, logits = full_recompute(m, prompt, NEW)
    assert result.tokens[0] == tokens
    scale = np.abs(logits).max()
    assert np.abs(result.logits[0] - logits).max() <= 1e-5 * scale


def test_cached_greedy_equals_full_recompute_for_prompts_of_different_lengths():
  generator = Generator(model(), stop_ids=())
  assert_like_full_recompute(generator.generate(PROMPTS, max_new_tokens=NEW, keep_logits=True))


@pytest.mark.parametrize("mesh_config", [
    MeshConfig(fsdp=4, tensor=2),
    pytest.param(MeshConfig(data=2, fsdp=2, tensor=2), marks=pytest.mark.slow)],
    ids=["fsdp4_tensor2", "data2_fsdp2_tensor2"])
def test_sharded_decoding_equals_full_recompute(mesh_config):
  generator = Generator(model(), mesh_config, stop_ids=())
  assert generator.min_batch == 4   # rows split over data x fsdp
  assert_like_full_recompute(generator.generate(PROMPTS, max_new_tokens=NEW, keep_logits=True))
  wk = generator.state["blocks"]["attn"]["wk_dkh"][...]
  assert "tensor" in str(wk.sharding.spec)   # heads are tensor-parallel


def test_one_compile_per_bucket_not_per_token():
  generator = Generator(model(), stop_ids=())
  generator.generate(PROMPTS, max_new_tokens=20)
  assert generator.compile_counts() == {"prefill": 1, "decode": 1}
  generator.generate([[3, 4, 5, 6, 7, 8, 9, 10, 11]], max_new_tokens=20)   # another batch bucket
  generator.generate([[7, 7], [8, 8]], max_new_tokens=20)   # same buckets as the one before
  counts = generator.compile_counts()
  assert counts["decode"] <= 3 and counts["prefill"] <= 3


def test_stop_tokens_end_rows_and_finished_rows_leave_the_batch():
  m = model()
  first = [full_recompute(m, p, 1)[0][0] for p in PROMPTS]
  # The first prompt's first greedy token is made a stop token: that row ends at once, the
  # others keep going in a smaller batch bucket (4 -> 2 rows) and still decode correctly.
  generator = Generator(m, stop_ids=(first[0],))
  results = generator.generate(PROMPTS, max_new_tokens=NEW, keep_logits=True)
  assert results[0].tokens[0] == [first[0]] and results[0].finished == [True]
  for prompt, result in zip(PROMPTS[1:], results[1:]):
    tokens, _ = full_recompute(m, prompt, NEW)
    cut = tokens.index(first[0]) + 1 if first[0] in tokens else NEW
    assert result.tokens[0] == tokens[:cut]
  # Decoding ran the 2 live rows only (the 4-row bucket was left before the first decode step).
  assert generator.decoded_rows == 2 * (NEW - 1)
  unstopped = Generator(m, stop_ids=())
  unstopped.generate(PROMPTS, max_new_tokens=NEW)
  assert unstopped.decoded_rows == 4 * (NEW - 1)   # 3 prompts in the 4-row bucket throughout


def test_same_tokens_as_transformers_generate(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from llama3_jax import hf
  for name, config in (("plain", MODEL), ("rope_scaled", MODEL.replace(rope_scaling=RopeScaling(
      factor=8.0, original_max_position=16)))):
    m = Transformer(config, rngs=nnx.Rngs(1))
    hf.save(m, config, tmp_path / name)
    reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path / name,
                                                              torch_dtype=torch.float32)
    results = Generator(m, stop_ids=()).generate(PROMPTS, max_new_tokens=NEW)
    for prompt, result in zip(PROMPTS, results):
      out = reference.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW,
                               min_new_tokens=NEW, eos_token_id=None, pad_token_id=0)
      assert result.tokens[0] == out[0, len(prompt):].tolist(), name


def test_sampling_draws_from_the_truncated_distribution():
  """20,000 seeded draws from fixed logits: each token's frequency lies within 4.5 standard
  errors of its probability (false alarm < 1e-4 over the 8 tokens together, by the union
  bound), and tokens outside top-k / top-p are never drawn."""
  logits_v = jnp.asarray([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
  n = 20_000
  for temperature, top_k, top_p in ((1.0, 0, 1.0), (0.7, 4, 1.0), (1.3, 0, 0.8), (1.0, 5, 0.9)):
    logits_bv = jnp.broadcast_to(logits_v, (n, 8))
    args = [jnp.full(n, x, dtype) for x, dtype in ((temperature, jnp.float32),
                                                   (top_k, jnp.int32), (top_p, jnp.float32))]
    drawn = np.asarray(jax.jit(sample)(logits_bv, jnp.arange(n, dtype=jnp.uint32),
                                       jnp.zeros(n, jnp.int32), jnp.zeros(n, jnp.int32), *args))
    probs = np.asarray(jax.nn.softmax(truncated_logits(logits_v[None], *[a[:1] for a in args])))[0]
    expected = np.exp(np.asarray(logits_v) / temperature)
    if top_k:
      expected[top_k:] = 0
    expected /= expected.sum()
    order = np.cumsum(expected) - expected < top_p
    expected = np.where(order, expected, 0)
    expected /= expected.sum()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    frequency = np.bincount(drawn, minlength=8) / n
    assert np.all(frequency[expected == 0] == 0), (temperature, top_k, top_p)
    se = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(frequency - expected) <= 4.5 * se + 1e-12), (frequency, expected)


def test_a_seed_gives_the_same_sample_in_any_batch():
  generator = Generator(model(), stop_ids=())
  wanted = Sampling(temperature=1.0, top_p=0.95, seed=7)
  alone = generator.generate([PROMPTS[1]], max_new_tokens=NEW, sampling=wanted)[0].tokens
  others = [Sampling(temperature=0.8, seed=s) for s in range(7)]
  batch = [PROMPTS[0]] * 3 + [PROMPTS[1]] + [PROMPTS[2]] * 4
  settings = others[:3] + [wanted] + others[3:]
  together = generator.generate(batch, max_new_tokens=NEW, sampling=settings)[3].tokens
  assert alone == together
  other_seed = generator.generate([PROMPTS[1]], max_new_tokens=NEW,
                                  sampling=Sampling(temperature=1.0, top_p=0.95, seed=8))
  assert other_seed[0].tokens != alone


def test_prefix_shared_samples_equal_independent_requests():
  generator = Generator(model(), stop_ids=())
  settings = Sampling(temperature=1.0, seed=3)
  shared = generator.generate(PROMPTS[:2], max_new_tokens=NEW, sampling=settings, samples=4)
  for i, prompt in enumerate(PROMPTS[:2]):
    alone = [generator.generate([prompt], max_new_tokens=NEW, sampling=settings,
                                first_sample=j)[0].tokens[0] for j in range(4)]
    assert shared[i].tokens == alone
    assert len({tuple(t) for t in alone}) > 1   # the samples differ


def test_cache_bytes_per_token():
  cache = kv_cache.init_cache(MODEL, batch=2, max_len=16)
  kv_bytes = cache["k"].nbytes + cache["v"].nbytes
  assert kv_bytes == 2 * 16 * kv_cache.bytes_per_token(MODEL)
  assert kv_cache.bytes_per_token(MODEL) == 2 * 2 * 2 * 6 * 4   # K, V x layers x KV heads x H
  assert bucket(1) == 1 and bucket(5) == 8 and bucket(3, 4) == 4


@pytest.mark.parametrize("prompts, max_new, message", [
    ([[]], 4, "prompt 0 is empty"),
    ([list(range(60))], 8, "exceeds the model's context of 64 tokens"),
    ([[1, 200]], 4, r"token ids \[200\] outside the model's vocabulary of 98"),
    ([], 4, "no prompts given"),
    ([[1]], 0, "max_new_tokens=0"),
])
def test_bad_requests_are_clear_errors(prompts, max_new, message):
  with pytest.raises(ValueError, match=message):
    Generator(model(), stop_ids=()).generate(prompts, max_new_tokens=max_new)
  with pytest.raises(ValueError, match="top_p in"):
    Sampling(top_p=0.0)
  with pytest.raises(ValueError, match="tensor=3"):
    Generator(model(), MeshConfig(fsdp=-1, tensor=3), devices=jax.devices()[:6])
