"""Input-pipeline throughput as a ratio to SimpleCNN training steps (goal: >= 3).

Builds a CIFAR-shaped dataset locally through TFDS (`synthetic/cifar32_large`: 10,000 images of
32x32x3), reads it with `make_input(..., augment=True)` at batch 128 and reports, from one run:

* pipeline batches/s: `next()` on the training iterator alone (normalized, cropped and
  flipped float32 batches delivered to Python);
* train steps/s: a jitted SimpleCNN SGD step (cross-entropy, momentum 0.9) on one batch
  already on the device;
* fed steps/s: the same step fed by the pipeline (`next()` + `jax.device_put` each step);

and prints `pipeline / train` (the goal) and `fed / train` (1.0 when the pipeline never stalls
training). On a machine where training and the pipeline share few CPU cores the two compete, which
the fed ratio shows.

  python benchmarks/input_pipeline.py [--data_dir DIR] [--seconds 5] [--min_steps 3]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from fisher_jax import data  # noqa: E402
from fisher_jax import models  # noqa: E402


def _rate(fn, seconds: float, min_calls: int) -> float:
  """Calls per second of `fn` (which must finish its work), for about `seconds`, >= min_calls."""
  calls, start = 0, time.perf_counter()
  while calls < min_calls or time.perf_counter() - start < seconds:
    fn()
    calls += 1
  return calls / (time.perf_counter() - start)


def _make_step(model, tx):
  def loss_fn(params, batch):
    logits = model.apply({'params': params}, batch['image'], train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()

  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', default=None,
                      help='TFDS data_dir (default: the TFDS default; prepared once, ~11 MB).')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--seconds', type=float, default=5.0, help='time per measurement')
  parser.add_argument('--min_steps', type=int, default=3, help='fewest training steps timed')
  args = parser.parse_args()
  data_dir = args.data_dir

  config = dict(name='synthetic/cifar32_large', data_dir=data_dir, augment=True,
                val_fraction=0.0, label_noise=0.0, train_subset=None)
  inp = data.make_input(config, batch_size=args.batch_size, seed=0, process_index=0,
                        process_count=1)
  iterator = inp.train_iterator(0)
  for _ in range(20):  # Warm-up: tf.data autotuning, first epoch set-up.
    batch = next(iterator)
  pipeline_rate = _rate(lambda: next(iterator), args.seconds, 20)

  model = models.get_model('simple_cnn', inp.spec.num_classes)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + inp.spec.image_shape))['params']
  tx = optax.sgd(0.01, momentum=0.9)
  step = _make_step(model, tx)
  state = {'params': params, 'opt': tx.init(params)}
  device_batch = jax.device_put(batch)

  def train_step(batch_fn):
    state['params'], state['opt'], loss = step(state['params'], state['opt'], batch_fn())
    jax.block_until_ready(loss)  # Timed step by step: no unbounded queue of dispatched steps.

  for _ in range(2):  # Compile and warm up.
    train_step(lambda: device_batch)

  def timed(batch_fn):
    return _rate(lambda: train_step(batch_fn), args.seconds, args.min_steps)

  train_rate = timed(lambda: device_batch)
  fed_rate = timed(lambda: jax.device_put(next(iterator)))
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}, '
        f'host CPUs: {os.cpu_count()}, batch {args.batch_size}, 32x32x3, augment=True')
  print(f'pipeline batches/s / SimpleCNN train steps/s = {pipeline_rate / train_rate:.1f} '
        '(goal >= 3)')
  print(f'pipeline-fed steps/s / train steps/s on a resident batch = '
        f'{fed_rate / train_rate:.2f} (1.0: training never waits on input)')


if __name__ == '__main__':
  main()
