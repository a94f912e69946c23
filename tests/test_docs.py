"""Every ```python block of README.md and docs/*.md runs (one test per block).

The blocks of one file share one namespace and run in the file's order, as a reader pastes them
into one session. They run where relative paths mean what they mean at the repository root
(`configs/default.py`), in a scratch directory that links the repository's tracked top-level
entries, so that what a block writes (`figures/`, `runs/x`) never lands in the clone. A block
that fails fails its own test, and the later blocks of its file fail naming it. Blocks use small
inputs so that each runs in seconds on a CPU.
"""

import os
import subprocess

os.environ.setdefault('MPLBACKEND', 'Agg')  # Figures are written, never shown.

import jax  # noqa: E402
import pytest  # noqa: E402

import doc_blocks  # noqa: E402  (tests/doc_blocks.py)

BLOCKS = [b for path in doc_blocks.doc_files() for b in doc_blocks.python_blocks(path)]


class _FileSession:
  """One markdown file's namespace and how far through its blocks it has run."""

  def __init__(self, blocks):
    self.blocks = blocks
    self.namespace = {'__name__': '__main__'}
    self.done = 0
    self.failed = None

  def run_through(self, block):
    """Runs the blocks before `block` that have not run (a -k selection), then `block`."""
    for pending in self.blocks[self.done:self.blocks.index(block) + 1]:
      if self.failed:
        pytest.fail(f'{self.failed} failed before this block, which runs in its namespace.')
      self._run(pending)

  def _run(self, block):
    x64 = jax.config.jax_enable_x64
    try:
      exec(block.compile(), self.namespace)  # pylint: disable=exec-used
    except BaseException:
      self.failed = block.id
      raise
    finally:
      self.done = self.blocks.index(block) + 1
      jax.config.update('jax_enable_x64', x64)  # A block's x64 must not leak into other tests.


_SESSIONS = {}


@pytest.fixture(scope='module')
def repo_view(tmp_path_factory):
  """A scratch directory with a link to each tracked top-level entry of the repository."""
  view = tmp_path_factory.mktemp('repo_view')
  try:
    tracked = subprocess.run(['git', 'ls-files'], cwd=doc_blocks.REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    names = {path.split('/')[0] for path in tracked}
  except (OSError, subprocess.CalledProcessError):  # Not a git checkout.
    names = {n for n in os.listdir(doc_blocks.REPO) if not n.startswith('.') and n != 'runs'}
  for name in sorted(names):
    os.symlink(os.path.join(doc_blocks.REPO, name), view / name)
  return view


def test_docs_have_python_blocks():
  paths = {b.path for b in BLOCKS}
  assert 'README.md' in paths and 'docs/curvature.md' in paths, sorted(paths)


def test_a_failing_block_fails_and_the_next_ones_name_it(tmp_path):
  page = tmp_path / 'page.md'
  page.write_text('Text.\n\n```python\nx = 1\n```\n\n```sh\nnot python\n```\n\n'
                  '```python\ny = x + undefined\n```\n\n```python\nz = 3\n```\n')
  blocks = doc_blocks.python_blocks(str(page))
  assert [(b.line, b.source) for b in blocks] == [(4, 'x = 1\n'), (12, 'y = x + undefined\n'),
                                                  (16, 'z = 3\n')]
  session = _FileSession(blocks)
  session.run_through(blocks[0])
  assert session.namespace['x'] == 1
  with pytest.raises(NameError) as error:
    session.run_through(blocks[1])
  assert error.traceback[-1].lineno + 1 == 12  # The markdown file's line.
  with pytest.raises(pytest.fail.Exception, match=f'{page}:12 failed before this block'):
    session.run_through(blocks[2])


@pytest.mark.parametrize('block', BLOCKS, ids=lambda b: b.id)
def test_doc_block_runs(block, repo_view, monkeypatch):
  monkeypatch.chdir(repo_view)
  if block.path not in _SESSIONS:
    _SESSIONS[block.path] = _FileSession([b for b in BLOCKS if b.path == block.path])
  session = _SESSIONS[block.path]
  session.run_through(block)
