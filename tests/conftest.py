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
