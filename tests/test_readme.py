"""The README and docs/ stay true.

- The README is short (<= 300 lines), opens with its two commands, and points nowhere outside
  the repository.
- Every relative link of README.md, docs/*.md, BENCHMARKS.md and CHANGELOG.md names a file that
  exists, and a heading that exists where it has a #fragment.
- Every `python -m experiments.X` / `python -m launch.local` line in the README's code blocks
  runs as written, exit 0 (slow): in a temporary directory that links to the packages (so the
  default `workdirs/` land there), shortened by the flags in SHORT.
- Every `python -m experiments.X ...` that a launcher's or a config's docstring, the README or a
  docs page shows uses flags the launcher defines, and `--config.<path>` fields its config has.
"""

import ast
import importlib.util
import os
import pathlib
import re
import resource
import shlex
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINKED = [README, *DOCS, ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md"]

# Flags appended to the README's commands so that each finishes in seconds: the launchers'
# command lines stay as written, only shorter. A launcher missing here fails the test (say how
# to shorten it).
SHORT = {
    "experiments.pretrain": ["--config.train.steps=2"],
    "experiments.sft": ["--config.train.steps=2"],
    "experiments.dpo": ["--config.train.steps=2"],
    "experiments.reward_model": ["--config.train.steps=2"],
    "experiments.generate": ["--max-new-tokens=8"],
    "experiments.evaluate": [],
    "experiments.plan": [],
    "experiments.inspect_sharding": [],
    "experiments.demo": [],
}
NOT_SHORTENED = ("--dry-run",)   # a dry run trains nothing: nothing to shorten

# The config file each launcher with a `--config` flag reads by default.
DEFAULT_CONFIGS = {
    "pretrain": "llama3_debug", "sft": "sft", "dpo": "dpo", "reward_model": "reward_model",
    "posttrain": "posttrain", "curate": "curation",
}
ANY_LAUNCHER_FLAGS = {"verbose", "help", "helpfull", "flagfile"}   # llama3_jax/cli.py, absl

COMMAND = re.compile(r"python3? -m (experiments\.\w+|launch\.local)\b")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def without_code(text: str) -> str:
  """The text outside fenced code blocks."""
  return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def code_blocks(text: str) -> list[str]:
  """The fenced blocks that are shell commands (not Python, not output listings)."""
  blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
  return [body for lang, body in blocks if lang in ("", "bash", "sh", "shell")]


def logical_lines(text: str) -> list[str]:
  return text.replace("\\\n", " ").splitlines()


def slug(heading: str) -> str:
  """GitHub's anchor for a heading."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
  seen, out = {}, set()
  for heading in re.findall(r"^#+ (.*)$", without_code(path.read_text()), flags=re.M):
    s = slug(heading)
    out.add(s if s not in seen else f"{s}-{seen[s]}")
    seen[s] = seen.get(s, 0) + 1
  return out


# ---- (a) the README: short, its two commands first, inside the repository ------------------

def test_readme_is_short_and_stays_inside_the_repository():
  text = README.read_text()
  assert len(text.splitlines()) <= 300, f"README.md has {len(text.splitlines())} lines (<= 300)"
  assert "../" not in text, "README.md points outside the repository (../)"
  for target in LINK.findall(without_code(text)):
    assert not target.startswith(("/", "file:")), f"README.md links to {target}"
  first, second = code_blocks(text)[:2]
  assert "pip install -r requirements.txt" in first and "-m experiments.pretrain" in first
  assert "-m pytest" in second


# ---- (b) links resolve ---------------------------------------------------------------------

@pytest.mark.parametrize("path", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
  problems = []
  for target in LINK.findall(without_code(path.read_text())):
    if re.match(r"[a-z]+:", target):   # https:, mailto:
      continue
    file, _, fragment = target.partition("#")
    linked = (path.parent / file).resolve() if file else path
    if not linked.exists():
      problems.append(f"{target}: no such file")
    elif not linked.is_relative_to(ROOT):
      problems.append(f"{target}: outside the repository")
    elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
      problems.append(f"{target}: no heading #{fragment} in {linked.relative_to(ROOT)}")
  assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)


# ---- (c) the README's commands run ---------------------------------------------------------

def readme_commands() -> list[list[str]]:
  """Each `python -m` command of the README's code blocks as argv, in the README's order
  (later ones read what earlier ones wrote, e.g. workdirs/pretrain), once each."""
  commands = []
  for block in code_blocks(README.read_text()):
    for line in logical_lines(block):
      for part in line.split("&&"):
        if COMMAND.search(part):
          argv = shlex.split(part[part.index("python"):], comments=True)
          if argv not in commands:
            commands.append(argv)
  return commands


def shortened(argv: list[str]) -> list[str]:
  """argv run by this interpreter, with the launcher's short-run flags appended."""
  module, args = argv[2], argv[3:]
  if module == "launch.local":
    split = args.index("--")   # the job's command keeps its `python` (the PATH's, as written)
    return [sys.executable, "-m", module, *args[:split + 1], "python",
            *shortened(args[split + 1:])[1:]]
  assert module in SHORT, (f"tests/test_readme.py: add the flags that make `python -m {module}` "
                           "finish in seconds to SHORT")
  extra = [] if any(flag in args for flag in NOT_SHORTENED) else SHORT[module]
  return [sys.executable, "-m", module, *args, *extra]


def children_cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def launcher_env() -> dict:
  """The environment a user runs the README in: this interpreter's `python` first on PATH, and
  XLA's defaults, without tests/conftest.py's 8 fake devices (the launchers choose their
  devices) and compile-fast, run-slow LLVM level 0 (evaluation runs 2-3x slower at it)."""
  conftest_flags = ("--xla_force_host_platform_device_count", "--xla_backend_optimization_level")
  env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}
  xla_flags = [f for f in env.pop("XLA_FLAGS", "").split() if not f.startswith(conftest_flags)]
  if xla_flags:
    env["XLA_FLAGS"] = " ".join(xla_flags)
  return env


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
  commands = readme_commands()
  assert len(commands) >= 5, f"found only {commands}"
  for argv in commands:
    absolute = [a for a in argv[1:] if a.startswith("/")]
    assert not absolute, (f"{shlex.join(argv)}: use relative paths in the README's commands "
                          "(this test runs them in a temporary directory)")
  # The packages linked, not copied: `python -m experiments.X` and `--config experiments/...`
  # resolve from here, and the launchers' default workdirs/ land here.
  for name in ("experiments", "launch", "llama3_jax"):
    (tmp_path / name).symlink_to(ROOT / name)
  env = launcher_env()
  for argv in commands:
    run = shortened(argv)
    start, cpu = time.perf_counter(), children_cpu_s()
    result = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    print(f"{time.perf_counter() - start:6.1f} s wall {children_cpu_s() - cpu:6.1f} CPU-s  "
          f"{shlex.join(argv)}")
    assert result.returncode == 0, (f"{shlex.join(run[1:])} exited {result.returncode}:\n"
                                    + (result.stdout + result.stderr)[-3000:])


