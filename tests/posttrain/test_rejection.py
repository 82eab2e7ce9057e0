"""Rejection sampling: K = 1 greedy is plain generation, the kept one is the argmax, seeds; the
checker's preference pairs."""

import numpy as np
import pytest
from flax import nnx

from llama3_jax.data.conversations.chat import decode, encode_chat
from llama3_jax.infer.generate import Generator, Sampling
from llama3_jax.model import Transformer
from llama3_jax.posttrain.rejection import Settings, checker_pairs, rejection_sample
from llama3_jax.model.reward import RewardModel
from llama3_jax.posttrain.reward import score_responses
from tests.posttrain.conftest import TINY

PROMPTS = [[{"role": "user", "content": f"What is {a} + {b}?"}] for a, b in ((3, 4), (10, 7),
                                                                              (1, 19))]


@pytest.fixture(scope="module")
def models():
  return Transformer(TINY, rngs=nnx.Rngs(1)), RewardModel(TINY, rngs=nnx.Rngs(2))


def test_one_greedy_sample_is_plain_generation(tokenizer, models):
  policy, rm = models
  result = rejection_sample(policy, rm, tokenizer, PROMPTS,
                            Settings(samples=1, temperature=0.0, max_new_tokens=6))
  stop = [tokenizer.special_id("<|eot_id|>"), tokenizer.eos_id]
  plain = Generator(policy, stop_ids=stop).generate(
      [encode_chat(tokenizer, m, add_generation_prompt=True)[0].tolist() for m in PROMPTS],
      max_new_tokens=6, sampling=Sampling())
  expected = [decode(tokenizer, r.tokens[0]).strip() for r in plain]
  assert [texts[0] for texts in result.responses] == expected
  kept = {tuple(map(str, e["messages"][:-1])): e["messages"][-1]["content"] for e in result.kept}
  for messages, text in zip(PROMPTS, expected):
    if text:
      assert kept[tuple(map(str, messages))] == text


def test_the_kept_response_is_the_best_scored_and_a_seed_reproduces_it(tokenizer, models):
  policy, rm = models
  settings = Settings(samples=5, temperature=1.0, top_p=0.95, seed=3, max_new_tokens=6)
  result = rejection_sample(policy, rm, tokenizer, PROMPTS, settings, provenance={"policy": "p"})
  assert result.stats["samples"] == 15 and result.stats["samples_per_s"] > 0
  rescored = score_responses(rm, tokenizer, PROMPTS, [[t or "." for t in texts]
                                                       for texts in result.responses])
  kept = iter(result.kept)
  for texts, scores, again, best in zip(result.responses, result.scores, rescored, result.best):
    assert len(set(texts)) > 1   # sampling, not greedy
    finite = np.isfinite(scores)
    np.testing.assert_allclose(scores[finite], again[finite], rtol=1e-5, atol=1e-6)
    if best is None:
      assert not finite.any()
      continue
    assert best == int(np.argmax(scores))
    example = next(kept)
    assert example["messages"][-1]["content"] == texts[best]
    provenance = example["rejection_sampling"]
    assert provenance["kept"] == best and provenance["scores"][best] == max(provenance["scores"])
    assert provenance["settings"]["seed"] == 3 and provenance["policy"] == "p"
  again = rejection_sample(policy, rm, tokenizer, PROMPTS, settings, provenance={"policy": "p"})
  assert again.kept == result.kept
  other = rejection_sample(policy, rm, tokenizer, PROMPTS,
                           Settings(samples=5, temperature=1.0, top_p=0.95, seed=4,
                                    max_new_tokens=6))
  assert other.responses != result.responses


def test_a_reward_model_of_another_tokenizer_is_refused(tmp_path, monkeypatch):
  import types
  from llama3_jax.checkpoint import model as model_lib
  from llama3_jax.errors import UserError
  from llama3_jax.posttrain.rejection import same_tokenizer
  for name in ("a", "b"):
    (tmp_path / f"{name}.model").write_text(name)
  tokenizers = {"policy": tmp_path / "a.model", "rm_same": tmp_path / "a.model",
                "rm_other": tmp_path / "b.model"}
  monkeypatch.setattr(model_lib, "run_tokenizer",
                      lambda path: types.SimpleNamespace(path=str(tokenizers[path])))
  assert same_tokenizer("policy", "rm_same").path == str(tmp_path / "a.model")
  with pytest.raises(UserError, match="the reward model rm_other was trained with the tokenizer"):
    same_tokenizer("policy", "rm_other")


def test_the_checker_pairs_the_correct_answer_with_each_distinct_wrong_one():
  responses = [["9", "8", "9", "", "7", "8"], ["17"] * 3, ["1", "2"], []]
  answers = ["9", "17", "3", "5"]
  correct = [[t == a for t in texts] for texts, a in zip(responses, answers)]
  pairs = checker_pairs(PROMPTS + [PROMPTS[0]], responses, correct)
  # all right, all wrong and no samples give none; empty responses are never a pair's side
  assert pairs == [{"messages": PROMPTS[0], "chosen": "9", "rejected": "8"},
                   {"messages": PROMPTS[0], "chosen": "9", "rejected": "7"}]


def test_ranking_counts_best_random_any_and_the_within_prompt_auc():
  from llama3_jax.posttrain.rejection import ranking
  inf = -np.inf
  scores = [[3.0, 1.0, 2.0, inf], [0.0, 5.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [inf, inf, 2.0, 0.0]]
  correct = [[True, False, False, False], [True, False, True, True], [False] * 4,
             [True, True, False, True]]
  report = ranking(scores, correct)
  best = np.array([1.0, 0.0, 0.0, 0.0])
  share = np.array([0.25, 0.75, 0.0, 0.75])
  assert report["best_of_k_correct"] == 0.25 and report["any_correct"] == 0.75
  np.testing.assert_allclose(report["random_sample_correct"], share.mean())
  np.testing.assert_allclose(report["best_minus_random"], (best - share).mean())
  np.testing.assert_allclose(report["best_minus_random_ci"],
                             1.96 * (best - share).std(ddof=1) / 2)
  # prompt 0: 3 over 1 and 2 (the empty one counts in neither side); prompt 1: of (0, 1, 1)
  # against 5 none wins; prompt 3: the right 0 against the wrong 2 loses, empty ones left out
  assert report["auc_prompts"] == 3
  np.testing.assert_allclose(report["auc"], np.mean([1.0, 0.0, 0.0]))
  # ties count half
  tied = ranking([[1.0, 1.0]], [[True, False]])
  assert tied["auc"] == 0.5 and tied["best_of_k_correct"] == 1.0


@pytest.mark.slow   # the fast core ranks with a reward model
def test_without_a_reward_model_the_same_samples_are_drawn_and_none_is_ranked(tokenizer, models):
  policy, rm = models
  settings = Settings(samples=4, temperature=1.0, top_p=0.95, seed=2, max_new_tokens=6)
  scored = rejection_sample(policy, rm, tokenizer, PROMPTS, settings)
  drawn = rejection_sample(policy, None, tokenizer, PROMPTS, settings)
  assert drawn.responses == scored.responses
  for texts, scores, best in zip(drawn.responses, drawn.scores, drawn.best):
    assert (scores[np.isfinite(scores)] == 0).all()
    assert best == next((j for j, t in enumerate(texts) if t), None)   # the first non-empty
