"""The study's reporting rules on tiny synthetic run directories:
selection on validation, not test; overlapping intervals are not "held"; a run used by several
experiments counts once; one seed shows no standard deviation; diverged runs are no seeds; and
the primary Tr(F_i) definition (`analysis.early_fisher`)."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import claims
from experiments import plots
from fisher_jax import analysis
from fisher_jax.analysis import stats
from cases import epoch_records
from cases import write_run
from experiments import report


SMALL, TUNED = 0.001, 0.0316


def _records(peak, accuracy, *, val=None, train=(0.5, 0.85, 0.95)):
  """Epochs 0-3: Tr(F) rises to `peak` at epoch 1; training accuracy passes 0.8 at epoch 2."""
  return epoch_records([1.0, peak, peak / 2, 1.0], test=[None, 0.5, accuracy, accuracy - 0.01],
                       val=val, train=[None, *train], train_loss=[None, 1.0, 0.5, 0.3])


def _baselines(root, small_peaks, tuned_peaks, experiment='fisher_explosion'):
  for seed, peak in enumerate(small_peaks):
    write_run(root / experiment / f'small_s{seed}', _records(peak, 0.80), name=experiment,
              group='cpu', variant='small_lr', seed=seed, lr=SMALL)
  for seed, peak in enumerate(tuned_peaks):
    write_run(root / experiment / f'tuned_s{seed}', _records(peak, 0.85), name=experiment,
              group='cpu', variant='tuned_lr', seed=seed, lr=TUNED)


def test_early_fisher_is_the_maximum_until_training_accuracy_reaches_the_threshold():
  records = [{'step': 0, 'curvature/fisher_trace': 5.0},
             {'step': 5, 'curvature/fisher_trace': 9.0},
             {'step': 10, 'curvature/fisher_trace': 7.0, 'train/accuracy': 0.6},
             {'step': 20, 'curvature/fisher_trace': 8.0, 'train/accuracy': 0.85},
             {'step': 30, 'curvature/fisher_trace': 50.0, 'train/accuracy': 0.9}]
  assert analysis.early_fisher(records) == 9.0  # steps 0..20; the later 50 is not early
  assert analysis.early_fisher(records, threshold=0.5) == 9.0
  assert analysis.early_fisher(records, threshold=0.88) == 50.0
  assert math.isnan(analysis.early_fisher(records, threshold=0.95))
  assert analysis.early_fisher(records, threshold=0.95, allow_unfinished=True) == 50.0
  assert math.isnan(analysis.early_fisher([{'step': 0, 'train/accuracy': 0.9}]))


def test_test_accuracy_is_read_at_the_best_validation_epoch_not_the_best_test(tmp_path):
  run = analysis.load_run(write_run(tmp_path / 'r', epoch_records(
      [1, 2, 3, 4], test=[None, 0.70, 0.90, 0.80], val=[None, 0.60, 0.65, 0.75])))
  assert analysis.test_at_best_val(run) == 0.80  # epoch 3 is best on validation
  assert analysis.best_value(run) == 0.90        # the best test (not reported)


def test_the_penalty_strength_is_chosen_on_validation_not_test(tmp_path):
  _baselines(tmp_path, [50, 52, 51], [10, 11, 12])
  for strength, val, test in ((0.1, 0.70, 0.95), (1.0, 0.90, 0.82)):
    for seed in range(3):
      write_run(tmp_path / 'regularizers' / f'fp_{strength}_s{seed}',
                _records(20 + seed, test, val=[None, 0.5, val, val - 0.01]),
                name='regularizers', group='cpu', variant='fp', seed=seed, lr=SMALL,
                regularizer='fp', strength=strength)
  result = claims.check_c2(analysis.load_runs(str(tmp_path)), analysis.EarlyPhase())
  assert result.table.fp_strength[0] == 1.0  # best validation, although 0.1 has the best test
  assert result.table.acc_difference[0] == pytest.approx(0.82 - 0.80)


def test_overlapping_intervals_are_not_held_and_separated_ones_are(tmp_path):
  _baselines(tmp_path / 'a', [40, 44, 48], [10, 11, 12])
  held = claims.check_c1(analysis.load_runs(str(tmp_path / 'a')), analysis.EarlyPhase())
  assert held.verdict == 'held' and held.effect.low > 1
  # Mean ratio 1.2 but the seeds overlap: the interval includes 1, so not held.
  _baselines(tmp_path / 'b', [9, 15, 12], [8, 12, 10])
  overlap = claims.check_c1(analysis.load_runs(str(tmp_path / 'b')), analysis.EarlyPhase())
  assert overlap.effect.estimate > 1 and overlap.effect.low < 1 < overlap.effect.high
  assert overlap.verdict == 'not held'
  # The interval is Welch's on the logs, exponentiated.
  log_small, log_tuned = np.log([9, 15, 12]), np.log([8, 12, 10])
  ci = scipy_stats.ttest_ind(log_small, log_tuned, equal_var=False).confidence_interval()
  assert overlap.effect.low == pytest.approx(math.exp(ci.low))
  # Clearly the other way round: "opposite", not "held".
  _baselines(tmp_path / 'c', [10, 11, 12], [40, 44, 48])
  assert claims.check_c1(analysis.load_runs(str(tmp_path / 'c')),
                         analysis.EarlyPhase()).verdict == 'opposite'


def test_a_run_pair_used_by_several_experiments_counts_once(tmp_path):
  _baselines(tmp_path, [40, 44], [10, 11])
  # The same training runs launched again by two other sweeps (identical configs apart from the
  # experiment labels and the evaluation cadence): not new evidence.
  _baselines(tmp_path, [40, 44], [10, 11], experiment='regularizers')
  _baselines(tmp_path, [40, 44], [10, 11], experiment='fp_start')
  for path in (tmp_path / 'fp_start').glob('*/config.json'):
    path.write_text(path.read_text().replace('"eval_every_epochs": 1', '"eval_every_epochs": 2'))
  runs = analysis.load_runs(str(tmp_path))
  assert len(runs) == 12
  result = claims.check_c1(runs, analysis.EarlyPhase())
  assert result.effect.n == (2, 2) and len(result.runs) == 4
  assert all(name.startswith('fisher_explosion/') for name in result.runs)
  # A different seed is a different run and does count.
  write_run(tmp_path / 'regularizers' / 'small_s9', _records(46, 0.8), name='regularizers',
            group='cpu', variant='small_lr', seed=9, lr=SMALL)
  assert claims.check_c1(analysis.load_runs(str(tmp_path)),
                         analysis.EarlyPhase()).effect.n == (3, 2)


def test_one_seed_shows_no_standard_deviation(tmp_path):
  assert stats.format_mean_std([0.8712]) == '0.8712 (n = 1)'
  assert '±' in stats.format_mean_std([0.87, 0.88])
  assert math.isnan(stats.difference([0.9], [0.8, 0.7]).low)  # no interval from one run
  _baselines(tmp_path, [40, 44, 48], [10, 11, 12])
  write_run(tmp_path / 'regularizers' / 'gp_s0', _records(30, 0.83), name='regularizers',
            group='cpu', variant='gp', lr=SMALL, regularizer='gp', strength=0.1)
  table = report.regularizer_table(analysis.load_runs(str(tmp_path))).set_index('arm')
  assert table.loc['GP 0.1', 'test acc (mean ± std, n)'] == '0.83 (n = 1)'
  assert '±' in table.loc['eta_s (small lr)', 'test acc (mean ± std, n)']
  assert table.loc['GP 0.1', 'gap closed'] == pytest.approx((0.83 - 0.80) / (0.85 - 0.80))


def test_a_diverged_or_unfinished_run_is_no_seed(tmp_path):
  _baselines(tmp_path, [40, 44, 48], [10, 11, 12])
  records = _records(1000, 0.1)
  records[-1]['train/loss'] = float('nan')
  write_run(tmp_path / 'fisher_explosion' / 'small_s3', records, group='cpu', variant='small_lr',
            seed=3, lr=SMALL)
  # A run stopped (or still going) before its last epoch is no seed either.
  write_run(tmp_path / 'fisher_explosion' / 'small_s4', _records(1000, 0.9), group='cpu',
            variant='small_lr', seed=4, lr=SMALL, num_epochs=60)
  runs = analysis.load_runs(str(tmp_path))
  assert analysis.diverged(next(r for r in runs if r.name.endswith('small_s3')))
  assert not analysis.finished(next(r for r in runs if r.name.endswith('small_s4')))
  assert claims.check_c1(runs, analysis.EarlyPhase()).effect.n == (3, 3)
  table = report.runs_table(runs).set_index('run')
  assert table.loc['fisher_explosion/small_s3', 'converged'] == 'diverged'
  assert table.loc['fisher_explosion/small_s4', 'converged'] == 'incomplete'


def test_c3_c4_c5_effects_and_directions(tmp_path):
  for i, lr in enumerate((0.001, 0.003, 0.01, 0.0316)):
    for seed in range(2):
      write_run(tmp_path / 'early_fisher' / f'lr{i}_s{seed}',
                _records(100 / (i + 1) + seed, 0.7 + 0.04 * i + 0.001 * seed),
                name='early_fisher', group='cpu/lr', variant=f'lr={lr}', lr=lr, seed=seed)
  for seed in range(3):  # C4: FP slows the noisy examples' fitting more (paired by seed)
    for strength, clean, noisy in ((0.0, 0.9, 0.6), (0.1, 0.85 - 0.01 * seed, 0.3)):
      rows = [{'step': 10 * e, 'epoch': float(e), 'train_clean/accuracy': clean,
               'train_noisy/accuracy': noisy, 'val/accuracy': 0.8} for e in range(1, 4)]
      write_run(tmp_path / 'memorization' / f'fp{strength}_s{seed}', rows, name='memorization',
                group='cpu', variant='fp' if strength else 'none', seed=seed, label_noise=0.25,
                regularizer='fp' if strength else 'none', strength=strength)
  for start, peak, hessians in (('fp', 5.0, (10, 11, 12)), ('none', 50.0, (30, 28, 32))):
    for seed, h in enumerate(hessians):
      parent = write_run(tmp_path / 'flat_minima' / f'phase1_{start}_s{seed}',
                         _records(peak + seed, 0.8), name='flat_minima', group=start,
                         variant='phase1', seed=seed, setting='cpu',
                         regularizer='none' if start == 'none' else 'fp', strength=0.3)
      write_run(tmp_path / 'flat_minima' / f'phase2_{start}_s{seed}', epoch_records(
          [1, 1, 1], test=[None, 0.8, 0.7], val=[None, 0.8, 0.7], hessian=[None, h, 99.0]),
          name='flat_minima', group=start, variant='phase2', seed=seed, setting='cpu',
          init_from=parent)
  runs = analysis.load_runs(str(tmp_path))
  c3, c4, c5 = (claims.check_c3(runs, analysis.EarlyPhase()), claims.check_c4(runs),
                claims.check_c5(runs, analysis.EarlyPhase()))
  early = [100 / (i + 1) + seed for i in range(4) for seed in range(2)]
  accuracy = [0.7 + 0.04 * i + 0.001 * seed for i in range(4) for seed in range(2)]
  assert c3.effect.estimate == pytest.approx(scipy_stats.spearmanr(early, accuracy)[0])
  assert c3.verdict == 'held' and c3.effect.n == (8,) and c3.effect.high < 0
  assert c4.verdict == 'held' and c4.effect.n == (3,)
  assert c4.table.noisy_slowdown[0] == pytest.approx(0.5)
  assert c5.verdict == 'held'  # Tr(H) at the best-validation point: 10-12 against 28-32
  assert c5.effect.estimate == pytest.approx(
      math.exp(np.mean(np.log([10, 11, 12])) - np.mean(np.log([30, 28, 32]))))
  # Each continued run's parent Tr(F_i) is that of its own phase-1 run (same start and seed).
  table = plots.plot_flat_minima(runs, str(tmp_path / 'figures'))
  parents = {r.run: analysis.early_value(next(p for p in runs if p.variant == 'phase1'
                                              and p.group == r.group and p.get('seed') == r.seed))
             for r in table.itertuples()}
  assert table.parent_early_fisher.tolist() == [parents[r] for r in table.run]
  assert len(set(parents.values())) == len(parents) == 6
