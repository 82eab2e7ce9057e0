"""Training objectives: what the one train step minimises (llama3_jax/train/step.py), each a
subclass of the `Objective` protocol (protocol.py says what the loop asks of one).

- next_token.py  cross-entropy of the next token: pre-training, and SFT on conversation rows
- dpo.py         direct preference optimisation with a frozen reference (report §4.1.4)
- reward.py      the reward model's ranked-pair loss (report §4.1.2)

A new objective is one file here; the loop, checkpoints and launchers take it as it is.
"""

from llama3_jax.objectives.next_token import NEXT_TOKEN, NextTokenLoss, token_nll
from llama3_jax.objectives.protocol import Objective

__all__ = ["NEXT_TOKEN", "NextTokenLoss", "Objective", "token_nll"]
