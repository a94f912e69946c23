"""One plot function per experiment of the study, each writing `<name>.png` and `<name>.csv`.

Every function takes the loaded runs of its experiment (`runs.load_runs`) and an output
directory, writes the figure (matplotlib, Agg, no pyplot state) and the CSV of exactly the
numbers plotted, and returns that CSV's DataFrame. Runs are told apart by the `experiment`
block of their config (`group`: one setting, a panel row; `variant`: one line or point); runs
that share group and variant are seeds. With few seeds every seed is drawn (thin lines, or
points of a strip plot) with the mean over seeds (a thick line, or a point with error bars of
one standard deviation; none for a single seed). The tuned and the small learning rate have
the same colours in every figure (`COLORS`), each figure has one shared legend, and test
accuracy is always the one at the best-validation evaluation.

| experiment | function | figure |
| --- | --- | --- |
| 1 fisher_explosion | plot_fisher_explosion | train/val accuracy, Tr(F), gradient norm per epoch |
| 2 early_fisher | plot_early_fisher | early Tr(F_i) against best test accuracy |
| 3 regularizers | plot_regularizers, table_regularizers | val accuracy and Tr(F) curves; table |
| 4 fp_start | plot_fp_start | final test accuracy against the epoch FP starts |
| 5 memorization | plot_memorization | clean/noisy accuracy, gradient norms and their ratio |
| 6 flat_minima | plot_flat_minima | histograms of Tr(H) at the best test point and best test acc |
| 7 hessian_trace | plot_hessian_trace | Tr(H) (and Tr(F)) over training |
| 8 curvature_correlations | plot_curvature_correlations | Tr(F) vs Tr(F_B), Tr(F) vs Tr(H) |
| 9 fp_every_k | plot_fp_every_k | val accuracy and Tr(F): FP every step / every 10 / exact |
| 10 per_step | plot_per_step | per-step Tr(F) and mini-batch accuracy |
"""

import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from matplotlib import ticker
from matplotlib.figure import Figure
import numpy as np
import pandas as pd

from fisher_jax.analysis import stats
from fisher_jax.analysis import summaries
from fisher_jax.analysis.runs import Run
from fisher_jax.analysis.runs import label_of

FISHER = 'curvature/fisher_trace'
FISHER_BATCH = 'curvature/fisher_trace_batch'
GRAD_NORM = 'curvature/grad_norm'
HESSIAN = 'curvature/hessian_trace'

_TITLES = {
    'train/accuracy': 'train accuracy', 'val/accuracy': 'validation accuracy',
    'test/accuracy': 'test accuracy', FISHER: 'Tr(F)', FISHER_BATCH: 'Tr(F_B)',
    GRAD_NORM: 'gradient norm', HESSIAN: 'Tr(H)',
    'train_clean/accuracy': 'train accuracy, clean labels',
    'train_noisy/accuracy': 'train accuracy, noisy labels',
    'train_clean/grad_norm': 'gradient norm, clean examples',
    'train_noisy/grad_norm': 'gradient norm, noisy examples',
    'grad_norm_ratio': 'gradient norm ratio noisy / clean',
}
_LOG_SCALE = (FISHER, FISHER_BATCH, GRAD_NORM, HESSIAN, 'train_clean/grad_norm',
              'train_noisy/grad_norm')
Derived = Dict[str, Callable[[pd.DataFrame], pd.Series]]
# Fixed colours: the tuned and the small learning rate look the same in every figure.
COLORS = {'tuned_lr': '#1f77b4', 'small_lr': '#d62728', 'fp': '#2ca02c', 'gpx': '#9467bd',
          'gp': '#ff7f0e', 'gpr': '#8c564b', 'none': '#7f7f7f'}
# Colours of other variants: never the tuned lr's blue or the small lr's red.
_PALETTE = ('#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22',
            '#7f7f7f')
_UNITS = {'train/accuracy': 'accuracy (fraction)', 'val/accuracy': 'accuracy (fraction)',
          'test/accuracy': 'accuracy (fraction)', FISHER: 'Tr(F) (sum over parameters)',
          FISHER_BATCH: 'Tr(F_B)', GRAD_NORM: 'gradient norm (L2)', HESSIAN: 'Tr(H)'}


