"""Running a sweep's runs as submitit jobs: on a SLURM cluster, or as local processes.

  python -m experiments.run confirmatory --root /shared/runs --executor slurm \
      --slurm_partition gpu --slurm_time 240 --slurm_gpus_per_node 1 --slurm_cpus_per_task 8

`experiments.run --executor local` (the default) runs the runs in its own process pool
(`run.run_jobs`). With `--executor slurm` every unfinished run becomes one SLURM job, and with
`--executor submitit_local` one local submitit job (submitit's LocalExecutor: the same code path
on one machine, for tests and for trying a sweep out). A job runs the run's command
(`python -m fisher_jax.main ... --workdir ROOT/<sweep>/<run>`) from the repository root, so the
clone, the Python environment and ROOT must be on a file system the nodes share. The semantics
are those of the local runner:

* **stages**: a run that waits for others (`sweeps.Run.after`) is submitted with the SLURM
  dependency `afterok:<their job ids>` (and `kill-on-invalid-dep=yes`: it is cancelled when one
  of them fails); with the local executor the stages are submitted one after another, each when
  the one before has ended. A job starts its run only when every run it waits for has its done
  marker with the result `done`; after a diverged run it ends at once, `blocked`;
* **skip**: a run whose `runner_done.json` marks it finished is not submitted, and a job whose
  run was finished meanwhile (by a duplicate job) ends at once, `skipped`;
* **resume**: a run whose job was killed (preempted, timed out, cancelled, a node lost) is
  submitted again by the next invocation and resumes from its latest checkpoint; a job that
  reaches its time limit is requeued by submitit (the run stops and resumes from its latest
  checkpoint in the requeued job);
* **diverged**: the run's exit status `exit_codes.DIVERGED` writes its done marker with the
  result `diverged` (a result, not a failure); the job itself succeeds;
* **one run per workdir**: a job whose run's workdir another process holds waits until it is
  free (and then usually finds the run finished: `skipped`).

The run's output is appended to ROOT/<sweep>/<run>/runner.log, as the local runner's is;
submitit's own files (the job's pickled callable, its stdout and stderr, the sbatch script) go
to ROOT/.submitit/<job id>/. The invocation waits for its jobs, logs each as it ends and prints
the local runner's summary; its exit status is the local runner's (0 when every run finished or
diverged, 1 when any failed or was blocked, 130 when stopped). Stopped (SIGINT, SIGTERM), it
cancels the jobs of `submitit_local`; SLURM jobs stay queued, so a second invocation started
while they are queued submits duplicates (which wait for the workdir and then skip): check
`squeue --me` first. Needs the `tune` extra (submitit).
"""

import argparse
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, Optional, Sequence

from experiments import launch_tune
from experiments import run as run_lib
from fisher_jax import rundir
from fisher_jax.training import exit_codes

EXECUTORS = ('local', 'slurm', 'submitit_local')
SUBMITIT_DIR = '.submitit'  # ROOT/.submitit/<job id>/: submitit's files of each job.
# The submitit cluster of each executor that submits jobs.
_CLUSTERS = {'slurm': 'slurm', 'submitit_local': 'local'}


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
  """What each job asks the scheduler for (`--slurm_*` flags; the local executor reads `time_min`).

  Attributes:
    partition: the SLURM partition (None: the cluster's default).
    time_min: the job's time limit in minutes; a run still going then is requeued and resumes.
    gpus_per_node: GPUs of the job (one run uses every GPU it sees).
    cpus_per_task: CPU cores of the job.
    mem_gb: memory of the job.
  """
  partition: Optional[str] = None
  time_min: int = 240
  gpus_per_node: int = 0
  cpus_per_task: int = 4
  mem_gb: int = 16


def add_flags(parser: argparse.ArgumentParser):
  """Adds `--executor` and the `--slurm_*` flags to `experiments.run`'s parser."""
  default = ClusterSettings()
  parser.add_argument('--executor', choices=EXECUTORS, default='local',
                      help="'local': this process runs --workers runs at a time; 'slurm': one "
                           "SLURM job per run through submitit, stages as job dependencies; "
                           "'submitit_local': one submitit job per run on this machine")
  parser.add_argument('--slurm_partition', metavar='NAME', default=default.partition,
                      help='SLURM partition of the jobs (default: the cluster\'s)')
  parser.add_argument('--slurm_time', metavar='MINUTES', type=int, default=default.time_min,
                      help='time limit of each job in minutes (a run still going is requeued '
                           'and resumes from its checkpoint)')
  parser.add_argument('--slurm_gpus_per_node', metavar='N', type=int, default=default.gpus_per_node,
                      help='GPUs of each job')
  parser.add_argument('--slurm_cpus_per_task', metavar='N', type=int, default=default.cpus_per_task,
                      help='CPU cores of each job')
  parser.add_argument('--slurm_mem_gb', metavar='GB', type=int, default=default.mem_gb,
                      help='memory of each job in GB')


