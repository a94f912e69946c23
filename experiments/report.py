"""Writes every figure of the runs under a root and a report.md with each claim's verdict.

  python -m experiments.report --root DIR --out DIR
  python -m experiments.report --study confirmatory --root DIR --out DIR [--timing FILE]

The default study is the exploratory one (v1, below); `--study confirmatory` writes the
confirmatory study's report instead (protocol v2: `experiments.confirmatory`).

It reads only config.json and metrics.jsonl of the runs (ROOT/<sweep>/<run>/, as written by
`experiments.run`), groups them by their config's `experiment.name`, draws each experiment's
figure (`experiments.plots`: a PNG and the CSV of the plotted numbers each) and decides
the claims C1-C5 (`experiments.claims`) under the rules of docs/experiments.md: every
verdict with its effect size, 95% confidence interval and n; "held" only when the interval
excludes no effect; each run counted once; the primary Tr(F_i) definition decides, the others
are a sensitivity table. It also lists every run with its final training accuracy (the
convergence criterion), divergence, and test accuracy at the best-validation evaluation, and
gives the regularizer table in the paper's form. Experiments without runs are listed as
missing.
"""

import argparse
import copy
import datetime
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from experiments import claims
from experiments import plots
from fisher_jax import analysis
from fisher_jax import rundir
from fisher_jax.analysis import stats
from fisher_jax.analysis import summaries

# sweep -> (number, title, what the figure shows)
EXPERIMENTS = {
    'fisher_explosion': (1, 'Fisher explosion',
                         'training and validation accuracy, Tr(F) and gradient norm per epoch '
                         'for the tuned and the small learning rate (thin lines: seeds)'),
    'early_fisher': (2, 'Early Tr(F_i) against test accuracy across learning rates',
                     'small points: runs; large points: mean ± std over seeds per learning '
                     'rate (with experiment 1\'s runs, the C3 axis)'),
    'regularizers': (3, 'Regularizers at the small learning rate',
                     'validation accuracy and Tr(F) of the penalties against the small and '
                     'the tuned learning rate'),
    'fp_start': (4, 'FP applied from epoch e', 'test accuracy against the epoch FP starts; '
                 'dashed: the tuned and small learning rate'),
    'memorization': (5, 'Memorization of noisy labels',
                     'training accuracy and gradient norm on fixed clean and noisy subsets, '
                     'and the noisy/clean gradient-norm ratio, per FP strength'),
    'flat_minima': (6, 'Flat minima (two-phase)',
                    'Tr(H) and test accuracy at phase 2\'s best-validation point, per phase-1 '
                    'start (every run and mean ± std)'),
    'hessian_trace': (7, 'Tr(H) over training', 'Tr(H) and Tr(F) per epoch'),
    'curvature_correlations': (8, 'Tr(F) vs Tr(F_B) and Tr(H)',
                               'every logged point: Tr(F) against Tr(F_B) and against Tr(H)'),
    'fp_every_k': (9, 'FP every 10 steps vs every step; per-example FP',
                   'validation accuracy and Tr(F) per epoch'),
    'per_step': (10, 'Per-step Tr(F) and mini-batch accuracy',
                 'per-step Tr(F) and mini-batch training accuracy'),
}
_PLOT = {'fisher_explosion': plots.plot_fisher_explosion,
         'regularizers': plots.plot_regularizers, 'fp_start': plots.plot_fp_start,
         'memorization': plots.plot_memorization, 'hessian_trace': plots.plot_hessian_trace,
         'curvature_correlations': plots.plot_curvature_correlations,
         'fp_every_k': plots.plot_fp_every_k, 'per_step': plots.plot_per_step}
PRIMARY = summaries.EarlyPhase()  # max Tr(F) until training accuracy 0.8 (the protocol's)
SENSITIVITY = (
    summaries.EarlyPhase(threshold=0.7),
    summaries.EarlyPhase(threshold=0.9),
    summaries.EarlyPhase(method='threshold', threshold=0.8),
    summaries.EarlyPhase(method='window', start_epoch=0.0, end_epoch=5.0),
)
_PENALTY_NAMES = {'gpx': 'GPx', 'gp': 'GP', 'fp': 'FP', 'gpr': 'GPr'}
STUDIES = ('v1', 'confirmatory')


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


def _effect_text(effect: Optional[stats.Effect]) -> str:
  if effect is None:
    return ''
  return effect.describe()


def _relabel(run: analysis.Run, **fields) -> analysis.Run:
  """A copy of `run` whose experiment block has `fields` (for drawing it in another figure)."""
  other = copy.copy(run)
  other.config = copy.deepcopy(run.config)
  other.config.setdefault('experiment', {}).update(fields)
  return other