def color_of(variant: str, index: int = 0) -> str:
  """The colour of a variant: fixed for the known ones (tuned/small lr, penalties; a momentum
  variant has its plain variant's colour and a dashed line)."""
  key = variant.replace('_momentum', '').split(' ')[0]
  return COLORS.get(variant, COLORS.get(key, _PALETTE[index % len(_PALETTE)]))


def _plain_log_ticks(ax, axis: str = 'both') -> None:
  """Readable ticks on log axes ('100', '200', '500', no minor labels); an axis whose data span
  less than a factor of 10 goes back to a linear scale, where its ticks are readable."""
  formatter = ticker.FuncFormatter(lambda v, _: f'{v:g}')
  for name in ('x', 'y') if axis == 'both' else (axis,):
    which = ax.xaxis if name == 'x' else ax.yaxis
    if (ax.get_xscale() if name == 'x' else ax.get_yscale()) != 'log':
      continue
    low, high = ax.dataLim.intervalx if name == 'x' else ax.dataLim.intervaly
    if low > 0 and high / low < 10:
      (ax.set_xscale if name == 'x' else ax.set_yscale)('linear')
      continue
    which.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    which.set_major_formatter(formatter)
    which.set_minor_formatter(ticker.NullFormatter())


def _style(variant: str) -> str:
  return '--' if 'momentum' in variant else '-'



def _shared_legend(fig: Figure, axes) -> None:
  """One legend for the whole figure, below the panels, from every panel's labelled lines."""
  handles, labels = {}, []
  for ax in np.ravel(axes):
    for h, l in zip(*ax.get_legend_handles_labels()):
      if l not in handles:
        handles[l] = h
        labels.append(l)
  if labels:
    fig.legend([handles[l] for l in labels], labels, loc='upper center',
               ncol=min(len(labels), 4), fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))


def _title(metric: str) -> str:
  return _TITLES.get(metric, metric)


def _save(fig: Figure, frame: pd.DataFrame, out_dir: str, name: str) -> pd.DataFrame:
  os.makedirs(out_dir, exist_ok=True)
  fig.savefig(os.path.join(out_dir, f'{name}.png'), dpi=100, bbox_inches='tight')
  frame.to_csv(os.path.join(out_dir, f'{name}.csv'), index=False)
  return frame


def _groups(runs: Sequence[Run]) -> List[str]:
  return sorted({r.group for r in runs})


def _variant_order(runs: Sequence[Run]) -> List[str]:
  """Variants in the order their runs come (sweeps list baselines first)."""
  seen = []
  for r in runs:
    if label_of(r) not in seen:
      seen.append(label_of(r))
  return seen


def _long_curves(runs: Sequence[Run], metrics: Sequence[str],
                 derived: Optional[Derived] = None) -> pd.DataFrame:
  """Rows (group, variant, seed, run, metric, step, epoch, value) for every logged point."""
  rows = []
  for run in runs:
    frame = run.metrics.copy()
    for name, fn in (derived or {}).items():
      frame[name] = fn(frame) if len(frame) else []
    for metric in metrics:
      if metric not in frame:
        continue
      points = frame[['step', 'epoch', metric]].dropna()
      rows.append(pd.DataFrame({
          'group': run.group, 'variant': label_of(run), 'seed': run.get('seed'),
          'run': run.name, 'metric': metric, 'step': points['step'].to_numpy(),
          'epoch': points['epoch'].to_numpy(), 'value': points[metric].to_numpy()}))
  if not rows:
    return pd.DataFrame(columns=['group', 'variant', 'seed', 'run', 'metric', 'step', 'epoch',
                                 'value'])
  return pd.concat(rows, ignore_index=True)


def _seed_curves(long: pd.DataFrame) -> pd.DataFrame:
  """Mean/std/n over seeds at each (group, variant, metric, epoch)."""
  out = stats.mean_std(long, ['group', 'variant', 'metric', 'epoch'], ['value'])
  return out.rename(columns={'value_mean': 'mean', 'value_std': 'std'})


def _empty_figure(message: str) -> Figure:
  fig = Figure(figsize=(5, 2))
  ax = fig.add_subplot(1, 1, 1)
  ax.axis('off')
  ax.text(0.5, 0.5, message, ha='center', va='center')
  return fig


