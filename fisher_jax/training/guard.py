"""The divergence guard: a run stops at its first non-finite loss or penalty, and says so.

`config.guard.nonfinite`:

* 'stop' (default): the loop hands every logged mean of the training loss and the penalty (the
  sums it reduces anyway, so the check costs nothing on the device) to `check`; the first
  non-finite one raises `DivergedError`, whose message is one sentence naming the step, the
  metric and the learning rate. The loop then saves nothing more (the checkpoints already on
  disk hold finite states: `checkpoint.Checkpointer.save` refuses non-finite ones), writes
  `<workdir>/diverged.json` and the entry point exits with `exit_codes.DIVERGED`. Starting the
  run again exits at once with the same sentence.
* 'off': training goes on through non-finite values (non-finite checkpoints are still never
  written; their saves are skipped with a warning).

`read_divergence(workdir)` returns the record of a diverged run (the analysis and the sweep
runner read it), or None.
"""

import json
import math
import os
from typing import Any, Dict, Mapping, Optional

from fisher_jax import rundir

NONFINITE_MODES = ('stop', 'off')
# The logged means the guard looks at: the training loss and the penalty.
GUARDED_METRICS = ('train/loss', 'regularizer/penalty')


class DivergedError(Exception):
  """A run stopped at a non-finite value (see `exit_codes.DIVERGED`).

  Attributes:
    record: what `diverged.json` holds: step, metric, value, learning_rate, message.
  """

  def __init__(self, record: Dict[str, Any]):
    super().__init__(record['message'])
    self.record = record


def diverged(step: int, metric: str, value: float, learning_rate: float) -> DivergedError:
  """The error (and record) of a run whose `metric` is `value` (non-finite) at `step`."""
  message = (f'training diverged at step {step}: {metric} is {value} at learning rate '
             f'{learning_rate:g}; the checkpoints before it are kept (choose a smaller '
             'optimizer.learning_rate, or guard.nonfinite=off to train on).')
  return DivergedError({'step': int(step), 'metric': metric, 'value': str(value),
                        'learning_rate': float(learning_rate), 'message': message})


def check(values: Mapping[str, float], step: int, learning_rate: float, mode: str = 'stop'):
  """Raises `DivergedError` if a guarded metric of `values` is non-finite and `mode` is 'stop'.

  Args:
    values: logged metric means, e.g. {'train/loss': 0.3, 'regularizer/penalty': 1.2}.
    step: the step they were logged at.
    learning_rate: the learning rate at that step (named in the message).
    mode: `config.guard.nonfinite`.
  """
  if mode != 'stop':
    return
  for metric in GUARDED_METRICS:
    if metric in values and not math.isfinite(values[metric]):
      raise diverged(step, metric, values[metric], learning_rate)


def write_divergence(workdir: str, error: DivergedError):
  """Writes `<workdir>/diverged.json` (whole, then renamed)."""
  rundir.write_json(os.path.join(workdir, rundir.DIVERGED_FILE), error.record)


def read_divergence(workdir: str) -> Optional[Dict[str, Any]]:
  """The record of `diverged.json` in `workdir` (step, metric, value, learning_rate, message),
  or None if the run did not diverge."""
  path = os.path.join(workdir, rundir.DIVERGED_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
