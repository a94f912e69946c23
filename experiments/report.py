"""Writes every figure of the runs under a root and a report.md stating each claim's verdict.

  python -m experiments.report --root DIR --out DIR [--early_method window|threshold]
      [--early_end_epoch E] [--early_threshold A]

It reads only config.json and metrics.jsonl of the runs (ROOT/<sweep>/<run>/, as written by
`experiments.run`), groups them by their config's `experiment.name`, calls the experiment's plot
function (`fisher_jax.analysis.plots`: a PNG and the CSV of the plotted numbers each) and checks
the claims C1-C5 (`fisher_jax.analysis.claims`). Experiments without runs are listed as missing.
"""

import argparse
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from fisher_jax import analysis
from fisher_jax.analysis import claims
from fisher_jax.analysis import plots
from fisher_jax.analysis import summaries

# sweep -> (number, title, figure function, what the figure shows)
EXPERIMENTS = {
    'fisher_explosion': (1, 'Fisher explosion', plots.plot_fisher_explosion,
                         'train/validation accuracy, Tr(F) and gradient norm per epoch for the '
                         'tuned and the small learning rate'),
    'early_fisher': (2, 'Early Tr(F) predicts generalization', plots.plot_early_fisher,
                     'early-phase Tr(F_i) against the best test accuracy; error bars: standard '
                     'deviation over seeds'),
    'regularizers': (3, 'Regularizers at a small learning rate', plots.plot_regularizers,
                     'validation accuracy and Tr(F) of FP and GPx against the small-lr '
                     'baseline (and the tuned lr)'),
    'fp_start': (4, 'FP applied from epoch e', plots.plot_fp_start,
                 'final test accuracy against the epoch FP starts; dashed: baselines'),
    'memorization': (5, 'Memorization of noisy labels', plots.plot_memorization,
                     'training accuracy and gradient norm on clean and noisy examples, and the '
                     'noisy/clean gradient-norm ratio, per FP strength'),
    'flat_minima': (6, 'Flat minima', plots.plot_flat_minima,
                    'histograms over seeds of Tr(H) at the best-test point and of the best test '
                    'accuracy, per starting model'),
    'hessian_trace': (7, 'Tr(H) over training', plots.plot_hessian_trace,
                      'Tr(H) and Tr(F) per epoch for several learning rates and batch sizes'),
    'curvature_correlations': (8, 'Tr(F) vs Tr(F_B) and Tr(H)',
                               plots.plot_curvature_correlations,
                               'every logged point: Tr(F) against Tr(F_B) and against Tr(H)'),
    'fp_every_k': (9, 'FP every 10 steps vs every step; exact FP', plots.plot_fp_every_k,
                   'validation accuracy and Tr(F) per epoch'),
    'per_step': (10, 'Per-step Tr(F) and mini-batch accuracy', plots.plot_per_step,
                 'per-step Tr(F) and mini-batch training accuracy'),
}


def _cell(value) -> str:
  if isinstance(value, (float, np.floating)):
    if math.isnan(value):
      return ''
    return f'{value:.4g}'
  return str(value)


def markdown_table(frame: pd.DataFrame, index: bool = False) -> str:
  """`frame` as a GitHub markdown table (floats to 4 significant digits)."""
  if index:
    frame = frame.reset_index()
  lines = ['| ' + ' | '.join(str(c) for c in frame.columns) + ' |',
           '|' + '---|' * len(frame.columns)]
  for row in frame.itertuples(index=False):
    lines.append('| ' + ' | '.join(_cell(v) for v in row) + ' |')
  return '\n'.join(lines)


def _final_accuracy_table(runs) -> pd.DataFrame:
  table = plots.final_table(runs)
  best = plots.final_table(runs, 'val/accuracy')
  table = table.rename(columns={'mean': 'final test acc', 'std': 'std (seeds)', 'n': 'seeds'})
  table['final val acc'] = best['mean'].to_numpy() if len(best) == len(table) else math.nan
  return table