def cluster_settings(args: argparse.Namespace) -> ClusterSettings:
  """The `ClusterSettings` of parsed `--slurm_*` flags.

  Raises:
    ValueError: a time limit, GPU, CPU or memory count out of range, naming the flag.
  """
  settings = ClusterSettings(partition=args.slurm_partition, time_min=args.slurm_time,
                             gpus_per_node=args.slurm_gpus_per_node,
                             cpus_per_task=args.slurm_cpus_per_task, mem_gb=args.slurm_mem_gb)
  for flag, value, least in (('--slurm_time', settings.time_min, 1),
                             ('--slurm_gpus_per_node', settings.gpus_per_node, 0),
                             ('--slurm_cpus_per_task', settings.cpus_per_task, 1),
                             ('--slurm_mem_gb', settings.mem_gb, 1)):
    if value < least:
      raise ValueError(f'{flag}={value} must be at least {least}.')
  return settings


def executor_parameters(settings: ClusterSettings) -> dict:
  """submitit's parameters of every job (`launch_tune.executor_parameters`, shared with it)."""
  return launch_tune.executor_parameters(argparse.Namespace(
      name='fisher_jax', timeout_min=settings.time_min, cpus_per_task=settings.cpus_per_task,
      gpus_per_node=settings.gpus_per_node, mem_gb=settings.mem_gb,
      partition=settings.partition))


def dependency_parameters(job_ids: Sequence[str]) -> dict:
  """The SLURM parameters of a job that starts after the jobs `job_ids` succeeded."""
  if not job_ids:
    return {'slurm_additional_parameters': {}}
  return {'slurm_additional_parameters': {'dependency': 'afterok:' + ':'.join(job_ids),
                                          'kill-on-invalid-dep': 'yes'}}


class RunCommand:
  """The callable of one run's job (pickled by submitit and called on the node).

  Returns the run's status (`run.DONE`, `SKIPPED`, `DIVERGED` or `BLOCKED`) and raises
  `RuntimeError` when the run fails, so that the job fails (and SLURM's `afterok` dependents
  are cancelled). Has submitit's `checkpoint` method: at the time limit or a preemption the run
  is stopped and the job requeued, and the requeued job resumes it.

  Args:
    job: the run.
    after: the jobs of the runs it waits for (their done markers are read at the start).
    python: the Python executable on the node.
    root: the sweep root (the runs' shared compilation cache lives in ROOT/.jax_cache).
    busy_poll_s: seconds between looks at a workdir another process holds.
  """

  def __init__(self, job: run_lib.Job, after: Sequence[run_lib.Job], python: str, root: str,
               busy_poll_s: float = 30.0):
    self.job = job
    self.after = tuple(after)
    self.python = python
    self.root = root
    self.busy_poll_s = busy_poll_s
    self._process: Optional[subprocess.Popen] = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_process'] = None  # Never pickled: a requeued job starts its own.
    return state

  def __call__(self) -> str:
    for dep in self.after:
      try:
        result = run_lib.finished(dep)
      except ValueError:
        result = None
      if result != run_lib.DONE:
        self._note(f'blocked: {dep.key} has not finished ({result or "no done marker"})')
        return run_lib.BLOCKED
    told = None
    while True:
      result = run_lib.finished(self.job)  # ValueError: the workdir holds another run.
      if result:
        return run_lib.SKIPPED if result == run_lib.DONE else result
      holder = rundir.holder(self.job.workdir)
      if holder:  # Another process runs it: never a second one into the same workdir.
        if holder != told:
          self._note(f'waiting: the workdir is in use by {holder}')
          told = holder
        time.sleep(self.busy_poll_s)
        continue
      code = self._run()
      if code == 0:
        run_lib._mark_done(self.job)  # pylint: disable=protected-access
        return run_lib.DONE
      if code == exit_codes.DIVERGED:
        run_lib._mark_done(self.job, run_lib.DIVERGED)  # pylint: disable=protected-access
        return run_lib.DIVERGED
      if code != exit_codes.WORKDIR_BUSY:  # Busy: taken between our look and its start.
        raise RuntimeError(f'{self.job.key}: exit status {code}, see '
                           f'{os.path.join(self.job.workdir, run_lib.LOG_FILE)}')

  def checkpoint(self):
    """submitit's hook at the time limit or a preemption: stops the run, requeues the job."""
    import submitit  # pylint: disable=g-import-not-at-top
    if self._process is not None:
      run_lib._stop_process(self._process)  # pylint: disable=protected-access
    return submitit.helpers.DelayedSubmission(self)

  def _note(self, message: str):
    os.makedirs(self.job.workdir, exist_ok=True)
    with open(os.path.join(self.job.workdir, run_lib.LOG_FILE), 'a') as out:
      out.write(f'# {message}\n')

  def _run(self) -> int:
    """Runs the command to its end, its output appended to runner.log; its exit status."""
    os.makedirs(self.job.workdir, exist_ok=True)
    command = self.job.command(self.python)
    with open(os.path.join(self.job.workdir, run_lib.LOG_FILE), 'a') as out:
      out.write(f'\n$ {shlex.join(command)}\n')
      out.flush()
      # The run dies with this process, however the job ends (a parent-death signal).
      self._process = subprocess.Popen(
          command, cwd=run_lib.REPO, env=run_lib.run_environment(self.root, workers=1),
          stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
          preexec_fn=run_lib._child_setup())  # pylint: disable=protected-access
      try:
        return self._process.wait()
      finally:
        if self._process.poll() is None:  # Interrupted here: stop the run before leaving.
          run_lib._stop_process(self._process)  # pylint: disable=protected-access
        self._process = None


