"""The sweep runner: expands sweeps into runs and runs them in N local processes.

  python -m experiments.run NAME [NAME ...] --scale cpu|full --root DIR [--workers N] [--dry_run]

NAME is a sweep of `experiments.sweeps` (e.g. fisher_explosion, or confirmatory: the
confirmatory study) or 'all' (the exploratory study's ten sweeps). Each run is one
`python -m fisher_jax.main ... --workdir ROOT/<sweep>/<run>` subprocess (run from the repository
root, output appended to ROOT/<sweep>/<run>/runner.log). When a run exits with status 0, or
with `exit_codes.DIVERGED` (its loss became non-finite: a result, "this setting diverges", not a
failure), the runner writes ROOT/<sweep>/<run>/runner_done.json (holding its command and
result); a run with that marker is finished and is skipped next time. Any other run is
(re)started: fisher_jax resumes it from its latest checkpoint. A run whose workdir another
process holds (its lock, see `fisher_jax.rundir.lock`) is never started while it is held: the
runner waits for it. A failed run is reported and does not stop the others (the runs that wait
for it, or for a diverged run, are not started); the exit status is 1 if any run failed or was
blocked. On SIGINT/SIGTERM the runner stops its running runs (they resume when it is started
again) and exits with status 130. On Linux the runs die with the runner however it ends
(SIGKILL included): each is started with a parent-death signal (prctl PR_SET_PDEATHSIG).

`--executor slurm` (or `submitit_local`) submits every run as a submitit job instead of running
it here, with the same skip, resume and diverged semantics (`experiments.executors`).
`--dry_run` prints one shell command per run instead (to be run from the repository root, e.g.
by a cluster scheduler), runs that must wait for others after them, under '# stage k' lines.
"""

import argparse
import ctypes
import dataclasses
import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from experiments import sweeps
from fisher_jax import rundir
from fisher_jax.training import exit_codes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DONE_FILE = rundir.RUNNER_DONE_FILE
LOG_FILE = rundir.RUNNER_LOG_FILE
# Statuses of a job after `run_jobs`.
DONE, SKIPPED, DIVERGED, FAILED, BLOCKED = 'done', 'skipped', 'diverged', 'failed', 'blocked'
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclasses.dataclass(frozen=True)
class Job:
  """A run placed in a root directory.

  Attributes:
    key: '<sweep>/<run>', unique among jobs.
    workdir: ROOT/<sweep>/<run>.
    args: the command after the Python executable: ['-m', 'fisher_jax.main', ...].
    after: keys of the jobs that must finish first.
  """
  key: str
  workdir: str
  args: Tuple[str, ...]
  after: Tuple[str, ...] = ()

  def command(self, python: str = sys.executable) -> List[str]:
    return [python, *self.args]


def make_job(sweep_name: str, run: sweeps.Run, root: str) -> Job:
  """The job of `run` of sweep `sweep_name` under `root`."""
  sweep_dir = os.path.join(root, sweep_name)
  workdir = os.path.join(sweep_dir, run.name)
  args = ['-m', 'fisher_jax.main', '--config', run.config, '--workdir', workdir]
  for key, value in run.overrides:
    value = str(value).replace('{sweep_dir}', sweep_dir)
    args.append(f'--config.{key}={value}')
  return Job(f'{sweep_name}/{run.name}', workdir, tuple(args),
             tuple(f'{sweep_name}/{a}' for a in run.after))


def make_jobs(names: Sequence[str], scale: str, root: str) -> List[Job]:
  """The jobs of sweeps `names` ('all': the exploratory study's ten) at `scale` under `root`."""
  if 'all' in names:
    names = [n for n, s in sweeps.SWEEPS.items() if s.study == 'exploratory']
  jobs = []
  for name in names:
    jobs += [make_job(name, run, root) for run in sweeps.get_sweep(name).runs(scale)]
  return jobs


def stages(jobs: Sequence[Job]) -> List[List[Job]]:
  """The jobs in dependency order: stage 0 waits for nothing, stage k for stages < k."""
  level: Dict[str, int] = {}
  remaining = list(jobs)
  while remaining:
    ready = [j for j in remaining if all(a in level for a in j.after)]
    if not ready:
      raise ValueError(f'runs {[j.key for j in remaining]} wait for each other or for runs '
                       'that are not in the sweep.')
    for job in ready:
      level[job.key] = 1 + max((level[a] for a in job.after), default=-1)
      remaining.remove(job)
  out = [[] for _ in range(1 + max(level.values(), default=-1))]
  for job in jobs:
    out[level[job.key]].append(job)
  return out


