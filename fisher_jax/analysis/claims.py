"""The study's claims, checked on whatever runs are present, with the numbers behind each verdict.

* C1 "small-lr runs reach an early Tr(F) peak >= 3x the tuned-lr runs'": in every
  (experiment, group) with variants small_lr and tuned_lr, the ratio of their mean Tr(F_i) >= 3.
* C2 "FP at small lr lowers that peak and raises test accuracy toward the tuned-lr level": in
  every regularizers group, FP's Tr(F_i) < small lr's and FP's final test accuracy > small lr's.
* C3 "across learning rates, early Tr(F) and best test accuracy correlate negatively": in every
  early_fisher group '<setting>/lr', Spearman rho < 0 with its bootstrap interval below 0.
* C4 "FP slows the fitting of noisy labels more than of clean ones": for most FP strengths of a
  memorization group, the relative slowdown on noisy examples exceeds that on clean ones.
* C5 "lower early Tr(F) ends at lower Tr(H)": the flat_minima runs continued from the start with
  the lower Tr(F_i) have the lower mean Tr(H) at their best-test point (without flat_minima
  runs: Spearman of Tr(F_i) against the final Tr(H) over the hessian_trace runs, > 0).

Each check returns a `ClaimResult` whose verdict is one of VERDICTS: 'held' (every setting
meets the rule), 'partly held' (some do, or the direction is right but not significant),
'not held', or 'no data' (no runs, or the numbers are undefined: e.g. a run never reached the
training accuracy that defines its Tr(F_i)). Means are over seeds; a per-setting table gives
every number used.
"""

import dataclasses
import math
from typing import List, Sequence

import numpy as np
import pandas as pd

from fisher_jax.analysis import plots
from fisher_jax.analysis import stats
from fisher_jax.analysis import summaries
from fisher_jax.analysis.runs import Run
from fisher_jax.analysis.runs import label_of

VERDICTS = ('held', 'partly held', 'not held', 'no data')
STATEMENTS = {
    'C1': "small-lr runs reach an early Tr(F) peak >= 3x the tuned-lr runs'",
    'C2': 'FP at small lr lowers that peak and raises test accuracy toward the tuned-lr level',
    'C3': 'across learning rates, early Tr(F) and best test accuracy correlate negatively',
    'C4': 'FP slows the fitting of noisy labels more than of clean ones',
    'C5': 'lower early Tr(F) ends at lower Tr(H)',
}


@dataclasses.dataclass
class ClaimResult:
  """A claim's verdict on the runs present.

  Attributes:
    key: 'C1' ... 'C5'.
    statement: the claim.
    verdict: one of VERDICTS.
    evidence: one or more sentences with the numbers.
    table: the per-setting numbers the verdict rests on.
  """
  key: str
  statement: str
  verdict: str
  evidence: str
  table: pd.DataFrame


def _verdict(flags: Sequence[bool]) -> str:
  if not len(flags):
    return 'no data'
  if all(flags):
    return 'held'
  return 'partly held' if any(flags) else 'not held'


def _mean(values) -> float:
  values = np.asarray(list(values), dtype=float)
  return float(np.nanmean(values)) if len(values) and np.isfinite(values).any() else math.nan


def _by_variant(runs: Sequence[Run], group: str, variant: str) -> List[Run]:
  return [r for r in runs if r.group == group and label_of(r) == variant]


def check_c1(runs: Sequence[Run], phase: summaries.EarlyPhase) -> ClaimResult:
  """C1 on every (experiment, group) holding both 'small_lr' and 'tuned_lr' runs."""
  rows = []
  for key in sorted({(r.experiment or r.sweep, r.group) for r in runs}):
    exp_runs = [r for r in runs if (r.experiment or r.sweep, r.group) == key]
    small = _by_variant(exp_runs, key[1], 'small_lr')
    tuned = _by_variant(exp_runs, key[1], 'tuned_lr')
    if not (small and tuned):
      continue
    peak_small = _mean(summaries.early_value(r, phase) for r in small)
    peak_tuned = _mean(summaries.early_value(r, phase) for r in tuned)
    rows.append({'experiment': key[0], 'group': key[1],
                 'lr_small': small[0].get('optimizer.learning_rate'),
                 'lr_tuned': tuned[0].get('optimizer.learning_rate'),
                 'early_fisher_small': peak_small, 'early_fisher_tuned': peak_tuned,
                 'ratio': peak_small / peak_tuned, 'seeds': min(len(small), len(tuned))})
  table = pd.DataFrame(rows)
  flags = [bool(r >= 3.0) for r in table.get('ratio', []) if np.isfinite(r)]
  evidence = '; '.join(
      f"{r.experiment}{'/' + r.group if r.group else ''}: Tr(F_i) {r.early_fisher_small:.3g} at "
      f"lr={r.lr_small:g} vs {r.early_fisher_tuned:.3g} at lr={r.lr_tuned:g}, ratio "
      f"{r.ratio:.2f}" for r in table.itertuples()) or 'no small_lr/tuned_lr pairs.'
  return ClaimResult('C1', STATEMENTS['C1'], _verdict(flags), evidence, table)


