"""mkdocs hooks of the documentation site (mkdocs.yml `hooks:`).

* README.md becomes the page `readme.md` (it lives at the repository root, outside docs/).
* Links that leave docs/ keep working. The pages are written for GitHub, where a link such as
  `../configs/spaces.py` (from docs/tuning.md) or `docs/data.md` (from README.md) is relative to
  the file. Each page's links are resolved against the page's own file: a target under docs/
  becomes the site's page or file, and a repository file outside docs/ is served by the site
  under `_repo/<its path>` (a copy, made at build time). A link to a file that does not exist
  is left as written, so the strict build fails on it.
* On the API pages (docs/api/), a `::: package` line without options documents the names the
  package's `__init__.py` re-exports from its own modules (and defines), as if listed in
  `__all__`: mkdocstrings shows an imported name only when `__all__` lists it.
* An Args entry naming several parameters ('a, b: what both are'), which griffe's Google
  parser reads as one unknown parameter, is reported at INFO level instead of failing the
  strict build; any other unknown parameter still fails it.
* `<!-- cli: MODULE -->` lines of docs/cli.md become the flag table of `python -m MODULE`, read
  from the command's own parser (argparse) or flag registry (absl) in a subprocess, so the
  tables always list every flag with its default and help.
"""

import ast
import json
import logging
import os
import posixpath
import re
import subprocess
import sys

from mkdocs.structure.files import File

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, 'docs')
README_PAGE = 'readme.md'
REPO_FILES = '_repo'  # Where repository files outside docs/ are served.

