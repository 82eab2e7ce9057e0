"""Parses command lines against a launcher's flags without running it (for
tests/runtime/test_documented_commands.py):

    python -m tests.runtime.parse_only experiments.generate '[["--prompt", "x"], ["--bad"]]'

prints a JSON list with, per command line, null (it parses) or the error. The launcher runs as
__main__ with `cli.run` / `cli.run_absl` replaced by catchers: absl flags (and ml_collections'
--config overrides, read from sys.argv) are parsed as `cli.run_absl` parses them; an argparse
launcher's `main` runs until its parser has parsed, and stops there.
"""

import argparse
import json
import runpy
import sys

from absl import flags

from llama3_jax import cli


class _Parsed(Exception):
  """Raised in place of the work that follows a successful parse."""


def parse(module: str, commands: list[list[str]]) -> list[str | None]:
  launcher = {}
  cli.run = lambda main, **_: launcher.update(kind="argparse", main=main)
  cli.run_absl = lambda main, define=None, **_: launcher.update(kind="absl", define=define)
  runpy.run_module(module, run_name="__main__", alter_sys=True)
  return (_parse_absl if launcher["kind"] == "absl" else _parse_argparse)(module, launcher,
                                                                          commands)


def _parse_absl(module, launcher, commands):
  results, baseline = [], set(flags.FLAGS)
  for argv in commands:
    sys.argv = [module, *argv]   # ml_collections reads --config.* overrides from sys.argv
    for name in set(flags.FLAGS) - baseline:   # defined by define() or by the last --config
      delattr(flags.FLAGS, name)
    try:
      if launcher["define"]:
        launcher["define"]()
      rest = cli._parse_absl_flags([module, *argv])
      results.append(None if rest == [module] else f"unexpected arguments {rest[1:]}")
    except Exception as error:  # noqa: BLE001 - reported, whatever it is
      results.append(f"{type(error).__name__}: {cli.one_line(error)}")
    flags.FLAGS.unparse_flags()
  return results


def _parse_argparse(module, launcher, commands):
  parse_args = argparse.ArgumentParser.parse_args

  def parse_only(self, args=None, namespace=None):
    parse_args(self, args, namespace)
    raise _Parsed

  cli.ArgumentParser.parse_args = parse_only
  results = []
  for argv in commands:
    try:
      launcher["main"](argv)
      results.append(f"{module}'s main ran on without parsing its command line")
    except _Parsed:
      results.append(None)
    except Exception as error:  # noqa: BLE001 - reported, whatever it is
      results.append(f"{type(error).__name__}: {cli.one_line(error)}")
  return results


if __name__ == "__main__":
  print(json.dumps(parse(sys.argv[1], json.loads(sys.argv[2]))))
