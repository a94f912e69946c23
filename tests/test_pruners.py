"""The pruners' rules on synthetic curves, and the replay benchmark against live searches.

Pure Python and Optuna: the "runs" are prepared curves (metrics.jsonl records), written by a
stand-in trainer where a live search needs a workdir.
"""

import json
import math
import os

import numpy as np
import optuna
import pandas as pd
import pytest

from benchmarks import pruning
from experiments import tune
from fisher_jax import pruners
from fisher_jax import rundir
from fisher_jax.training import guard

optuna.logging.set_verbosity(optuna.logging.WARNING)

_STEPS = 10  # Steps per epoch of the synthetic runs.


def _records(fisher, val=None, train=None, test=None):
  """metrics.jsonl-like rows: Tr(F) at epochs 0 (the initialization), 1, 2, ...; validation,
  training (running mini-batch, 0.5 unless given: below 0.8) and test accuracy from epoch 1."""
  n = len(fisher)
  val = val or [0.5] * n
  train = train or [0.5] * n
  test = test or [v - 0.01 for v in val]
  rows = []
  for epoch in range(n):
    row = {'step': _STEPS * epoch, 'epoch': float(epoch)}
    if fisher[epoch] is not None:
      row['curvature/fisher_trace'] = fisher[epoch]
    if epoch:
      row.update({'train/accuracy': train[epoch], 'val/accuracy': val[epoch],
                  'test/accuracy': test[epoch]})
    rows.append(row)
  return rows


def _add_completed(study, value, fisher, val=None):
  rows = _records(fisher, val or [value] * len(fisher))
  study.add_trial(optuna.trial.create_trial(
      state=optuna.trial.TrialState.COMPLETE, value=value,
      intermediate_values={int(r['epoch']): r['val/accuracy'] for r in rows if 'val/accuracy' in r},
      user_attrs={pruners.METRICS_ATTR: rows, pruners.CONFIG_ATTR: {}}))


def _run(study, rows):
  """Runs one trial through `rows` as experiments.tune reports them (`tune.report_epochs`);
  returns the epoch at which the study's pruner stops it, or None (it then completes)."""
  trial = study.ask()
  reported = set()
  frame = pd.DataFrame(rows)
  for epoch in range(1, int(frame.epoch.max()) + 1):
    tune.report_epochs(trial, frame[frame.epoch <= epoch], {}, reported)
    if trial.should_prune():
      study.tell(trial, state=optuna.trial.TrialState.PRUNED)
      return epoch
  study.tell(trial, max(r['val/accuracy'] for r in rows if 'val/accuracy' in r))
  return None


def _fisher(**kwargs):
  return pruners.FisherExplosionPruner(**{'factor': 2.0, 'warmup_epochs': 0,
                                          'min_completed_trials': 1, **kwargs})


# --- (i) A shared initialization: the window reads what follows it, v1 does not. ----------------

_F0 = 1000.0  # Step-0 Tr(F): one seed, so one initialization, for every trial.
# Complete trials: Tr(F) falls after the initialization; the better, the lower (good half:
# 0.90 and 0.88, whose window means by epoch 2 are 150 and 120).
_FALLING = [(0.90, [_F0, 200, 150, 140, 130, 130, 130, 130]),
            (0.88, [_F0, 180, 120, 110, 100, 100, 100, 100]),
            (0.70, [_F0, 400, 250, 240, 230, 230, 230, 230]),
            (0.65, [_F0, 500, 280, 270, 260, 260, 260, 260])]
_STAYS_HIGH = [_F0, 950, 900, 920, 900, 880, 900, 900]  # Does not fall: a slow early phase.


def _falling_study(pruner):
  study = optuna.create_study(direction='maximize', pruner=pruner)
  for value, fisher in _FALLING:
    _add_completed(study, value, fisher)
  return study


def test_window_prunes_trials_whose_tr_f_stays_high_after_a_shared_initialization():
  pruner = _fisher(warmup_epochs=1, min_completed_trials=3)
  study = _falling_study(pruner)
  # The good trials' window means by epoch 2 (their epoch-2 Tr(F)): 150, 120; by epoch 3:
  # (150 + 140) / 2 and (120 + 110) / 2. The initialization is never read.
  assert pruner.threshold(study, 2) == 2 * 150 and pruner.threshold(study, 3) == 2 * 145
  assert math.isnan(pruner.threshold(study, 1))  # The window opens after epoch 1.
  # The trial that stays near F_0 goes at epoch 2, its first epoch inside the window (at epoch
  # 1, 950 > 2 * 200 already, but nothing is read there); its validation accuracy (0.5) is
  # not what prunes it.
  assert _run(study, _records(_STAYS_HIGH)) == 2
  # The best trial's own curve, and every falling one, run to the end.
  for value, fisher in _FALLING:
    assert _run(study, _records(fisher, [value] * len(fisher))) is None