_LINK = re.compile(r'(\]\()([^)\s]+)(\))')
_FENCE = re.compile(r'^(```|~~~)', re.MULTILINE)
_CLI_MARKER = re.compile(r'^<!-- cli: ([\w.]+) -->$', re.MULTILINE)
_EXTERNAL = re.compile(r'^([a-z][a-z0-9+.-]*:|#|/)', re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Docstrings.

_GROUPED_PARAMETERS = re.compile(r"Parameter '[^']*,[^']*' does not appear in the function "
                                 'signature')


class _GroupedParameterEntries(logging.Filter):
  """Lowers griffe's warning about an Args entry naming several parameters to INFO."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno == logging.WARNING and _GROUPED_PARAMETERS.search(record.getMessage()):
      record.levelno, record.levelname = logging.INFO, 'INFO'
    return True


logging.getLogger('mkdocs.plugins.griffe').addFilter(_GroupedParameterEntries())


# ---------------------------------------------------------------------------------------------
# Pages and links.


def _source_path(file) -> str:
  return file.abs_src_path or os.path.join(DOCS, file.src_uri)


def _outside_markdown(text: str):
  """(is_code, chunk) pieces of `text`: fenced code blocks apart from the prose."""
  pieces, code, start = [], False, 0
  for fence in _FENCE.finditer(text):
    pieces.append((code, text[start:fence.start()]))
    code, start = not code, fence.start()
  pieces.append((code, text[start:]))
  return pieces


def _links(text: str):
  for code, chunk in _outside_markdown(text):
    if not code:
      for match in _LINK.finditer(chunk):
        yield match.group(2)


def _target(source: str, link: str):
  """The absolute file `link` (relative to the markdown file `source`) names, and its anchor."""
  path, _, anchor = link.partition('#')
  return os.path.normpath(os.path.join(os.path.dirname(source), path)), anchor


def _repository_files(sources):
  """The files outside docs/ (inside the repository) that the markdown files link to."""
  found = set()
  for source in sources:
    with open(source, encoding='utf-8') as f:
      text = f.read()
    for link in _links(text):
      if _EXTERNAL.match(link):
        continue
      target, _ = _target(source, link)
      inside_repo = os.path.commonpath([target, REPO]) == REPO
      inside_docs = os.path.commonpath([target, DOCS]) == DOCS
      if inside_repo and not inside_docs and os.path.isfile(target):
        found.add(os.path.relpath(target, REPO))
  return sorted(found)


def on_files(files, config):
  """Adds README.md as a page and the repository files the pages link to."""
  readme = os.path.join(REPO, 'README.md')
  files.append(File.generated(config, README_PAGE, abs_src_path=readme))
  sources = [readme] + [_source_path(f) for f in files.documentation_pages()
                        if _source_path(f).endswith('.md')]
  for path in _repository_files(sources):
    if path == 'README.md':
      continue  # Served as the page above.
    files.append(File.generated(config, posixpath.join(REPO_FILES, path),
                                abs_src_path=os.path.join(REPO, path)))
  return files


def _site_path(target: str) -> str:
  """The docs-relative path that serves the repository file `target`."""
  if os.path.normpath(target) == os.path.join(REPO, 'README.md'):
    return README_PAGE
  if os.path.commonpath([target, DOCS]) == DOCS:
    return os.path.relpath(target, DOCS).replace(os.sep, '/')
  return posixpath.join(REPO_FILES, os.path.relpath(target, REPO).replace(os.sep, '/'))


def _rewrite_links(markdown: str, page) -> str:
  source = _source_path(page.file)
  page_dir = posixpath.dirname(page.file.src_uri)

  def rewrite(match):
    link = match.group(2)
    if _EXTERNAL.match(link):
      return match.group(0)
    target, anchor = _target(source, link)
    if not os.path.exists(target):
      return match.group(0)  # Left for mkdocs to report.
    new = posixpath.relpath(_site_path(target), page_dir or '.')
    return match.group(1) + new + (f'#{anchor}' if anchor else '') + match.group(3)

  return ''.join(chunk if code else _LINK.sub(rewrite, chunk)
                 for code, chunk in _outside_markdown(markdown))


# ---------------------------------------------------------------------------------------------
# The command-line flag tables.

# Run in a subprocess: imports each command's module and reads its flags without running it.
# argparse commands: the parser is captured when `main` asks it to parse; absl commands: the
# flags their module defines.
_DUMP_FLAGS = r'''
import argparse, importlib, json, sys
sys.path.insert(0, sys.argv[1])
specs = json.loads(sys.argv[2])

class _Captured(Exception):
  def __init__(self, parser):
    super().__init__()
    self.parser = parser

def _capture(self, *args, **kwargs):
  raise _Captured(self)

argparse.ArgumentParser.parse_args = _capture
argparse.ArgumentParser.parse_known_args = _capture

def _value(action):
  if action.choices is not None:
    return '{' + ', '.join(map(str, action.choices)) + '}'
  if action.nargs == 0:
    return ''
  return action.metavar or action.dest.upper()

def from_argparse(parser):
  formatter = parser._get_formatter()
  rows = []
  subcommands = {}
  for action in parser._actions:
    if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
      continue
    if isinstance(action, argparse._SubParsersAction):
      subcommands = {name: from_argparse(sub) for name, sub in action.choices.items()}
    default = action.default
    shown = '' if default in (None, argparse.SUPPRESS) or action.nargs == 0 and default is False \
        else repr(default)
    rows.append({'names': list(action.option_strings) or [action.metavar or action.dest],
                 'value': _value(action) + (' ...' if action.nargs in ('+', '*') else ''),
                 'default': shown, 'required': bool(action.required),
                 'help': formatter._expand_help(action) if action.help else ''})
  return {'usage': parser.format_usage().strip(), 'description': parser.description or '',
          'flags': rows, 'subcommands': subcommands}

def from_absl(module_name):
  from absl import flags
  rows = []
  for flag in flags.FLAGS.flags_by_module_dict().get(module_name, []):
    value = '' if flag.boolean else (
        '{' + ', '.join(flag.enum_values) + '}' if getattr(flag, 'enum_values', None) else
        flag.flag_type().upper().replace(' ', '_'))
    default = flag.default
    if flag.name == 'config':
      value, default = 'FILE[:ARG]', None
    rows.append({'names': ['--' + flag.name], 'value': value,
                 'default': '' if default is None or flag.boolean and default is False
                 else repr(default), 'required': False, 'help': flag.help or ''})
  return {'usage': '', 'description': '', 'flags': rows, 'subcommands': {}}

out = {}
for module_name, argv in specs:
  sys.argv = [module_name, *argv]
  module = importlib.import_module(module_name)
  absl_flags = sys.modules.get('absl.flags')
  if absl_flags and isinstance(getattr(module, 'FLAGS', None), absl_flags.FlagValues):
    out[module_name] = from_absl(module_name)
    continue
  try:
    module.main()
  except _Captured as captured:
    out[module_name] = from_argparse(captured.parser)
  else:
    raise SystemExit(f'{module_name}.main() never parsed its arguments')
print(json.dumps(out))
'''

# The argv each command's main() is called with to reach its parser (launch_tune needs `--`).
_ARGV = {'experiments.launch_tune': ['--']}


def _uses_absl(module: str) -> bool:
  """Whether the command's module defines absl flags (read from its source, not imported)."""
  with open(os.path.join(REPO, *module.split('.')) + '.py', encoding='utf-8') as f:
    return 'from absl import flags' in f.read()


def _cli_tables(modules):
  """module -> its flags; absl commands each in a process of their own (absl's one registry)."""
  groups = [[m] for m in modules if _uses_absl(m)]
  groups.append([m for m in modules if not _uses_absl(m)])
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  processes = [(group, subprocess.Popen(
      [sys.executable, '-c', _DUMP_FLAGS, REPO, json.dumps([(m, _ARGV.get(m, [])) for m in group])],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
               for group in groups if group]
  tables = {}
  for group, process in processes:
    out, err = process.communicate()
    if process.returncode:
      raise RuntimeError(f'reading the flags of {group} failed:\n{err[-3000:]}')
    tables.update(json.loads(out.strip().splitlines()[-1]))
  return tables


def _cell(text: str) -> str:
  return ' '.join(str(text).split()).replace('|', '\\|')


def flag_table(info) -> str:
  """The markdown table of one command's flags (`info` as the subprocess reports it), then one
  table per subcommand."""
  lines = ['| flag | value | default | meaning |', '| --- | --- | --- | --- |']
  for row in info['flags']:
    names = ', '.join(f'`{n}`' for n in row['names'])
    default = 'required' if row['required'] else (f'`{row["default"]}`' if row['default']
                                                  else '')
    value = f'`{row["value"]}`' if row['value'] else ''
    lines.append(f'| {names} | {_cell(value)} | {_cell(default)} | {_cell(row["help"])} |')
  for name, sub in info.get('subcommands', {}).items():
    lines += ['', f'Subcommand `{name}`' + (f': {_cell(sub["description"]).rstrip(".")}'
                                            if sub['description'] else '') + '.', '',
              flag_table(sub)]
  return '\n'.join(lines)


def fill_cli_tables(markdown: str) -> str:
  """Replaces each `<!-- cli: MODULE -->` line with the flag table of `python -m MODULE`."""
  modules = _CLI_MARKER.findall(markdown)
  if not modules:
    return markdown
  tables = _cli_tables(modules)
  return _CLI_MARKER.sub(lambda m: flag_table(tables[m.group(1)]), markdown)


# ---------------------------------------------------------------------------------------------
# The public names of a package, for its API page.

_AUTODOC = re.compile(r'^::: ([\w.]+)[ \t]*$(?!\n[ \t]+options:)', re.MULTILINE)


def package_exports(package: str):
  """The names `package/__init__.py` defines or imports from its own modules, in order.

  Private names (a leading underscore) and submodules are left out. None when `package` is a
  module, not a package.
  """
  directory = os.path.join(REPO, *package.split('.'))
  init = os.path.join(directory, '__init__.py')
  if not os.path.isfile(init):
    return None
  with open(init, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  names = []
  for node in tree.body:
    # `from package.module import name` re-exports a name; `from package import module` only
    # binds a submodule.
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.startswith(
        package + '.'):
      names += [alias.asname or alias.name for alias in node.names]
    elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.append(node.name)
    elif isinstance(node, ast.Assign):
      names += [t.id for t in node.targets if isinstance(t, ast.Name)]
  return [n for n in dict.fromkeys(names) if not n.startswith('_')]


def expand_package_members(markdown: str) -> str:
  """Adds a `members:` list of `package_exports` to each `::: package` line without options."""
  def expand(match):
    names = package_exports(match.group(1))
    if names is None:
      return match.group(0)
    return '\n'.join([match.group(0), '    options:', '      members:'] +
                     [f'        - {n}' for n in names])
  return _AUTODOC.sub(expand, markdown)


def on_page_markdown(markdown, page, config, files):
  del config, files
  markdown = _rewrite_links(markdown, page)
  if page.file.src_uri.startswith('api/'):
    markdown = expand_package_members(markdown)
  if page.file.src_uri == 'cli.md':
    markdown = fill_cli_tables(markdown)
  return markdown
