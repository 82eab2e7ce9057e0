"""Typed configs from plain dicts: the one converter every launcher's ConfigDict goes through.

    run = from_dict(RunConfig, cfg.to_dict())          # llama3_jax/train/config.py: run_config
    curation = from_dict(CurationConfig, c.to_dict())  # llama3_jax/data/curation/config.py

A config is a tree of frozen dataclasses, each default stated once in its field. `from_dict`
builds one from nested dicts (what `ConfigDict.to_dict()` and JSON give): nested dataclass
fields the same way, lists as tuples (so configs stay hashable and compare equal to their
defaults), and an unknown key is a ValueError naming its dotted place and the known keys, so a
misspelt `--config.` override fails before any work. Each dataclass checks its own values in
`__post_init__`.
"""

import dataclasses
import typing
from collections.abc import Mapping


def from_dict(cls, values: Mapping, where: str = ""):
  """`cls` (a dataclass) with the fields `values` gives; the others keep their defaults."""
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"unknown field(s) {unknown} in {where or cls.__name__}; known: "
                     f"{', '.join(sorted(fields))}")
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for name, value in values.items():
    hint = hints[name]
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
      kwargs[name] = from_dict(hint, value, f"{where}.{name}" if where else name)
    else:
      kwargs[name] = frozen(value)
  return cls(**kwargs)


def frozen(value):
  """Lists (as ConfigDict and JSON give them back) as tuples, recursively."""
  if isinstance(value, (list, tuple)):
    return tuple(frozen(v) for v in value)
  return value