def _with_baselines(runs: Sequence[analysis.Run], every: Sequence[analysis.Run],
                    variants=('tuned_lr', 'small_lr')) -> List[analysis.Run]:
  """`runs` plus, when they lack them, the plain baseline runs of their setting from any
  experiment (e.g. fisher_explosion's), labelled with the group of `runs`."""
  have = {r.variant for r in runs}
  out = list(runs)
  groups = sorted({r.group for r in runs})
  for variant in variants:
    if variant in have:
      continue
    for group in groups:
      setting = group.split('/')[0]
      for base in claims.baseline(every, variant, setting):
        out.append(_relabel(base, group=group))
  return out


def _strength_labels(runs: Sequence[analysis.Run]) -> List[analysis.Run]:
  """Penalized runs labelled by penalty and strength ('fp=0.1'), others unchanged."""
  out = []
  for r in runs:
    name = r.get('regularizer.name', 'none')
    if name != 'none' and r.variant in (name, 'fp', 'gp', 'gpr', 'gpx'):
      out.append(_relabel(r, variant=f'{name}={float(r.get("regularizer.strength")):g}'))
    else:
      out.append(r)
  return out


def runs_table(runs: Sequence[analysis.Run]) -> pd.DataFrame:
  """Every run: its settings, final training accuracy, convergence, divergence, test accuracy
  at the best-validation evaluation and the primary Tr(F_i)."""
  rows = []
  for r in runs:
    noisy = bool(r.get('dataset.label_noise', 0.0))
    diverged = summaries.diverged(r)
    final_train = claims.final_train_accuracy(r)
    rows.append({
        'run': r.name, 'lr': r.get('optimizer.learning_rate'),
        'optimizer': r.get('optimizer.name'),
        'penalty': (f"{r.get('regularizer.name')} {float(r.get('regularizer.strength')):g}"
                    if r.get('regularizer.name', 'none') != 'none' else ''),
        'batch': r.get('batch_size'), 'seed': r.get('seed'), 'epochs': r.get('num_epochs'),
        'final train acc': final_train,
        'converged': ('diverged' if diverged else 'incomplete' if not summaries.finished(r)
                      else 'yes' if claims.converged(r) else 'no') + (' (noisy labels)' if noisy
                                                                      else ''),
        'test acc at best val': math.nan if diverged else summaries.test_at_best_val(r),
        'Tr(F_i)': math.nan if diverged else summaries.early_value(r, PRIMARY)})
  return pd.DataFrame(rows)


def regularizer_table(runs: Sequence[analysis.Run]) -> pd.DataFrame:
  """The paper's form: test accuracy (mean ± std, n) of eta*, eta_s and each penalty strength
  at eta_s, and the share of the eta*-eta_s gap each closes, per setting."""
  rows = []
  for setting in claims.settings_of(runs):
    tuned = claims.baseline(runs, 'tuned_lr', setting)
    small = claims.baseline(runs, 'small_lr', setting)
    if not (tuned and small):
      continue
    acc = lambda rs: [summaries.test_at_best_val(r) for r in rs]
    t, s = float(np.mean(acc(tuned))), float(np.mean(acc(small)))
    lr_small = small[0].get('optimizer.learning_rate')
    arms = [('eta* (tuned lr)', tuned), ('eta_s (small lr)', small)]
    penalized = claims.unique_runs([
        r for r in runs if r.experiment == 'regularizers' and r.get('regularizer.name') != 'none'
        and r.get('optimizer.learning_rate') == lr_small and claims._setting(r) == setting])
    for name in ('gpx', 'gp', 'fp', 'gpr'):
      for strength in sorted({float(r.get('regularizer.strength')) for r in penalized
                              if r.get('regularizer.name') == name}):
        arms.append((f'{_PENALTY_NAMES[name]} {strength:g}',
                     [r for r in penalized if r.get('regularizer.name') == name
                      and float(r.get('regularizer.strength')) == strength]))
    for label, arm in arms:
      values = acc(arm)
      mean = float(np.mean(values))
      rows.append({'setting': setting, 'arm': label,
                   'test acc (mean ± std, n)': stats.format_mean_std(values),
                   'gap closed': (mean - s) / (t - s) if t > s and label.split(' ')[0] not in (
                       'eta*', 'eta_s') else math.nan,
                   'final train acc': stats.format_mean_std(
                       [claims.final_train_accuracy(r) for r in arm]),
                   'matched-fit test acc': stats.format_mean_std(
                       [claims.matched_fit_test_accuracy(r) for r in arm])})
  return pd.DataFrame(rows)


