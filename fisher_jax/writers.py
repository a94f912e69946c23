"""Metric writers: TensorBoard and console (clu) plus the run's `metrics.jsonl`.

`metrics.jsonl` holds one JSON object per logged point, `{"step", "epoch", <metric>: value}`
(its format, crash tolerance and repair: `metrics_file`); analysis code reads only it and
`config.json`. Only process 0 writes files; the other processes get a writer that discards
everything.
"""

import os
from typing import Any, Mapping

from fisher_jax import _extras

_extras.require('train', __name__)

from clu import metric_writers
import numpy as np

from fisher_jax import metrics_file

METRICS_FILE = metrics_file.METRICS_FILE
read_metrics = metrics_file.read_records


class JsonlWriter(metric_writers.MetricWriter):
  """Appends scalars to `<workdir>/metrics.jsonl`, one line per `write_scalars` call.

  Each line is `{"step": step, "epoch": step / steps_per_epoch, **scalars}` (strict JSON, see
  `metrics_file`), written whole and flushed, so a killed run loses nothing it reported. Only
  analysis metrics go in (`metrics_file.is_metric`): clu's steps_per_sec/uptime reports and
  perf/* stay in TensorBoard, so each logged step has one record.
  """

  def __init__(self, workdir: str, steps_per_epoch: int):
    self._steps_per_epoch = steps_per_epoch
    self._file = open(os.path.join(workdir, METRICS_FILE), 'a')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    metrics = {k: float(np.asarray(v)) for k, v in scalars.items() if metrics_file.is_metric(k)}
    if not metrics:  # Speed and uptime (TensorBoard only): one record per logged step.
      return
    self._file.write(metrics_file.format_record(step, int(step) / self._steps_per_epoch,
                                                metrics))
    self._file.flush()

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
    self._file.flush()

  def close(self):
    self._file.close()


def create_writer(workdir: str, steps_per_epoch: int,
                  process_index: int = 0) -> metric_writers.MetricWriter:
  """TensorBoard events + console logging + metrics.jsonl on process 0; nothing elsewhere."""
  if process_index != 0:
    return metric_writers.MultiWriter([])
  default = metric_writers.create_default_writer(workdir, asynchronous=False)
  return metric_writers.MultiWriter([default, JsonlWriter(workdir, steps_per_epoch)])
