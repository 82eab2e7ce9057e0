"""The house's arrows point down: no import cycle between packages or files, and nothing below
post-training imports it (the layer rule: llama3_jax/__init__.py).

Imports are read from the source (every `import`, also inside functions: a lazy import is still
an arrow), so the test needs no JAX and runs in a second.
"""

import ast
import collections
import pathlib

import llama3_jax

ROOT = pathlib.Path(llama3_jax.__file__).parent


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
  """module -> the project modules it imports (`from pkg import submodule` is an arrow to the
  submodule, not to the package's __init__)."""
  files = {_module_name(p): p for p in ROOT.rglob("*.py")}

  def resolve(name: str) -> str | None:
    while name and name not in files:
      name = name.rpartition(".")[0]
    return name or None

  graph = collections.defaultdict(set)
  for module, path in files.items():
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")
          base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
        submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
        targets = submodules if len(submodules) == len(node.names) else [base, *submodules]
      else:
        continue
      for target in targets:
        if target.startswith("llama3_jax"):
          resolved = resolve(target)
          if resolved and resolved != module and resolved != "llama3_jax":
            graph[module].add(resolved)
  return graph


def _package(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else parts[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one node (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(graph.get(node, ())):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for node in sorted(set(graph) | {n for targets in graph.values() for n in targets}):
    if node not in index:
      visit(node)
  return found


def package_graph(graph) -> dict[str, set[str]]:
  packages = collections.defaultdict(set)
  for module, targets in graph.items():
    for target in targets:
      if _package(module) != _package(target):
        packages[_package(module)].add(_package(target))
  return packages


def test_no_import_cycle_between_files():
  assert cycles(import_graph()) == []


def test_no_import_cycle_between_packages():
  graph = import_graph()
  found = cycles(package_graph(graph))
  arrows = [f"{a} -> {b}" for a, targets in sorted(graph.items()) for b in sorted(targets)
            if any(_package(a) in c and _package(b) in c and _package(a) != _package(b)
                   for c in found)]
  assert found == [], "\n".join(arrows)


def test_nothing_below_posttrain_imports_it():
  above = {"posttrain", "cli", "hf"}   # orchestration, the command line, the public shortcut
  wrong = [f"{a} -> {b}" for a, targets in sorted(import_graph().items()) for b in targets
           if _package(b) == "posttrain" and _package(a) not in above]
  assert wrong == []


def test_cycles_are_found():
  """The checker itself: a planted cycle is reported."""
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert package_graph({"llama3_jax.x.f": {"llama3_jax.y.g"}}) == {"x": {"y"}}


def test_packages_import_only_the_layers_below_them():
  """The order llama3_jax/__init__.py writes down is the order the imports keep."""
  order = []
  for line in llama3_jax.__doc__.splitlines():
    if line.startswith("    ") and not line.startswith("     "):   # "    name[, name]  job"
      names = [w.strip(",") for w in line.split()[:2]]
      order += [n for n in names if (ROOT / n).is_dir() or (ROOT / f"{n}.py").exists()]
  rank = {name: i for i, name in enumerate(order)}   # "errors, cli": cli is the higher
  packages = package_graph(import_graph())
  assert set(packages) | {t for ts in packages.values() for t in ts} <= set(rank), order
  upward = [f"{a} -> {b}" for a, targets in sorted(packages.items()) for b in sorted(targets)
            if rank[b] > rank[a]]
  assert upward == []
