"""The accelerator benchmark (benchmarks/accelerator.py) runs end to end at toy sizes on the CPU.

One run of the command as a user types it (`--toy --rounds 1 --peers --models resnet18
--no_unroll`: the tiny ResNet at batch 8, each (model, batch, dtype) in its own process, the
PyTorch peers included) must write its JSON and its table with every row, each with a finite
positive time and ratio, and import none of the modules the benchmark promises to leave alone.
One model, and Lanczos in a loop rather than unrolled, keep the run under a minute on a 2-core
CPU (43 s; XLA:CPU compiles about 20 programs per model; the other model's rows are built by
the same code).
"""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import _peers  # noqa: E402
from benchmarks import accelerator  # noqa: E402

SCRIPT = os.path.join(REPO, 'benchmarks', 'accelerator.py')
MODELS = ('resnet18',)


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
  """(the JSON, the markdown table, what it printed) of one toy run with the peers."""
  out = tmp_path_factory.mktemp('accelerator')
  done = subprocess.run([sys.executable, SCRIPT, '--toy', '--rounds', '1', '--peers',
                         '--models', ','.join(MODELS), '--no_unroll', '--out', str(out)],
                        cwd=REPO, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(out / 'accelerator.json') as f:
    result = json.load(f)
  return result, (out / 'accelerator.md').read_text(), done.stdout


def _positive(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_every_row_is_there_with_a_finite_positive_time_and_ratio(toy_run):
  result, _, _ = toy_run
  rows = {(r['model'], r['batch'], r['dtype'], r['quantity']): r for r in result['rows']
          if r['framework'] == accelerator.FRAMEWORK}
  expected = {(m, 8, 'float32', q) for m in MODELS for q in accelerator.QUANTITY_KEYS}
  expected |= {(m, 8, 'bfloat16', q) for m in MODELS for q in accelerator.TRAINING_QUANTITIES}
  assert set(rows) == expected and len(rows) == len(result['rows']) - len(
      [r for r in result['rows'] if r['framework'] != accelerator.FRAMEWORK])
  for key, row in rows.items():
    assert row['status'] == 'ok', (key, row['status'])
    assert _positive(row['seconds']) and _positive(row['ratio']), (key, row)
    assert _positive(row['xla_bytes']) and _positive(row['xla_ratio']), (key, row)
    if result['environment']['memory_stats']:
      assert _positive(row['peak_bytes']) and _positive(row['peak_ratio']), (key, row)
    else:  # The CPU has no allocator statistics: reported as absent, not as zero.
      assert row['peak_bytes'] is None and row['peak_ratio'] is None, (key, row)
    if key[3] == 'gradient':
      assert row['ratio'] == 1.0
    if key[3] == 'train_step':
      assert row['steps_per_second'] == pytest.approx(1 / row['seconds'])


@pytest.mark.slow
def test_the_backend_choices_are_the_cpus_with_the_flags_override(toy_run):
  env = toy_run[0]['environment']
  assert env['backend'] == 'cpu' and env['chunk_size'] == {'layers': None, 'vmap': None}
  assert env['unroll'] is False  # --no_unroll (the CPU's default is True)
  rows = [r for r in toy_run[0]['rows']
          if r['quantity'] == 'lanczos_top10' and r['framework'] == accelerator.FRAMEWORK]
  assert rows and all('fori_loop' in r['detail'] for r in rows)


@pytest.mark.slow
def test_no_forbidden_module_is_imported(toy_run):
  # Every process of the run (the parent and each configuration's) reports what it imported.
  assert toy_run[0]['environment']['forbidden_imports'] == []


@pytest.mark.slow
def test_every_peer_row_is_there_and_missing_libraries_say_so(toy_run):
  result, _, _ = toy_run
  rows = {(r['framework'], r['model'], r['quantity']): r for r in result['rows']
          if r['framework'] != accelerator.FRAMEWORK}
  expected = {(framework, m, q) for framework, (_, _, cases) in _peers.PEERS.items()
              for m in MODELS for q, _ in cases}
  assert set(rows) == expected
  for (framework, _, _), row in rows.items():
    if not _peers.installed(_peers.PEERS[framework][0]):
      assert row['status'] == 'not installed', row
    elif row['status'] == 'ok':
      assert _positive(row['seconds']), row


@pytest.mark.slow
def test_the_table_has_every_row_and_is_printed(toy_run):
  result, table, stdout = toy_run
  assert table in stdout
  for row in result['rows']:
    assert f"| {row['framework']} | {row['model']} | {row['batch']} | {row['dtype']} | " \
        f"{row['label']} |" in table
  assert '| resnet18 | 8 |' in table.split('bfloat16 speed-up')[1]  # The steps/s table.


def test_help_lists_every_flag():
  done = subprocess.run([sys.executable, SCRIPT, '--help'], cwd=REPO, capture_output=True,
                        text=True, timeout=120, check=True)
  for flag in ('--models', '--batch_sizes', '--dtypes', '--curvature_dtypes', '--quantities',
               '--rounds', '--probes', '--lanczos_iterations', '--out', '--toy', '--unroll',
               '--no_unroll', '--chunk_size', '--peers', '--isolate', '--no_isolate',
               '--one_config', '--rows_file'):
    assert flag in done.stdout, flag
  for action in accelerator.make_parser()._actions:  # pylint: disable=protected-access
    assert action.help, action.option_strings


def test_backend_choices():
  assert accelerator.backend_choices('cpu').unroll is True
  gpu = accelerator.backend_choices('gpu')
  assert gpu.unroll is False and gpu.chunk_size == {'layers': None, 'vmap': 64}
  assert accelerator.backend_choices('tpu') == gpu
  forced = accelerator.backend_choices('gpu', unroll=True, chunk_size=0)
  assert forced.unroll is True and forced.chunk_size == {'layers': None, 'vmap': None}
  assert accelerator.backend_choices('cpu', chunk_size=16).chunk_size == {'layers': 16,
                                                                          'vmap': 16}


def test_plan_times_the_training_step_in_every_dtype_and_the_rest_in_float32():
  args = accelerator.parse_args(['--toy', '--quantities', 'hvp,train_step'])
  assert accelerator.plan(args) == [
      accelerator.Config(m, 8, dtype, keys) for m in ('resnet18', 'wrn16_4')
      for dtype, keys in (('float32', ['gradient', 'hvp', 'train_step']),
                          ('bfloat16', ['gradient', 'train_step']))]
  with pytest.raises(SystemExit):
    accelerator.parse_args(['--quantities', 'hvp,no_such_row'])
