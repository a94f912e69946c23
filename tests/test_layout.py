"""The package layout: no import cycles, every module named in docs/design.md, the layering.

The import graph is read from the source with `ast` (no module is imported): an edge A -> B for
every `import fisher_jax.b`, `from fisher_jax.x import y` (to the submodule `fisher_jax.x.y` when
there is one, else to `fisher_jax.x`) and `from fisher_jax import y`, wherever the statement is
(a function-level import is a dependency too). The graph has no cycle.
"""

import ast
import json
import os
import re
import subprocess
import sys
from typing import Dict, List, Optional, Set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'fisher_jax'
# The code docs/design.md's "Layout" names file by file.
LISTED_DIRS = ('fisher_jax', 'experiments', 'benchmarks', 'configs')
# The library: what `pip install fisher_jax` alone must run (jax, flax, optax, numpy).
LIBRARY = ('fisher_jax.curvature', 'fisher_jax.regularizers', 'fisher_jax.models',
           'fisher_jax.losses')
# The only code that may read a whole config (settings.read); every other part receives its own
# typed settings.
WHOLE_CONFIG_READERS = ('fisher_jax.training', 'fisher_jax.main', 'fisher_jax.data')



def _python_files(top: str) -> List[str]:
  paths = []
  for directory, subdirs, files in os.walk(os.path.join(REPO, top)):
    subdirs[:] = sorted(d for d in subdirs if d != '__pycache__' and not d.startswith('.'))
    paths += [os.path.relpath(os.path.join(directory, f), REPO).replace(os.sep, '/')
              for f in sorted(files) if f.endswith('.py')]
  return paths


def _module_name(path: str) -> str:
  name = path[:-len('.py')].replace('/', '.')
  return name[:-len('.__init__')] if name.endswith('.__init__') else name


def _modules() -> Dict[str, str]:
  """fisher_jax module name -> its path."""
  return {_module_name(p): p for p in _python_files(PACKAGE)}


def _imports(path: str, modules) -> Set[str]:
  """The fisher_jax modules the file at `path` imports (anywhere in it)."""
  with open(os.path.join(REPO, path)) as f:
    tree = ast.parse(f.read(), filename=path)
  this = _module_name(path)
  package = this if path.endswith('__init__.py') else this.rpartition('.')[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        parent = '.'.join(parts[:len(parts) - node.level + 1])
        base = f'{parent}.{base}' if base else parent
      for alias in node.names:
        sub = f'{base}.{alias.name}'
        found.add(sub if sub in modules else base)
  return {m for m in found if m in modules and m != this}


def _graph() -> Dict[str, Set[str]]:
  modules = _modules()
  return {name: _imports(path, modules) for name, path in modules.items()}


def _find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
  """A cycle of `graph` as [a, b, ..., a], or None (iterative depth-first search)."""
  state = {}  # module -> 1 on the current path, 2 done
  for root in sorted(graph):
    if root in state:
      continue
    path, stack = [root], [iter(sorted(graph[root]))]
    state[root] = 1
    while stack:
      child = next(stack[-1], None)
      if child is None:
        state[path.pop()] = 2
        stack.pop()
      elif state.get(child) == 1:
        return path[path.index(child):] + [child]
      elif child not in state:
        state[child] = 1
        path.append(child)
        stack.append(iter(sorted(graph[child])))
  return None


def test_the_cycle_finder_finds_a_cycle():
  assert _find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
  assert _find_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_the_import_graph_sees_every_form_of_import():
  graph = _graph()
  assert 'fisher_jax.training.loop' not in graph['fisher_jax.training']  # Lazy (PEP 562).
  assert 'fisher_jax.training.cadence' in graph['fisher_jax.training.optim']  # from x.y import z
  assert 'fisher_jax.regularizers' in graph['fisher_jax.training.optim']  # from x import package
  assert 'fisher_jax.rundir.lock' in graph['fisher_jax.rundir']  # from x.y import names


def test_no_import_cycles_among_fisher_jax_modules():
  cycle = _find_cycle(_graph())
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_the_library_imports_nothing_of_the_trainer_or_the_study():
  graph = _graph()
  for module, imported in graph.items():
    if any(module == lib or module.startswith(lib + '.') for lib in LIBRARY):
      outside = sorted(m for m in imported if m != 'fisher_jax' and not any(
          m == lib or m.startswith(lib + '.') for lib in LIBRARY))
      assert not outside, f'{module} (library) imports {outside}'


# The groups of docs/design.md in their order: a module imports only its own group and those
# before it. The package's `__init__` and `_extras` (which extra is missing) serve every group.
GROUPS = (
    ('shared', ('fisher_jax', 'fisher_jax._extras')),
    ('library', LIBRARY),
    ('run directory', ('fisher_jax.rundir',)),
    ('trainer', ('fisher_jax.training', 'fisher_jax.data', 'fisher_jax.main')),
    ('analysis', ('fisher_jax.analysis',)),
    ('search', ('fisher_jax.pruners',)),
)


def _group(module: str) -> int:
  ranks = [(rank, len(prefix)) for rank, (_, prefixes) in enumerate(GROUPS)
           for prefix in prefixes if module == prefix or module.startswith(prefix + '.')]
  assert ranks, f'{module} is in no group of docs/design.md; add it to GROUPS'
  return max(ranks, key=lambda r: r[1])[0]  # The longest matching prefix.


def test_imports_follow_the_order_of_the_groups():
  graph = _graph()
  backwards = sorted(f'{module} ({GROUPS[_group(module)][0]}) imports {imported} '
                     f'({GROUPS[_group(imported)][0]})'
                     for module, imported_set in graph.items() for imported in imported_set
                     if _group(imported) > _group(module))
  assert not backwards, backwards


def test_only_the_trainer_reads_a_whole_config():
  """`settings.read(config)` is called in the trainer only; other parts get typed settings."""
  modules = _modules()
  readers = []
  for name, path in modules.items():
    with open(os.path.join(REPO, path)) as f:
      tree = ast.parse(f.read())
    aliases = set()  # Local names bound to fisher_jax.training.settings.
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module == 'fisher_jax.training':
        aliases |= {a.asname or a.name for a in node.names if a.name == 'settings'}
      if isinstance(node, ast.ImportFrom) and node.module == 'fisher_jax.training.settings':
        if any(a.name == 'read' for a in node.names):
          readers.append(name)
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and node.attr == 'read'
          and isinstance(node.value, ast.Name) and node.value.id in aliases):
        readers.append(name)
  assert readers, 'the trainer reads the config somewhere: the check would see nothing'
  outside = sorted({r for r in readers if not any(
      r == allowed or r.startswith(allowed + '.') for allowed in WHOLE_CONFIG_READERS)})
  assert not outside, f'{outside} read the whole config; pass them their typed settings'


