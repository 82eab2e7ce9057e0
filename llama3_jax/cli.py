"""How every launcher in experiments/ ends: bad input in one line (exit 2), a bug with its
traceback (exit 1).

    from llama3_jax import cli
    def main(argv): ...   # bad input: raise cli.UserError(f"--out {out} exists", "pass --force")
    if __name__ == "__main__": cli.run(main)   # argparse; absl: cli.run_absl(main, define=...)

Expected errors print `error: <what>: <fix>` on stderr and exit 2 (`--verbose`, anywhere on
the command line, adds their traceback): a UserError (llama3_jax/errors.py), a bad command line
(argparse's or absl's, a --config file that is missing, does not compile or whose get_config
raises), an OSError naming a path, and a ValueError / OSError raised by this project's own code
(those messages are written for users). Anything else is a bug: Python's traceback, exit 1.
`exit_codes` maps other expected exceptions to their own codes (pretrain: Diverged -> 3).
"""

import argparse
import ast
import pathlib
import sys
import traceback

from llama3_jax.errors import UserError, os_error_fix

EXIT_BAD_INPUT = 2
_OURS = tuple(str(pathlib.Path(__file__).resolve().parents[1] / d) for d in
              ("llama3_jax", "experiments"))

__all__ = ["EXIT_BAD_INPUT", "ArgumentParser", "UserError", "run", "run_absl", "stopped_note"]


class ArgumentParser(argparse.ArgumentParser):
  """argparse's parser whose errors are UserErrors (one line, exit 2), not usage + message."""

  def error(self, message):
    raise UserError(f"bad command line: {message}", "see --help")


def run(main, *, exit_codes=None, argv=None):
  """Calls `main(argv)` (argparse launchers; argv without the program name)."""
  argv, verbose = _strip_verbose(sys.argv[1:] if argv is None else argv)
  _guarded(lambda: main(argv), verbose, exit_codes)


def run_absl(main, *, define=None, exit_codes=None):
  """`absl.app.run(main)` with `define()` (the flag definitions) and the flags' parsing inside
  the same handling: a bad flag value, a missing or broken --config file is one line."""
  from absl import app
  sys.argv[1:], verbose = _strip_verbose(sys.argv[1:])

  def start():
    if define is not None:
      try:   # ml_collections applies --config.* overrides of a default config file here
        define()
      except Exception as error:  # noqa: BLE001 - a bad override, as when parsing
        raise _flags_error(error, sys.argv[1:], [("config", "")]) from error

    def main_without_usage(args):
      try:
        return main(args)
      except app.UsageError as error:   # absl would print the whole flag list, exit 1
        raise UserError(f"bad command line: {error}", "see --helpshort") from error

    app.run(main_without_usage, flags_parser=_parse_absl_flags)

  _guarded(start, verbose, exit_codes)


def stopped_note(summary: dict, workdir) -> str:
  """" (stopped by SIGTERM, checkpoint saved)" for a training run a signal stopped, "saved"
  only where the checkpoint of its last step is there to resume from; "" otherwise."""
  if not summary.get("stopped_by"):
    return ""
  saved = (pathlib.Path(workdir) / "checkpoints" / str(summary.get("steps"))).is_dir()
  return (f" (stopped by {summary['stopped_by']}, "
          + ("checkpoint saved)" if saved else "but no checkpoint was saved)"))


def _strip_verbose(argv):
  return [a for a in argv if a != "--verbose"], "--verbose" in argv


def _guarded(fn, verbose: bool, exit_codes) -> None:
  try:
    fn()
  except SystemExit:
    raise
  except BaseException as error:  # noqa: BLE001 - sorted into expected and bugs just below
    code = next((c for kind, c in (exit_codes or {}).items() if isinstance(error, kind)), None)
    if code is None and not is_expected(error):
      raise   # a bug: Python prints the traceback, exit 1
    if verbose:
      traceback.print_exc()
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(code or EXIT_BAD_INPUT)


def is_expected(error: BaseException) -> bool:
  """Bad input rather than a bug (see the module docstring)."""
  if isinstance(error, UserError):
    return True
  if isinstance(error, OSError) and error.filename is not None:
    return True
  return isinstance(error, (ValueError, OSError)) and _raised_here(error)


def _raised_here(error: BaseException) -> bool:
  tb = error.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OURS)


def one_line(error: BaseException) -> str:
  """The error's message on one line (an OSError: the path, what the system said, the fix)."""
  if isinstance(error, OSError) and error.filename is not None:
    message = f"{error.filename}: {error.strerror}: {os_error_fix(error)}"
  else:
    message = str(error)
    # str(KeyError) quotes its message; absl's errors carry escaped newlines.
    if len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":
      message = message[1:-1]
  return " ".join(message.replace("\\n", " ").replace("\\'", "'").split())


# ---- absl flags and ml_collections config files --------------------------------------------

