"""Command-line entry point.

  python -m fisher_jax.main --config configs/default.py --workdir runs/default \
      [--config.optimizer.learning_rate=0.003 ...]

A bad config or workdir ends with one sentence naming the field and a non-zero exit.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fisher_jax import data
from fisher_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where config.json, metrics, events and checkpoints go.')
flags.mark_flags_as_required(['config', 'workdir'])


def _quiet_orbax(record) -> bool:
  """Keeps orbax's per-save INFO chatter off the console (its warnings still show)."""
  return record.levelno >= logging.converter.STANDARD_WARNING or 'orbax' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet_orbax)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, data.DatasetNotPreparedError) as error:
    sys.exit(f'fisher_jax: {error}')


if __name__ == '__main__':
  app.run(main)
