"""A run's directory (its workdir): the names of its files, its lock and its metrics file.

```text
workdir/config.json       CONFIG_FILE     the resolved config (written by the trainer)
workdir/metrics.jsonl     METRICS_FILE    one JSON object per logged step (`metrics`)
workdir/checkpoints/      CHECKPOINT_DIR  orbax checkpoints, one folder per step
workdir/lock              LOCK_FILE       one process per workdir (`lock`)
workdir/diverged.json     DIVERGED_FILE   the record of a run the divergence guard stopped
workdir/events.out.*                      TensorBoard events (clu metric writers)
```

Every module that reads or writes a workdir takes these names from here. `lock` and `metrics`
are the only code that touches their files (`LOCK_FILE` and `METRICS_FILE` are defined beside
that code and re-exported here); this package imports the standard library only.
"""

from fisher_jax.rundir.lock import (LOCK_FILE, WorkdirBusyError, WorkdirLock, check,
                                    check_writable, holder)
from fisher_jax.rundir.metrics import (METRICS_FILE, format_record, is_metric,
                                       prepare_for_resume, read_records)

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
DIVERGED_FILE = 'diverged.json'