def _plot_curve_grid(runs: Sequence[Run], out_dir: str, name: str, metrics: Sequence[str],
                     variants: Optional[Sequence[str]] = None,
                     derived: Optional[Derived] = None, suptitle: str = '') -> pd.DataFrame:
  """Rows = groups, columns = metrics, one line (mean over seeds, ±1 std band) per variant."""
  if variants is not None:
    runs = [r for r in runs if label_of(r) in variants]
  broken = [r for r in runs if summaries.diverged(r)]  # drawn, never averaged in
  runs = [r for r in runs if not summaries.diverged(r)]
  curves = _seed_curves(_long_curves(runs, metrics, derived))
  groups = _groups(runs)
  if not len(curves):
    return _save(_empty_figure(f'{name}: no runs with {", ".join(metrics)}'), curves, out_dir,
                 name)
  order = [v for v in (variants or _variant_order(runs)) if v in set(curves.variant)]
  long = _long_curves(runs, metrics, derived)
  long_broken = _long_curves(broken, metrics, derived)
  fig = Figure(figsize=(3.6 * len(metrics), 2.9 * len(groups) + 0.6))
  axes = fig.subplots(len(groups), len(metrics), squeeze=False)
  colors = {v: color_of(v, i) for i, v in enumerate(order)}
  for i, group in enumerate(groups):
    for j, metric in enumerate(metrics):
      ax = axes[i][j]
      for variant in order:
        c = curves[(curves.group == group) & (curves.variant == variant) &
                   (curves.metric == metric)].sort_values('epoch')
        if not len(c):
          continue
        seeds = long[(long.group == group) & (long.variant == variant) & (long.metric == metric)]
        if seeds.run.nunique() > 1:  # every seed, thin, under the mean
          for _, one in seeds.groupby('run'):
            ax.plot(one.epoch, one.value, color=colors[variant], lw=0.6, alpha=0.35)
        n = int(c.n.max())
        ax.plot(c.epoch, c['mean'], color=colors[variant], lw=1.6, ls=_style(variant),
                label=f'{variant} (n = {n})' if n > 1 else variant)
      for _, one in long_broken[(long_broken.group == group) &
                                       (long_broken.metric == metric)].groupby('run'):
        ax.plot(one.epoch, one.value, color='0.5', lw=0.8, ls=':',
                label='diverged run (not averaged)')
      if metric in _LOG_SCALE and (curves[curves.metric == metric]['mean'] > 0).all():
        ax.set_yscale('log')
        _plain_log_ticks(ax, 'y')
      ax.set_title(f'{group}: {_title(metric)}' if group else _title(metric), fontsize=9)
      ax.set_xlabel('epoch')
      ax.set_ylabel(_UNITS.get(metric, _title(metric)), fontsize=8)
      ax.tick_params(labelsize=8)
      ax.grid(alpha=0.3)
  if suptitle:
    fig.suptitle(suptitle, fontsize=10)
  fig.tight_layout()
  _shared_legend(fig, axes)
  return _save(fig, curves, out_dir, name)


def plot_curves(runs: Sequence[Run], out_dir: str, name: str, metrics: Sequence[str],
                variants: Optional[Sequence[str]] = None, suptitle: str = '') -> pd.DataFrame:
  """Curves of `metrics` per epoch: rows = the runs' groups, columns = metrics, one line per
  variant (`label_of`: the mean over seeds, every seed thin beneath it; diverged runs dotted,
  never averaged in). Writes `<name>.png` and `<name>.csv`.

  Returns:
    The plotted curves: group, variant, metric, epoch, mean, std, n (over seeds).
  """
  return _plot_curve_grid(runs, out_dir, name, metrics, variants=variants, suptitle=suptitle)


def save_figure(fig: Figure, frame: pd.DataFrame, out_dir: str, name: str) -> pd.DataFrame:
  """Writes `fig` as `<out_dir>/<name>.png` and `frame` (the numbers plotted) as
  `<out_dir>/<name>.csv`; returns `frame`."""
  return _save(fig, frame, out_dir, name)


def plain_log_ticks(ax, axis: str = 'both') -> None:
  """Readable ticks on the log axes of `ax` ('100', '200', '500'); an axis whose data span less
  than a factor of 10 goes back to a linear scale."""
  _plain_log_ticks(ax, axis)


def empty_figure(message: str) -> Figure:
  """A figure holding only `message` (for a figure without data)."""
  return _empty_figure(message)


