"""The Fashion-MNIST IDX builder on tiny IDX files written here, through the real TFDS path.

CI may not have the Debian package, so every test writes its own four files (a few dozen
28x28 images whose pixels encode the example's index) and registers a copy of the
`fashion_mnist` spec whose system directory is the test's own.
"""

import dataclasses
import gzip
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from fisher_jax import data
from fisher_jax.data import fashion_mnist

from conftest import REPO
import synthetic_inputs  # tests/synthetic_inputs.py

SPEC = data.get_spec('fashion_mnist')
SIZES = {'train': 40, 'test': 12}


def _arrays(split):
  """Images whose first pixel is the index (+100 for test) and labels index mod 10."""
  n = SIZES[split]
  rng = np.random.default_rng(len(split))
  images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
  images[:, 0, 0] = np.arange(n) + (100 if split == 'test' else 0)
  return images, (np.arange(n) % 10).astype(np.uint8)


def _idx_bytes(array):
  magic = {3: 0x803, 1: 0x801}[array.ndim]
  header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  return header + array.tobytes()


def write_idx_files(directory, compress=True):
  os.makedirs(directory, exist_ok=True)
  for split, (images_file, labels_file) in fashion_mnist.FILES.items():
    for name, array in zip((images_file, labels_file), _arrays(split)):
      raw = _idx_bytes(array)
      if compress:
        with gzip.open(os.path.join(directory, name), 'wb') as f:
          f.write(raw)
      else:
        with open(os.path.join(directory, name[:-3]), 'wb') as f:
          f.write(raw)


def _register(name, source_dirs=()):
  spec = dataclasses.replace(SPEC, name=name, source_dirs=tuple(str(d) for d in source_dirs))
  data.register_dataset(spec, overwrite=True)
  return spec


def _input(name, data_dir, **fields):
  fields.setdefault('val_fraction', 0.0)
  return synthetic_inputs.make_input(str(data_dir), name, batch_size=8, **fields)


def _raw_first_pixels(images):
  return np.rint(images[:, 0, 0, 0] * SPEC.std[0] + SPEC.mean[0]).astype(int)


def _leftovers(data_dir):
  """Everything below data_dir/fashion_mnist_idx (a failed preparation must leave nothing)."""
  root = os.path.join(data_dir, 'fashion_mnist_idx')
  return sorted(os.listdir(root)) if os.path.exists(root) else []


def test_prepares_from_the_manual_dir_with_the_files_contents(tmp_path):
  data_dir = tmp_path / 'tfds'
  write_idx_files(data_dir / 'downloads' / 'manual')
  spec = _register('fashion_mnist_t1')
  inp = _input(spec.name, data_dir)
  assert inp.num_examples('train') == 40 and inp.num_examples('test') == 12
  batch = next(inp.eval_iterator('test', 12))
  images, labels = _arrays('test')
  np.testing.assert_array_equal(_raw_first_pixels(batch['image']), images[:, 0, 0])
  np.testing.assert_array_equal(batch['label'], labels)
  whole = np.rint(batch['image'][..., 0] * SPEC.std[0] + SPEC.mean[0])
  np.testing.assert_array_equal(whole, images)  # every pixel, not only the index
  batch = next(inp.train_iterator())
  assert batch['image'].shape == (8, 28, 28, 1)
  np.testing.assert_array_equal(batch['label'], _raw_first_pixels(batch['image']) % 10)


def test_system_dir_and_uncompressed_files_and_data_dir_itself(tmp_path):
  system = tmp_path / 'usr_share'
  write_idx_files(system, compress=False)
  spec = _register('fashion_mnist_t2', source_dirs=[system])
  assert _input(spec.name, tmp_path / 'tfds').num_examples('train') == 40
  own = tmp_path / 'own'  # dataset.data_dir pointing at a folder of the files
  write_idx_files(own)
  spec = _register('fashion_mnist_t3')
  assert _input(spec.name, own).num_examples('test') == 12


def _no_network(*args):
  raise OSError(f'this test forbids the network (connect{args[1:]})')


def test_missing_files_fail_with_one_sentence_naming_both_fixes_and_no_download(
    tmp_path, monkeypatch):
  spec = _register('fashion_mnist_t4', source_dirs=[tmp_path / 'nothing'])
  monkeypatch.setattr(socket.socket, 'connect', _no_network)  # A download attempt would fail.
  with pytest.raises(data.DatasetNotPreparedError) as error:
    _input(spec.name, tmp_path / 'tfds')
  message = str(error.value)
  assert not (tmp_path / 'tfds' / spec.name).exists()  # Nothing half-prepared is left.
  assert 'apt-get install dataset-fashion-mnist' in message
  assert os.path.join(str(tmp_path / 'tfds'), 'downloads', 'manual') in message
  assert '\n' not in message and message.count('; ') == 1 and message.endswith('.')


@pytest.mark.parametrize('damage', ['truncated', 'not_gzip', 'wrong_magic'])
def test_a_damaged_file_fails_with_one_sentence_and_leaves_nothing(tmp_path, damage):
  data_dir = tmp_path / 'tfds'
  manual = data_dir / 'downloads' / 'manual'
  write_idx_files(manual)
  target = manual / 'train-images-idx3-ubyte.gz'
  raw = gzip.decompress(target.read_bytes())
  if damage == 'truncated':
    target.write_bytes(gzip.compress(raw[:len(raw) // 2]))
  elif damage == 'not_gzip':
    target.write_bytes(b'this is not a gzip file at all')
  else:
    target.write_bytes(gzip.compress(b'\x00\x00\x08\x01' + raw[4:]))
  spec = _register(f'fashion_mnist_t5_{damage}')
  with pytest.raises(ValueError) as error:
    _input(spec.name, data_dir)
  message = str(error.value)
  assert str(target) in message and '\n' not in message and message.endswith('.')
  assert {'truncated': 'truncated', 'not_gzip': 'not a readable IDX file',
          'wrong_magic': 'magic number'}[damage] in message
  assert _leftovers(str(data_dir)) == []
  write_idx_files(manual)  # repaired: the next run prepares it
  assert _input(spec.name, data_dir).num_examples('train') == 40


def test_main_without_the_files_exits_with_the_message_before_any_work(tmp_path):
  """The command line, with the system directory pointed at an empty folder and no network."""
  script = (
      'import dataclasses, runpy, socket, sys\n'
      'def no_network(*args):\n'
      '  raise OSError("this test forbids the network")\n'
      'socket.socket.connect = no_network\n'
      'from fisher_jax.data import specs\n'
      'spec = specs.get_spec("fashion_mnist")\n'
      f'specs.register_dataset(dataclasses.replace(spec, source_dirs=({str(tmp_path)!r},)), '
      'overwrite=True)\n'
      'sys.argv = ["main", "--config", "configs/default.py", "--workdir", '
      f'{str(tmp_path / "run")!r}, "--config.dataset.name=fashion_mnist", '
      f'"--config.dataset.data_dir={tmp_path / "tfds"}"]\n'
      'runpy.run_module("fisher_jax.main", run_name="__main__")\n')
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, 'XLA_FLAGS': ''})
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('fisher_jax: ') and 'apt-get install dataset-fashion-mnist' in last
  assert 'Traceback' not in result.stderr and 'Compiling' not in result.stdout
  assert not (tmp_path / 'run').exists()  # It stopped before it wrote anything.
