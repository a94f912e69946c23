"""The run's `metrics.jsonl`: strict JSON lines, crash-tolerant reading, repair on resume.

Each line is one JSON object `{"step": int, "epoch": float, <metric>: number, ...}` written with
a single `write` and flushed, so a crash can only tear the LAST line; one line per logged step
(performance reports, see `is_metric`, are not in it). The file is strict JSON
(any JSON parser reads it): a non-finite value is written as the string "NaN", "Infinity" or
"-Infinity" (which Python's `float()` reads back), never as the bare tokens Python's `json`
emits by default. `read_records` turns those strings back into floats.

Readers skip a torn last line (a crash mid-write) and nothing else: a damaged line elsewhere is
an error naming the file and line. `prepare_for_resume` (called by the training loop at every
start, before it appends) drops a torn last line and every record after the checkpoint the run
resumes from (all records when it starts from scratch), so after any crash and restart every
logged step appears exactly once.
"""

import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional

from fisher_jax.rundir import files

METRICS_FILE = 'metrics.jsonl'
_NONFINITE = {'NaN': math.nan, 'Infinity': math.inf, '-Infinity': -math.inf}


def is_metric(name: str) -> bool:
  """Whether `name` is an analysis metric ('train/loss', 'curvature/fisher_trace', ...).

  Performance reports are not: clu's 'steps_per_sec' and 'uptime' (no group) and 'perf/*'.
  """
  return '/' in name and not name.startswith('perf/')


def _encode(value: float):
  if math.isfinite(value):
    return value
  return 'NaN' if math.isnan(value) else ('Infinity' if value > 0 else '-Infinity')


def format_record(step: int, epoch: float, scalars: Mapping[str, float]) -> str:
  """One line (with its newline) of metrics.jsonl."""
  record = {'step': int(step), 'epoch': float(epoch)}
  record.update({k: _encode(float(v)) for k, v in scalars.items()})
  return json.dumps(record, allow_nan=False) + '\n'


def _decode(record: Dict[str, Any]) -> Dict[str, Any]:
  return {k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in record.items()}


def _read_lines(path: str):
  """(records, torn): the parsed records, and whether the last line was torn."""
  with open(path, 'rb') as f:
    lines = f.read().split(b'\n')
  # After the last '\n' comes b'' (a complete file) or the torn rest of a line.
  records, torn = [], False
  complete = [line for line in lines[:-1]]
  for number, line in enumerate(complete, start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
      if number == len(complete) and not lines[-1]:
        torn = True  # A last line that does not parse is a torn write too.
        continue
      raise ValueError(f'{path} line {number} is not JSON ({error}); the file is damaged '
                       'before its last line: repair or delete that line.') from None
  if lines[-1].strip():
    try:
      records.append(json.loads(lines[-1]))  # Complete but without its newline.
    except (json.JSONDecodeError, UnicodeDecodeError):
      torn = True
  return [_decode(r) for r in records], torn


def read_records(workdir: str) -> List[Dict[str, Any]]:
  """The records of `<workdir>/metrics.jsonl`, a torn last line skipped ([] if no file).

  Raises:
    ValueError: a line before the last one is not JSON.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  return _read_lines(path)[0]


def prepare_for_resume(workdir: str, resume_step: Optional[int]):
  """Rewrites metrics.jsonl for a run (re)starting after `resume_step` (None: from scratch).

  Keeps the records of steps <= `resume_step` (none when None) and drops a torn last line, so
  the records the run logs next are never duplicates. Written whole, then renamed.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return
  records, _ = _read_lines(path)
  kept = [r for r in records if resume_step is not None and r['step'] <= resume_step]
  files.write_text(path, ''.join(
      format_record(r['step'], r['epoch'],
                    {k: v for k, v in r.items() if k not in ('step', 'epoch')})
      for r in kept))
