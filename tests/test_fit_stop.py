"""Training to a fit target (`config.stop`): the run stops at the target, trains the extra
epochs evaluating each one, resumes after an interruption with the same result, and is
validated like every other field."""

import numpy as np
import pytest

from conftest import load_config
from fisher_jax import rundir
from fisher_jax.training import fit_stop
from fisher_jax.training import loop
from fisher_jax.training import settings

TARGET, EXTRA, CAP = 0.9, 2, 40


def _config(**fields):
  config = load_config('default')
  config.model.name = 'mlp'
  config.num_epochs = CAP
  config.dataset.train_subset = 512  # 4 steps per epoch
  config.measure.num_examples = 64
  config.measure.every_steps = 2  # in-epoch Tr(F) in the first epoch only
  config.measure.every_steps_until_epoch = 1.0
  config.eval_every_epochs = 5
  config.checkpoint_every_epochs = 2
  config.checkpoint_keep = 1
  config.stop.train_accuracy = TARGET
  config.stop.extra_epochs = EXTRA
  for key, value in fields.items():
    section, _, name = key.rpartition('.')
    (config[section] if section else config)[name] = value
  return config


def _records(workdir):
  return rundir.read_records(str(workdir))


def _at_epoch_ends(records, metric):
  return [int(r['epoch']) for r in records if metric in r and r['epoch'] == int(r['epoch'])]


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('reference')
  final = loop.train_and_evaluate(_config(), str(workdir))
  return workdir, final


def test_a_run_stops_at_the_fit_target_after_its_extra_epochs(reference):
  workdir, final = reference
  records = _records(workdir)
  converged = fit_stop.convergence_epoch(records, TARGET)
  assert converged is not None and 2 <= converged and converged + EXTRA < CAP, converged
  # Ends at E + extra: nothing after it.
  assert max(r['epoch'] for r in records) == converged + EXTRA
  # The whole training set is evaluated after every epoch; the first epoch at the target is E.
  full = {int(r['epoch']): r[fit_stop.TRAIN_FULL_ACCURACY] for r in records
          if fit_stop.TRAIN_FULL_ACCURACY in r}
  assert sorted(full) == list(range(1, converged + EXTRA + 1))
  assert all(full[e] < TARGET for e in range(1, converged)) and full[converged] >= TARGET
  # Test accuracy every eval_every_epochs before E, at every epoch from E on.
  tested = _at_epoch_ends(records, 'test/accuracy')
  assert tested == [e for e in range(5, converged, 5)] + list(range(converged,
                                                                     converged + EXTRA + 1))
  assert final[fit_stop.TRAIN_FULL_ACCURACY] == full[converged + EXTRA]
  # In-epoch Tr(F) every 2 steps up to epoch 1 only; at epoch ends after it.
  fisher_steps = [r['step'] for r in records if 'curvature/fisher_trace' in r]
  assert fisher_steps == [0, 2] + [4 * e for e in range(1, converged + EXTRA + 1)]


def test_a_run_at_its_budget_cap_is_unconverged_and_ends_there(tmp_path):
  records_dir = tmp_path / 'capped'
  loop.train_and_evaluate(_config(num_epochs=3, **{'stop.train_accuracy': 1.0}),
                           str(records_dir))
  records = _records(records_dir)
  assert fit_stop.convergence_epoch(records, 1.0) is None
  assert max(r['epoch'] for r in records) == 3
  assert _at_epoch_ends(records, 'test/accuracy') == [3]  # the last epoch is always evaluated


def _interrupted_at(epoch):
  """on_epoch hook: ends the run after `epoch`'s record is logged (resumable, as a kill after
  a logged record is: with checkpoints every 2 epochs, an odd epoch has none)."""
  return lambda e: e == epoch


@pytest.mark.slow
def test_interrupted_before_and_after_the_target_a_run_ends_like_an_uninterrupted_one(
    reference, tmp_path):
  ref_dir, ref_final = reference
  expected = {r['step']: r for r in _records(ref_dir)}
  converged = fit_stop.convergence_epoch(expected.values(), TARGET)
  before = converged - 1 if (converged - 1) % 2 else converged - 2  # no checkpoint there
  workdir = str(tmp_path / 'interrupted')
  for stop in (max(before, 1), converged + 1):
    loop.train_and_evaluate(_config(), workdir, on_epoch=_interrupted_at(stop))
    assert max(r['epoch'] for r in _records(workdir)) == stop
  final = loop.train_and_evaluate(_config(), workdir)
  got = {r['step']: r for r in _records(workdir)}
  assert sorted(got) == sorted(expected)  # every logged step once, none after E + extra
  for step, record in expected.items():
    assert sorted(got[step]) == sorted(record), step
    for name, value in record.items():
      np.testing.assert_allclose(got[step][name], value, rtol=1e-6, err_msg=f'{name} @ {step}')
  assert final == pytest.approx(ref_final, rel=1e-6)
  # Started again once finished, it trains nothing and returns its final metrics.
  again = loop.train_and_evaluate(_config(), workdir)
  assert sorted(r['step'] for r in _records(workdir)) == sorted(expected)
  for name in ('test/accuracy', fit_stop.TRAIN_FULL_ACCURACY):
    assert again[name] == pytest.approx(ref_final[name], rel=1e-6)


@pytest.mark.parametrize('field,value,message', [
    ('stop.train_accuracy', 1.5, r'stop\.train_accuracy=1\.5 is invalid; it is a training '
                                 r'accuracy in \(0, 1\], or 0'),
    ('stop.train_accuracy', -0.1, r'stop\.train_accuracy=-0\.1 is invalid'),
    ('stop.extra_epochs', -1, r'stop\.extra_epochs=-1 is invalid'),
    ('measure.every_steps_until_epoch', -2.0, r'measure\.every_steps_until_epoch=-2\.0 is '
                                              r'invalid'),
])
def test_bad_fit_target_fields_are_one_sentence_naming_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    settings.read(_config(**{field: value}))


def test_convergence_epoch_reads_epoch_ends_and_never_nan():
  records = [{'step': 0, 'epoch': 0.0}, {'step': 4, 'epoch': 1.0, 'train_full/accuracy': 0.5},
             {'step': 8, 'epoch': 2.0, 'train_full/accuracy': float('nan')},
             {'step': 12, 'epoch': 3.0, 'train_full/accuracy': 0.95},
             {'step': 16, 'epoch': 4.0, 'train_full/accuracy': 0.97}]
  assert fit_stop.convergence_epoch(reversed(records), 0.9) == 3
  assert fit_stop.convergence_epoch(records, 0.99) is None
  assert fit_stop.end_epoch(3, 2, 40) == 5 and fit_stop.end_epoch(None, 2, 40) == 40
  assert fit_stop.end_epoch(39, 2, 40) == 40
  with pytest.raises(ValueError, match='turns the fit target off'):
    fit_stop.convergence_epoch(records, 0.0)