def _parse_absl_flags(argv):
  from absl import flags
  configs = _config_files(argv, flags.FLAGS)
  for name, value in configs:
    _check_config_file(name, value.split(":", 1)[0])
  parsed, unset = _none_overrides(argv, flags.FLAGS)
  try:
    rest = flags.FLAGS(parsed)
  except Exception as error:  # noqa: BLE001 - sorted by _flags_error
    raise _flags_error(error, argv, configs) from error
  for name, path in unset:
    *parents, field = path.split(".")
    node = flags.FLAGS[name].value
    try:
      for parent in parents:
        node = node[parent]
      node[field] = None if field in node else node[field]   # a missing field: KeyError
    except (KeyError, AttributeError, TypeError):
      raise UserError(f"bad command line: --{name}.{path}=None: the config has no field "
                      f"{path!r}", "check the name and its section") from None
  return rest


def _none_overrides(argv, flag_values):
  """ml_collections cannot parse `--config.a.b=None` for a typed field (int("None")): those
  overrides taken out of `argv`, to be set after parsing. (argv without them, [(flag, "a.b")])"""
  from ml_collections.config_flags.config_flags import _ConfigFlag
  names = {name for name, flag in flag_values._flags().items() if isinstance(flag, _ConfigFlag)}
  kept, unset = [], []
  for arg in argv:
    key, eq, value = arg.partition("=")
    name, _, path = key[2:].partition(".")
    if arg.startswith("--") and eq and value == "None" and name in names and path:
      unset.append((name, path))
    else:
      kept.append(arg)
  return kept, unset


def _flags_error(error: BaseException, argv, configs) -> UserError:
  """What went wrong parsing the command line: a flag's value, a config file's get_config, or
  a --config.a.b=value override."""
  from absl import flags
  if isinstance(error, flags.Error):
    if "Error whilst parsing config file" in str(error):
      # ml_collections formats get_config's traceback into the message: keep its last line.
      cause = str(error).replace("\\n", "\n").strip().strip("'\"").splitlines()[-1].strip()
      name, value = next((c for c in configs if c[1] and c[1] in str(error)), ("config", "?"))
      return UserError(f"--{name} {value}: get_config raised {cause}",
                       "fix the config file or its :argument")
    return UserError(f"bad command line: {one_line(error)}", "see --helpshort")
  where = _config_frame(error, [value.split(":", 1)[0] for _, value in configs if value])
  if where:
    return UserError(f"{where}: get_config raised {type(error).__name__}: {one_line(error)}",
                     "fix the config file or its :argument")
  if isinstance(error, (AttributeError, KeyError)):
    return _override_error(error, argv, configs)
  return UserError(f"bad command line: {type(error).__name__}: {one_line(error)}",
                   "see --helpshort")


def _override_error(error: BaseException, argv, configs) -> UserError:
  """A --config.a.b=value naming no field (ml_collections: AttributeError / KeyError)."""
  text = str(error).replace("\\n", "\n").strip("'\"")
  key, _, hint = text.partition("\n")
  key = key.strip("'\"\\")
  overrides = [a.split("=", 1)[0] for a in argv
               if any(a.startswith(f"--{name}.") for name, _ in configs)]
  named = [o for o in overrides if key in o.split(".")[1:]] or overrides
  return UserError(f"bad command line: {', '.join(named) or 'a --config override'}: the "
                   f"config has no field {key!r}", one_line(hint) or
                   "check the name and its section")


def _config_files(argv, flag_values):
  """(flag name, value) of each ml_collections config-file flag on the command line (the
  value is FILE or FILE:ARGUMENT)."""
  from ml_collections.config_flags.config_flags import ConfigFileFlagParser
  names = {name for name, flag in flag_values._flags().items()
           if isinstance(flag.parser, ConfigFileFlagParser)}
  found = []
  for i, arg in enumerate(argv):
    name, eq, value = arg.lstrip("-").partition("=")
    if arg.startswith("--") and name in names:
      found.append((name, value if eq else (argv[i + 1] if i + 1 < len(argv) else "")))
  return found


def _check_config_file(name: str, path: str) -> None:
  """A missing or uncompilable --config file, named with the line, before ml_collections turns
  it into a traceback."""
  file = pathlib.Path(path)
  if not file.is_file():
    raise UserError(f"--{name} {path} does not exist", "give the path of a config file")
  try:
    tree = ast.parse(file.read_bytes(), str(file))
  except SyntaxError as error:
    raise UserError(f"--{name} {path}:{error.lineno}: {error.msg}",
                    "fix the config file") from None
  if not _binds(tree, "get_config"):   # ml_collections would blame the --config.* overrides
    raise UserError(f"--{name} {path} defines no get_config",
                    "define get_config(arg=None) returning the config (see "
                    "experiments/configs/llama3_debug.py)")


def _binds(tree: ast.Module, name: str) -> bool:
  """Whether the module may bind `name` (a def, an assignment, an import, a star import)."""
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
      return True
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id == name:
      return True
    if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
        (a.asname or a.name) in (name, "*") for a in node.names):
      return True
  return False


def _config_frame(error: BaseException, paths) -> str | None:
  """`file:line` of the innermost frame of `error` in one of the config files."""
  wanted = {str(pathlib.Path(p).resolve()) for p in paths}
  where, tb = None, error.__traceback__
  while tb is not None:
    file = str(pathlib.Path(tb.tb_frame.f_code.co_filename).resolve())
    if file in wanted:
      where = f"--config {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
    tb = tb.tb_next
  return where
