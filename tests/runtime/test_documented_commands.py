"""Every command line the launchers' docstrings show (and the README's and docs/') parses
against the launcher's own flags: a renamed or misspelt flag (`--log-samples` for
`--log_samples`) fails here, not in a user's terminal. Parsing only (tests/runtime/parse_only.py):
what the commands then do is other tests' business.
"""

import ast
import collections
import concurrent.futures
import json
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
_COMMAND = re.compile(r"python -m (experiments\.[a-z_]\w*)(.*)")   # not a placeholder: .X


def command_lines(text: str, markdown: bool = False) -> list[tuple[str, list[str]]]:
  """(module, argv) of each `python -m experiments.X ...` in `text` (in markdown: its code
  blocks and inline code): backslash continuations joined, `# comments` dropped, a shell's `|`,
  `&&`, `;` or `>` ending it, `[--flag]` (an optional flag) read as the flag, `...` dropped."""
  span = r"(?<!`)`([^`\n]+)`(?!`)"   # inline code, not a fence
  inline = [s for s in re.findall(span, text) if "python -m experiments." in s]
  text = re.sub(span, "", text)
  if markdown:   # only what is in fenced code blocks
    text = "\n".join(text.split("```")[1::2])
  found, pending = [], ""
  for line in [*inline, *text.splitlines()]:
    line = (pending + " " + line.strip()) if pending else line.strip()
    if line.endswith("\\"):
      pending = line[:-1]
      continue
    pending = ""
    match = _COMMAND.search(line)
    if match is None:
      continue
    words = shlex.split(match.group(2), comments=True)
    for i, word in enumerate(words):
      if word in ("|", "&&", ";", ">", "2>&1"):
        words = words[:i]
        break
    words = [w[1:-1] if w.startswith("[-") and w.endswith("]") else w for w in words]
    found.append((match.group(1), [w for w in words if w != "..."]))
  return found


def documented() -> list[tuple[str, str, list[str]]]:
  """(where, module, argv) of every documented command line."""
  texts = [(p, ast.get_docstring(ast.parse(p.read_text())) or "", False)
           for p in sorted((ROOT / "experiments").rglob("*.py"))]
  texts += [(p, p.read_text(), True)
            for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]]
  return [(str(path.relative_to(ROOT)), module, argv) for path, text, markdown in texts
          for module, argv in command_lines(text, markdown)]


def parse(commands: dict[str, list[list[str]]], env) -> dict[str, list]:
  """Per launcher module, the parse result of each of its command lines (one process each)."""
  def one(module):
    result = subprocess.run(
        [sys.executable, "-m", "tests.runtime.parse_only", module, json.dumps(commands[module])],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    return dict(zip(commands, pool.map(one, commands)))


def test_command_lines_are_read_as_a_shell_would():
  text = """
  python -m experiments.export_hf --checkpoint w --out /tmp/hf [--averaged]   # a comment
  python -m launch.local --processes 2 -- \\
      python -m experiments.generate --prompt "The history of" --top-p 0.95
  RAY_ADDRESS=h:1 python -m experiments.curate --input a --out b | tee log
  The default run's model (`python -m experiments.pretrain --workdir w`, 400 steps); 
  python -m benchmarks.x is another package, and each process runs `python -m experiments.X`
  """
  assert command_lines(text) == [
      ("experiments.pretrain", ["--workdir", "w"]),
      ("experiments.export_hf", ["--checkpoint", "w", "--out", "/tmp/hf", "--averaged"]),
      ("experiments.generate", ["--prompt", "The history of", "--top-p", "0.95"]),
      ("experiments.curate", ["--input", "a", "--out", "b"])]
  markdown = "`python -m experiments.plan` runs\npython -m experiments.demo\n```\n" \
             "$ python -m experiments.sft --workdir w\n```\n"
  assert command_lines(markdown, markdown=True) == [
      ("experiments.plan", []), ("experiments.sft", ["--workdir", "w"])]


@pytest.mark.slow
def test_every_documented_command_line_parses(job_env):
  lines = documented()
  assert len(lines) >= 60 and {m for _, m, _ in lines} >= {
      f"experiments.{p.stem}" for p in (ROOT / "experiments").glob("*.py")
      if not p.stem.startswith("_")}   # every launcher shows how it is run
  # Known-bad lines prove the check can fail, for absl and argparse launchers alike.
  bad = [("(test)", "experiments.evaluate", ["--log-samples", "s.jsonl"]),
         ("(test)", "experiments.pretrain", ["--config.train.stepz=3"]),
         ("(test)", "experiments.plan", ["--nosuch", "8"])]
  commands = collections.defaultdict(list)
  for _, module, argv in lines + bad:
    commands[module].append(argv)
  results = parse(dict(commands), job_env)
  seen = collections.Counter()
  failures = []
  for where, module, argv in lines + bad:
    error = results[module][seen[module]]
    seen[module] += 1
    if where == "(test)":
      assert error is not None, f"{module} {argv} should not parse"
    elif error is not None:
      failures.append(f"{where}: python -m {module} {shlex.join(argv)}: {error}")
  assert not failures, "\n".join(failures)