def plot_fisher_explosion(runs: Sequence[Run], out_dir: str) -> pd.DataFrame:
  """Experiment 1: train/val accuracy, Tr(F) and gradient norm per epoch, per learning rate.

  Returns:
    The curves: group, variant, metric, epoch, mean, std, n (over seeds).
  """
  return _plot_curve_grid(runs, out_dir, 'fisher_explosion',
                          ['train/accuracy', 'val/accuracy', FISHER, GRAD_NORM])


def early_phase_table(runs: Sequence[Run], phase: summaries.EarlyPhase,
                      target: str = 'test/accuracy') -> pd.DataFrame:
  """One row per run: group, variant, seed, run, learning_rate, batch_size, early_fisher, best.

  `early_fisher` is `summaries.early_value(run, phase)`; `best` the value of `target` at the
  best-validation evaluation (model selection on validation, never on test).
  """
  return pd.DataFrame([{
      'group': r.group, 'variant': label_of(r), 'seed': r.get('seed'), 'run': r.name,
      'learning_rate': r.get('optimizer.learning_rate'), 'batch_size': r.get('batch_size'),
      'early_fisher': summaries.early_value(r, phase),
      'best': summaries.value_at_best(r, target, by='val/accuracy')} for r in runs],
      columns=['group', 'variant', 'seed', 'run', 'learning_rate', 'batch_size', 'early_fisher',
               'best'])


def plot_early_fisher(runs: Sequence[Run], out_dir: str,
                      phase: summaries.EarlyPhase = summaries.EarlyPhase()) -> pd.DataFrame:
  """Experiment 2: early Tr(F_i) against test accuracy (at best validation), one panel per group.

  Small points are the runs; each large point is one variant (a learning rate or a batch size):
  the mean over its seeds, with error bars of one standard deviation over seeds on both axes
  (none for one seed). The panel title gives the Spearman correlation over the runs.

  Returns:
    One row per (group, variant): early_fisher_mean/std, best_mean/std, n, and the group's
    spearman_rho over runs.
  """
  table = early_phase_table(runs, phase)
  if not len(table):
    return _save(_empty_figure('early_fisher: no runs'), table, out_dir, 'early_fisher')
  points = stats.mean_std(table, ['group', 'variant', 'learning_rate', 'batch_size'],
                          ['early_fisher', 'best'])
  groups = _groups(runs)
  fig = Figure(figsize=(4.6 * len(groups), 4.0))
  axes = fig.subplots(1, len(groups), squeeze=False)[0]
  points['spearman_rho'] = math.nan
  for ax, group in zip(axes, groups):
    p = points[points.group == group].sort_values('learning_rate')
    per_run = table[table.group == group]
    rho = stats.correlation(per_run.early_fisher, per_run.best, 'spearman')
    points.loc[points.group == group, 'spearman_rho'] = rho.r
    for i, row in enumerate(p.itertuples()):
      color = color_of(row.variant, i)
      runs_of = per_run[per_run.variant == row.variant]
      ax.scatter(runs_of.early_fisher, runs_of.best, s=14, color=color, alpha=0.45, lw=0)
      ax.errorbar(row.early_fisher_mean, row.best_mean,
                  xerr=row.early_fisher_std if row.n > 1 else None,
                  yerr=row.best_std if row.n > 1 else None, fmt='o', ms=7, capsize=3,
                  color=color, label=f'{row.variant} (n = {row.n})')
    if (per_run.early_fisher > 0).all() and len(per_run):
      ax.set_xscale('log')
      _plain_log_ticks(ax, 'x')
    ax.set_xlabel('early-phase Tr(F_i)' + (' (log scale)' if ax.get_xscale() == 'log' else ''))
    ax.set_ylabel('test accuracy at best validation')
    ax.tick_params(labelsize=8)
    ax.set_title(f'{group}: Spearman rho = {rho.r:.2f} (n = {rho.n} runs)', fontsize=9)
    ax.grid(alpha=0.3)
  fig.suptitle(f'Tr(F_i): {phase.describe()}', fontsize=8)
  fig.tight_layout()
  _shared_legend(fig, axes)
  return _save(fig, points, out_dir, 'early_fisher')


def plot_regularizers(runs: Sequence[Run], out_dir: str) -> pd.DataFrame:
  """Experiment 3 (curves): validation accuracy and Tr(F) of FP and GPx against the small-lr
  baseline (and the tuned-lr reference), one row per setting."""
  order = ['tuned_lr', 'small_lr'] + sorted({label_of(r) for r in runs} -
                                           {'tuned_lr', 'small_lr'})
  return _plot_curve_grid(runs, out_dir, 'regularizers', ['val/accuracy', FISHER],
                          variants=order)


