"""Metric writers: TensorBoard (clu), the run's `metrics.jsonl` and the console.

`metrics.jsonl` holds one JSON object per logged point, `{"step", "epoch", <metric>: value}`
(its format, crash tolerance and repair: `fisher_jax.rundir.metrics`); analysis code reads only
it and `config.json`. Speed and uptime (clu's `ReportProgress`) go to TensorBoard only, as
`perf/steps_per_sec` and `perf/uptime`, through the run writer's `perf`. Only process 0 writes
files; the other processes get a writer that discards everything.
"""

import os
from typing import Any, Mapping, Optional

from fisher_jax import _extras

_extras.require('train', __name__)

from clu import metric_writers
import numpy as np

from fisher_jax import rundir

read_metrics = rundir.read_records
PERF_PREFIX = 'perf/'


class ScalarsOnlyWriter(metric_writers.MetricWriter):
  """A MetricWriter that keeps scalars (`write_scalars`) and drops every other kind."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    raise NotImplementedError

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    pass

  def close(self):
    pass


class JsonlWriter(ScalarsOnlyWriter):
  """Appends scalars to `<workdir>/metrics.jsonl`, one line per `write_scalars` call.

  Each line is `{"step": step, "epoch": step / steps_per_epoch, **scalars}` (strict JSON, see
  `fisher_jax.rundir.metrics`), written whole and flushed, so a killed run loses nothing it
  reported. Only analysis metrics go in (`rundir.is_metric`): clu's steps_per_sec/uptime
  reports and perf/* stay in TensorBoard, so each logged step has one record.
  """

  def __init__(self, workdir: str, steps_per_epoch: int):
    self._steps_per_epoch = steps_per_epoch
    self._file = open(os.path.join(workdir, rundir.METRICS_FILE), 'a')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    metrics = {k: float(np.asarray(v)) for k, v in scalars.items() if rundir.is_metric(k)}
    if not metrics:  # Speed and uptime (TensorBoard only): one record per logged step.
      return
    self._file.write(rundir.format_record(step, int(step) / self._steps_per_epoch,
                                                metrics))
    self._file.flush()

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class _PerfWriter(ScalarsOnlyWriter):
  """Writes scalars to TensorBoard only, under perf/ ('steps_per_sec' -> 'perf/steps_per_sec')."""

  def __init__(self, tensorboard: metric_writers.MetricWriter):
    self._tensorboard = tensorboard

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._tensorboard.write_scalars(step, {
        k if k.startswith(PERF_PREFIX) else PERF_PREFIX + k: v for k, v in scalars.items()})


class RunWriter(metric_writers.MultiWriter):
  """A run's metrics (TensorBoard, metrics.jsonl, console); `perf`: speed for TensorBoard only.

  Pass `perf` to `clu.periodic_actions.ReportProgress(writer=...)`.
  """

  def __init__(self, writers, perf: metric_writers.MetricWriter):
    super().__init__(writers)
    self.perf = perf


def create_writer(workdir: str, steps_per_epoch: int, process_index: int = 0,
                  console: Optional[metric_writers.MetricWriter] = None) -> RunWriter:
  """TensorBoard events + metrics.jsonl (+ `console`) on process 0; nothing elsewhere."""
  if process_index != 0:
    return RunWriter([], perf=metric_writers.MultiWriter([]))
  tensorboard = metric_writers.SummaryWriter(workdir)
  writers = [tensorboard, JsonlWriter(workdir, steps_per_epoch)]
  return RunWriter(writers + ([console] if console is not None else []),
                   perf=_PerfWriter(tensorboard))
