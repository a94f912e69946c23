"""Multi-process start-up: joining this process to a run that spans several hosts.

A run that spans several processes (hosts) calls `initialize_distributed` before any other JAX
call (the entry point does); after it, `jax.devices()` lists the devices of every process and
the same program runs unchanged over the mesh of `fisher_jax.training.mesh` (see
docs/multihost.md). `detect_cluster` names the launches JAX configures by itself (TPU VM pod
slices, SLURM steps, Open MPI); explicit settings come from flags or the ENV_* environment
variables; a watchdog turns a failed connection into one sentence instead of a C++ abort.
"""

import os
import sys
import threading
from typing import Mapping, Optional

import jax

# Explicit multi-process settings may come from these environment variables instead of flags.
ENV_COORDINATOR_ADDRESS = 'FISHER_JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'FISHER_JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'FISHER_JAX_PROCESS_ID'
# 'auto': explicit settings if given, else a detected cluster, else one process; 'on': always
# call `jax.distributed.initialize` (JAX detects the cluster); 'off': never (one process).
DISTRIBUTED_MODES = ('auto', 'on', 'off')
# JAX's own connection timeout is this much longer than ours, so our message comes first.
_JAX_TIMEOUT_MARGIN_S = 10


def detect_cluster(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """Names the multi-process cluster this process was launched in, or None.

  Only launches that `jax.distributed.initialize()` configures by itself count: a Cloud TPU VM
  ('tpu'; a pod slice runs one process per worker), a SLURM job step with several tasks
  ('slurm', e.g. `srun --ntasks=16`), an Open MPI launch of several ranks ('openmpi'). A SLURM
  or MPI job of ONE task is a single-process run and gives None.

  Args:
    environ: the environment to read (default `os.environ`).
  """
  env = os.environ if environ is None else environ
  slurm_vars = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
                'SLURM_LOCALID')
  if all(v in env for v in slurm_vars) and _int_or_none(env['SLURM_NTASKS']) not in (None, 1):
    return 'slurm'
  if ('OMPI_MCA_orte_hnp_uri' in env
      and _int_or_none(env.get('OMPI_COMM_WORLD_SIZE', '')) not in (None, 1)):
    return 'openmpi'
  try:
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  except ImportError:  # A JAX without it: rely on --distributed=on.
    return None
  # Set when `import jax` found TPU chips and libtpu (a TPU VM, one host of a pod slice or not).
  if getattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', False):
    return 'tpu'
  return None


def _int_or_none(value) -> Optional[int]:
  try:
    return int(value)
  except (TypeError, ValueError):
    return None


def _setting(value, environ: Mapping[str, str], name: str, flag: str, integer: bool):
  """`value`, else environment variable `name`; ints are parsed with a clear error."""
  if value is None or value == '':
    value = environ.get(name) or None
    source = name
  else:
    source = f'--{flag}'
  if value is None or not integer:
    return value
  parsed = _int_or_none(value)
  if parsed is None:
    raise ValueError(f'{source}={value!r} is not an integer; give a whole number.')
  return parsed