def check_c2(runs: Sequence[Run], phase: summaries.EarlyPhase) -> ClaimResult:
  """C2 on every group of the regularizer runs holding 'small_lr', 'fp' and 'tuned_lr'."""
  rows = []
  for group in sorted({r.group for r in runs}):
    small, fp, tuned = (_by_variant(runs, group, v) for v in ('small_lr', 'fp', 'tuned_lr'))
    if not (small and fp and tuned):
      continue
    acc = {k: _mean(summaries.final_value(r) for r in v)
           for k, v in (('small', small), ('fp', fp), ('tuned', tuned))}
    gap = acc['tuned'] - acc['small']
    rows.append({'group': group,
                 'early_fisher_small': _mean(summaries.early_value(r, phase) for r in small),
                 'early_fisher_fp': _mean(summaries.early_value(r, phase) for r in fp),
                 'test_acc_tuned': acc['tuned'], 'test_acc_small': acc['small'],
                 'test_acc_fp': acc['fp'],
                 'gap_closed': (acc['fp'] - acc['small']) / gap if gap > 0 else math.nan})
  table = pd.DataFrame(rows)
  flags = [bool(r.early_fisher_fp < r.early_fisher_small and r.test_acc_fp > r.test_acc_small)
           for r in table.itertuples()
           if np.isfinite([r.early_fisher_fp, r.early_fisher_small, r.test_acc_fp,
                           r.test_acc_small]).all()]
  evidence = '; '.join(
      f"{r.group or 'runs'}: Tr(F_i) {r.early_fisher_small:.3g} (small lr) -> "
      f"{r.early_fisher_fp:.3g} (FP); final test accuracy {r.test_acc_small:.4f} (small lr) -> "
      f"{r.test_acc_fp:.4f} (FP), tuned lr {r.test_acc_tuned:.4f}"
      + (f', {r.gap_closed:.0%} of the gap closed' if np.isfinite(r.gap_closed) else
         ' (no gap to close: small lr is not worse than tuned lr)')
      for r in table.itertuples()) or 'no group with small_lr, fp and tuned_lr runs.'
  return ClaimResult('C2', STATEMENTS['C2'], _verdict(flags), evidence, table)


def check_c3(runs: Sequence[Run], phase: summaries.EarlyPhase) -> ClaimResult:
  """C3 on every learning-rate group (a group whose name ends with '/lr', or all runs if none
  is so named): Spearman and Pearson correlations over the runs (seeds are separate points)."""
  lr_groups = sorted({r.group for r in runs if r.group.endswith('/lr')}) or sorted(
      {r.group for r in runs})
  rows, flags = [], []
  for group in lr_groups:
    table = plots.early_phase_table([r for r in runs if r.group == group], phase)
    spearman = stats.correlation(table.early_fisher, table.best, 'spearman')
    pearson = stats.correlation(table.early_fisher, table.best, 'pearson')
    rows.append({'group': group, 'n': spearman.n, 'spearman_rho': spearman.r,
                 'spearman_low': spearman.low, 'spearman_high': spearman.high,
                 'pearson_r': pearson.r, 'pearson_low': pearson.low,
                 'pearson_high': pearson.high, 'spearman_p': spearman.p_value})
    if spearman.n >= 3 and np.isfinite(spearman.r):
      flags.append('held' if spearman.high < 0 else ('weak' if spearman.r < 0 else 'no'))
  table = pd.DataFrame(rows)
  if not flags:
    verdict = 'no data'
  elif all(f == 'held' for f in flags):
    verdict = 'held'
  elif any(f in ('held', 'weak') for f in flags):
    verdict = 'partly held'
  else:
    verdict = 'not held'
  evidence = '; '.join(
      f"{r.group}: Spearman rho = {r.spearman_rho:.2f} [95% CI {r.spearman_low:.2f}, "
      f"{r.spearman_high:.2f}], Pearson r = {r.pearson_r:.2f} [{r.pearson_low:.2f}, "
      f"{r.pearson_high:.2f}], n = {r.n} runs" for r in table.itertuples()) or 'no runs.'
  return ClaimResult('C3', STATEMENTS['C3'], verdict, evidence, table)