def make_executor(executor: str, root: str, settings: ClusterSettings):
  """The submitit executor of `executor` ('slurm' or 'submitit_local'), files in ROOT/.submitit."""
  from fisher_jax import _extras  # pylint: disable=g-import-not-at-top
  _extras.require('tune', f'--executor {executor}')
  import submitit  # pylint: disable=g-import-not-at-top
  if executor not in _CLUSTERS:
    raise ValueError(f'--executor={executor!r} submits no jobs; choose one of {list(_CLUSTERS)}.')
  folder = os.path.join(root, SUBMITIT_DIR, '%j')
  submitter = submitit.AutoExecutor(folder=folder, cluster=_CLUSTERS[executor])
  submitter.update_parameters(**executor_parameters(settings))
  return submitter


def _log(message: str):
  print(message, flush=True)


def submit_jobs(jobs: Sequence[run_lib.Job], submitter, *, workers: Optional[int] = None,
                wait_between_stages: bool = True, python: str = sys.executable,
                root: Optional[str] = None, log: Callable[[str], None] = _log,
                poll_s: float = 1.0, busy_poll_s: float = 30.0,
                on_submit: Optional[Callable[[run_lib.Job, object], None]] = None
                ) -> Dict[str, str]:
  """Submits the unfinished jobs through `submitter` and waits for them.

  Args:
    jobs: the runs (`run.make_jobs`), in any order; `after` names runs among them.
    submitter: a submitit executor (`make_executor`).
    workers: at most this many jobs at a time (None: no limit; SLURM schedules them).
    wait_between_stages: submit a stage only when the one before has ended (an executor without
      job dependencies); False: submit every stage at once with SLURM dependencies.
    python: the Python executable the jobs run the commands with.
    root: the sweep root (default: the parent of the first job's sweep directory).
    log: where the one-line messages go (the local runner's vocabulary: skip, submit, done,
      diverged, FAILED, blocked).
    poll_s: seconds between looks at the jobs.
    busy_poll_s: seconds between a job's looks at a workdir another process holds.
    on_submit: called with each job and its submitit job after its submission.

  Returns:
    key -> `run.DONE`, `SKIPPED`, `DIVERGED`, `FAILED` or `BLOCKED`, as `run.run_jobs`.
  """
  if workers is not None and workers < 1:
    raise ValueError(f'--workers={workers} must be at least 1.')
  if root is None and jobs:
    root = os.path.dirname(os.path.dirname(jobs[0].workdir))
  by_key = {job.key: job for job in jobs}
  status: Dict[str, str] = {}
  pending = {job.key for job in jobs
             if not run_lib._settled(job, status, log)}  # pylint: disable=protected-access
  submitted: Dict[str, object] = {}  # key -> submitit job, until it has ended.

  def submit(job: run_lib.Job) -> bool:
    deps = [status.get(a) if a in by_key else run_lib.BLOCKED for a in job.after]
    if any(d in (run_lib.FAILED, run_lib.BLOCKED, run_lib.DIVERGED) for d in deps):
      status[job.key] = run_lib.BLOCKED
      log(f'blocked {job.key}: waits for a run that failed, diverged or is not in this sweep')
      return False
    waits_for = [str(submitted[a].job_id) for a in job.after if a in submitted]
    submitter.update_parameters(name=job.key, **dependency_parameters(waits_for))
    handle = submitter.submit(RunCommand(job, [by_key[a] for a in job.after], python, root,
                                         busy_poll_s=busy_poll_s))
    submitted[job.key] = handle
    log(f'submit  {job.key} (job {handle.job_id}' +
        (f', after {" ".join(waits_for)})' if waits_for else ')'))
    if on_submit:
      on_submit(job, handle)
    return True

  def collect() -> int:
    """Records the jobs that have ended; how many are still queued or running."""
    for key, handle in list(submitted.items()):
      if not handle.done():
        continue
      del submitted[key]
      job = by_key[key]
      try:
        result = handle.result()
      except Exception as error:  # pylint: disable=broad-except
        waited = [status.get(a) for a in job.after]
        if any(w not in (run_lib.DONE, run_lib.SKIPPED) for w in waited):
          result = run_lib.BLOCKED  # Cancelled by SLURM for a dependency that failed.
        else:
          status[key] = run_lib.FAILED
          log(f'FAILED  {key}: job {handle.job_id}: {_reason(error)}; see '
              f'{os.path.join(job.workdir, run_lib.LOG_FILE)} and {handle.paths.folder}')
          continue
      status[key] = result
      if result == run_lib.DONE:
        log(f'done    {key}')
      elif result == run_lib.SKIPPED:
        log(f'skip    {key} (finished)')
      elif result == run_lib.DIVERGED:
        log(f'diverged {key}: see {os.path.join(job.workdir, run_lib.LOG_FILE)}')
      else:
        log(f'blocked {key}: waits for a run that failed or diverged')
    return len(submitted)

  def wait_below(limit: float):
    while collect() >= limit:
      time.sleep(poll_s)

  limit = float('inf') if workers is None else workers
  try:
    for stage in run_lib.stages(jobs):
      for job in stage:
        if job.key in pending:
          wait_below(limit)
          submit(job)
      if wait_between_stages:
        wait_below(1)
    wait_below(1)
  except BaseException:
    if wait_between_stages:  # Local jobs: stop them (their runs resume next time).
      for key, handle in submitted.items():
        log(f'stop    {key} (it resumes when the runner is started again)')
        handle.cancel(check=False)
    elif submitted:
      log(f'{len(submitted)} jobs stay queued or running on the cluster: '
          f'{" ".join(str(h.job_id) for h in submitted.values())}')
    raise
  return status


