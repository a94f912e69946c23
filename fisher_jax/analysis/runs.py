"""Reading finished (or running) runs: `config.json` and `metrics.jsonl`, into pandas.

A run directory is any directory holding both files (see docs/design.md, "a run's workdir"). The
analysis reads nothing else, except `diverged.json`, the divergence guard's record of a run that
stopped at a non-finite loss (`Run.diverged`): such a run is a result ("this learning rate
diverges"), never a seed to average with finished runs. Runs launched by `experiments.run` live
in `ROOT/<sweep>/<run>/`;
`load_runs(ROOT)` finds them at any depth and names each by its path relative to ROOT.

Configs written by the experiment configs carry an `experiment` block (`name`, `group`,
`variant`) that labels the run for the figures; runs without it get labels from their config
values (`label_of`).
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd

from fisher_jax import rundir
from fisher_jax.training import config_files
from fisher_jax.training import guard


@dataclasses.dataclass
class Run:
  """One run's record.

  Attributes:
    name: the run's path relative to the loading root, e.g. 'fisher_explosion/small_lr'.
    path: the run directory.
    config: the resolved config (nested dicts, as in config.json).
    metrics: one row per logged point, columns 'step', 'epoch' and every metric name; a metric
      missing from a point is NaN. Sorted by step; a step logged twice keeps its last record.
    divergence: the guard's record when the run diverged (step, metric, value, learning_rate,
      message), else None.
  """
  name: str
  path: str
  config: Dict[str, Any]
  metrics: pd.DataFrame
  divergence: Optional[Dict[str, Any]] = None

  @property
  def diverged(self) -> bool:
    """Whether the run stopped at a non-finite loss or penalty (it has no final metrics)."""
    return self.divergence is not None

  @property
  def sweep(self) -> str:
    """The first component of `name` (the sweep directory under the root), or ''."""
    parts = self.name.split('/')
    return parts[0] if len(parts) > 1 else ''

  def get(self, key: str, default: Any = None) -> Any:
    """The config value at a dotted key ('optimizer.learning_rate'), or `default`."""
    node = self.config
    for part in key.split('.'):
      if not isinstance(node, dict) or part not in node:
        return default
      node = node[part]
    return node

  @property
  def experiment(self) -> Optional[str]:
    return self.get('experiment.name')

  @property
  def group(self) -> str:
    return self.get('experiment.group') or ''

  @property
  def variant(self) -> str:
    return self.get('experiment.variant') or ''

  def series(self, metric: str) -> pd.DataFrame:
    """The points that logged `metric`: columns 'step', 'epoch', 'value' (sorted by step).

    Raises:
      KeyError: the run never logged `metric`.
    """
    if metric not in self.metrics:
      raise KeyError(f'run {self.name!r} has no metric {metric!r}.')
    rows = self.metrics[['step', 'epoch', metric]].dropna(subset=[metric])
    return rows.rename(columns={metric: 'value'}).reset_index(drop=True)

  def has(self, metric: str) -> bool:
    return metric in self.metrics and self.metrics[metric].notna().any()


def read_metrics(path: str) -> pd.DataFrame:
  """`<path>/metrics.jsonl` as a DataFrame (see `Run.metrics`); empty if the file is missing.

  A torn last line (a run killed while writing) is skipped, nothing else; non-finite values
  (written as "NaN", "Infinity") are floats again.

  Raises:
    ValueError: a line before the last one is damaged (naming the file and line).
  """
  records = rundir.read_records(path)
  if not records:
    return pd.DataFrame({'step': pd.Series(dtype=int), 'epoch': pd.Series(dtype=float)})
  frame = pd.DataFrame.from_records(records)
  # A resumed run may re-log a step: merge the records of each step, later ones winning.
  frame = frame.groupby('step', as_index=False, sort=True).last()
  return frame.reset_index(drop=True)


def load_run(path: str, name: Optional[str] = None) -> Run:
  """Loads the run in directory `path`.

  Raises:
    ValueError: `path` holds no config.json.
  """
  config_file = os.path.join(path, rundir.CONFIG_FILE)
  if not os.path.exists(config_file):
    raise ValueError(f'{path!r} holds no {rundir.CONFIG_FILE}; it is not a run directory.')
  with open(config_file) as f:
    config = json.load(f)
  return Run(name=name or os.path.basename(os.path.normpath(path)), path=path, config=config,
             metrics=read_metrics(path), divergence=guard.read_divergence(path))


def load_runs(root: str, experiment: Optional[str] = None) -> List[Run]:
  """Every run directory under `root` (at any depth), sorted by name.

  Args:
    root: a directory of runs (e.g. the --root of experiments.run).
    experiment: keep only runs whose config's `experiment.name` is this.
  """
  runs = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d != rundir.CHECKPOINT_DIR)
    if rundir.CONFIG_FILE in files and rundir.METRICS_FILE in files:
      name = os.path.relpath(directory, root).replace(os.sep, '/')
      run = load_run(directory, name=name)
      if experiment is None or run.experiment == experiment:
        runs.append(run)
  return sorted(runs, key=lambda r: r.name)


def runs_table(runs: Sequence[Run]) -> pd.DataFrame:
  """One row per run: 'name', 'diverged' and every config field as a dotted column."""
  return pd.DataFrame([{'name': r.name, 'diverged': r.diverged,
                        **config_files.flat_fields(r.config)} for r in runs])


def label_of(run: Run) -> str:
  """A short label: the config's `experiment.variant`, else lr/batch/regularizer values."""
  if run.variant:
    return run.variant
  parts = [f"lr={run.get('optimizer.learning_rate')}", f"B={run.get('batch_size')}"]
  if run.get('regularizer.name', 'none') != 'none':
    parts.append(f"{run.get('regularizer.name')}={run.get('regularizer.strength')}")
  return ' '.join(parts)