def _validation_check(runs: Sequence[analysis.Run]) -> List[str]:
  """Which lr of the C3 axis has the best mean validation accuracy (a check of eta*)."""
  axis = claims.lr_axis_runs(runs)
  if not axis:
    return []
  frame = pd.DataFrame([{'lr': r.get('optimizer.learning_rate'),
                         'best val acc': summaries.best_value(r, 'val/accuracy')} for r in axis])
  table = frame.groupby('lr')['best val acc'].agg(['mean', 'count']).reset_index()
  best = table.loc[table['mean'].idxmax()]
  tuned = [r.get('experiment.tuned_lr') for r in axis if r.get('experiment.tuned_lr')]
  fixed = tuned[0] if tuned else math.nan
  same = np.isclose(best.lr, fixed)
  return ['Validation check of the tuned learning rate (mean over seeds of each run\'s best '
          'validation accuracy on the learning-rate axis): ' + ', '.join(
              f'lr {row.lr:g}: {row["mean"]:.4f} (n = {int(row["count"])})'
              for _, row in table.iterrows()) +
          f'. The best is lr {best.lr:g}; the protocol fixed eta* = {fixed:g} from the pilot' +
          ('.' if same else ' — they differ; the claims still use the pre-registered eta*.'), '']


def _timing(runs: Sequence[analysis.Run]) -> str:
  """When the runs' files were first and last written (the study's wall time)."""
  starts, ends = [], []
  for r in runs:
    for name, bucket in ((rundir.CONFIG_FILE, starts), (rundir.METRICS_FILE, ends)):
      path = os.path.join(r.path, name)
      if os.path.exists(path):
        bucket.append(os.path.getmtime(path))
  if not (starts and ends):
    return ''
  fmt = lambda t: datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
      '%Y-%m-%d %H:%M UTC')
  minutes = (max(ends) - min(starts)) / 60
  return (f'The runs\' files were first written at {fmt(min(starts))} and last at '
          f'{fmt(max(ends))} ({minutes:.0f} minutes of wall time).')


def _sensitivity(runs: Sequence[analysis.Run]) -> pd.DataFrame:
  """Each Tr(F_i)-dependent claim's effect under the primary and every other definition."""
  rows = []
  for phase in (PRIMARY,) + SENSITIVITY:
    results = {r.key: r for r in (claims.check_c1(runs, phase), claims.check_c2(runs, phase),
                                  claims.check_c3(runs, phase), claims.check_c5(runs, phase))}
    c2 = results['C2'].parts.get('Tr(F_i) ratio FP/small')
    c5 = results['C5'].parts.get('phase-1 Tr(F_i) ratio (lower/higher start)')
    row = {'Tr(F_i) definition': phase.short() + (' (primary)' if phase == PRIMARY else '')}
    for label, effect, direction in (
        ('C1 ratio small/tuned', results['C1'].effect, 'greater'),
        ('C2 Tr(F_i) ratio FP/small', c2, 'less'),
        ('C3 Spearman rho', results['C3'].effect, 'less'),
        ('C5 phase-1 ratio', c5, 'less')):
      row[label] = (f'{effect.estimate:.3g} [{effect.low:.3g}, {effect.high:.3g}] '
                    f'{effect.verdict(direction)}'
                    if effect is not None and np.isfinite(effect.estimate) else 'no data')
    row['C5 verdict'] = results['C5'].verdict
    rows.append(row)
  return pd.DataFrame(rows)


def _at_init(runs: Sequence[analysis.Run]) -> str:
  """How many runs' primary Tr(F_i) is their step-0 (initialization) value."""
  used = [r for r in claims.unique_runs(runs) if r.has(summaries.FISHER)]
  at_init = [r for r in used if summaries.early_value(r, PRIMARY) ==
             float(r.series(summaries.FISHER).value.iloc[0])]
  return (f'In {len(at_init)} of {len(used)} finished runs the primary Tr(F_i) is the value at '
          'step 0 (the initialization, before any update).')


def _experiment_section(name: str, runs, every, out: str) -> List[str]:
  number, title, caption = EXPERIMENTS[name]
  lines = [f'### {number}. {title} (`{name}`, {len(runs)} runs)', '']
  if name == 'early_fisher':
    axis = [r if r.experiment == 'early_fisher' else _relabel(
        r, group=f"{claims._setting(r)}/lr",
        variant=f"{r.variant} (lr={r.get('optimizer.learning_rate'):g})")
            for r in claims.lr_axis_runs(every)]
    plots.plot_early_fisher(axis, out, PRIMARY)
  elif name == 'flat_minima':
    plots.plot_flat_minima(runs, out, PRIMARY)
  else:
    shown = runs
    if name in ('regularizers', 'fp_start', 'fp_every_k'):
      shown = _with_baselines(runs, every)
    if name in ('regularizers', 'memorization'):
      shown = _strength_labels(shown)
    _PLOT[name](shown, out)
  lines += [f'![{name}]({name}.png)', '', f'{caption[0].upper()}{caption[1:]}. Numbers: '
            f'[{name}.csv]({name}.csv).', '']
  return lines


