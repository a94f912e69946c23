"""Training-loop overhead: the full loop's steps/s as a ratio to a bare jitted step.

The full loop is `train_and_evaluate` (input pipeline, host-to-device transfer, the step,
metric accumulation, progress reporting, logging). Its per-step time is measured as the
difference between two runs of different lengths, so start-up, compilation and the final
evaluation and checkpoint cancel. The bare step is the same jitted data-parallel step on the
same batches, already on the device, in a tight loop.

  python benchmarks/train_loop.py [--epochs 2,32] [--config configs/default.py]

Run it on an otherwise idle machine: the difference of two wall times is sensitive to load.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from fisher_jax import data  # noqa: E402
from fisher_jax import models  # noqa: E402
from fisher_jax.training import config_files  # noqa: E402
from fisher_jax.training import loop  # noqa: E402
from fisher_jax.training import mesh as mesh_lib  # noqa: E402
from fisher_jax.training import optim  # noqa: E402
from fisher_jax.training import settings  # noqa: E402
from fisher_jax.training import state as state_lib  # noqa: E402
from fisher_jax.training import steps  # noqa: E402


def _loop_seconds(config, epochs: int) -> float:
  config = config.copy_and_resolve_references()
  config.num_epochs = epochs
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    loop.train_and_evaluate(config, workdir)
    return time.perf_counter() - start


def _bare_seconds_per_step(config, num_steps: int) -> float:
  mesh = mesh_lib.make_mesh()
  run = settings.read(config)
  inp = data.make_input(run.dataset, batch_size=run.batch_size, seed=run.seed)
  model = models.get_model(run.model.name, inp.spec.num_classes, **run.model.kwargs)
  tx = optim.make_optimizer(run.optimizer, run.regularizer, steps_per_epoch=inp.steps_per_epoch,
                            num_epochs=run.num_epochs)
  state = jax.jit(lambda r: state_lib.create_train_state(model, tx, inp.spec.image_shape, r),
                  out_shardings=mesh_lib.replicated(mesh))(jax.random.PRNGKey(0))
  step = mesh_lib.data_parallel(steps.make_train_step(model, tx), mesh, batch_args=(1,),
                                num_args=2, donate_argnums=(0,))
  iterator = inp.train_iterator(0)
  batches = [mesh_lib.shard_batch(next(iterator), mesh) for _ in range(num_steps)]
  state, metrics = step(state, batches[0])  # Compile.
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for batch in batches:
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  return (time.perf_counter() - start) / num_steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/default.py')
  parser.add_argument('--epochs', default='2,32', help='two run lengths, in epochs')
  args = parser.parse_args()
  config = config_files.load_config(args.config)
  config.measure.every_epochs = 0  # Measurement and evaluation are not the loop's overhead.
  config.eval_every_epochs = 0
  config.checkpoint_every_epochs = 0
  short, long = (int(e) for e in args.epochs.split(','))
  spe = data.make_input(config.dataset, batch_size=config.batch_size,
                        seed=config.seed).steps_per_epoch
  _loop_seconds(config, 1)  # Warm-up: decoded-data cache, library initialization.
  t_short = _loop_seconds(config, short)
  t_long = _loop_seconds(config, long)
  loop = (t_long - t_short) / ((long - short) * spe)
  bare = _bare_seconds_per_step(config, (long - short) * spe)
  print(f'devices: {jax.device_count()} x {jax.devices()[0].platform}; config: {args.config}; '
        f'{(long - short) * spe} steps of batch {config.batch_size}')
  print(f'full loop steps/s as a ratio to a bare jitted step: {bare / loop:.2f} '
        f'(goal >= 0.9)')


if __name__ == '__main__':
  main()