# ---- (d) the commands the launchers' docstrings and the docs show use real flags -----------

def launcher_path(module: str) -> pathlib.Path:
  return ROOT / (module.replace(".", "/") + ".py")


def defined_flags(module: str) -> set[str]:
  """The flags a launcher defines (absl or argparse), read from its source and the
  experiments/_*.py helpers it imports; "config" where it takes a config file."""
  path = launcher_path(module)
  sources = [path.read_text()]
  for helper in re.findall(r"from experiments import (_\w+)|from experiments\.(_\w+) import",
                           sources[0]):
    sources.append((ROOT / "experiments" / f"{''.join(helper)}.py").read_text())
  names = set()
  for source in sources:
    names.update(re.findall(r"DEFINE_\w+\(\s*\"([\w-]+)\"", source))
    for call in re.findall(r"add_argument\(([^)]*)\)", source):
      names.update(n[2:] for n in re.findall(r"\"(--[\w-]+)\"", call))
  return names


def load_config(spec: str):
  """A config file's ConfigDict, `--config FILE[:arg]` as the launchers read it."""
  file, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("readme_config", ROOT / file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def flag_problems(argv: list[str]) -> list[str]:
  module, args = argv[2], argv[3:]
  if module == "launch.local":
    args = args[:args.index("--")] if "--" in args else args
  if not launcher_path(module).exists():
    return [f"no launcher {module}"]
  names, problems = defined_flags(module), []
  config = None
  for i, arg in enumerate(args):
    if not arg.startswith("--") or arg == "--":
      continue
    name = arg[2:].split("=", 1)[0]
    if name.startswith("config."):
      if "config" not in names:
        problems.append(f"{arg}: {module} takes no config")
        continue
      if config is None:
        given = [a.split("=", 1)[1] if "=" in a else args[j + 1]
                 for j, a in enumerate(args) if a == "--config" or a.startswith("--config=")]
        stem = module.rsplit(".", 1)[1]
        assert given or stem in DEFAULT_CONFIGS, f"add {stem}'s default config to DEFAULT_CONFIGS"
        spec = given[0] if given else f"experiments/configs/{DEFAULT_CONFIGS[stem]}.py"
        if not (ROOT / spec.partition(":")[0]).exists():
          continue   # reported below, as a missing config file
        config = load_config(spec)
      node = config
      for part in name.split(".")[1:]:
        if not hasattr(node, "keys") or part not in node:
          problems.append(f"{arg}: no field {name[7:]} in the config")
          break
        node = node[part]
    elif name == "config":
      value = arg.split("=", 1)[1] if "=" in arg else args[i + 1]
      if not (ROOT / value.partition(":")[0]).exists():
        problems.append(f"{arg} {value}: no such config file")
    elif name not in names | ANY_LAUNCHER_FLAGS and not (
        name.startswith("no") and name[2:] in names):
      problems.append(f"{arg}: {module} defines no --{name}")
  return problems


def shown_commands(text: str) -> list[list[str]]:
  """`python -m experiments.X ...` as a text shows it: to the end of its line (backslash
  continuations joined), a backtick, a comment, `&&` or `;`."""
  commands = []
  for line in logical_lines(text):
    for match in COMMAND.finditer(line):
      rest = re.split(r"`|\s#|&&|;", line[match.start():])[0]
      commands.append(shlex.split(rest))
  return commands


def docstring_sources() -> list[tuple[str, str]]:
  files = [*sorted((ROOT / "experiments").glob("[!_]*.py")),
           *sorted((ROOT / "experiments" / "configs").glob("[!_]*.py")), ROOT / "launch/local.py"]
  out = []
  for file in files:
    doc = ast.get_docstring(ast.parse(file.read_text()))
    if doc:
      out.append((str(file.relative_to(ROOT)), doc))
  return out + [(str(p.relative_to(ROOT)), p.read_text()) for p in (README, *DOCS)]


SHOWN = docstring_sources()


@pytest.mark.parametrize("where, text", SHOWN, ids=[where for where, _ in SHOWN])
def test_shown_commands_use_defined_flags(where, text):
  problems = [f"`{shlex.join(argv)}`: {p}" for argv in shown_commands(text)
              for p in flag_problems(argv)]
  assert not problems, f"{where}:\n" + "\n".join(problems)
