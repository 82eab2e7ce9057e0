"""Post-training's tiny model: the shared one (tests/helpers.py) with conversations of at most
128 tokens. The tokenizer fixtures are tests/conftest.py's."""

from tests import helpers

TINY = helpers.TINY.replace(max_seq_len=128)
