"""One multiple-choice example: what every task reader gives and every scorer reads."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Example:
  query: str                 # the context the choices continue (shots are prepended)
  choices: tuple[str, ...]   # the continuations, scored as " " + choice
  gold: int
  index: int                 # the example's line (0-based record) in its file
  subject: str = ""          # MMLU's subject: scores are macro-averaged over subjects
  shot: str = ""             # this example as a few-shot demonstration (query + answer)
