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
from experiments import plots
from fisher_jax import analysis


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
                                    early_epochs=2.0, num_epochs=8))
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
  assert math.isnan(analysis.best_value(run, 'val/loss'))


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
  assert out.v_std[0] == pytest.approx(np.std([1, 2, 6], ddof=1))
  assert math.isnan(out.v_std[1])  # one seed: no standard deviation (not 0)
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
  val = saved[(saved.variant == 'tuned_lr') & (saved.metric == 'val/accuracy')]
  assert val['mean'].tolist() == pytest.approx([0.6, 0.7, 0.8])  # epochs 1-3, both seeds
  assert os.path.getsize(tmp_path / 'fig' / 'fisher_explosion.png') > 1000


def test_early_fisher_plot_points_are_seed_means_with_std(tmp_path):
  for i, lr in enumerate((0.001, 0.01, 0.1)):
    for seed in range(2):
      write_run(tmp_path / f'lr{i}_s{seed}', epoch_records(
          [1, 10.0 * (3 - i) + 2 * seed, 1], test=[None, 0.5 + 0.1 * i + 0.02 * seed, 0.5]),
          name='early_fisher', group='d/lr', variant=f'lr={lr}', lr=lr, seed=seed)
  out = plots.plot_early_fisher(analysis.load_runs(str(tmp_path)), str(tmp_path / 'fig'),
                               analysis.EarlyPhase(method='window'))
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