def test_the_v1_definition_reads_the_shared_initialization_and_prunes_nothing_here():
  """The study's first definition (max of Tr(F) from step 0 until training accuracy 0.8)
  gives every trial here the shared initial value F_0: the bar is 2 F_0, which the trial that
  stays high never crosses. This is why the window is the default."""
  pruner = _fisher(warmup_epochs=1, min_completed_trials=3, early_fisher='v1')
  study = _falling_study(pruner)
  assert pruner.threshold(study, 2) == 2 * _F0 and pruner.threshold(study, 7) == 2 * _F0
  assert _run(study, _records(_STAYS_HIGH)) is None
  # It prunes only above 2 F_0, the old benchmark's bar: the rule works, the bar is the issue.
  assert _run(study, _records([_F0, 1500, 2500, 2600, 2600, 2600, 2600, 2600])) == 2


def test_the_v1_definition_reads_until_training_accuracy_0_8():
  pruner = _fisher(early_fisher='v1')
  study = optuna.create_study(direction='maximize', pruner=pruner)
  # The best trial reached training accuracy 0.8 at epoch 2: its v1 value is 140 (the maximum
  # up to there, from step 0), not the 900 after it; by epoch 1 it was 120.
  rows = _records([100, 120, 140, 900, 900], train=[0.5, 0.6, 0.85, 0.9, 0.9])
  study.add_trial(optuna.trial.create_trial(
      state=optuna.trial.TrialState.COMPLETE, value=0.9,
      user_attrs={pruners.METRICS_ATTR: rows, pruners.CONFIG_ATTR: {}}))
  assert pruner.threshold(study, 1) == 240 and pruner.threshold(study, 4) == 280
  assert _run(study, _records([100, 200, 250, 300, 310])) == 3
  # The same best trial under the window: the mean over epochs (1, e] (140, then 520).
  window = _fisher()
  assert math.isnan(window.threshold(study, 1))
  assert window.threshold(study, 2) == 280 and window.threshold(study, 3) == 2 * 520


# --- (ii) The guarantees. -----------------------------------------------------------------------


def test_the_best_completed_trials_curve_is_never_pruned():
  for factor in (1.0, 1.5, 2.0):
    for top_fraction in (0.25, 0.5, 1.0):
      study = _falling_study(_fisher(factor=factor, top_fraction=top_fraction))
      assert _run(study, _records(_FALLING[0][1])) is None
      if factor == 1.0 and top_fraction == 0.25:  # The rule is tight: just above, pruned.
        assert _run(study, _records([f * 1.01 for f in _FALLING[0][1]])) == 2


def test_the_best_completed_trial_survives_in_random_studies():
  """Random completed trials (random values and Tr(F) curves); a trial on the best one's
  curve is never pruned, whatever the factor >= 1 and the share of good trials."""
  rng = np.random.default_rng(0)
  for _ in range(30):
    pruner = _fisher(factor=float(rng.uniform(1.0, 3.0)),
                     top_fraction=float(rng.uniform(0.05, 1.0)))
    study = optuna.create_study(direction='maximize', pruner=pruner)
    completed = [(float(rng.uniform()), [_F0] + list(rng.lognormal(5.0, 1.0, 7)))
                 for _ in range(int(rng.integers(1, 8)))]
    for value, fisher in completed:
      _add_completed(study, value, fisher)
    best = max(completed, key=lambda c: c[0])[1]
    assert _run(study, _records(best)) is None


def test_low_tr_f_failures_are_left_to_the_median_rule():
  """A learning rate so large it fails: Tr(F) collapses (or its records are NaN) and the
  validation accuracy stays at chance. The Fisher rule never prunes it; MedianPruner does."""
  collapsing = _records([_F0, 3, 1, 0.5, 0.2, 0.2, 0.1, 0.1], val=[0.1] * 8)
  diverging = _records([_F0, 80, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan],
                       val=[0.1] * 8)
  for rows in (collapsing, diverging):
    for factor in (1.0, 2.0):
      assert _run(_falling_study(_fisher(factor=factor)), rows) is None
    assert _run(_falling_study(optuna.pruners.MedianPruner(n_startup_trials=1)), rows) == 1


