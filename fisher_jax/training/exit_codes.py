"""Exit statuses of `python -m fisher_jax.main`, for the sweep runner, the tuner and schedulers.

| status | meaning |
| --- | --- |
| 0 | the run finished (or had finished before) |
| 1 | an error: a bad config or workdir, an unreadable checkpoint, a crash; one sentence says which |
| 5 | DIVERGED: a loss, penalty or the parameters became non-finite; the run stopped, its finite checkpoints are kept and `diverged.json` in the workdir says where |
| 75 | WORKDIR_BUSY: another process holds the workdir's lock (it is running that run); try again later (sysexits' EX_TEMPFAIL) |

Killed by a signal, the status is the shell's 128 + the signal number (a negative
`returncode` in Python's subprocess).
"""

ERROR = 1
DIVERGED = 5
WORKDIR_BUSY = 75
