"""Command-line details of llama3_jax/cli.py that the table of tests/runtime/test_bad_inputs.py
does not show: `--config.a.b=None` unsets a field (ml_collections cannot parse None for a typed
field, so the fix "set warm-up as a fraction" could not be followed), and a config file that
defines no get_config is named as such, not blamed on the overrides.
"""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
_LAUNCHER = """
import ml_collections
from absl import flags
from ml_collections import config_flags
from llama3_jax import cli
define = lambda: config_flags.DEFINE_config_dict("config", ml_collections.ConfigDict(
    {"train": {"warmup_tokens": 5, "warmup_fraction": ml_collections.config_dict.placeholder(float),
               "steps": 3}}))
cli.run_absl(lambda argv: print(flags.FLAGS.config.train.warmup_tokens,
                                flags.FLAGS.config.train.warmup_fraction,
                                flags.FLAGS.config.train.steps), define=define)
"""


def _launch(*args):
  return subprocess.run([sys.executable, "-c", _LAUNCHER, *args], cwd=ROOT, capture_output=True,
                        text=True, check=False, timeout=120)


def test_none_on_the_command_line_unsets_a_field():
  result = _launch("--config.train.warmup_tokens=None", "--config.train.warmup_fraction=0.1",
                   "--config.train.steps=4")
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["None", "0.1", "4"]
  result = _launch("--config.train.warmup_tokenz=None")
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  assert lines[0].startswith("error: bad command line: --config.train.warmup_tokenz")


def test_a_config_file_without_get_config_is_named(tmp_path):
  from llama3_jax import cli
  (tmp_path / "c.py").write_text("steps = 3\n")
  (tmp_path / "ok.py").write_text("from experiments.configs.llama3_debug import get_config\n")
  try:
    cli._check_config_file("config", str(tmp_path / "c.py"))
    raise AssertionError("a file without get_config passed")
  except cli.UserError as error:
    assert str(error).startswith(f"--config {tmp_path / 'c.py'} defines no get_config")
  cli._check_config_file("config", str(tmp_path / "ok.py"))
