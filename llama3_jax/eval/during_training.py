"""Evaluation during training: every `eval.every_steps`, the chosen tasks on the current model,
into the step's metrics row (metrics.jsonl and TensorBoard).

    hooks.append(Evaluator(run.eval, tokenizer_path, model_of))   # the training loop does

`heldout` logs `eval/heldout/loss`, `bits_per_byte` and `<source>_loss` on the embedded
corpus' held-out split (llama3_jax/eval/perplexity.py); each task logs `eval/<task>/acc`,
`acc_norm` and `gold_nll_per_char` on its first `eval.examples` examples, and a generative
task (`arith_gen`, or a file of `answer` records) logs `eval/<task>/exact_match` with its shipped
generation settings, scored as `python -m experiments.evaluate` scores them
(llama3_jax/eval/multiple_choice.py, generative.py): the same numbers for the same parameters.
The model stays where training holds it, sharded over the run's mesh: every process of a
multi-process job scores it together (rows over the data-like axes, results gathered to every
process: llama3_jax/infer/placement.py) and process 0's metrics row logs the scores.
"""

from llama3_jax.eval import generative, multiple_choice, tasks
from llama3_jax.runtime.hooks import Hook


class Evaluator(Hook):
  """A hook of the training loop: every `eval.every_steps` steps, the scores of the model
  `model_of(state)` into the step's values, which the metrics row then logs."""

  def __init__(self, config, tokenizer_path, model_of=lambda state: state):
    from llama3_jax.data.tokenizers import load_tokenizer
    if tokenizer_path is None:
      raise ValueError("eval.every_steps needs a tokenizer: the data has none (synthetic "
                       "data?); set eval.every_steps=0")
    self.every, self.model_of = config.every_steps, model_of
    self.tokenizer = load_tokenizer(tokenizer_path)
    self.tasks, self.generative, self.heldout = {}, {}, False
    for name in filter(None, config.tasks.split(",")):
      if name == "heldout":   # held-out loss per source (llama3_jax/eval/perplexity.py)
        self.heldout = True
        continue
      if name in generative.SHIPPED or generative.is_generative(name):
        task_name, examples, settings = generative.read_task(name)
        self.generative[task_name] = examples[:config.examples], settings
        continue
      task_name, examples = tasks.read_task(name)
      self.tasks[task_name] = examples[:config.examples]

  def due(self, result) -> bool:   # not at the last step unless it is a multiple
    return bool(self.every) and result.step % self.every == 0

  def after_step(self, result) -> None:
    result.values.update(self(self.model_of(result.state)))

  def __call__(self, model) -> dict[str, float]:
    out = {}
    if self.heldout:
      from llama3_jax.eval import perplexity
      rows = perplexity.heldout_rows(seq_len=min(128, model.config.max_seq_len),
                                     rows_per_source=16)
      result = perplexity.evaluate(model, rows)
      out["eval/heldout/loss"], out["eval/heldout/bits_per_byte"] = (result["loss"],
                                                                     result["bits_per_byte"])
      out.update({f"eval/heldout/{name}_loss": r["loss"]
                  for name, r in result["per_source"].items()})
    for name, examples in self.tasks.items():
      lls = multiple_choice.loglikelihoods(model, self.tokenizer, examples)
      scores = multiple_choice.metrics(examples, lls)
      for key in ("acc", "acc_norm", "gold_nll_per_char"):
        out[f"eval/{name}/{key}"] = scores[key]
    for name, (examples, settings) in self.generative.items():
      scores = generative.score_generative(model, self.tokenizer, examples, settings)
      out[f"eval/{name}/exact_match"] = scores["exact_match"]
    return out