def test_nothing_is_pruned_before_the_window_opens_or_enough_trials_complete():
  exploding = _records([_F0, 5000, 5000, 5000, 5000, 5000, 5000, 5000])
  # Epoch 1: the window (1, 7] is empty, so even with no warm-up the first decision is at 2.
  assert _run(_falling_study(_fisher()), exploding) == 2
  assert _run(_falling_study(_fisher(warmup_epochs=4)), exploding) == 4
  pruner = _fisher(min_completed_trials=3)
  study = optuna.create_study(direction='maximize', pruner=pruner)
  for value, fisher in _FALLING[:2]:
    _add_completed(study, value, fisher)
  assert math.isnan(pruner.threshold(study, 2))  # Two complete trials of the three needed.
  assert _run(study, exploding) is None  # It completes: the third.
  assert _run(study, exploding) == 2


def test_pruner_settings_that_break_a_guarantee_are_refused():
  with pytest.raises(ValueError, match='factor=0.5 must be at least 1'):
    pruners.FisherExplosionPruner(factor=0.5)
  with pytest.raises(ValueError, match=r'top_fraction=0 must be in \(0, 1\]'):
    pruners.FisherExplosionPruner(top_fraction=0)
  with pytest.raises(ValueError, match="early_fisher='max' is unknown"):
    pruners.FisherExplosionPruner(early_fisher='max')
  with pytest.raises(ValueError, match='--reduction_factor=1 >= 2'):
    tune.make_pruner('hyperband', reduction_factor=1)
  with pytest.raises(ValueError, match="--pruner='asha' is unknown"):
    tune.make_pruner('asha')


# --- (iv) Fisher or median. ---------------------------------------------------------------------


def test_fisher_or_median_prunes_exactly_when_either_rule_does():
  combined = pruners.FisherOrMedianPruner(factor=2.0, warmup_epochs=1, min_completed_trials=3)
  study = optuna.create_study(direction='maximize', pruner=combined)
  for value, fisher in _FALLING:
    _add_completed(study, value, fisher)
  candidates = {  # Tr(F) after the initialization, validation accuracy.
      'high Tr(F), median accuracy': ([_F0] + [900] * 7, [0.8] * 8),
      'low Tr(F), low accuracy': ([_F0] + [150] * 7, [0.3] * 8),
      'high Tr(F), low accuracy': ([_F0] + [900] * 7, [0.3] * 8),
      'low Tr(F), high accuracy': ([_F0] + [150] * 7, [0.95] * 8)}
  seen = set()
  for fisher, val in candidates.values():
    trial = study.ask()
    reported = set()
    frame = pd.DataFrame(_records(fisher, val))
    for epoch in range(1, 8):
      tune.report_epochs(trial, frame[frame.epoch <= epoch], {}, reported)
      frozen = study.get_trials(deepcopy=False)[trial.number]
      by_fisher = combined.fisher.prune(study, frozen)
      by_median = combined.median.prune(study, frozen)
      assert combined.prune(study, frozen) == (by_fisher or by_median)
      assert trial.should_prune() == (by_fisher or by_median)  # Through the study.
      seen.add((by_fisher, by_median))
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
  assert seen == {(True, False), (False, True), (True, True), (False, False)}


# --- (iii) The replay decides what a live search decides. ---------------------------------------

_EPOCHS = 6


def _curve(fisher, val, diverge_after=None):
  rows = _records(fisher, val)
  return rows if diverge_after is None else rows[:diverge_after + 1]


