"""Keeping TensorFlow, TFDS, XLA, JAX and absl chatter off the console (`--verbose` shows it).

    quiet.quiet_libraries(verbose)          # before anything logs
    with quiet.native_stderr_closed(not verbose):
      from fisher_jax.training import loop          # imports TensorFlow

Imports nothing heavy itself, so that `main.py` can call it before TensorFlow is loaded.
"""

import contextlib
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