def check_c4(runs: Sequence[Run]) -> ClaimResult:
  """C4 per group: for each FP strength s > 0, the relative slowdown of fitting,
  1 - (mean train accuracy over the epochs with FP s) / (the same without FP), on the clean
  and on the noisy examples (their training labels)."""
  rows = []
  for group in sorted({r.group for r in runs}):
    g = [r for r in runs if r.group == group]
    base = [r for r in g if plots.fp_strength(r) == 0]
    if not base:
      continue
    speed = {kind: _mean(summaries.mean_value(r, f'train_{kind}/accuracy') for r in base)
             for kind in ('clean', 'noisy')}
    for strength in sorted({plots.fp_strength(r) for r in g} - {0.0}):
      with_fp = [r for r in g if plots.fp_strength(r) == strength]
      fp_speed = {kind: _mean(summaries.mean_value(r, f'train_{kind}/accuracy')
                              for r in with_fp) for kind in ('clean', 'noisy')}
      rows.append({'group': group, 'strength': strength,
                   'clean_speed_none': speed['clean'], 'noisy_speed_none': speed['noisy'],
                   'clean_speed_fp': fp_speed['clean'], 'noisy_speed_fp': fp_speed['noisy'],
                   'clean_slowdown': 1 - fp_speed['clean'] / speed['clean'],
                   'noisy_slowdown': 1 - fp_speed['noisy'] / speed['noisy']})
  table = pd.DataFrame(rows)
  flags = []
  for group in sorted(set(table.get('group', []))):
    t = table[table.group == group]
    wins = int((t.noisy_slowdown > t.clean_slowdown).sum())
    flags.append(wins > len(t) / 2)
  evidence = '; '.join(
      f"{r.group}, FP {r.strength:g}: clean fitting slowed {r.clean_slowdown:+.1%}, noisy "
      f"{r.noisy_slowdown:+.1%}" for r in table.itertuples()) or 'no runs with and without FP.'
  return ClaimResult('C4', STATEMENTS['C4'], _verdict(flags), evidence, table)


def check_c5(flat_runs: Sequence[Run], hessian_runs: Sequence[Run],
             phase: summaries.EarlyPhase) -> ClaimResult:
  """C5 from the flat-minima runs: the continued runs of the phase-1 model with the lower early
  Tr(F_i) should have the lower mean Tr(H) at their best-test point. Supporting evidence (and
  the verdict when there are no flat-minima runs): Spearman correlation of early Tr(F_i) with
  the final Tr(H) over the hessian_trace runs."""
  rows = []
  table = plots.flat_minima_table(flat_runs, phase)
  parents = table[table.variant == 'phase1'].groupby('group').early_fisher.first()
  children = table[table.variant == 'phase2']
  for group in sorted(set(children.group) & set(parents.index)):
    c = children[children.group == group]
    rows.append({'source': 'flat_minima', 'group': group,
                 'parent_early_fisher': float(parents[group]),
                 'hessian_at_best_mean': float(c.hessian_at_best.mean()),
                 'hessian_at_best_std': float(c.hessian_at_best.std(ddof=1)) if len(c) > 1
                 else 0.0,
                 'best_test_accuracy_mean': float(c.best_test_accuracy.mean()), 'n': len(c)})
  flags, sentences = [], []
  if len(rows) >= 2 and np.isfinite([r['parent_early_fisher'] for r in rows]).all():
    ordered = sorted(rows, key=lambda r: r['parent_early_fisher'])
    low, high = ordered[0], ordered[-1]
    flags.append(low['hessian_at_best_mean'] < high['hessian_at_best_mean'])
    sentences.append(
        f"continued from {low['group']} (Tr(F_i) {low['parent_early_fisher']:.3g}): Tr(H) at "
        f"the best-test point {low['hessian_at_best_mean']:.3g} ± "
        f"{low['hessian_at_best_std']:.2g}, best test accuracy "
        f"{low['best_test_accuracy_mean']:.4f} (n={low['n']}); from {high['group']} (Tr(F_i) "
        f"{high['parent_early_fisher']:.3g}): {high['hessian_at_best_mean']:.3g} ± "
        f"{high['hessian_at_best_std']:.2g}, {high['best_test_accuracy_mean']:.4f} "
        f"(n={high['n']})")
  if hessian_runs:
    early = [summaries.early_value(r, phase) for r in hessian_runs]
    final = [summaries.final_value(r, plots.HESSIAN) for r in hessian_runs]
    rho = stats.correlation(early, final, 'spearman')
    rows.append({'source': 'hessian_trace', 'group': 'all', 'spearman_rho': rho.r,
                 'spearman_low': rho.low, 'spearman_high': rho.high, 'n': rho.n})
    sentences.append(f'over the hessian_trace runs, early Tr(F_i) vs final Tr(H): '
                     f'{rho.describe()}')
    if not flags and np.isfinite(rho.r):  # No flat-minima runs: this correlation decides.
      verdict = ('held' if rho.low > 0 else 'partly held' if rho.r > 0 else 'not held')
      return ClaimResult('C5', STATEMENTS['C5'], verdict, '; '.join(sentences),
                         pd.DataFrame(rows))
  return ClaimResult('C5', STATEMENTS['C5'], _verdict(flags), '; '.join(sentences) or 'no runs.',
                     pd.DataFrame(rows))