def final_table(runs: Sequence[Run], metric: str = 'test/accuracy') -> pd.DataFrame:
  """`metric` at the best-validation evaluation per (group, variant): mean, std over seeds
  (NaN for one seed), n (long format)."""
  frame = pd.DataFrame([{'group': r.group, 'variant': label_of(r),
                         'value': summaries.value_at_best(r, metric, by='val/accuracy')}
                        for r in runs],
                       columns=['group', 'variant', 'value'])
  return stats.mean_std(frame, ['group', 'variant'], ['value']).rename(
      columns={'value_mean': 'mean', 'value_std': 'std'})


def table_regularizers(runs: Sequence[Run], out_dir: str) -> pd.DataFrame:
  """Experiment 3 (table): final test accuracy per setting (rows) and variant (columns).

  Writes `regularizers_table.csv` (long: group, variant, mean, std, n) and returns the wide
  table of 'mean ± std' strings (what `experiments.report` prints).
  """
  long = final_table(runs)
  os.makedirs(out_dir, exist_ok=True)
  long.to_csv(os.path.join(out_dir, 'regularizers_table.csv'), index=False)
  if not len(long):
    return pd.DataFrame()
  long['cell'] = [f'{m:.4f} ± {s:.4f}' if n > 1 else f'{m:.4f}'
                  for m, s, n in zip(long['mean'], long['std'], long['n'])]
  wide = long.pivot(index='group', columns='variant', values='cell')
  order = [v for v in ('tuned_lr', 'small_lr', 'gpx', 'gp', 'fp', 'gpr') if v in wide]
  return wide[order + [v for v in wide.columns if v not in order]].fillna('')


def plot_fp_start(runs: Sequence[Run], out_dir: str) -> pd.DataFrame:
  """Experiment 4: final test accuracy against the epoch FP starts (regularizer.start_epoch),
  with the tuned-lr and small-lr baselines as horizontal lines (±1 std band over seeds).

  Returns:
    Rows: group, kind ('fp' or the baseline's variant), start_epoch (NaN for baselines), mean,
    std, n.
  """
  frame = pd.DataFrame([{
      'group': r.group,
      'kind': 'fp' if r.get('regularizer.name') == 'fp' else label_of(r),
      'start_epoch': (float(r.get('regularizer.start_epoch'))
                      if r.get('regularizer.name') == 'fp' else math.nan),
      'value': summaries.test_at_best_val(r)} for r in runs],
      columns=['group', 'kind', 'start_epoch', 'value'])
  if not len(frame):
    return _save(_empty_figure('fp_start: no runs'), frame, out_dir, 'fp_start')
  points = stats.mean_std(frame, ['group', 'kind', 'start_epoch'], ['value']).rename(
      columns={'value_mean': 'mean', 'value_std': 'std'})
  groups = _groups(runs)
  fig = Figure(figsize=(4.5 * len(groups), 3.4))
  axes = fig.subplots(1, len(groups), squeeze=False)[0]
  for ax, group in zip(axes, groups):
    p = points[points.group == group]
    fp = p[p.kind == 'fp'].sort_values('start_epoch')
    ax.errorbar(fp.start_epoch, fp['mean'], yerr=fp['std'], fmt='o-', capsize=3,
                label='FP from epoch e', color=COLORS['fp'])
    for kind, color in (('tuned_lr', COLORS['tuned_lr']), ('small_lr', COLORS['small_lr'])):
      base = p[p.kind == kind]
      if len(base):
        m, s = float(base['mean'].iloc[0]), float(base['std'].iloc[0])
        ax.axhline(m, color=color, ls='--', label=kind)
        if np.isfinite(s) and s > 0:
          ax.axhspan(m - s, m + s, color=color, alpha=0.15, lw=0)
    ax.set_xlabel('epoch e at which FP starts')
    ax.set_ylabel('test accuracy at best validation')
    ax.set_title(group or 'fp_start', fontsize=9)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  _shared_legend(fig, axes)
  return _save(fig, points, out_dir, 'fp_start')