def _layout_paths() -> Set[str]:
  """The paths docs/design.md's "Layout" section names (its ```text trees)."""
  with open(os.path.join(REPO, 'docs', 'design.md')) as f:
    text = f.read()
  section = re.search(r'^## Layout\n(.*?)(?=^## )', text, re.M | re.S)
  assert section, 'docs/design.md has no "## Layout" section'
  paths = set()
  for block in re.findall(r'```text\n(.*?)```', section.group(1), re.S):
    parents = []  # (indent, directory)
    for line in block.splitlines():
      entry = re.match(r'^( *)([\w.\-]+/|[\w.\-]+\.py)(?:\s{2,}|$)', line)
      if not entry:
        continue
      indent, name = len(entry.group(1)), entry.group(2)
      while parents and parents[-1][0] >= indent:
        parents.pop()
      path = ''.join(d for _, d in parents) + name
      if name.endswith('/'):
        parents.append((indent, name))
      else:
        paths.add(path)
  return paths


def test_design_doc_names_every_module():
  listed = _layout_paths()
  modules = [p for top in LISTED_DIRS for p in _python_files(top)]
  missing = sorted(set(modules) - listed)
  assert not missing, f'docs/design.md "Layout" does not name: {missing}'
  stale = sorted(p for p in listed if not os.path.exists(os.path.join(REPO, p)))
  assert not stale, f'docs/design.md "Layout" names files that do not exist: {stale}'


def test_small_trainer_modules_and_the_library_import_no_tensorflow(tmp_path):
  """`fisher_jax.training` loads `train_and_evaluate` on first use: its small modules (and the
  library, and the run directory) import without TensorFlow, clu, orbax or ml_collections."""
  heavy = ['tensorflow', 'tensorflow_datasets', 'clu', 'orbax', 'ml_collections']
  light = list(LIBRARY) + ['fisher_jax.rundir', 'fisher_jax.training',
                           'fisher_jax.training.cadence', 'fisher_jax.training.fit_stop']
  code = ('import importlib, json, sys\n'
          f'for m in {light!r}:\n'
          '  importlib.import_module(m)\n'
          f'print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))\n')
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1]) == []
