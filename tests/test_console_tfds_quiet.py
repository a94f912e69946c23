"""The first run on a fresh TFDS data directory keeps TFDS's preparation chatter off the console.

TFDS prepares the embedded digits on first use and then says so: an absl warning 'Variant folder
<dir> has no dataset_info.json' (stderr), 'Downloading and preparing dataset ...' and 'Dataset
... downloaded and prepared to ...' (stdout, termcolor) and tqdm progress bars ('Generating
splits...', 'Shuffling ...'; stderr). By default none of it shows; `--verbose` shows all of it.
Each case is one tiny run (1 epoch of 2 steps) into a data directory of its own.
"""

import os
import subprocess
import sys

import pytest

from conftest import REPO

OVERRIDES = ('--config.num_epochs=1', '--config.model.name=mlp',
             '--config.dataset.train_subset=256', '--config.measure.num_examples=64')
# (text, stream) of each piece of TFDS chatter.
CHATTER = (('Variant folder', 'stderr'), ('Downloading and preparing dataset', 'stdout'),
           ('downloaded and prepared to', 'stdout'), ('Generating splits', 'stderr'))


def _first_run(tmp_path, *extra):
  data_dir = tmp_path / 'tfds'
  assert not data_dir.exists()  # A fresh data directory: TFDS prepares the digits now.
  command = [sys.executable, '-m', 'fisher_jax.main', '--config', 'configs/default.py',
             '--workdir', str(tmp_path / 'run'), f'--config.dataset.data_dir={data_dir}',
             *OVERRIDES, *extra]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_cache'))
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert os.listdir(data_dir / 'sklearn_digits'), 'the run prepared no dataset'
  assert 'best val accuracy' in result.stdout, result.stdout
  return {'stdout': result.stdout, 'stderr': result.stderr}


@pytest.mark.slow
def test_first_run_shows_no_tfds_chatter(tmp_path):
  console = _first_run(tmp_path)
  for text, _ in CHATTER:
    for stream in ('stdout', 'stderr'):
      assert text not in console[stream], f'{text!r} on {stream}:\n{console[stream]}'
  assert 'Shuffling' not in console['stderr'], console['stderr']


@pytest.mark.slow
def test_first_run_with_verbose_shows_tfds_chatter(tmp_path):
  console = _first_run(tmp_path, '--verbose')
  for text, stream in CHATTER:
    assert text in console[stream], f'{text!r} not on {stream}:\n{console[stream]}'