def fp_strength(run: Run) -> float:
  """The FP strength of a run (0 without a regularizer)."""
  return float(run.get('regularizer.strength')) if run.get('regularizer.name') != 'none' else 0.0


def _ratio(frame: pd.DataFrame) -> pd.Series:
  if 'train_noisy/grad_norm' not in frame or 'train_clean/grad_norm' not in frame:
    return pd.Series(np.nan, index=frame.index)
  return frame['train_noisy/grad_norm'] / frame['train_clean/grad_norm']


def plot_memorization(runs: Sequence[Run], out_dir: str) -> pd.DataFrame:
  """Experiment 5: training accuracy and gradient norm on clean vs noisy examples, and the
  noisy/clean gradient norm ratio, one line per FP strength, one row per model."""
  return _plot_curve_grid(
      sorted(runs, key=fp_strength), out_dir, 'memorization',
      ['train_clean/accuracy', 'train_noisy/accuracy', 'train_clean/grad_norm',
       'train_noisy/grad_norm', 'grad_norm_ratio'], derived={'grad_norm_ratio': _ratio})


def flat_minima_table(runs: Sequence[Run],
                      phase: summaries.EarlyPhase = summaries.EarlyPhase()) -> pd.DataFrame:
  """Experiment 6, one row per run: group, variant, seed, early_fisher, test accuracy and Tr(H)
  at the best-validation point ('best_test_accuracy', 'hessian_at_best'), Tr(H) at the end.

  Phase-1 runs (variant 'phase1') give the early Tr(F_i) of their group; the continued runs
  (variant 'phase2') are drawn in the histograms.
  """
  return pd.DataFrame([{
      'group': r.group, 'variant': r.variant, 'seed': r.get('seed'), 'run': r.name,
      'early_fisher': summaries.early_value(r, phase),
      'best_test_accuracy': summaries.test_at_best_val(r),
      'hessian_at_best': summaries.value_at_best(r, HESSIAN),
      'final_hessian': summaries.final_value(r, HESSIAN)} for r in runs],
      columns=['group', 'variant', 'seed', 'run', 'early_fisher', 'best_test_accuracy',
               'hessian_at_best', 'final_hessian'])


def plot_flat_minima(runs: Sequence[Run], out_dir: str,
                     phase: summaries.EarlyPhase = summaries.EarlyPhase()) -> pd.DataFrame:
  """Experiment 6: strip plots of the continued runs' Tr(H) and test accuracy at the
  best-validation point, one colour per starting model (group), with mean ± std.

  Returns:
    `flat_minima_table` of the continued runs, with the early Tr(F_i) of the phase-1 run each
    continues (same group and seed) as 'parent_early_fisher'.
  """
  table = flat_minima_table(runs, phase)
  parents = table[table.variant == 'phase1'].groupby(['group', 'seed']).early_fisher.first()
  children = table[table.variant == 'phase2'].copy()
  children['parent_early_fisher'] = [parents.get((g, s), np.nan)
                                     for g, s in zip(children.group, children.seed)]
  if not len(children):
    return _save(_empty_figure('flat_minima: no continued runs'), children, out_dir,
                 'flat_minima')
  fig = Figure(figsize=(8, 3.8))
  axes = fig.subplots(1, 2)
  groups = sorted(children.group.unique())
  for k, column in enumerate(('hessian_at_best', 'best_test_accuracy')):
    for i, group in enumerate(groups):  # a strip plot: every run, and mean ± std
      values = children[children.group == group][column].dropna().to_numpy()
      parent = float(np.nanmean(table[(table.variant == 'phase1') &
                                      (table.group == group)].early_fisher))
      color = color_of(group, i)
      jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else np.zeros(1)
      axes[k].scatter(i + jitter[:len(values)], values, s=18, color=color, alpha=0.6, lw=0)
      if len(values):
        axes[k].errorbar(i + 0.22, values.mean(), yerr=values.std(ddof=1) if len(values) > 1
                         else None, fmt='o', ms=7, capsize=3, color=color,
                         label=f'start {group}: phase-1 Tr(F_i) {parent:.3g} (n = {len(values)})')
    axes[k].set_xticks(range(len(groups)), [f'start {g}' for g in groups], fontsize=8)
    axes[k].set_xlim(-0.5, len(groups) - 0.5)
    axes[k].set_ylabel({'hessian_at_best': 'Tr(H) at best validation',
                        'best_test_accuracy': 'test accuracy at best validation'}[column])
    axes[k].tick_params(labelsize=8)
    axes[k].grid(alpha=0.3, axis='y')
  fig.tight_layout()
  _shared_legend(fig, axes)
  return _save(fig, children, out_dir, 'flat_minima')


