"""Keeping TensorFlow, TFDS, XLA, JAX and absl chatter off the console (`--verbose` shows it).

    quiet.quiet_libraries(verbose)          # before anything logs
    with quiet.native_stderr_closed(not verbose):
      from fisher_jax.training import loop          # imports TensorFlow
    with quiet.dataset_preparation():       # around TFDS finding or preparing a dataset
      builder.download_and_prepare()

Imports nothing heavy itself, so that `main.py` can call it before TensorFlow is loaded.
"""

import contextlib
import io
import logging as py_logging
import os
import sys

from absl import logging


@contextlib.contextmanager
def native_stderr_closed(enabled: bool = True):
  """Sends what is written to file descriptor 2 to /dev/null while the block runs.

  For imports whose native code writes to stderr before any log level applies: TensorFlow's
  'All log messages before absl::InitializeLog() ...' and 'oneDNN custom operations are on ...'
  (twice each). An exception raised in the block is reported after stderr is back.
  """
  if not enabled:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def quiet_libraries(verbose: bool = False):
  """Keeps TensorFlow, TFDS, XLA, JAX and absl INFO logs off the console, unless `verbose`.

  Call before TensorFlow is imported (and import it under `native_stderr_closed`). TensorFlow's
  C++ logs are held back with TF_CPP_MIN_LOG_LEVEL=3 (unless set already). absl's verbosity
  becomes WARNING, which also holds back the Python loggers that reach absl's handler: TFDS
  ('Constructing tf.data.Dataset ...'), orbax, clu; JAX's 'Unable to initialize backend ...'
  is held back below ERROR. Warnings and errors still show.

  Args:
    verbose: show everything at INFO instead (absl's --verbosity, --stderrthreshold apply).
  """
  if verbose:
    logging.set_verbosity(logging.INFO)
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  os.environ.setdefault('GRPC_VERBOSITY', 'ERROR')
  logging.set_verbosity(logging.WARNING)
  py_logging.getLogger('jax._src.xla_bridge').setLevel(py_logging.ERROR)

def info_logs_shown() -> bool:
  """Whether INFO logs reach the console: absl's verbosity is INFO or finer (`--verbose`)."""
  return logging.get_verbosity() >= logging.INFO


# TFDS's warning while it prepares a dataset into a new folder: it looks at the folder before
# the dataset_info.json it is about to write is there.
_TFDS_FILE_UTILS = os.path.join('tensorflow_datasets', 'core', 'utils', 'file_utils.py')


class _DropTfdsVariantWarnings(py_logging.Filter):
  """Drops TFDS's 'Variant folder <dir> has no dataset_info.json' (and '... has no
  features.json') warnings."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return not (record.pathname.endswith(_TFDS_FILE_UTILS)
                and str(record.msg).startswith('Variant folder'))


@contextlib.contextmanager
def dataset_preparation(enabled=None):
  """Keeps what TFDS says while it finds or prepares a dataset off the console.

  While the block runs: TFDS's progress bars are off ('Generating splits...', 'Shuffling ...'),
  its stdout lines 'Downloading and preparing dataset ...' and 'Dataset ... downloaded and
  prepared to ...' (printed with termcolor) are held back, and so is its absl warning 'Variant
  folder <dir> has no dataset_info.json', which every first preparation logs. Other warnings
  and errors still show; when the block raises, what was held back on stdout is written out
  before the exception goes on.

  Args:
    enabled: quiet or not; None (default): quiet unless INFO logs are shown (`info_logs_shown`,
      i.e. unless `--verbose`).
  """
  if enabled is None:
    enabled = not info_logs_shown()
  if not enabled:
    yield
    return
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  bars_were_on = getattr(tqdm_utils, '_active', True)
  tqdm_utils.display_progress_bar(False)
  absl_logger = logging.get_absl_logger()
  drop = _DropTfdsVariantWarnings()
  absl_logger.addFilter(drop)
  held = io.StringIO()
  try:
    with contextlib.redirect_stdout(held):
      yield
  except BaseException:
    sys.stdout.write(held.getvalue())
    raise
  finally:
    absl_logger.removeFilter(drop)
    tqdm_utils.display_progress_bar(bars_were_on)
