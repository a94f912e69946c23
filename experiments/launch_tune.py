"""Starts `experiments.tune` workers as SLURM jobs (or local processes) through submitit.

  python -m experiments.launch_tune --workers 16 --folder runs/tune/lr/jobs --cluster slurm \
      --partition gpu --gpus_per_node 1 --cpus_per_task 8 --timeout_min 240 -- \
      --config configs/recipes.py:cpu --space lr_batch --study lr --trials 64 \
      --storage postgresql://user:password@db-host/optuna --root /shared/runs/tune/lr

Everything after `--` is the worker's command line (`python -m experiments.tune ...`); every job
runs that same command (with `--seed=SEED+i` for job i when --seed is given), so the jobs share
the study through its storage and Optuna hands each one the next trial: no scheduling here. A
job that SLURM preempts or kills leaves its trial to be failed and retried by the others (see
experiments/tune.py). `--cluster local` runs the jobs as processes on this machine, `debug` in
this process one after another; `--dry_run` prints the jobs' parameters and command without
submitting. Needs the `tune` extra (submitit).
"""

import argparse
import os
import shlex
import sys
from typing import List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTERS = ('slurm', 'local', 'debug')


def worker_commands(tune_args: Sequence[str], workers: int, seed: Optional[int] = None,
                    python: str = sys.executable) -> List[List[str]]:
  """The command of each of `workers` jobs: `python -m experiments.tune TUNE_ARGS [--seed]`."""
  if workers < 1:
    raise ValueError(f'--workers={workers} must be at least 1.')
  if any(a == '--seed' or a.startswith('--seed=') for a in tune_args):
    raise ValueError('give the seed as --seed of launch_tune (before --): each job then gets '
                     'its own, SEED+i; one seed for all would make them propose the same trials.')
  base = [python, '-m', 'experiments.tune', *tune_args]
  return [base + ([f'--seed={seed + i}'] if seed is not None else []) for i in range(workers)]


def executor_parameters(args: argparse.Namespace) -> dict:
  """submitit's shared parameters, plus the SLURM partition when given."""
  params = dict(name=args.name, timeout_min=args.timeout_min, cpus_per_task=args.cpus_per_task,
                gpus_per_node=args.gpus_per_node, mem_gb=args.mem_gb, tasks_per_node=1, nodes=1)
  if args.partition:
    params['slurm_partition'] = args.partition
  return params


def submit(commands: Sequence[Sequence[str]], folder: str, cluster: Optional[str],
           parameters: dict):
  """Submits one job per command (a job array on SLURM); returns the submitit jobs."""
  import submitit  # pylint: disable=g-import-not-at-top
  executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
  executor.update_parameters(**parameters)
  functions = [submitit.helpers.CommandFunction(list(c), cwd=REPO) for c in commands]
  with executor.batch():
    jobs = [executor.submit(f) for f in functions]
  return jobs


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if '--' not in argv:
    sys.exit('launch_tune: give the worker\'s experiments.tune arguments after --, e.g. '
             '-- --config configs/default.py --space lr --study s --trials 8.')
  split = argv.index('--')
  parser = argparse.ArgumentParser(prog='python -m experiments.launch_tune',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--workers', type=int, required=True, help='jobs (tune workers) to start')
  parser.add_argument('--folder', required=True, help="submitit's folder: job scripts and logs")
  parser.add_argument('--cluster', choices=CLUSTERS, default=None,
                      help='default: detected (SLURM when sbatch is there, else local)')
  parser.add_argument('--partition', default=None, help='SLURM partition')
  parser.add_argument('--timeout_min', type=int, default=240)
  parser.add_argument('--cpus_per_task', type=int, default=4)
  parser.add_argument('--gpus_per_node', type=int, default=0)
  parser.add_argument('--mem_gb', type=int, default=16)
  parser.add_argument('--name', default='fisher_jax_tune')
  parser.add_argument('--seed', type=int, default=None, help='job i gets --seed=SEED+i')
  parser.add_argument('--wait', action='store_true', help='wait for the jobs and show outputs')
  parser.add_argument('--dry_run', action='store_true', help='print the jobs, submit nothing')
  args = parser.parse_args(argv[:split])
  try:
    commands = worker_commands(argv[split + 1:], args.workers, args.seed)
  except ValueError as error:
    parser.error(str(error))
  parameters = executor_parameters(args)
  if args.dry_run:
    print(f'{len(commands)} jobs, cluster {args.cluster or "auto"}, folder {args.folder}, '
          f'parameters {parameters}')
    for command in commands:
      print(shlex.join(command))
    return 0
  from fisher_jax import _extras  # pylint: disable=g-import-not-at-top
  try:
    _extras.require('tune', 'python -m experiments.launch_tune')
  except ImportError as error:
    sys.exit(f'launch_tune: {error}')
  jobs = submit(commands, args.folder, args.cluster, parameters)
  print(f'submitted {len(jobs)} jobs: {" ".join(str(j.job_id) for j in jobs)} '
        f'(logs in {args.folder})')
  if args.wait:
    for job in jobs:
      print(job.result())
  return 0


if __name__ == '__main__':
  sys.exit(main())