def _start_watchdog(timeout_s: float, message: str) -> threading.Event:
  """Ends the process with `message` unless the returned event is set within `timeout_s`.

  JAX's distributed client reports a failed connection by aborting the process from C++ (a
  stack trace about RegisterTask), which cannot be caught; this says what went wrong first.
  """
  connected = threading.Event()

  def watch():
    if not connected.wait(timeout_s):
      sys.stderr.write(f'fisher_jax: {message}\n')
      sys.stderr.flush()
      os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, name='fisher_jax_distributed_watchdog', daemon=True).start()
  return connected


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, *, mode: str = 'auto',
                           timeout_s: int = 300,
                           environ: Optional[Mapping[str, str]] = None) -> bool:
  """Joins this process to a multi-process run (`jax.distributed`) when the run spans several.

  Call it before any other JAX call (the entry point does). Which run this process joins:

  * explicit settings, for any cluster: `coordinator_address` ('host:port' of process 0),
    `num_processes` and `process_id`, each falling back to its environment variable
    (ENV_COORDINATOR_ADDRESS, ENV_NUM_PROCESSES, ENV_PROCESS_ID); all three are needed, and
    `num_processes=1` is a single-process run (nothing to do);
  * otherwise, with `mode='auto'`, a cluster that JAX configures by itself (`detect_cluster`:
    TPU VM pod slices, SLURM steps, Open MPI); `mode='on'` always asks JAX to detect one
    (other launchers JAX knows, e.g. Kubernetes); `mode='off'` never initializes;
  * otherwise a single-process run: nothing is done.

  Multi-process runs on CPU exchange data through gloo collectives.

  Args:
    coordinator_address: 'host:port' where process 0 serves the coordinator (reachable by all).
    num_processes: how many processes the run spans.
    process_id: this process, in [0, num_processes).
    mode: one of DISTRIBUTED_MODES.
    timeout_s: how long to wait for all processes to connect. When it passes, the process ends
      with exit status 1 and a one-sentence message on stderr (JAX would abort it anyway).
    environ: the environment to read (default `os.environ`).

  Returns:
    Whether `jax.distributed` was initialized (False for a single-process run).

  Raises:
    ValueError: contradictory or incomplete settings, naming the flag and the fix.
  """
  env = os.environ if environ is None else environ
  if mode not in DISTRIBUTED_MODES:
    raise ValueError(f'--distributed={mode!r} is unknown; choose one of '
                     f'{list(DISTRIBUTED_MODES)}.')
  if not isinstance(timeout_s, int) or timeout_s <= 0:
    raise ValueError(f'--distributed_timeout={timeout_s!r} must be a positive number of '
                     'seconds.')
  address = _setting(coordinator_address, env, ENV_COORDINATOR_ADDRESS, 'coordinator_address',
                     integer=False)
  count = _setting(num_processes, env, ENV_NUM_PROCESSES, 'num_processes', integer=True)
  index = _setting(process_id, env, ENV_PROCESS_ID, 'process_id', integer=True)
  explicit = {'coordinator_address': address, 'num_processes': count, 'process_id': index}
  given = [k for k, v in explicit.items() if v is not None]
  if mode == 'off':
    if given:
      raise ValueError(f'--distributed=off contradicts the multi-process settings given '
                       f'({", ".join(given)}); drop them or use --distributed=auto.')
    return False
  if count == 1 and index in (None, 0):
    return False  # One process: nothing to join.
  if given:
    missing = [k for k, v in explicit.items() if v is None]
    if missing:
      raise ValueError(f'multi-process settings are incomplete: {", ".join(given)} given but '
                       f'not {", ".join(missing)}; give all three (as --{" / --".join(missing)} '
                       'or their FISHER_JAX_* environment variables).')
    if count < 1:
      raise ValueError(f'--num_processes={count} must be at least 1.')
    if not 0 <= index < count:
      raise ValueError(f'--process_id={index} must be in [0, {count}) for '
                       f'--num_processes={count}; number the processes 0, 1, ..., '
                       f'num_processes - 1.')
    if ':' not in address:
      raise ValueError(f'--coordinator_address={address!r} needs a port; give host:port of '
                       'process 0, e.g. 10.0.0.1:8476.')
    waiting = (f'process 0 of {count} waited {timeout_s} s at {address} for all {count} '
               'processes to connect; start every process with the same '
               '--coordinator_address and --num_processes and its own --process_id, or raise '
               '--distributed_timeout') if index == 0 else (
                   f'process {index} of {count} could not join the coordinator at {address} '
                   f'within {timeout_s} s; check that process 0 is running and that '
                   '--coordinator_address is its reachable host:port')
    # Exactly these settings, all local devices: no cluster detection (inside a SLURM job it
    # would make each process use one GPU only).
    kwargs = dict(coordinator_address=address, num_processes=count, process_id=index,
                  cluster_detection_method='deactivate')
  else:
    cluster = detect_cluster(env)
    if mode == 'auto' and cluster is None:
      return False
    waiting = (f'the processes of this {cluster or "cluster"} launch did not all connect '
               f'within {timeout_s} s; check that every process was started, raise '
               '--distributed_timeout, or give --distributed=off for a one-process run')
    kwargs = {}
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  connected = _start_watchdog(timeout_s, waiting + '.')
  try:
    jax.distributed.initialize(**kwargs,
                               initialization_timeout=timeout_s + _JAX_TIMEOUT_MARGIN_S)
  finally:
    connected.set()
  return True