def plot_hessian_trace(runs: Sequence[Run], out_dir: str) -> pd.DataFrame:
  """Experiment 7: Tr(H) and Tr(F) over training, one row per sweep axis (lr, batch size)."""
  return _plot_curve_grid(runs, out_dir, 'hessian_trace', [HESSIAN, FISHER])


def curvature_points(runs: Sequence[Run]) -> pd.DataFrame:
  """Every logged point with Tr(F): run, group, variant, epoch, Tr(F), Tr(F_B), Tr(H)."""
  rows = []
  for r in runs:
    if not r.has(FISHER):
      continue
    m = r.metrics
    frame = pd.DataFrame({'run': r.name, 'group': r.group, 'variant': label_of(r),
                          'epoch': m.epoch, 'fisher_trace': m[FISHER],
                          'fisher_trace_batch': m.get(FISHER_BATCH, np.nan),
                          'hessian_trace': m.get(HESSIAN, np.nan)})
    rows.append(frame.dropna(subset=['fisher_trace']))
  columns = ['run', 'group', 'variant', 'epoch', 'fisher_trace', 'fisher_trace_batch',
             'hessian_trace']
  return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)


def _log_correlations(x, y) -> Tuple[stats.Correlation, stats.Correlation]:
  x, y = np.asarray(x, float), np.asarray(y, float)
  keep = (x > 0) & (y > 0)
  return (stats.correlation(np.log(x[keep]), np.log(y[keep]), 'pearson'),
          stats.correlation(x[keep], y[keep], 'spearman'))


def plot_curvature_correlations(runs: Sequence[Run], out_dir: str) -> pd.DataFrame:
  """Experiment 8: Tr(F) against Tr(F_B) and against Tr(H), every logged point of every run.

  Axes are logarithmic; each panel gives the Pearson correlation of the logarithms and the
  Spearman correlation (bootstrap intervals over points).
  """
  points = curvature_points(runs)
  fig = Figure(figsize=(9, 3.8))
  axes = fig.subplots(1, 2)
  variants = list(dict.fromkeys(points.variant))
  for ax, column, name in ((axes[0], 'fisher_trace_batch', 'Tr(F_B)'),
                           (axes[1], 'hessian_trace', 'Tr(H)')):
    both = points.dropna(subset=[column])
    for i, variant in enumerate(variants):
      p = both[both.variant == variant]
      ax.scatter(p.fisher_trace, p[column], s=12, color=color_of(variant, i), label=variant)
    title = f'Tr(F) vs {name}'
    if len(both) >= 3:
      pearson, spearman = _log_correlations(both.fisher_trace, both[column])
      title += f'\nlog-Pearson r={pearson.r:.2f}, Spearman rho={spearman.r:.2f}, n={pearson.n}'
      if ((both.fisher_trace > 0) & (both[column] > 0)).all():
        ax.set_xscale('log')
        ax.set_yscale('log')
        _plain_log_ticks(ax)
    ax.set_xlabel('Tr(F)' + (' (log scale)' if ax.get_xscale() == 'log' else ''))
    ax.set_ylabel(name + (' (log scale)' if ax.get_yscale() == 'log' else ''))
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  _shared_legend(fig, axes)
  return _save(fig, points, out_dir, 'curvature_correlations')


def plot_fp_every_k(runs: Sequence[Run], out_dir: str) -> pd.DataFrame:
  """Experiment 9: FP recomputed every step vs every 10 steps vs the exact per-example FP,
  with the small-lr and tuned-lr baselines: validation accuracy and Tr(F) per epoch."""
  return _plot_curve_grid(runs, out_dir, 'fp_every_k', ['val/accuracy', FISHER])


def plot_per_step(runs: Sequence[Run], out_dir: str) -> pd.DataFrame:
  """Experiment 10: per-step Tr(F) and mini-batch training accuracy (x: epochs, so batch sizes
  compare), one row per comparison: two learning rates, small vs large batch, FP strengths in
  large-batch training."""
  return _plot_curve_grid(runs, out_dir, 'per_step', [FISHER, 'train/accuracy'])
