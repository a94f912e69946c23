"""The documentation site's sources agree with the code (the build itself: `make docs`).

`mkdocs build --strict` (`make docs`) fails on a broken link, reference or docstring and on a
failing tutorial cell, but it takes minutes; these tests check in seconds what is most likely
to fall behind: the nav lists every page, the API pages name modules and objects that exist,
the command-line page's tables list every flag `--help` shows, and links that leave docs/ are
rewritten to something the site serves.
"""

import glob
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import types

import pytest
import yaml

from conftest import REPO

DOCS = os.path.join(REPO, 'docs')


def _hooks():
  spec = importlib.util.spec_from_file_location('docs_hooks', os.path.join(DOCS, '_hooks.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


hooks = _hooks()


class _Loader(yaml.SafeLoader):
  """mkdocs.yml's YAML with its `!ENV [NAME, default]` tags read as the default."""


_Loader.add_constructor('!ENV', lambda loader, node: loader.construct_sequence(node)[-1])


def _config():
  with open(os.path.join(REPO, 'mkdocs.yml')) as f:
    return yaml.load(f, Loader=_Loader)  # noqa: S506  (a SafeLoader)


def _nav_files(nav):
  for item in nav:
    if isinstance(item, str):
      yield item
    else:
      for value in item.values():
        yield from ([value] if isinstance(value, str) else _nav_files(value))


def test_the_nav_lists_every_page_and_only_pages_that_exist():
  nav = set(_nav_files(_config()['nav']))
  pages = {os.path.relpath(p, DOCS) for p in glob.glob(os.path.join(DOCS, '**', '*.md'),
                                                        recursive=True)}
  pages |= {os.path.relpath(p, DOCS) for p in glob.glob(os.path.join(DOCS, 'tutorials', '*.py'))}
  generated = {hooks.README_PAGE}
  assert nav - generated <= pages, sorted(nav - generated - pages)
  assert pages <= nav, f'pages missing from mkdocs.yml nav: {sorted(pages - nav)}'


def _api_targets():
  for path in sorted(glob.glob(os.path.join(DOCS, 'api', '*.md'))):
    with open(path) as f:
      for target in re.findall(r'^::: ([\w.]+)', f.read(), re.MULTILINE):
        yield os.path.basename(path), target


def _resolve(target: str):
  """The module or object `target` names, imported as mkdocstrings would find it."""
  parts = target.split('.')
  for i in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module('.'.join(parts[:i]))
    except ModuleNotFoundError:
      continue
    for name in parts[i:]:
      obj = getattr(obj, name)
    return obj
  raise ModuleNotFoundError(target)


@pytest.mark.parametrize('page,target', list(_api_targets()))
def test_api_pages_name_what_exists(page, target):
  obj = _resolve(target)
  if isinstance(obj, types.ModuleType) and hooks.package_exports(target) is not None:
    exports = hooks.package_exports(target)
    assert exports, f'{page}: {target} re-exports nothing to document'
    missing = [n for n in exports if not hasattr(obj, n)]
    assert not missing, (page, missing)
    assert not [n for n in exports if isinstance(getattr(obj, n), types.ModuleType)]


def test_package_exports_reads_re_exports_not_submodules(tmp_path, monkeypatch):
  package = tmp_path / 'pkg'
  package.mkdir()
  (package / '__init__.py').write_text(
      'from pkg import sub\nfrom pkg.sub import public, _private as also_public\n'
      'from other import outside\nCONSTANT = 1\n_HIDDEN = 2\ndef helper():\n  pass\n')
  monkeypatch.setattr(hooks, 'REPO', str(tmp_path))
  assert hooks.package_exports('pkg') == ['public', 'also_public', 'CONSTANT', 'helper']
  assert hooks.package_exports('pkg.sub') is None  # a module, not a package
  expanded = hooks.expand_package_members('::: pkg\n\n::: pkg\n    options:\n      x: 1\n')
  assert expanded.startswith('::: pkg\n    options:\n      members:\n        - public\n')
  assert expanded.endswith('::: pkg\n    options:\n      x: 1\n')  # given options: untouched


def _page(src_uri: str, abs_src_path: str):
  return types.SimpleNamespace(file=types.SimpleNamespace(src_uri=src_uri,
                                                          abs_src_path=abs_src_path))


def test_links_are_resolved_against_the_file_that_holds_them():
  readme = _page(hooks.README_PAGE, os.path.join(REPO, 'README.md'))
  text = ('[data](docs/data.md#label-noise) [x](https://a.b/c.md) [top](#install)\n'
          '```\n[code](docs/data.md)\n```\n[gone](docs/no_such_page.md)')
  assert hooks._rewrite_links(text, readme) == (  # pylint: disable=protected-access
      '[data](data.md#label-noise) [x](https://a.b/c.md) [top](#install)\n'
      '```\n[code](docs/data.md)\n```\n[gone](docs/no_such_page.md)')
  tuning = _page('tuning.md', os.path.join(DOCS, 'tuning.md'))
  assert hooks._rewrite_links(  # pylint: disable=protected-access
      '[s](../configs/spaces.py) [r](../README.md#install) [t](tuning.md)', tuning) == (
          '[s](_repo/configs/spaces.py) [r](readme.md#install) [t](tuning.md)')
  report = _page('cpu_report/report.md', os.path.join(DOCS, 'cpu_report', 'report.md'))
  assert hooks._rewrite_links(  # pylint: disable=protected-access
      '[p](../experiments.md) [c](../../configs/default.py)', report) == (
          '[p](../experiments.md) [c](../_repo/configs/default.py)')


def test_repository_files_linked_from_the_docs_are_served():
  sources = [os.path.join(REPO, 'README.md')] + glob.glob(os.path.join(DOCS, '**', '*.md'),
                                                          recursive=True)
  files = hooks._repository_files(sources)  # pylint: disable=protected-access
  assert all(os.path.isfile(os.path.join(REPO, f)) and not f.startswith('docs' + os.sep)
             for f in files), files


def _help_flags(*command):
  result = subprocess.run([sys.executable, '-m', *command, '--help'], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert '--' in result.stdout, result.stderr[-2000:]  # (absl's --help exits with 1 here)
  return set(re.findall(r'(?<![\w-])--(?:\[no\])?([a-z][\w-]*)', result.stdout))


def test_the_cli_page_names_commands_that_exist():
  with open(os.path.join(DOCS, 'cli.md')) as f:
    modules = hooks._CLI_MARKER.findall(f.read())  # pylint: disable=protected-access
  assert {'fisher_jax.main', 'experiments.run', 'experiments.report', 'experiments.tune'} <= set(
      modules)
  for module in modules:
    assert os.path.isfile(os.path.join(REPO, *module.split('.')) + '.py'), module


@pytest.mark.slow
def test_the_cli_tables_list_every_flag_of_help():
  """An absl command, an argparse command and one with subcommands, against their --help."""
  markdown = ('<!-- cli: fisher_jax.main -->\n\n<!-- cli: experiments.run -->\n\n'
              '<!-- cli: benchmarks.pruning -->\n')
  tables = hooks.fill_cli_tables(markdown).split('\n\n| flag')
  main_table, run_table, pruning_tables = tables[0], tables[1], '| flag'.join(tables[2:])
  for flag in _help_flags('fisher_jax.main') - {'help', 'helpshort', 'helpfull', 'helpxml',
                                                  'only_check_args', 'flagfile', 'undefok'}:
    assert f'`--{flag}`' in main_table, (flag, main_table)
  for flag in _help_flags('experiments.run') - {'help'}:
    assert f'`--{flag}`' in run_table, (flag, run_table)
  for sub in ('sweep', 'replay'):
    for flag in _help_flags('benchmarks.pruning', sub) - {'help'}:
      assert f'`--{flag}`' in pruning_tables, (sub, flag)
  assert 'Subcommand `sweep`' in pruning_tables and 'Subcommand `replay`' in pruning_tables
