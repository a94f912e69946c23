"""What a training run shows on the terminal.

A run prints (process 0 only, to stdout) what it is doing at start-up and while compiling, one
aligned line per epoch from the metrics written at its end (the console is one of the run's
metric writers; hyperparameters and other summaries are not shown), a progress bar within the
epoch on a terminal (tqdm; none when stdout is a file), and a summary at the end:

    epoch 1/2  loss 2.1491  acc 0.316  val 0.660  Tr(F)     196.8     1.4 steps/s  ETA 0:00:07
    ...
    best val accuracy 0.6597 at epoch 1 (test accuracy 0.6361 there); epoch 2/2, ran 0:01:10

`fisher_jax.training.quiet` keeps the libraries' chatter off it.
"""

import datetime
import math
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, TextIO

from fisher_jax import _extras

_extras.require('train', __name__)

import jax
import numpy as np
import tqdm

from fisher_jax.training import writers

# (label, metric, format, width): the columns of an epoch line, in order.
_COLUMNS = (
    ('loss', 'train/loss', '.4f', 6),
    ('acc', 'train/accuracy', '.3f', 5),
    ('val', 'val/accuracy', '.3f', 5),
    ('Tr(F)', 'curvature/fisher_trace', '.4g', 9),
    ('penalty', 'regularizer/penalty', '.4g', 9),
)


def _duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(round(seconds))))


def _cell(value: Optional[float], fmt: str, width: int) -> str:
  if value is None:
    return ' ' * width
  return format(value, fmt).rjust(width)


