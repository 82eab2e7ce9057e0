"""Where each of our parameters lies in a Hugging Face Llama checkpoint, and any slice of it.

HF linear weights are [out, in]; ours are [in, out] with heads split out (wq_dnh [D, N, H] is
q_proj [N*H, D] transposed and split), and ours stack the layers ([L, ...]) where HF names one
tensor per layer. `read_part` turns a slice of our (per-layer) array into the rows and columns
of the HF tensor that hold it, so that a process reads only what its devices keep
(safetensors' `get_slice`); the whole tensor is the slice that covers everything.
Our rotary layout is Hugging Face's ("rotate half"), so q/k weights need no permutation.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
  """Ours from HF: transposed (`transpose`), then our axes `split` and `split + 1` are one HF
  axis (heads x head_dim); `squeeze`: HF has a leading axis of 1 that ours drops."""
  transpose: bool = False
  split: int | None = None
  squeeze: bool = False

  def hf_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
    shape = list(ours)
    if self.split is not None:
      shape[self.split:self.split + 2] = [shape[self.split] * shape[self.split + 1]]
    if self.transpose:
      shape = shape[::-1]
    return tuple([1] * self.squeeze + shape)

  def to_hf(self, ours: np.ndarray) -> np.ndarray:
    """A whole (per-layer) array of ours as the HF tensor."""
    out = ours
    if self.split is not None:
      k = self.split
      out = out.reshape(out.shape[:k] + (out.shape[k] * out.shape[k + 1],) + out.shape[k + 2:])
    if self.transpose:
      out = out.T
    return out[None] if self.squeeze else out


def read_part(read, layout: Layout, shape: tuple[int, ...], index: tuple[slice, ...]):
  """Our array of (per-layer) `shape` at `index` (slices, step 1), from `read(slices)`: the HF
  tensor at those slices (a safetensors file reads only them; `np.ndarray.__getitem__` of a
  whole tensor in memory does too)."""
  bounds = [s.indices(n)[:2] for s, n in zip(index, shape)]
  hf = list(bounds)
  k = layout.split
  if k is not None:   # whole head_dim rows of the heads asked for; head_dim sliced after
    inner = shape[k + 1]
    hf[k:k + 2] = [(bounds[k][0] * inner, bounds[k][1] * inner)]
  if layout.transpose:
    hf = hf[::-1]
  if layout.squeeze:
    hf = [(0, 1)] + hf
  part = read(tuple(slice(a, b) for a, b in hf))
  if layout.squeeze:
    part = part[0]
  if layout.transpose:
    part = part.T
  if k is not None:
    heads = bounds[k][1] - bounds[k][0]
    part = part.reshape(part.shape[:k] + (heads, inner) + part.shape[k + 1:])
    part = part[(slice(None),) * (k + 1) + (slice(*bounds[k + 1]),)]
  return part


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One parameter of ours: its path, the HF name (with `{}` for the layer where `stacked`)."""
  path: tuple[str, ...]
  name: str
  stacked: bool
  layout: Layout

  def names(self, n_layers: int) -> list[str]:
    return [self.name.format(i) for i in range(n_layers)] if self.stacked else [self.name]


def tensor_map(*, lm_head: bool, reward: bool = False) -> list[Tensor]:
  """Every parameter of a Transformer (`lm_head`: untied embeddings, an output matrix of its
  own), or with `reward` of a RewardModel in HF's LlamaForSequenceClassification layout (no LM
  head, `score` [1, D])."""
  same, t = Layout(), Layout(transpose=True)
  layer = "model.layers.{}."
  rows = [
      Tensor(("embed_vd",), "model.embed_tokens.weight", False, same),
      Tensor(("final_norm", "scale"), "model.norm.weight", False, same),
      Tensor(("blocks", "attn_norm", "scale"), layer + "input_layernorm.weight", True, same),
      Tensor(("blocks", "mlp_norm", "scale"), layer + "post_attention_layernorm.weight", True,
             same),
      Tensor(("blocks", "attn", "wq_dnh"), layer + "self_attn.q_proj.weight", True,
             Layout(transpose=True, split=1)),
      Tensor(("blocks", "attn", "wk_dkh"), layer + "self_attn.k_proj.weight", True,
             Layout(transpose=True, split=1)),
      Tensor(("blocks", "attn", "wv_dkh"), layer + "self_attn.v_proj.weight", True,
             Layout(transpose=True, split=1)),
      Tensor(("blocks", "attn", "wo_nhd"), layer + "self_attn.o_proj.weight", True,
             Layout(transpose=True, split=0)),
      Tensor(("blocks", "mlp", "w_gate_df"), layer + "mlp.gate_proj.weight", True, t),
      Tensor(("blocks", "mlp", "w_up_df"), layer + "mlp.up_proj.weight", True, t),
      Tensor(("blocks", "mlp", "w_down_fd"), layer + "mlp.down_proj.weight", True, t),
  ]
  if reward:   # the backbone under "backbone", and the scalar head as a 1-label classifier
    rows = [dataclasses.replace(row, path=("backbone",) + row.path) for row in rows]
    rows.append(Tensor(("head_d",), "score.weight", False, Layout(squeeze=True)))
  elif lm_head:
    rows.append(Tensor(("lm_head_dv",), "lm_head.weight", False, t))
  return rows
