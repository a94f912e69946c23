"""A run's directory (its workdir): the names of its files, their writing, its lock and metrics.

```text
workdir/config.json          CONFIG_FILE             the resolved config (written by the trainer)
workdir/metrics.jsonl        METRICS_FILE            one JSON object per logged step (`metrics`)
workdir/checkpoints/         CHECKPOINT_DIR          orbax checkpoints, one folder per step
workdir/checkpoints_damaged/ DAMAGED_CHECKPOINT_DIR  unreadable checkpoints, moved aside on resume
workdir/lock                 LOCK_FILE               one process per workdir (`lock`)
workdir/diverged.json        DIVERGED_FILE           the record of a run the divergence guard stopped
workdir/runner_done.json     RUNNER_DONE_FILE        the sweep runner's record of a finished run
workdir/runner.log           RUNNER_LOG_FILE         the run's output, as the sweep runner saw it
workdir/events.out.*                                 TensorBoard events (clu metric writers)
```

Every module that reads or writes a workdir takes these names from here, and writes a whole
file with `write_text` / `write_json` (`files`: into a temporary file, then renamed). `lock` and
`metrics` are the only code that touches their files (`LOCK_FILE` and `METRICS_FILE` are defined
beside that code and re-exported here). This package imports the standard library only, and
`filelock` (the train extra) when a lock is taken.
"""

from fisher_jax.rundir.files import write_json, write_text
from fisher_jax.rundir.lock import (LOCK_FILE, WorkdirBusyError, WorkdirLock, check,
                                    check_writable, file_lock, holder)
from fisher_jax.rundir.metrics import (METRICS_FILE, format_record, is_metric,
                                       prepare_for_resume, read_records)

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
DAMAGED_CHECKPOINT_DIR = 'checkpoints_damaged'
DIVERGED_FILE = 'diverged.json'
RUNNER_DONE_FILE = 'runner_done.json'
RUNNER_LOG_FILE = 'runner.log'

__all__ = [
    'CHECKPOINT_DIR', 'CONFIG_FILE', 'DAMAGED_CHECKPOINT_DIR', 'DIVERGED_FILE', 'LOCK_FILE',
    'METRICS_FILE', 'RUNNER_DONE_FILE', 'RUNNER_LOG_FILE', 'WorkdirBusyError', 'WorkdirLock',
    'check', 'check_writable', 'file_lock', 'format_record', 'holder', 'is_metric',
    'prepare_for_resume', 'read_records', 'write_json', 'write_text',
]