class Console(writers.ScalarsOnlyWriter):
  """The run's terminal output: start-up lines, progress, one line per epoch, the summary.

  It is one of the run's metric writers (an epoch's line is made from the scalars written at
  its last step); the loop also calls `advance` after each step and `finish` at the end.
  Disabled (prints nothing) on processes other than 0.

  Args:
    num_epochs: epochs of the whole run.
    steps_per_epoch: training steps per epoch.
    start_step: the step the run starts (or resumes) from.
    enabled: whether this process prints.
    stream: where lines go (default stdout); a progress bar is drawn only if it is a terminal.
  """

  def __init__(self, *, num_epochs: int, steps_per_epoch: int, start_step: int = 0,
               enabled: bool = True, stream: Optional[TextIO] = None):
    self._num_epochs = num_epochs
    self._steps_per_epoch = steps_per_epoch
    self._last_step = num_epochs * steps_per_epoch
    self._enabled = enabled
    self._stream = stream or sys.stdout
    self._tty = enabled and self._stream.isatty()
    self._bar = None
    self._t0 = time.monotonic()
    self._start_step = start_step
    # Speed: steps and time since the previous epoch line (from the first step's return, so
    # that compilation does not count).
    self._mark_step, self._mark_time = start_step, None
    self._columns = [c for c in _COLUMNS if c[1] != 'regularizer/penalty']

  def note(self, message: str):
    """A line saying what the run is doing (start-up, compilation, resuming)."""
    self._print(message)

  def _print(self, line: str):
    if not self._enabled:
      return
    if self._bar is not None:
      self._bar.write(line, file=self._stream)
    else:
      print(line, file=self._stream, flush=True)

  def advance(self, step: int):
    """After training step `step` (1-based count of updates done) was dispatched."""
    if self._mark_time is None:  # The first step returns once it is compiled.
      self._mark_step, self._mark_time = step, time.monotonic()
    if not self._tty:
      return
    epoch = math.ceil(step / self._steps_per_epoch)
    if self._bar is None:
      self._bar = tqdm.tqdm(total=self._steps_per_epoch, desc=f'epoch {epoch}/{self._num_epochs}',
                            unit='step', leave=False, file=self._stream, dynamic_ncols=True)
    self._bar.update(step - (epoch - 1) * self._steps_per_epoch - self._bar.n)
    if step % self._steps_per_epoch == 0:
      self._bar.close()
      self._bar = None

  def epoch_line(self, step: int, scalars: Mapping[str, float]) -> str:
    """The aligned line of the epoch that ends at `step`."""
    epoch = step // self._steps_per_epoch
    width = len(str(self._num_epochs))
    parts = [f'epoch {epoch:>{width}}/{self._num_epochs}']
    if 'regularizer/penalty' in scalars and _COLUMNS[-1] not in self._columns:
      self._columns.append(_COLUMNS[-1])
    for label, name, fmt, cell_width in self._columns:
      value = scalars.get(name)
      cell = _cell(None if value is None else float(value), fmt, cell_width)
      parts.append(f'{label} {cell}' if value is not None else ' ' * (len(label) + 1) + cell)
    now = time.monotonic()
    if step > self._start_step and self._mark_time is not None and step > self._mark_step:
      speed = (step - self._mark_step) / max(now - self._mark_time, 1e-9)
      eta = (self._last_step - step) / speed
      parts.append(f'{speed:6.1f} steps/s')
      parts.append(f'ETA {_duration(eta)}')
      self._mark_step, self._mark_time = step, now
    return '  '.join(parts).rstrip()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    if step % self._steps_per_epoch:
      return  # Logged within an epoch (log_every_steps): TensorBoard and metrics.jsonl only.
    if not any(k in scalars for _, k, _, _ in _COLUMNS):
      return  # E.g. clu's steps_per_sec report at an epoch's last step.
    self._print(self.epoch_line(step, {k: float(np.asarray(v)) for k, v in scalars.items()}))

  def finish(self, records: List[Dict[str, Any]], workdir: str):
    """The end-of-run summary from the run's whole metrics.jsonl (resumed parts included)."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    self._print(summary(records, self._steps_per_epoch, self._num_epochs,
                        time.monotonic() - self._t0))
    self._print(f'workdir {workdir}: config.json, metrics.jsonl, TensorBoard events '
                f'(tensorboard --logdir {workdir}), checkpoints/')

  def flush(self):
    self._stream.flush()

  def close(self):
    if self._bar is not None:
      self._bar.close()
      self._bar = None


def _count(n: int, noun: str) -> str:
  return f'{n:,} {noun}' + ('' if n == 1 else 's')


def describe_run(run, inp, params, num_devices: int) -> str:
  """'digits: 1,293 train examples; simple_cnn, 99,178 parameters; 8 devices; 12 epochs of 10
  steps of 128' (`run`: the run's settings)."""
  num_params = sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(params))
  return (f'{inp.spec.name}: {_count(inp.num_train, "train example")}; {run.model.name}, '
          f'{_count(num_params, "parameter")}; {_count(num_devices, "device")}; '
          f'{_count(run.num_epochs, "epoch")} of {_count(inp.steps_per_epoch, "step")} of '
          f'{run.batch_size}')


def summary(records: List[Dict[str, Any]], steps_per_epoch: int, num_epochs: int,
            seconds: float) -> str:
  """'best val accuracy A at epoch k (test accuracy T there); epoch n/N, ran H:MM:SS'."""
  evaluated = [r for r in records if 'val/accuracy' in r]
  last_epoch = max((r['step'] for r in records), default=0) // steps_per_epoch
  took = f'epoch {last_epoch}/{num_epochs}, ran {_duration(seconds)}'
  if evaluated:
    best = max(evaluated, key=lambda r: r['val/accuracy'])  # The first of equal ones.
    test = best.get('test/accuracy')
    there = f' (test accuracy {test:.4f} there)' if test is not None else ''
    return (f'best val accuracy {best["val/accuracy"]:.4f} at epoch '
            f'{best["step"] // steps_per_epoch}{there}; {took}')
  tested = [r for r in records if 'test/accuracy' in r]
  if tested:
    return f'no val split: test accuracy {tested[-1]["test/accuracy"]:.4f} at the end; {took}'
  return took
