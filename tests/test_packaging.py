"""The library installs and imports without the extras; a missing extra is named in one sentence.

This is checked by import isolation, not by building a virtualenv (which
costs about a minute of network and disk per run; measured by hand in the README "Install"
notes): in a fresh interpreter, every package of the extras is made unimportable
(`sys.modules[name] = None`, so `import tensorflow` raises ImportError as it would where it is
not installed), then the library modules are imported and the README's library examples run;
afterwards none of those packages may be in `sys.modules`.
"""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import doc_blocks  # tests/doc_blocks.py
from fisher_jax import _extras

REPO = doc_blocks.REPO
OPTIONAL = sorted({m for modules in _extras.MODULES.values() for m in modules})
# Made unimportable: the extras' packages but absl and scipy, which jax and optax themselves
# import (the core install brings them).
ABSENT = sorted(set(OPTIONAL) - {'absl', 'scipy'})
LIBRARY = ('fisher_jax', 'fisher_jax.curvature', 'fisher_jax.regularizers', 'fisher_jax.models',
           'fisher_jax.losses')
# What a library example may import: the core install and the standard library.
_CORE_IMPORTS = ('jax', 'flax', 'optax', 'numpy', 'functools', 'math', 'itertools') + LIBRARY


def _is_library_example(block) -> bool:
  for name in block.imports():
    if not any(name == allowed or name.startswith(allowed + '.') for allowed in _CORE_IMPORTS):
      return False
  return True


def _python(code: str, tmp_path, **kwargs):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, 'tests')]),
             JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600, **kwargs)


def _block_optional_packages(names) -> str:
  return f'import sys\nfor _name in {names!r}:\n  sys.modules[_name] = None\n'


def test_library_and_readme_examples_need_no_extra(tmp_path):
  examples = [b for b in doc_blocks.python_blocks('README.md') if _is_library_example(b)]
  sources = ' '.join(b.source for b in examples)
  assert 'curvature.fisher_trace' in sources and 'add_penalty_gradient' in sources, (
      'the README curvature and optax examples should import only the core install')
  code = _block_optional_packages(ABSENT) + textwrap.dedent(f'''
      import importlib, json
      for module in {list(LIBRARY)!r}:
        importlib.import_module(module)
      import doc_blocks
      namespace = {{'__name__': '__main__'}}
      for line in {[b.line for b in examples]!r}:
        block, = [b for b in doc_blocks.python_blocks('README.md') if b.line == line]
        exec(block.compile(), namespace)
      loaded = sorted({{m for m, v in sys.modules.items() if v is not None
                        and m.split('.')[0] in {ABSENT!r}}})
      print(json.dumps(loaded))
      ''')
  result = _python(code, tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize('module,extra', [('fisher_jax.training.loop', 'train'),
                                          ('fisher_jax.training.writers', 'train'),
                                          ('fisher_jax.data', 'train'),
                                          ('fisher_jax.analysis', 'analysis')])
def test_missing_extra_is_named_in_one_sentence(module, extra, tmp_path):
  absent = _extras.MODULES[extra][1]
  result = _python(_block_optional_packages([absent]) + f'import {module}', tmp_path)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('ImportError: ') and last.count('. ') == 0, last
  assert f"'{extra}' extra" in last and f"pip install 'fisher_jax[{extra}]'" in last, last
  assert absent in last, last


def test_main_without_the_train_extra_exits_with_one_sentence(tmp_path):
  code = (_block_optional_packages(['tensorflow_datasets']) +
          "import runpy\nrunpy.run_module('fisher_jax.main', run_name='__main__')")
  result = _python(code, tmp_path)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      "fisher_jax: python -m fisher_jax.main needs fisher_jax's 'train' extra, which is not "
      "installed (no module tensorflow_datasets): pip install 'fisher_jax[train]' (in a clone: "
      "pip install -e '.[train]')."]


def _normalize(distribution: str) -> str:
  return re.sub(r'[-_.]+', '-', distribution).lower()


def test_extras_modules_match_pyproject():
  tomllib = pytest.importorskip('tomllib')
  from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    extras = tomllib.load(f)['project']['optional-dependencies']
  provided = {}  # distribution -> its top-level modules
  for module, distributions in importlib.metadata.packages_distributions().items():
    for distribution in distributions:
      provided.setdefault(_normalize(distribution), set()).add(module)
  for extra, modules in _extras.MODULES.items():
    requirements = [Requirement(r) for r in extras[extra]]
    names = [_normalize(r.name) for r in requirements if not r.marker or r.marker.evaluate()]
    from_pyproject = set().union(*(provided[n] for n in names)) & set(OPTIONAL)
    assert from_pyproject == set(modules), (extra, sorted(from_pyproject), modules)
  assert set(extras['all']) == {'fisher_jax[train,analysis,tune]'}
  assert 'fisher_jax[train,analysis,tune]' in extras['test']
