"""llama3_jax/cli.py sorts what ends a launcher: bad input is one line and exit 2 (--verbose adds
the traceback), a bug propagates (Python prints its traceback, exit 1)."""

import errno

import numpy as np
import pytest

from llama3_jax import cli
from llama3_jax.errors import UserError, writable_dir


def ends(main, argv=(), **kwargs):
  with pytest.raises(SystemExit) as stop:
    cli.run(main, argv=list(argv), **kwargs)
  return stop.value.code


def fail(error):
  def main(argv):
    raise error
  return main


def test_user_error_is_one_line_and_exit_2(capsys):
  assert ends(fail(UserError("--out /x exists", "pass --overwrite"))) == 2
  assert capsys.readouterr().err == "error: --out /x exists: pass --overwrite\n"


def test_verbose_adds_the_traceback(capsys):
  assert ends(fail(UserError("bad", "fix")), ["--verbose"]) == 2
  err = capsys.readouterr().err
  assert "Traceback" in err and err.endswith("error: bad: fix\n")


def test_argparse_errors_are_one_line(capsys):
  def main(argv):
    parser = cli.ArgumentParser()
    parser.add_argument("--n", type=int, required=True)
    parser.parse_args(argv)
  assert ends(main, ["--n", "x"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: bad command line: argument --n")


def test_our_value_errors_and_path_errors_are_expected(tmp_path, capsys):
  def bad_config(argv):   # a ValueError raised by llama3_jax itself: written for users
    from llama3_jax.train.config import run_config
    run_config({"trian": {}})
  assert ends(bad_config) == 2
  assert "unknown config section(s) ['trian']" in capsys.readouterr().err
  def missing(argv):
    (tmp_path / "nowhere.txt").read_text()
  assert ends(missing) == 2
  assert capsys.readouterr().err.splitlines()[-1] == (
      f"error: {tmp_path / 'nowhere.txt'}: No such file or directory: no such file or "
      "directory; check the path")


def test_a_bug_keeps_its_traceback():
  with pytest.raises(ZeroDivisionError):
    cli.run(fail(ZeroDivisionError("division by zero")), argv=[])
  def numpy_bug(argv):   # a ValueError raised inside a library is a bug, not bad input
    np.reshape(np.arange(3), (2, 2))
  with pytest.raises(ValueError):
    cli.run(numpy_bug, argv=[])


def test_exit_codes_of_other_expected_errors(capsys):
  class Diverged(RuntimeError):
    pass
  assert ends(fail(Diverged("loss is nan")), exit_codes={Diverged: 3}) == 3
  assert capsys.readouterr().err == "error: loss is nan\n"


def test_writable_dir(tmp_path):
  assert writable_dir(tmp_path / "a" / "b", "--workdir").is_dir()
  (tmp_path / "file").write_text("x")
  with pytest.raises(UserError, match="--workdir .*file is a file"):
    writable_dir(tmp_path / "file", "--workdir")
  with pytest.raises(UserError, match="cannot be written .*not a directory") as error:
    writable_dir(tmp_path / "file" / "run", "--workdir")
  assert error.value.__cause__.errno == errno.ENOTDIR
