"""Bad input, said where it is found: `UserError(what, fix)`, and checks of paths a job writes.

    raise UserError(f"--out {out} exists", "pass --overwrite to replace it")
    workdir = writable_dir(workdir, "--workdir")     # made if missing, or a UserError

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
  try:
    path.mkdir(parents=True, exist_ok=True)
    # Creating a file is the only sure test (mode bits lie on read-only mounts and for root).
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
      pass
  except OSError as error:
    raise UserError(f"{what} {path} cannot be written ({error.strerror})",
                    os_error_fix(error)) from error
  return path


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
