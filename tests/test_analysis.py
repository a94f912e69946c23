"""Analysis on synthetic run directories with known numbers: loading, early-phase Tr(F_i),
best/final values, correlations with bootstrap intervals, the claims and the plot CSVs."""

import math
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from cases import epoch_records
from cases import write_run
from fisher_jax import analysis
from fisher_jax.analysis import claims
from fisher_jax.analysis import plots


def test_read_metrics_merges_a_relogged_step_and_skips_a_torn_line(tmp_path):
  path = write_run(tmp_path / 'r', [
      {'step': 0, 'epoch': 0.0, 'curvature/fisher_trace': 1.0},
      {'step': 10, 'epoch': 1.0, 'train/loss': 9.0},
      {'step': 10, 'epoch': 1.0, 'train/loss': 2.0, 'test/accuracy': 0.5},  # Resumed: relogged.
  ])
  with open(os.path.join(path, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 20, "epoch": 2.0, "train/lo')  # Killed while writing.
  frame = analysis.read_metrics(path)
  assert frame.step.tolist() == [0, 10]
  assert frame.loc[1, 'train/loss'] == 2.0 and frame.loc[1, 'test/accuracy'] == 0.5
  assert math.isnan(frame.loc[0, 'train/loss'])


def test_load_runs_finds_nested_runs_names_them_and_filters_by_experiment(tmp_path):
  write_run(tmp_path / 'a' / 'x', epoch_records([1, 2]), name='fisher_explosion')
  write_run(tmp_path / 'b' / 'y', epoch_records([1, 2]), name='early_fisher')
  os.makedirs(tmp_path / 'a' / 'x' / 'checkpoints' / '10')
  (tmp_path / 'not_a_run').mkdir()
  runs = analysis.load_runs(str(tmp_path))
  assert [r.name for r in runs] == ['a/x', 'b/y']
  assert runs[0].sweep == 'a' and runs[0].get('optimizer.learning_rate') == 0.001
  assert runs[0].get('optimizer.missing', 'd') == 'd'
  assert [r.name for r in analysis.load_runs(str(tmp_path), 'early_fisher')] == ['b/y']
  table = analysis.runs_table(runs)
  assert table['experiment.name'].tolist() == ['fisher_explosion', 'early_fisher']


def test_early_value_window_takes_the_maximum_inside_the_configured_window(tmp_path):
  run = analysis.load_run(write_run(tmp_path / 'r', epoch_records([1.0, 7.0, 5.0, 30.0, 2.0]),
                                    early_epochs=2.0))
  assert analysis.early_value(run, analysis.EarlyPhase(method='window')) == 7.0  # Epochs 0..2 from the config.
  assert analysis.early_value(run, analysis.EarlyPhase(method='window', end_epoch=3)) == 30.0
  assert analysis.early_value(run, analysis.EarlyPhase(method='window', start_epoch=2, end_epoch=2)) == 5.0
  assert math.isnan(analysis.early_value(run, analysis.EarlyPhase(method='window', start_epoch=9, end_epoch=10)))
  # Without experiment.early_epochs: end_fraction of num_epochs (0.5 * 8 = epoch 4).
  del run.config['experiment']['early_epochs']
  assert analysis.early_value(run, analysis.EarlyPhase(method='window', end_fraction=0.25)) == 7.0
  assert analysis.early_value(run, analysis.EarlyPhase(method='window', end_fraction=0.5)) == 30.0


def test_early_value_threshold_reads_trf_where_train_accuracy_first_reaches_it(tmp_path):
  # Per-step records: accuracy crosses 0.6 at step 3; Tr(F) is logged at steps 0, 2, 4, 6.
  records = [{'step': s, 'epoch': s / 10, 'train/accuracy': a}
             for s, a in zip(range(1, 8), [0.1, 0.3, 0.65, 0.5, 0.9, 0.95, 0.97])]
  records += [{'step': s, 'epoch': s / 10, 'curvature/fisher_trace': v}
              for s, v in zip((0, 2, 4, 6), (1.0, 2.0, 40.0, 3.0))]
  run = analysis.load_run(write_run(tmp_path / 'r', records))
  at = lambda a: analysis.early_value(run, analysis.EarlyPhase(method='threshold', threshold=a))
  assert at(0.6) == 40.0   # First Tr(F) record at or after step 3.
  assert at(0.3) == 2.0    # Reached at step 2, where Tr(F) was logged.
  assert math.isnan(at(0.99))
  with pytest.raises(ValueError, match='EarlyPhase.method'):
    analysis.EarlyPhase(method='peak')


def test_best_final_and_value_at_best(tmp_path):
  run = analysis.load_run(write_run(
      tmp_path / 'r', epoch_records([1, 2, 3, 4], test=[None, 0.5, 0.8, 0.7],
                                    hessian=[None, 10.0, 20.0, 30.0])))
  assert analysis.best_value(run) == 0.8
  assert analysis.final_value(run) == 0.7
  assert analysis.value_at_best(run, 'curvature/hessian_trace') == 20.0
  assert analysis.mean_value(run, 'test/accuracy', 2, 3) == pytest.approx(0.75)
  assert math.isnan(analysis.best_value(run, 'val/accuracy'))


def test_correlation_matches_scipy_and_its_interval_behaves():
  rng = np.random.default_rng(1)
  x = rng.normal(size=40)
  y = -2.0 * x + rng.normal(size=40)
  pearson = analysis.correlation(x, y, 'pearson')
  assert pearson.r == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
  assert pearson.p_value == pytest.approx(scipy_stats.pearsonr(x, y).pvalue)
  assert pearson.low < pearson.r < pearson.high < 0 and pearson.sign() == 'negative'
  assert pearson == analysis.correlation(x, y, 'pearson')  # Seeded: reproducible.
  # A monotone but nonlinear relation: Spearman is exactly -1, on every resample too.
  spearman = analysis.correlation(np.arange(1, 9.0), 1 / np.arange(1, 9.0) ** 3, 'spearman')
  assert spearman.r == pytest.approx(-1) and spearman.low == pytest.approx(-1)
  assert spearman.high == pytest.approx(-1)
  # Independent samples: the interval straddles 0.
  independent = analysis.correlation(rng.normal(size=200), rng.normal(size=200), 'spearman')
  assert independent.low < 0 < independent.high and independent.sign() == 'undetermined'
  # Non-finite pairs are dropped; too few points give NaN.
  assert analysis.correlation([1, 2, np.nan, 4], [1, 2, 3, np.inf], 'pearson').n == 2
  assert math.isnan(analysis.correlation([1, 2], [2, 1]).r)
  with pytest.raises(ValueError, match='method'):
    analysis.correlation(x, y, 'kendall')


def test_mean_std_over_seeds():
  frame = pd.DataFrame({'g': ['a', 'a', 'a', 'b'], 'v': [1.0, 2.0, 6.0, 5.0]})
  out = analysis.mean_std(frame, ['g'], ['v'])
  assert out.v_mean.tolist() == [3.0, 5.0]
  assert out.v_std.tolist() == [pytest.approx(np.std([1, 2, 6], ddof=1)), 0.0]
  assert out.n.tolist() == [3, 1]


def _explosion_runs(root, small_peak, tuned_peak, seeds=2):
  for seed in range(seeds):
    write_run(root / f'small_s{seed}', epoch_records(
        [1, small_peak + seed, small_peak / 2, 1], test=[None, 0.5, 0.6, 0.6 + 0.02 * seed],
        train=[None, 0.4, 0.5, 0.6]), variant='small_lr', seed=seed, lr=0.001)
    write_run(root / f'tuned_s{seed}', epoch_records(
        [1, tuned_peak + seed, tuned_peak, 1], test=[None, 0.6, 0.7, 0.8],
        train=[None, 0.5, 0.6, 0.7]), variant='tuned_lr', seed=seed, lr=0.0316)
  return analysis.load_runs(str(root))


def test_claim_c1_holds_at_a_4x_peak_and_not_at_2x(tmp_path):
  phase = analysis.EarlyPhase()
  held = claims.check_c1(_explosion_runs(tmp_path / 'a', 39.5, 9.5), phase)
  assert held.verdict == 'held'
  assert held.table.ratio.tolist() == [pytest.approx(40 / 10)]  # Means over seeds 0, 1.
  not_held = claims.check_c1(_explosion_runs(tmp_path / 'b', 19.5, 9.5), phase)
  assert not_held.verdict == 'not held' and not_held.table.ratio[0] == pytest.approx(2.0)
  assert claims.check_c1([], phase).verdict == 'no data'


def test_claim_c2_compares_fp_with_the_small_lr_and_tuned_baselines(tmp_path):
  for variant, peak, acc in (('tuned_lr', 5, 0.9), ('small_lr', 50, 0.7), ('fp', 10, 0.85)):
    write_run(tmp_path / variant, epoch_records([1, peak, 1], test=[None, 0.1, acc]),
              name='regularizers', variant=variant)
  result = claims.check_c2(analysis.load_runs(str(tmp_path)), analysis.EarlyPhase())
  assert result.verdict == 'held'
  assert result.table.gap_closed[0] == pytest.approx(0.75)  # (0.85 - 0.7) / (0.9 - 0.7)
  write_run(tmp_path / 'fp', epoch_records([1, 60, 1], test=[None, 0.1, 0.8]),
            name='regularizers', variant='fp')  # FP raises the peak: not held.
  assert claims.check_c2(analysis.load_runs(str(tmp_path)),
                         analysis.EarlyPhase()).verdict == 'not held'


def test_claim_c3_uses_the_learning_rate_groups_and_the_interval(tmp_path):
  lrs = (0.001, 0.003, 0.01, 0.03, 0.1)
  for i, lr in enumerate(lrs):
    for seed in range(2):
      peak = 100.0 / (i + 1) + seed   # Falls with the learning rate ...
      acc = 0.6 + 0.05 * i + 0.001 * seed  # ... while the accuracy rises.
      write_run(tmp_path / f'lr{i}_s{seed}', epoch_records([1, peak, 1], test=[None, acc, acc]),
                name='early_fisher', group='digits/lr', variant=f'lr={lr}', lr=lr, seed=seed)
  # A batch-size group is not part of C3 even though it correlates positively.
  for i, b in enumerate((32, 512, 2048)):
    write_run(tmp_path / f'bs{i}', epoch_records([1, 10 * (i + 1), 1],
                                                 test=[None, 0.5 + 0.1 * i, 0.5]),
              name='early_fisher', group='digits/batch_size', variant=f'B={b}', batch_size=b)
  runs = analysis.load_runs(str(tmp_path))
  result = claims.check_c3(runs, analysis.EarlyPhase())
  assert result.verdict == 'held'
  assert result.table.group.tolist() == ['digits/lr']
  early = [100.0 / (i + 1) + s for i in range(5) for s in range(2)]
  best = [0.6 + 0.05 * i + 0.001 * s for i in range(5) for s in range(2)]
  assert result.table.spearman_rho[0] == pytest.approx(scipy_stats.spearmanr(early, best)[0])
  assert result.table.n[0] == 10


def test_claim_c4_compares_relative_slowdowns(tmp_path):
  def noisy_run(name, strength, clean, noisy):
    records = [{'step': 10 * e, 'epoch': float(e), 'train_clean/accuracy': clean[e],
                'train_noisy/accuracy': noisy[e]} for e in range(3)]
    write_run(tmp_path / name, records, name='memorization', group='simple_cnn',
              variant=f'fp={strength}', regularizer='fp' if strength else 'none',
              strength=strength)
  noisy_run('none', 0.0, [0.5, 0.9, 1.0], [0.1, 0.4, 0.7])     # means 0.8 and 0.4
  noisy_run('fp1', 1.0, [0.5, 0.8, 0.9], [0.1, 0.2, 0.3])      # means 0.7333 and 0.2
  noisy_run('fp10', 10.0, [0.3, 0.5, 0.6], [0.1, 0.4, 0.7])    # means 0.4667 and 0.4
  result = claims.check_c4(analysis.load_runs(str(tmp_path)))
  t = result.table.set_index('strength')
  assert t.loc[1.0, 'clean_slowdown'] == pytest.approx(1 - 0.7333333 / 0.8)
  assert t.loc[1.0, 'noisy_slowdown'] == pytest.approx(0.5)
  assert t.loc[10.0, 'noisy_slowdown'] == pytest.approx(0.0)
  assert result.verdict == 'not held'  # 1 of 2 strengths is not a majority.


def test_claim_c5_and_the_flat_minima_figure(tmp_path):
  write_run(tmp_path / 'p1_fp', epoch_records([1, 5, 4]), name='flat_minima', group='fp',
            variant='phase1')
  write_run(tmp_path / 'p1_none', epoch_records([1, 50, 40]), name='flat_minima', group='none',
            variant='phase1')
  for seed, (h_fp, h_none) in enumerate(((10, 30), (12, 28), (14, 26))):
    write_run(tmp_path / f'p2_fp_{seed}', epoch_records(
        [1, 2, 3], test=[None, 0.9, 0.8], hessian=[None, h_fp, 99]), name='flat_minima',
        group='fp', variant='phase2', seed=seed)
    write_run(tmp_path / f'p2_none_{seed}', epoch_records(
        [1, 2, 3], test=[None, 0.7, 0.75], hessian=[None, 1, h_none]), name='flat_minima',
        group='none', variant='phase2', seed=seed)
  runs = analysis.load_runs(str(tmp_path))
  result = claims.check_c5(runs, [], analysis.EarlyPhase())
  rows = result.table.set_index('group')
  # Tr(H) at the best-test point (epoch 1 from fp, epoch 2 from none), not at the end.
  assert rows.loc['fp', 'hessian_at_best_mean'] == pytest.approx(12.0)
  assert rows.loc['none', 'hessian_at_best_mean'] == pytest.approx(28.0)
  assert result.verdict == 'held'  # The lower start (fp, Tr(F_i) 5 vs 50) ends lower.
  # Swap the phase-1 Tr(F) values: the lower start now ends higher.
  write_run(tmp_path / 'p1_fp', epoch_records([1, 500, 4]), name='flat_minima', group='fp',
            variant='phase1')
  swapped = claims.check_c5(analysis.load_runs(str(tmp_path)), [], analysis.EarlyPhase())
  assert swapped.verdict == 'not held'
  out = plots.plot_flat_minima(runs, str(tmp_path / 'fig'))
  assert sorted(out.hessian_at_best[out.group == 'fp']) == [10, 12, 14]
  assert set(out.parent_early_fisher) == {5.0, 50.0}
  assert os.path.getsize(tmp_path / 'fig' / 'flat_minima.png') > 1000


def test_claim_c5_falls_back_on_the_hessian_trace_runs(tmp_path):
  for i, (peak, final_h) in enumerate(((1, 10), (2, 20), (3, 30), (4, 40), (5, 50))):
    write_run(tmp_path / f'r{i}', epoch_records([1, peak, 1], hessian=[None, 1, final_h]),
              name='hessian_trace', variant=f'lr={i}')
  result = claims.check_c5([], analysis.load_runs(str(tmp_path)), analysis.EarlyPhase())
  assert result.verdict == 'held' and result.table.spearman_rho[0] == pytest.approx(1.0)


def _read_csv(path):
  return pd.read_csv(path)


def test_curve_plots_write_the_seed_mean_and_std(tmp_path):
  runs = _explosion_runs(tmp_path / 'runs', 39.5, 9.5)
  out = plots.plot_fisher_explosion(runs, str(tmp_path / 'fig'))
  saved = _read_csv(tmp_path / 'fig' / 'fisher_explosion.csv')
  pd.testing.assert_frame_equal(saved, out.reset_index(drop=True), check_dtype=False)
  fisher = saved[(saved.variant == 'small_lr') & (saved.metric == 'curvature/fisher_trace')]
  assert fisher['mean'].tolist() == [1.0, 40.0, 19.75, 1.0]   # Seeds 0, 1: 39.5 and 40.5.
  assert fisher['std'].tolist()[1] == pytest.approx(np.std([39.5, 40.5], ddof=1))
  test = saved[(saved.variant == 'tuned_lr') & (saved.metric == 'val/accuracy')]
  assert test.empty  # No val/accuracy logged in these runs: nothing drawn, nothing written.
  assert os.path.getsize(tmp_path / 'fig' / 'fisher_explosion.png') > 1000


def test_early_fisher_plot_points_are_seed_means_with_std(tmp_path):
  for i, lr in enumerate((0.001, 0.01, 0.1)):
    for seed in range(2):
      write_run(tmp_path / f'lr{i}_s{seed}', epoch_records(
          [1, 10.0 * (3 - i) + 2 * seed, 1], test=[None, 0.5 + 0.1 * i + 0.02 * seed, 0.5]),
          name='early_fisher', group='d/lr', variant=f'lr={lr}', lr=lr, seed=seed)
  out = plots.plot_early_fisher(analysis.load_runs(str(tmp_path)), str(tmp_path / 'fig'))
  saved = _read_csv(tmp_path / 'fig' / 'early_fisher.csv').set_index('variant')
  assert saved.loc['lr=0.001', 'early_fisher_mean'] == pytest.approx(31.0)
  assert saved.loc['lr=0.001', 'early_fisher_std'] == pytest.approx(np.std([30, 32], ddof=1))
  assert saved.loc['lr=0.1', 'best_mean'] == pytest.approx(0.71)
  assert (saved.n == 2).all() and len(out) == 3
  assert saved.spearman_rho.iloc[0] < -0.8


def test_fp_start_memorization_and_correlation_plots(tmp_path):
  for variant, acc in (('tuned_lr', 0.9), ('small_lr', 0.7)):
    write_run(tmp_path / 'fs' / variant, epoch_records([1, 2], test=[None, acc]),
              name='fp_start', variant=variant)
  for e, acc in ((0, 0.88), (2, 0.8), (4, 0.72)):
    write_run(tmp_path / 'fs' / f'fp{e}', epoch_records([1, 2], test=[None, acc]),
              name='fp_start', variant=f'fp_from_{e}', regularizer='fp', strength=0.1,
              start_epoch=e)
  out = plots.plot_fp_start(analysis.load_runs(str(tmp_path / 'fs')), str(tmp_path / 'fig'))
  fp = out[out.kind == 'fp'].sort_values('start_epoch')
  assert fp.start_epoch.tolist() == [0, 2, 4] and fp['mean'].tolist() == [0.88, 0.8, 0.72]
  assert out[out.kind == 'small_lr']['mean'].tolist() == [0.7]

  records = [{'step': 10 * e, 'epoch': float(e), 'train_clean/grad_norm': 2.0 + e,
              'train_noisy/grad_norm': 8.0, 'train_clean/accuracy': 0.5,
              'train_noisy/accuracy': 0.1} for e in range(3)]
  write_run(tmp_path / 'mem' / 'none', records, name='memorization', variant='none')
  out = plots.plot_memorization(analysis.load_runs(str(tmp_path / 'mem')), str(tmp_path / 'fig'))
  ratio = out[out.metric == 'grad_norm_ratio'].sort_values('epoch')
  assert ratio['mean'].tolist() == pytest.approx([4.0, 8 / 3, 2.0])

  rows = [{'step': 10 * e, 'epoch': float(e), 'curvature/fisher_trace': f,
           'curvature/fisher_trace_batch': f / 100, 'curvature/hessian_trace': 3 * f}
          for e, f in enumerate((1.0, 4.0, 2.0, 8.0))]
  write_run(tmp_path / 'cc' / 'a', rows, name='curvature_correlations', variant='lr=0.1')
  out = plots.plot_curvature_correlations(analysis.load_runs(str(tmp_path / 'cc')),
                                          str(tmp_path / 'fig'))
  assert out.fisher_trace_batch.tolist() == [0.01, 0.04, 0.02, 0.08]
  assert (out.hessian_trace == 3 * out.fisher_trace).all()


def test_regularizer_table_holds_final_test_accuracy(tmp_path):
  for variant, accs in (('tuned_lr', (0.9, 0.8)), ('fp', (0.85, 0.87))):
    for seed, acc in enumerate(accs):
      write_run(tmp_path / f'{variant}_{seed}', epoch_records([1, 2], test=[None, acc]),
                name='regularizers', group='wrn', variant=variant, seed=seed)
  wide = plots.table_regularizers(analysis.load_runs(str(tmp_path)), str(tmp_path / 'fig'))
  assert wide.columns.tolist() == ['tuned_lr', 'fp']
  assert wide.loc['wrn', 'fp'] == f'0.8600 ± {np.std([0.85, 0.87], ddof=1):.4f}'
  long = _read_csv(tmp_path / 'fig' / 'regularizers_table.csv').set_index('variant')
  assert long.loc['tuned_lr', 'mean'] == pytest.approx(0.85)
