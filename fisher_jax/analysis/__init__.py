"""Turning run directories (config.json + metrics.jsonl) into the study's numbers and figures.

  runs = analysis.load_runs('runs/cpu/fisher_explosion')
  phase = analysis.EarlyPhase(method='window', end_epoch=3)
  analysis.early_value(runs[0], phase)            # the early-phase Tr(F_i)
  analysis.correlation(x, y, method='spearman')   # with a bootstrap interval
  analysis.plots.plot_fisher_explosion(runs, 'figures/')   # PNG + CSV
"""

from fisher_jax import _extras

_extras.require('analysis', __name__)

from fisher_jax.analysis import claims
from fisher_jax.analysis import plots
from fisher_jax.analysis.runs import Run, label_of, load_run, load_runs, read_metrics, runs_table
from fisher_jax.analysis.stats import Correlation, correlation, mean_std
from fisher_jax.analysis.summaries import (EarlyPhase, best_value, early_value, final_value,
                                           mean_value, value_at_best)
