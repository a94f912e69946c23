"""Test set-up: 8 fake CPU devices (set before JAX is imported) and float64 helpers."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402


@pytest.fixture
def x64():
  """Runs a test with float64 enabled (brute-force comparisons)."""
  with jax.enable_x64(True):
    yield


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str = 'default', arg: str = None):
  """`get_config(arg)` of configs/<name>.py, as `--config configs/<name>.py[:arg]` loads it."""
  from fisher_jax.training import config_files  # pylint: disable=g-import-not-at-top
  path = os.path.join(REPO, 'configs', f'{name}.py')
  return config_files.load_config(path + (f':{arg}' if arg else ''))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A TFDS data directory shared by one test module's locally built datasets."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def default_config():
  """A fresh configs/default.py config (tests shrink it to what they need)."""
  return load_config('default')