def finished(job: Job) -> Optional[str]:
  """How `job` finished (DONE or DIVERGED, from its done marker), or None if it did not.

  Raises:
    ValueError: the marker records a different command: the workdir holds another run.
  """
  path = os.path.join(job.workdir, DONE_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    marker = json.load(f)
  recorded = marker.get('args')
  if recorded != list(job.args):
    raise ValueError(f'{job.workdir} holds a run finished with another command '
                     f'({shlex.join(recorded or [])}); delete it or choose another --root.')
  return marker.get('result', DONE)


def _mark_done(job: Job, result: str = DONE):
  rundir.write_json(os.path.join(job.workdir, DONE_FILE),
                    {'args': list(job.args), 'result': result})


def _die_with_parent(prctl, parent: int):
  """In the child before exec: SIGKILL when the runner dies, even by SIGKILL (Linux)."""
  prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
  if os.getppid() != parent:  # The runner died before the line above: follow it now.
    os._exit(1)  # pylint: disable=protected-access


def _child_setup():
  """The `preexec_fn` that ties a run's life to the runner's (None where prctl is missing)."""
  if not sys.platform.startswith('linux'):
    return None
  prctl = ctypes.CDLL(None, use_errno=True).prctl  # Looked up here: not after fork.
  return functools.partial(_die_with_parent, prctl, os.getpid())


class _Stop(Exception):
  """Raised by the signal handler to stop the runner."""


def _stop_process(process: subprocess.Popen, grace_s: float = 20.0):
  """SIGTERM to the run's process group, SIGKILL if it is still there after `grace_s`."""
  for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
    try:
      os.killpg(process.pid, sig)
    except ProcessLookupError:
      return
    try:
      process.wait(timeout=wait)
      return
    except subprocess.TimeoutExpired:
      continue


def _log(message: str):
  print(message, flush=True)


def _settled(job: Job, status: Dict[str, str], log: Callable[[str], None]) -> bool:
  """Records (in `status`) and logs `job` if it finished before or cannot run; True if so."""
  try:
    result = finished(job)
  except ValueError as error:
    status[job.key] = FAILED
    log(f'FAILED  {job.key}: {error}')
    return True
  if result:
    status[job.key] = SKIPPED if result == DONE else result
    log(f'skip    {job.key} ({"finished" if result == DONE else result})')
  return bool(result)


def run_jobs(jobs: Sequence[Job], workers: int = 1, *, python: str = sys.executable,
             env: Optional[Dict[str, str]] = None, log: Callable[[str], None] = _log,
             poll_s: float = 0.5) -> Dict[str, str]:
  """Runs the unfinished jobs, at most `workers` at a time, respecting `after`.

  Returns:
    key -> DONE (ran now and exited 0), SKIPPED (finished before), DIVERGED (stopped at a
    non-finite loss, now or before), FAILED (another non-zero exit or a workdir holding another
    run) or BLOCKED (waits for a run that failed or diverged).
  """
  if workers < 1:
    raise ValueError(f'--workers={workers} must be at least 1.')
  status: Dict[str, str] = {}
  pending: List[Job] = []
  for job in jobs:
    if not _settled(job, status, log):
      pending.append(job)
  keys = {job.key for job in jobs}
  running: Dict[str, Tuple[Job, subprocess.Popen, object]] = {}
  waiting: Dict[str, str] = {}  # key -> holder of its workdir, for runs held by a process
  total, started = len(pending), 0
  preexec = _child_setup()
  try:
    while pending or running:
      for job in list(pending):
        deps = [status.get(a) if a in keys else BLOCKED for a in job.after]
        if any(d in (FAILED, BLOCKED, DIVERGED) for d in deps):
          status[job.key] = BLOCKED
          pending.remove(job)
          log(f'blocked {job.key}: waits for a run that failed, diverged or is not in this '
              'sweep')
        elif len(running) < workers and all(d in (DONE, SKIPPED) for d in deps):
          holder = rundir.holder(job.workdir)
          if holder:  # Another process runs it: never a second one into the same workdir.
            if waiting.get(job.key) != holder:
              log(f'wait    {job.key}: its workdir is in use by {holder}')
            waiting[job.key] = holder
            continue
          waiting.pop(job.key, None)
          pending.remove(job)
          if _settled(job, status, log):  # That process may have finished it meanwhile.
            continue
          os.makedirs(job.workdir, exist_ok=True)
          out = open(os.path.join(job.workdir, LOG_FILE), 'a')
          out.write(f'\n$ {shlex.join(job.command(python))}\n')
          out.flush()
          process = subprocess.Popen(job.command(python), cwd=REPO, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=preexec)
          running[job.key] = (job, process, out)
          started += 1
          log(f'start   {job.key} [{started}/{total}]')
      for key, (job, process, out) in list(running.items()):
        code = process.poll()
        if code is None:
          continue
        out.close()
        del running[key]
        if code == 0:
          _mark_done(job)
          status[key] = DONE
          log(f'done    {key}')
        elif code == exit_codes.DIVERGED:
          _mark_done(job, DIVERGED)
          status[key] = DIVERGED
          log(f'diverged {key}: see {os.path.join(job.workdir, LOG_FILE)}')
        elif code == exit_codes.WORKDIR_BUSY:  # Taken between our look and its start: wait.
          pending.append(job)
          started -= 1
        else:
          status[key] = FAILED
          log(f'FAILED  {key}: exit status {code}, see {os.path.join(job.workdir, LOG_FILE)}')
      if running or pending:
        time.sleep(poll_s)
  finally:
    for key, (_, process, out) in running.items():
      log(f'stop    {key} (it resumes when the runner is started again)')
      _stop_process(process)
      out.close()
  return status


def _raise_stop(signum, frame):
  del frame
  raise _Stop(signal.Signals(signum).name)


def _print_dry_run(jobs: Sequence[Job]):
  levels = stages(jobs)
  for k, level in enumerate(levels):
    if len(levels) > 1:
      print(f'# stage {k}' + (' (after the runs of the stages before)' if k else ''))
    for job in level:
      print(shlex.join(job.command('python')))


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.run', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('names', nargs='+', metavar='NAME',
                      help=f"sweeps to run: 'all' or any of {', '.join(sweeps.SWEEPS)}")
  parser.add_argument('--scale', choices=sweeps.SCALES, default='cpu',
                      help="'cpu': Fashion-MNIST with the MLP (the CPU-scale protocols of "
                           "docs/experiments.md); 'full': the published settings")
  parser.add_argument('--root', required=True, help='runs go to ROOT/<sweep>/<run>/')
  parser.add_argument('--workers', type=int, default=1, help='runs at a time (processes)')
  parser.add_argument('--dry_run', action='store_true',
                      help='print one command per run instead of running them')
  from experiments import executors  # pylint: disable=g-import-not-at-top
  executors.add_flags(parser)  # --executor local|slurm|submitit_local, --slurm_*
  args = parser.parse_args(argv)
  try:
    jobs = make_jobs(args.names, args.scale, os.path.abspath(args.root))
    stages(jobs)
    cluster = executors.cluster_settings(args)
  except ValueError as error:
    parser.error(str(error))
  if args.dry_run:
    _print_dry_run(jobs)
    return 0
  if args.executor != 'local':
    return executors.execute(jobs, os.path.abspath(args.root), args.executor, cluster,
                             workers=args.workers)
  return execute(jobs, args.workers, os.path.abspath(args.root))


