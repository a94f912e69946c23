"""Command-line entry point.

  python -m fisher_jax.main --config configs/default.py --workdir runs/default \
      [--config.optimizer.learning_rate=0.003 ...]

On several hosts every process runs the same command; TPU pod slices and SLURM steps are
detected, other clusters add --coordinator_address, --num_processes and --process_id (or the
FISHER_JAX_* environment variables); see docs/multihost.md.

A bad config or workdir ends with one sentence naming the field and a non-zero exit; the exit
statuses (diverged, workdir in use) are listed in `fisher_jax.training.exit_codes`.
"""

import os
import sys

from fisher_jax import _extras

try:
  _extras.require('train', 'python -m fisher_jax.main')
except ImportError as missing_extra:
  sys.exit(f'fisher_jax: {missing_extra}')

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from fisher_jax import rundir
from fisher_jax.training import config_files
from fisher_jax.training import exit_codes
from fisher_jax.training import guard
from fisher_jax.training import multihost
from fisher_jax.training import quiet

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where config.json, metrics, events and checkpoints go.')
flags.mark_flags_as_required(['config', 'workdir'])
flags.DEFINE_enum('distributed', 'auto', multihost.DISTRIBUTED_MODES,
                  'Multi-process start-up: auto (the settings below if given, else a detected '
                  'TPU pod / SLURM / Open MPI launch, else one process), on (always ask JAX to '
                  'detect the cluster), off (one process).')
flags.DEFINE_string('coordinator_address', None,
                    f'host:port of process 0, reachable by every process (or '
                    f'${multihost.ENV_COORDINATOR_ADDRESS}).')
flags.DEFINE_integer('num_processes', None,
                     f'Processes the run spans (or ${multihost.ENV_NUM_PROCESSES}).')
flags.DEFINE_integer('process_id', None,
                     f'This process, in [0, num_processes) (or ${multihost.ENV_PROCESS_ID}).')
flags.DEFINE_integer('distributed_timeout', 300,
                     'Seconds to wait for every process to connect before failing.')
flags.DEFINE_bool('verbose', False,
                  'Show the INFO logs of TensorFlow, TFDS, XLA, JAX, orbax and absl (hidden by '
                  'default: the console shows one line per epoch).')


def _override_fields(argv):
  """The dotted fields of the `--config.<field>=<value>` (or `--config.<field> <value>`) args."""
  fields = []
  for arg in argv[1:]:
    if arg.startswith('--config.'):
      fields.append(arg[len('--config.'):].partition('=')[0])
  return fields


def _config_spec(argv):
  """The `path[:arg]` of `--config` (the last one wins, as in absl), or None."""
  spec = None
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      spec = arg.partition('=')[2]
    elif arg == '--config' and i + 1 < len(argv):
      spec = argv[i + 1]
  return spec


def _config_flag_problem(argv, error: Exception) -> str:
  """One sentence for a config file that does not load or an override that does not apply."""
  spec = _config_spec(argv)
  path = (spec or '').partition(':')[0]
  if not spec or not os.path.exists(path):
    return (f'--config: the config file {path!r} does not exist; pass a file under configs/, '
            'e.g. --config configs/default.py.')
  try:
    config = config_files.load_config(spec)
  except Exception as load_error:  # pylint: disable=broad-except
    return f'--config: {spec!r} does not load ({type(load_error).__name__}: {load_error}).'
  for field in _override_fields(argv):
    node = config
    for key in field.split('.'):
      if not hasattr(node, 'keys') or key not in node:
        return (f'--config.{field}: {spec} has no field {field!r}; only the fields the config '
                'file defines can be overridden (see its get_config).')
      node = node[key]
  return f'--config: an override does not apply ({type(error).__name__}: {error}).'


def _parse_flags(argv):
  """absl's flag parsing; a config file or override that fails ends in one sentence."""
  spec = _config_spec(argv)
  if spec:
    config_files.make_importable(spec)  # `from configs import recipes` from any directory.
  try:
    remaining = FLAGS(argv)
    FLAGS.config.keys()  # ml_collections defers a config file's load error to its first use.
    return remaining
  except flags.Error as error:
    if not any(a.startswith('--config') for a in argv):
      app.usage(shorthelp=True, detailed_error=error, exitcode=1)
    if 'flag --config=' in str(error):  # The file itself: say why it does not load.
      sys.exit(f'fisher_jax: {_config_flag_problem(argv, error)}')
    sys.exit(f'fisher_jax: {error}'.splitlines()[0])
  except Exception as error:  # pylint: disable=broad-except
    sys.exit(f'fisher_jax: {_config_flag_problem(argv, error)}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet.quiet_libraries(FLAGS.verbose)
  try:
    # Before any other JAX call: afterwards jax.devices() spans every process.
    distributed = multihost.initialize_distributed(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
        mode=FLAGS.distributed, timeout_s=FLAGS.distributed_timeout)
  except ValueError as error:
    sys.exit(f'fisher_jax: {error}')
  if distributed:  # Every process says it joined (the console is otherwise process 0's).
    print(f'fisher_jax: process {jax.process_index()} of {jax.process_count()} with '
          f'{jax.local_device_count()} of the {jax.device_count()} devices joined the run.',
          flush=True)
  # Imported only now, so that nothing they do on import can start JAX before the above (and a
  # process that cannot join fails fast, without loading TensorFlow).
  with rundir.WorkdirLock(FLAGS.workdir) as lock:
    if not distributed:
      _lock_early(lock)
    if jax.process_index() == 0:
      print(f'fisher_jax: starting in {FLAGS.workdir} (loading TensorFlow and the data, '
            'building the model; then compiling)', flush=True)
    with quiet.native_stderr_closed(not FLAGS.verbose):
      from fisher_jax import data  # pylint: disable=g-import-not-at-top
      from fisher_jax.training import loop  # pylint: disable=g-import-not-at-top
    try:
      loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ValueError, data.DatasetNotPreparedError) as error:
      sys.exit(f'fisher_jax: {error}')
    except guard.DivergedError as error:
      _exit(error, exit_codes.DIVERGED)
    except rundir.WorkdirBusyError as error:
      _exit(error, exit_codes.WORKDIR_BUSY)


def _exit(error: Exception, status: int):
  sys.stderr.write(f'fisher_jax: {error}\n')
  sys.exit(status)


def _lock_early(lock: rundir.WorkdirLock):
  """Takes an existing workdir's lock before the slow imports, so that a second process on it
  stops within seconds (one process only; a multi-process run decides in train_and_evaluate).

  A workdir that does not exist yet is locked after the config is checked, so that a bad
  config leaves nothing behind.
  """
  if os.path.isdir(lock.workdir):
    try:
      lock.acquire()
    except ValueError as error:
      sys.exit(f'fisher_jax: {error}')
    except rundir.WorkdirBusyError as error:
      _exit(error, exit_codes.WORKDIR_BUSY)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
