"""The ```python blocks of README.md and docs/*.md, as tests/test_docs.py executes them."""

import ast
import glob
import os
from typing import List, NamedTuple

import markdown_it

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Block(NamedTuple):
  path: str  # relative to the repo root, e.g. 'docs/curvature.md'
  line: int  # 1-based line of the block's first code line in that file
  source: str

  @property
  def id(self) -> str:
    return f'{self.path}:{self.line}'

  def compile(self):
    """The block as a code object whose line numbers are those of the markdown file."""
    return compile('\n' * (self.line - 1) + self.source, os.path.join(REPO, self.path), 'exec')

  def imports(self) -> List[str]:
    """The modules the block imports (`from a import b, c` gives 'a.b', 'a.c')."""
    names = []
    for node in ast.walk(ast.parse(self.source)):
      if isinstance(node, ast.Import):
        names.extend(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        names.extend(f'{node.module}.{alias.name}' for alias in node.names)
    return names


def doc_files() -> List[str]:
  """README.md and every docs/*.md (docs added later are picked up), relative to the repo."""
  docs = sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))
  return ['README.md'] + [os.path.relpath(p, REPO) for p in docs]


def python_blocks(path: str) -> List[Block]:
  """The fenced blocks whose info string is `python`, in the order of the file."""
  with open(os.path.join(REPO, path)) as f:
    tokens = markdown_it.MarkdownIt().parse(f.read())
  return [Block(path, t.map[0] + 2, t.content) for t in tokens
          if t.type == 'fence' and t.info.strip().split(' ')[0] == 'python']
