"""Writing a workdir's files whole: write a temporary file beside the target, then rename.

`os.replace` is atomic on POSIX file systems: a reader (another process checking the workdir,
the analysis, the sweep runner) sees the old file or the new one, never half of one, and a run
killed while writing leaves the old file and a stray temporary file, which the next write
replaces. Every file of a workdir that is written whole goes through `write_text` or
`write_json` (config.json, diverged.json, metrics.jsonl when it is repaired on resume,
runner_done.json); metrics.jsonl's appends and the lock file are the only files written in place.
"""

import json
import os
from typing import Any


def write_text(path: str, text: str):
  """Writes `text` to `path` whole: into `<path>.tmp`, flushed to disk, then renamed to `path`.

  Args:
    path: the file to (re)write; its directory must exist.
    text: the file's whole contents.
  """
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json(path: str, value: Any, *, indent: int = 1, sort_keys: bool = False):
  """Writes `value` as JSON (strict: NaN or infinity is an error) to `path` whole.

  Args:
    path: the file to (re)write; its directory must exist.
    value: a JSON-serializable value.
    indent, sort_keys: as in `json.dumps`.

  Raises:
    ValueError: `value` holds a non-finite float (strict JSON has none).
  """
  write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys, allow_nan=False) + '\n')