# Ten runs of one seed (Tr(F) 1000 at step 0): good ones, slow high-Tr(F) ones, low-accuracy
# ones, and one that diverges after logging epoch 2.
_CURVES = [
    _curve([_F0, 200, 150, 140, 130, 130, 130], [0.70, 0.80, 0.85, 0.87, 0.88, 0.88, 0.89]),
    _curve([_F0, 900, 900, 880, 870, 860, 850], [0.40, 0.50, 0.55, 0.60, 0.62, 0.64, 0.65]),
    _curve([_F0, 180, 120, 110, 100, 100, 100], [0.72, 0.81, 0.86, 0.88, 0.89, 0.90, 0.90]),
    _curve([_F0, 3, 1, 1, 1, 1, 1], [0.10] * 7),
    _curve([_F0, 250, 200, 180, 170, 160, 160], [0.60, 0.70, 0.78, 0.82, 0.84, 0.85, 0.86]),
    _curve([_F0, 950, 940, 930, 900, 900, 890], [0.55, 0.65, 0.70, 0.74, 0.77, 0.79, 0.80]),
    _curve([_F0, 80, 60, 60], [0.10, 0.10, 0.10, 0.10], diverge_after=2),
    _curve([_F0, 220, 160, 150, 150, 140, 140], [0.75, 0.82, 0.85, 0.86, 0.87, 0.87, 0.87]),
    _curve([_F0, 600, 500, 450, 420, 400, 380], [0.50, 0.65, 0.72, 0.77, 0.80, 0.82, 0.83]),
    _curve([_F0, 190, 140, 130, 120, 120, 120], [0.70, 0.79, 0.84, 0.86, 0.87, 0.88, 0.88]),
]
_DIVERGES = {6}
_SETTINGS = dict(warmup_epochs=1, min_trials=2, fisher_factor=2.0, fisher_top_fraction=0.5,
                 min_resource=1, reduction_factor=2, max_resource=_EPOCHS)


def _stand_in_trainer(config, workdir, on_epoch):
  """Trains nothing: writes run `config.seed` of _CURVES to WORKDIR/metrics.jsonl epoch by
  epoch, as the trainer does, calling `on_epoch` after each epoch's records."""
  rows = _CURVES[config.seed]
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json())
  with open(os.path.join(workdir, rundir.METRICS_FILE), 'w') as f:
    for row in rows:
      f.write(rundir.format_record(row['step'], row['epoch'], {
          k: v for k, v in row.items() if k not in ('step', 'epoch')}))
      f.flush()
      if row['epoch'] >= 1 and on_epoch(int(row['epoch'])):
        return {}
  if config.seed in _DIVERGES:
    raise guard.DivergedError({'message': f'diverged at step {len(rows) * _STEPS}'})
  return {}


def _live_search(config, root, order, pruner, storage=None, study_name='equal'):
  """experiments.tune's worker over the runs `order` (queued in that order), one process;
  returns the study."""
  study = optuna.create_study(study_name=study_name, direction='maximize', pruner=pruner,
                              storage=storage)
  for index in order:
    study.enqueue_trial({'seed': int(index)})
  space = lambda trial: {'seed': trial.suggest_int('seed', 0, len(_CURVES) - 1)}  # noqa: E731
  worker = tune.Worker(config, space, str(root), len(order), journal=storage is not None,
                       log=lambda line: None, train_fn=_stand_in_trainer)
  tune.run_worker(study, worker, len(order))
  return study


def _decisions_live(study):
  out = []
  for t in study.trials:
    stopped = t.state.name == 'PRUNED' and not t.user_attrs.get('diverged')
    out.append((t.params['seed'], t.state.name, int(t.user_attrs['epochs']) if stopped
                else None))
  return out


def test_a_replay_decides_what_a_live_search_decides(tmp_path, default_config):
  config = tune.with_overrides(default_config, {'num_epochs': _EPOCHS})
  # The search without pruning, logged as the benchmark's sweep logs it (journal + workdirs).
  root = tmp_path / 'sweep'
  logged = _live_search(config, root, range(len(_CURVES)), tune.make_pruner('none'),
                        storage=tune.make_storage(str(root / tune.JOURNAL_FILE)),
                        study_name='sweep')
  name, trials = pruning.load_sweep(str(root))
  assert name == 'sweep' and [t.number for t in trials] == list(range(len(_CURVES)))
  for t, live in zip(trials, logged.trials):
    assert t.params == {'seed': t.number} and t.diverged == (t.number in _DIVERGES)
    if not t.diverged:
      assert t.value == live.value == max(r['val/accuracy'] for r in _CURVES[t.number][1:])
  order = pruning.make_orders(len(trials), 1, seed=3)[0]
  assert order != sorted(order)
  stopped = {}
  for name, factory in pruning.pruner_factories(
      pruning.PRUNERS + tuple(pruning.EXTRA_PRUNERS), **_SETTINGS).items():
    live = _decisions_live(_live_search(config, tmp_path / name, order, factory()))
    replayed = [(o.number, o.state, o.pruned_at)
                for o in pruning.replay_order(trials, order, factory(), study_name='equal')]
    assert replayed == live, name
    stopped[name] = sum(at is not None for _, _, at in live)
  # Every pruner but none and the v1 Fisher rule stopped some runs here: the comparison is not
  # one of empty decisions.
  assert stopped['none'] == stopped['fisher_v1'] == 0
  assert all(stopped[n] for n in ('median', 'fisher', 'fisher_or_median', 'successive_halving',
                                  'hyperband')), stopped