def run_environment(root: str, workers: int, base: Optional[Dict[str, str]] = None
                    ) -> Dict[str, str]:
  """The environment of the runs: `base` (default os.environ) plus

  * a persistent JAX compilation cache shared by the runs, ROOT/.jax_cache (runs of a sweep
    compile the same measurement and evaluation steps; unless JAX_COMPILATION_CACHE_DIR is set);
  * when `workers` is at least the number of CPU cores, single-threaded XLA CPU and TensorFlow
    ops, so that parallel runs do not oversubscribe the cores (parallelism comes from the runs).
  """
  env = dict(os.environ if base is None else base)
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(root, '.jax_cache'))
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  if workers >= (os.cpu_count() or 1):
    flag = '--xla_cpu_multi_thread_eigen=false'
    if flag not in env.get('XLA_FLAGS', ''):
      env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + flag).strip()
    env.setdefault('TF_NUM_INTRAOP_THREADS', '1')
    env.setdefault('TF_NUM_INTEROP_THREADS', '1')
  return env


def execute(jobs: Sequence[Job], workers: int, root: str) -> int:
  """Runs `jobs` (see `run_jobs`) until done or stopped by SIGINT/SIGTERM; prints a summary.

  Returns:
    The exit status: 0 if every run finished or diverged, 1 if any failed or was blocked, 130
    if stopped.
  """
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, _raise_stop)
  start = time.monotonic()
  try:
    status = run_jobs(jobs, workers, env=run_environment(root, workers))
  except _Stop as stop:
    print(f'stopped by {stop}; start the same command again to resume.', flush=True)
    return 130
  counts = {s: sum(v == s for v in status.values())
            for s in (DONE, SKIPPED, DIVERGED, FAILED, BLOCKED)}
  print(f'{len(jobs)} runs: ' + ', '.join(f'{n} {s}' for s, n in counts.items()) +
        f' (wall time {time.monotonic() - start:.0f} s)', flush=True)
  bad = sorted(k for k, v in status.items() if v in (FAILED, BLOCKED))
  for key in bad:
    print(f'  {status[key]}: {key}')
  return 1 if bad else 0


if __name__ == '__main__':
  sys.exit(main())