def _reason(error: Exception) -> str:
  """One line for a job that failed: `RunCommand`'s own message, else submitit's first line."""
  lines = str(error).strip().splitlines()
  ours = [line for line in lines if line.startswith('RuntimeError: ')]
  if ours:
    return ours[-1][len('RuntimeError: '):]
  return lines[0] if lines else repr(error)


def _raise_stop(signum, frame):
  del frame
  raise run_lib._Stop(signal.Signals(signum).name)  # pylint: disable=protected-access


def execute(jobs: Sequence[run_lib.Job], root: str, executor: str, settings: ClusterSettings,
            workers: int = 1) -> int:
  """`experiments.run --executor slurm|submitit_local`: submits, waits, prints the summary.

  Returns:
    The exit status of `run.execute`: 0 if every run finished or diverged, 1 if any failed or
    was blocked, 130 if stopped.
  """
  submitter = make_executor(executor, root, settings)
  handlers = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
  start = time.monotonic()
  local = executor != 'slurm'
  try:
    status = submit_jobs(jobs, submitter, workers=workers if local else None,
                         wait_between_stages=local, root=root)
  except run_lib._Stop as stop:  # pylint: disable=protected-access
    print(f'stopped by {stop}; start the same command again to resume.', flush=True)
    return 130
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  return _summary(jobs, status, time.monotonic() - start)


def _summary(jobs: Sequence[run_lib.Job], status: Dict[str, str], wall_s: float) -> int:
  counts = {s: sum(v == s for v in status.values())
            for s in (run_lib.DONE, run_lib.SKIPPED, run_lib.DIVERGED, run_lib.FAILED,
                      run_lib.BLOCKED)}
  print(f'{len(jobs)} runs: ' + ', '.join(f'{n} {s}' for s, n in counts.items()) +
        f' (wall time {wall_s:.0f} s)', flush=True)
  bad = sorted(k for k, v in status.items() if v in (run_lib.FAILED, run_lib.BLOCKED))
  for key in bad:
    print(f'  {status[key]}: {key}')
  return 1 if bad else 0