def test_any_pruner_asks_every_member_so_a_stateful_one_decides_as_alone():
  trials = [pruning.LoggedTrial.from_records(i, rows, diverged=i in _DIVERGES,
                                             config={'num_epochs': _EPOCHS})
            for i, rows in enumerate(_CURVES)]
  for order in pruning.make_orders(len(trials), 3, seed=1):
    alone = pruning.replay_order(trials, order, optuna.pruners.SuccessiveHalvingPruner(
        min_resource=1, reduction_factor=2))
    # The Fisher rule with an unreachable bar: it never fires, but it is asked first.
    inside = pruning.replay_order(trials, order, pruners.AnyPruner(
        pruners.FisherExplosionPruner(factor=1e9, warmup_epochs=0, min_completed_trials=1),
        optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)))
    decisions = lambda outcomes: [(o.number, o.state, o.pruned_at) for o in outcomes]  # noqa: E731
    assert decisions(alone) == decisions(inside)
    assert any(o.pruned_at for o in alone)


# --- The replay's numbers. -----------------------------------------------------------------------


def test_the_replay_scores_epochs_regret_top_quartile_and_the_selected_trials_test_accuracy():
  trials = [pruning.LoggedTrial.from_records(i, rows, diverged=i in _DIVERGES,
                                             config={'num_epochs': _EPOCHS})
            for i, rows in enumerate(_CURVES)]
  # Without pruning: 9 runs of 6 epochs and one that diverged in its epoch 3.
  assert sum(t.epochs for t in trials) == 9 * 6 + 3
  # Top quarter of 10 (3 trials): 0.90 (run 2), 0.89 (run 0), 0.88 (run 9; run 7 has 0.87).
  assert pruning.top_quartile(trials) == [2, 0, 9]
  outcomes = [pruning.Outcome(number=i, position=p, state='COMPLETE', pruned_at=None,
                              epochs=trials[i].epochs, value=trials[i].value)
              for p, i in enumerate([0, 1, 3, 4, 5, 7, 8, 9])]
  outcomes += [pruning.Outcome(2, 8, 'PRUNED', 2, 2.0, math.nan),
               pruning.Outcome(6, 9, 'PRUNED', None, 3.0, math.nan)]
  score = pruning.score(trials, outcomes)
  assert score['epochs'] == 8 * 6 + 2 + 3 and score['saved'] == pytest.approx(4 / 57)
  assert score['regret'] == pytest.approx(0.90 - 0.89) and score['selected'] == 0
  assert score['test_accuracy'] == pytest.approx(0.89 - 0.01)  # At run 0's best epoch.
  assert score['top_quartile_pruned'] == pytest.approx(1 / 3)
  assert score['pruned'] == 1 and score['complete'] == 8


def test_the_replay_writes_its_table_and_checks_the_criteria(tmp_path):
  trials = [pruning.LoggedTrial.from_records(i, rows, diverged=i in _DIVERGES,
                                             config={'num_epochs': _EPOCHS},
                                             params={'optimizer.learning_rate': 0.1,
                                                     'batch_size': 32})
            for i, rows in enumerate(_CURVES)]
  factories = pruning.pruner_factories(('none', 'median', 'fisher'), **_SETTINGS)
  result = pruning.replay(trials, factories, orders=4, seed=0)
  none = [r for r in result['rows'] if r['pruner'] == 'none']
  assert len(result['rows']) == 12 and all(r['saved'] == 0 and r['regret'] == 0 for r in none)
  verdicts = pruning.criteria(result['summary'])
  assert set(verdicts) == {'median', 'fisher'} and 'beats_median' in verdicts['fisher']
  text = pruning.write_outputs(str(tmp_path), trials, result, {'seed': 0})
  assert '| fisher |' in text and os.path.exists(tmp_path / 'replay.csv')
  saved = json.load(open(tmp_path / 'replay.json'))
  assert saved['criteria'] == verdicts and len(saved['orders']) == 4