def write_report(root: str, out: str, command: Optional[str] = None) -> str:
  """Writes the figures, their CSVs and report.md for the runs under `root` into `out`.

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
              'metrics.jsonl only). ' + _timing(runs), '']
  lines += [f'Protocol: [docs/experiments.md](../experiments.md), "Protocol of the CPU-scale '
            f'study" (fixed before the runs). Primary Tr(F_i): {PRIMARY.describe()}. Test '
            'accuracy is read at each run\'s best-validation evaluation. Effects: ratio of '
            'geometric means (curvature) or difference of means (accuracy) with Welch\'s 95% '
            'interval, paired t interval over seeds (C4), Spearman rho with a bootstrap '
            'interval (C3). "held" only when the interval excludes no effect; each run counts '
            'once; diverged runs are never averaged in.', '']
  results = claims.check_all(runs, PRIMARY)
  lines += ['## Claims', '', '| claim | statement | effect [95% CI], n | verdict |',
            '|---|---|---|---|']
  for r in results:
    lines.append(f'| {r.key} | {r.statement} | {_effect_text(r.effect)} | **{r.verdict}** |')
  lines.append('')
  for r in results:
    lines += [f'**{r.key}** ({r.verdict}): {r.evidence}.', '']
    if len(r.table):
      r.table.to_csv(os.path.join(out, f'claim_{r.key}.csv'), index=False)
  lines += ['### Sensitivity to the definition of Tr(F_i)', '',
            'Each cell: effect [95% CI] and what it would give as a verdict; only the primary '
            'row decides.', '', markdown_table(_sensitivity(runs)), '', _at_init(runs), '']
  lines += _validation_check(runs)
  table = regularizer_table(runs)
  if len(table):
    table.to_csv(os.path.join(out, 'regularizers_table.csv'), index=False)
    lines += ['### Regularizers at the small learning rate (the paper\'s table)', '',
              'Test accuracy at the best-validation evaluation; "gap closed" = (acc - acc(eta_s))'
              ' / (acc(eta*) - acc(eta_s)); matched-fit: test accuracy when training accuracy '
              f'first reaches {claims.MATCHED_FIT:g}.', '', markdown_table(table), '']
  every = runs_table(runs)
  every.to_csv(os.path.join(out, 'runs.csv'), index=False)
  missing = every[every.converged.str.startswith('no')]
  diverged = every[every.converged == 'diverged']
  incomplete = every[every.converged.str.startswith('incomplete')]
  lines += ['## Every run', '',
            f'Convergence criterion: final-epoch training accuracy >= '
            f'{claims.CONVERGED_ACCURACY:g}. Not converged ({len(missing)}): '
            + (', '.join(missing.run) or 'none') + '. Diverged (' + str(len(diverged)) + '): '
            + (', '.join(diverged.run) or 'none') + '. Incomplete (not used by any claim; '
            f'{len(incomplete)}): ' + (', '.join(incomplete.run) or 'none') + '.', '',
            markdown_table(every), '',
            '## Experiments', '']
  for name in EXPERIMENTS:
    if by_experiment.get(name):
      lines += _experiment_section(name, by_experiment[name], runs, out)
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
  parser.add_argument('--study', choices=STUDIES, default=STUDIES[0],
                      help='v1: the exploratory study (C1-C5 of docs/experiments.md); '
                      'confirmatory: protocol v2 (C0-C5, experiments/confirmatory.py)')
  parser.add_argument('--timing', default=None,
                      help='confirmatory only: a JSON of the study\'s compute (wall_s, cpu_s, '
                      'max_rss_mb, runs, command) for the report')
  args = parser.parse_args(argv)
  command = 'python -m experiments.report ' + ' '.join(argv if argv is not None else
                                                       sys.argv[1:])
  if args.study == 'confirmatory':
    from experiments import confirmatory  # pylint: disable=g-import-not-at-top
    print(confirmatory.write_report(args.root, args.out, command, args.timing))
    return 0
  if args.timing is not None:
    parser.error('--timing is read by --study confirmatory only; drop it or add the study.')
  print(write_report(args.root, args.out, command))
  return 0


if __name__ == '__main__':
  sys.exit(main())
