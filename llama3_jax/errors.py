"""Bad input, said where it is found: `UserError(what, fix)`, and checks of paths a job writes.

    raise UserError(f"--out {out} exists", "pass --overwrite to replace it")
    workdir = writable_dir(workdir, "--workdir")     # made if missing, or a UserError
    check_apart(out, [("--checkpoint", ckpt)])        # --out neither is, holds nor lies in it
    check_new(out, "--out", overwrite=args.overwrite) # an existing --out needs --overwrite
    at_least(args.samples, 1, "--samples")           # 0 or negatives refused, not replaced

A launcher run through llama3_jax/cli.py prints a UserError as one line on stderr,
`error: <what>: <fix>`, and exits 2. It is a ValueError, so code and tests that catch
ValueError for bad input keep working.
"""

import errno
import os
import pathlib
import tempfile


class UserError(ValueError):
  """Bad input (a flag, a config field, a file) and how to fix it; never a bug."""

  def __init__(self, what: str, fix: str = ""):
    self.what, self.fix = what, fix
    super().__init__(f"{what}: {fix}" if fix else what)


# What to do when the filesystem refuses a path the user gave (by errno).
_OS_FIXES = {
    errno.EROFS: "the file system is read-only; choose a writable path",
    errno.EACCES: "permission denied; choose a path you can write, or fix its permissions",
    errno.EPERM: "the file system refuses it (read-only, or not yours); choose a writable path",
    errno.ENOTDIR: "a part of the path is a file, not a directory; choose another path",
    errno.EEXIST: "it exists and is not a directory; choose another path",
    errno.ENOSPC: "the disk is full; free space or choose another path",
    errno.ENOENT: "no such file or directory; check the path",
    errno.EISDIR: "it is a directory; give a file",
}


def os_error_fix(error: OSError) -> str:
  return _OS_FIXES.get(error.errno, error.strerror or "check the path")


def writable_dir(path, what: str) -> pathlib.Path:
  """`path` made if missing (parents too) and proven writable, before a job spends time: a
  file, a directory under a file, a read-only or full file system is a UserError naming `what`
  (e.g. "--workdir") and the path."""
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    raise UserError(f"{what} {path} is a file, not a directory", "choose a directory path")
  _try_writing_in(path, path, what)
  return path


def _try_writing_in(directory: pathlib.Path, path: pathlib.Path, what: str) -> None:
  try:
    directory.mkdir(parents=True, exist_ok=True)
    # Creating a file is the only sure test (mode bits lie on read-only mounts and for root).
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
      pass
  except OSError as error:
    raise UserError(f"{what} {path} cannot be written ({error.strerror})",
                    os_error_fix(error)) from error


def check_file(path, what: str) -> pathlib.Path:
  """`path` is an existing regular file, or a UserError naming `what`."""
  path = pathlib.Path(path)
  if not path.exists():
    raise UserError(f"{what} {path} does not exist", "check the path")
  if not path.is_file():
    raise UserError(f"{what} {path} is not a file", "give a file")
  if not os.access(path, os.R_OK):
    raise UserError(f"{what} {path} cannot be read", "fix its permissions")
  return path


def writable_file(path, what: str) -> pathlib.Path:
  """`path` can be written as a file, checked before the work whose result it will hold: not a
  directory, its directory made if missing and proven writable (a UserError naming `what`)."""
  path = pathlib.Path(path)
  if path.is_dir():
    raise UserError(f"{what} {path} is a directory", "give the path of a file")
  _try_writing_in(path.parent, path, what)
  return path


def check_new(path, what: str, overwrite: bool = False, flag: str = "--overwrite") -> None:
  """An existing file or non-empty directory at `path` is refused unless `overwrite`."""
  path = pathlib.Path(path)
  if _occupied(path) and not overwrite:
    raise UserError(f"{what} {path} exists" + ("" if path.is_file() else " and is not empty"),
                    f"pass {flag} to replace it, or choose another {what}")


def check_apart(out, inputs, what: str = "--out", *, replaceable=None) -> None:
  """`out` neither is, holds, nor lies inside any input: writing there would replace, delete or
  read back what the job reads. `inputs`: (name, path) pairs, None paths skipped; symlinks are
  followed. `replaceable(path) -> bool` lets `out` lie directly in an input directory, a new name
  or an earlier output of the same launcher (export_hf's default RUN/hf; never deeper, as in
  RUN/checkpoints/<step>, nor over another entry, as RUN/logs)."""
  out_path = _real(out)
  fix = f"choose an {what} outside every input"
  for name, path in inputs:
    if path is None or str(path) == "":
      continue
    input_path = _real(path)
    if out_path == input_path:
      raise UserError(f"{what} {out} is the input {name} {path}", fix)
    if out_path in input_path.parents:
      raise UserError(f"{what} {out} holds the input {name} {path}", fix)
    if input_path in out_path.parents and not (
        replaceable is not None and out_path.parent == input_path
        and (not _occupied(out_path) or replaceable(out_path))):
      raise UserError(f"{what} {out} lies inside the input {name} {path}", fix)


def with_run(name: str, path) -> list:
  """[(name, path)], plus the training workdir where `path` is one of its checkpoint steps
  (WORKDIR/checkpoints/<step>): an output must spare the whole run, metrics and logs too."""
  if path is None:
    return []
  step = pathlib.Path(path)
  inputs = [(name, path)]
  if step.name.isdigit() and step.parent.name == "checkpoints":
    inputs.append((f"{name}'s run", step.parent.parent))
  return inputs


def at_least(value, minimum, what: str, fix: str = "") -> None:
  """A count or size below `minimum` is refused, never replaced by a default."""
  if value is not None and value < minimum:
    raise UserError(f"{what}={value} must be >= {minimum}", fix or f"give {what} >= {minimum}")


def _real(path) -> pathlib.Path:
  return pathlib.Path(os.path.expanduser(str(path))).resolve()


def _occupied(path: pathlib.Path) -> bool:
  """A file, or a directory with something in it."""
  path = pathlib.Path(path)
  return path.is_file() or (path.is_dir() and any(path.iterdir()))