def _experiment_section(name: str, runs, out: str, phase: summaries.EarlyPhase) -> List[str]:
  number, title, plot, caption = EXPERIMENTS[name]
  lines = [f'### {number}. {title} (`{name}`, {len(runs)} runs)', '']
  if name in ('early_fisher', 'flat_minima'):
    plot(runs, out, phase)
  else:
    plot(runs, out)
  lines += [f'![{name}]({name}.png)', '', f'{caption[0].upper()}{caption[1:]}. Numbers: '
            f'[{name}.csv]({name}.csv).', '']
  if name == 'regularizers':
    wide = plots.table_regularizers(runs, out)
    lines += ['Final test accuracy (mean ± std over seeds; '
              '[regularizers_table.csv](regularizers_table.csv)):', '',
              markdown_table(wide, index=True), '']
  elif name == 'early_fisher':
    table = plots.early_phase_table(runs, phase)
    points = analysis.mean_std(table, ['group', 'variant'], ['early_fisher', 'best'])
    lines += [markdown_table(points.rename(columns={
        'early_fisher_mean': 'Tr(F_i) mean', 'early_fisher_std': 'Tr(F_i) std',
        'best_mean': 'best test acc', 'best_std': 'std', 'n': 'seeds'})), '']
  elif name == 'flat_minima':
    table = plots.flat_minima_table(runs, phase)
    lines += [markdown_table(table.drop(columns=['run'])), '']
  elif name == 'memorization':
    rows = [{'group': r.group, 'variant': analysis.label_of(r), 'fp strength': plots.fp_strength(r),
             'final clean acc': analysis.final_value(r, 'train_clean/accuracy'),
             'final noisy acc': analysis.final_value(r, 'train_noisy/accuracy'),
             'mean clean acc': analysis.mean_value(r, 'train_clean/accuracy'),
             'mean noisy acc': analysis.mean_value(r, 'train_noisy/accuracy'),
             'final test acc': analysis.final_value(r)} for r in runs]
    table = pd.DataFrame(rows).sort_values(['group', 'fp strength'])
    lines += ['Training accuracy against the training labels; "mean" is over the logged epochs '
              '(the learning-speed measure of C4).', '', markdown_table(table), '']
  elif name == 'curvature_correlations':
    points = plots.curvature_points(runs)
    for column, label in (('fisher_trace_batch', 'Tr(F_B)'), ('hessian_trace', 'Tr(H)')):
      both = points.dropna(subset=[column])
      keep = (both.fisher_trace > 0) & (both[column] > 0)
      pearson = analysis.correlation(np.log(both.fisher_trace[keep]), np.log(both[column][keep]),
                                     'pearson')
      spearman = analysis.correlation(both.fisher_trace, both[column], 'spearman')
      lines += [f'* Tr(F) vs {label}: log-{pearson.describe()}; {spearman.describe()}.']
    lines.append('')
  else:
    table = _final_accuracy_table(runs)
    table['Tr(F_i)'] = [np.mean([summaries.early_value(r, phase) for r in runs
                                 if r.group == g and analysis.label_of(r) == v])
                        for g, v in zip(table.group, table.variant)]
    lines += [markdown_table(table), '']
  return lines


def _check_claims(runs, by_experiment, phase: summaries.EarlyPhase):
  return [
      claims.check_c1(runs, phase),
      claims.check_c2(by_experiment.get('regularizers', []), phase),
      claims.check_c3(by_experiment.get('early_fisher', []), phase),
      claims.check_c4(by_experiment.get('memorization', [])),
      claims.check_c5(by_experiment.get('flat_minima', []),
                      by_experiment.get('hessian_trace', []), phase),
  ]


SENSITIVITY_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _c1_sensitivity(runs, phase: summaries.EarlyPhase) -> List[str]:
  """C1's small/tuned Tr(F_i) ratio under each definition: the window and several thresholds."""
  phases = [phase] + [summaries.EarlyPhase(method='threshold', threshold=t)
                      for t in SENSITIVITY_THRESHOLDS]
  tables = [claims.check_c1(runs, p).table for p in phases]
  frame = tables[0][['experiment', 'group']].copy()
  for p, table in zip(phases, tables):
    frame[p.short()] = table['ratio'].to_numpy()
  return ['How the C1 ratio (small-lr over tuned-lr Tr(F_i)) depends on the definition of '
          'Tr(F_i) (empty: a run never reached that training accuracy):', '',
          markdown_table(frame)]


