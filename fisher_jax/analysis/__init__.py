"""Reading run directories (config.json + metrics.jsonl): curves, early-phase values, statistics.

  runs = analysis.load_runs('runs/cpu/fisher_explosion')
  analysis.early_fisher(runs[0])                  # the primary early-phase Tr(F_i)
  analysis.early_value(runs[0], analysis.EarlyPhase(method='window', end_epoch=5))
  analysis.test_at_best_val(runs[0])              # test accuracy at the best validation point
  analysis.ratio(a, b).verdict('greater')         # effect, 95% CI, held / not held / opposite
  analysis.correlation(x, y, method='spearman')   # with a bootstrap interval

The study's own figures and claims (v1's report) are study code beside the experiments:
`experiments.plots`, `experiments.claims`.
"""

from fisher_jax import _extras

_extras.require('analysis', __name__)

from fisher_jax.analysis.runs import Run, label_of, load_run, load_runs, read_metrics, runs_table
from fisher_jax.analysis.stats import (Correlation, Effect, correlation, difference,
                                       format_mean_std, mean_std, one_sided_confidence,
                                       paired_difference, paired_ratio, ratio)
from fisher_jax.analysis.summaries import (EarlyPhase, PRIMARY_THRESHOLD, best_value,
                                           convergence_epoch, converged_value, converged_values,
                                           diverged, early_fisher_window,
                                           early_fisher, early_value, final_value, finished,
                                           initial_value, mean_value,
                                           test_at_best_val, value_at_best, value_at_fit)