def write_report(root: str, out: str, phase: summaries.EarlyPhase,
                 alternative: Optional[summaries.EarlyPhase] = None,
                 command: Optional[str] = None) -> str:
  """Writes the figures, their CSVs and report.md for the runs under `root` into `out`.

  The figures use the early-phase definition `phase`; the claims are checked with `phase` and,
  when given, with `alternative` too (the report shows both verdicts).

  Returns:
    The path of report.md.
  """
  os.makedirs(out, exist_ok=True)
  runs = analysis.load_runs(root)
  by_experiment: Dict[str, list] = {}
  for run in runs:
    by_experiment.setdefault(run.experiment or run.sweep, []).append(run)
  lines = ['# fisher_jax report', '']
  if command:
    lines += [f'Produced by `{command}` from {len(runs)} runs (their config.json and '
              'metrics.jsonl only).', '']
  windows = sorted({phase.window_end(r) for r in runs}) if phase.method == 'window' else []
  lines += [f'Early-phase Tr(F_i): {phase.describe()}'
            + (f" (here: epoch {', '.join(f'{w:g}' for w in windows)})" if windows else '')
            + '. "Final" means the last evaluation of a run; means and standard deviations are '
            'over seeds.', '']

  results = _check_claims(runs, by_experiment, phase)
  other = _check_claims(runs, by_experiment, alternative) if alternative else None
  header = f'| claim | statement | verdict, Tr(F_i) = {phase.short()} |'
  if other:
    header += f' verdict, Tr(F_i) = {alternative.short()} |'
  lines += ['## Claims', '', header, '|---|---|---|' + ('---|' if other else '')]
  for k, r in enumerate(results):
    lines.append(f'| {r.key} | {r.statement} | **{r.verdict}** |' +
                 (f' **{other[k].verdict}** |' if other else ''))
  lines.append('')
  for k, r in enumerate(results):
    lines += [f'**{r.key}** ({r.verdict}): {r.evidence}.', '']
    if len(r.table):
      r.table.to_csv(os.path.join(out, f'claim_{r.key}.csv'), index=False)
    if other and other[k].evidence != r.evidence:
      lines += [f'With Tr(F_i) = {alternative.short()} ({other[k].verdict}): '
                f'{other[k].evidence}.', '']
      if len(other[k].table):
        other[k].table.to_csv(os.path.join(out, f'claim_{r.key}_alternative.csv'), index=False)
    if r.key == 'C1' and len(r.table):
      lines += _c1_sensitivity(runs, phase) + ['']
  lines += ['The rule for each verdict is in `fisher_jax/analysis/claims.py`; the numbers are '
            'in claim_C*.csv.', '', '## Experiments', '']
  for name in EXPERIMENTS:
    if by_experiment.get(name):
      lines += _experiment_section(name, by_experiment[name], out, phase)
    else:
      lines += [f'### {EXPERIMENTS[name][0]}. {EXPERIMENTS[name][1]} (`{name}`): no runs', '']
  path = os.path.join(out, 'report.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines))
  return path


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m experiments.report',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--root', required=True, help='the --root of experiments.run')
  parser.add_argument('--out', required=True, help='where the figures and report.md go')
  parser.add_argument('--early_method', choices=summaries.METHODS, default='window',
                      help='the definition of Tr(F_i) used by the figures; the claims are '
                           'checked with both definitions')
  parser.add_argument('--early_end_epoch', type=float, default=None,
                      help="window end (default: each run's experiment.early_epochs)")
  parser.add_argument('--early_threshold', type=float, default=0.8,
                      help="training accuracy ending the early phase ('threshold' method)")
  args = parser.parse_args(argv)
  phase = summaries.EarlyPhase(method=args.early_method, end_epoch=args.early_end_epoch,
                               threshold=args.early_threshold)
  other = 'threshold' if args.early_method == 'window' else 'window'
  alternative = summaries.EarlyPhase(method=other, end_epoch=args.early_end_epoch,
                                     threshold=args.early_threshold)
  command = 'python -m experiments.report ' + ' '.join(argv if argv is not None else
                                                       sys.argv[1:])
  print(write_report(args.root, args.out, phase, alternative, command))
  return 0


if __name__ == '__main__':
  sys.exit(main())
