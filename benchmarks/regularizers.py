"""Cost of the curvature regularizers as ratios to a plain SGD step (one run, one device).

SimpleCNN on random 32x32x3 images, batch 128, float32, SGD with momentum 0.9. Every variant is
a jitted function; after compilation the variants run in interleaved rounds (each once per
round, so a change in machine load hits all of them alike) and the medians are divided by the
plain step's median:

* `fp grad (linearize)`: `regularizers.penalty_and_grad('fp')` alone: g by one forward and one
  backward pass, 2 H g by one tangent pass of `jax.linearize` (goal <= 2.3);
* `fp grad (rev-over-rev)`: `jax.grad` of `regularizers.penalty('fp')`, for reference;
* `fp step`: a step computing a fresh penalty: `loss_and_penalty_grads` (the loss gradient and
  g pulled back through one forward pass), `tx.update(..., penalty=...)` (goal <= 3.0);
* `fp step separate`: the same with the loss gradient's own forward pass and `penalty_and_grad`;
* `fp step every_k=10`: 10 consecutive steps, averaged: the host runs the fresh-penalty step
  once and the plain-gradient step reusing the cached penalty gradient 9 times (goal <= 1.3);
* `fp every_k=10 cond` (with `--cond`): the same, one compiled step choosing with `lax.cond` on
  the device (on CPU, XLA runs the convolutions inside a `lax.cond` branch several times slower,
  github.com/jax-ml/jax/issues/12868);
* `fp_per_example`, `gp`, `gpr`, `gpx` steps: recomputing steps as `fp step`.

  python benchmarks/regularizers.py [--rounds 5] [--batch_size 128]
"""

import argparse
import functools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from jax import lax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks import _timing  # noqa: E402
from fisher_jax import losses  # noqa: E402
from fisher_jax import models  # noqa: E402
from fisher_jax import regularizers  # noqa: E402

STRENGTH, LEARNING_RATE, MOMENTUM = 0.1, 0.01, 0.9


def _make_plain_step(logits_fn):
  tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, inputs, labels, rng):
    del rng
    loss, grads = jax.value_and_grad(
        lambda p: losses.cross_entropy(logits_fn(p, inputs), labels).mean())(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return tx, step


def _make_penalty_steps(logits_fn, name: str, every_k: int, mode: str):
  """Training steps with the penalty `name` through `regularizers.add_penalty_gradient`.

  Returns `(tx, {fresh: jitted step})`. `mode`:
    'host': the loss gradient and the penalty share one forward pass
      (`loss_and_penalty_grads`); the host picks the fresh-penalty or the reuse step, so no
      `lax.cond`;
    'host_separate': as 'host', but the loss gradient has its own forward pass and the penalty
      comes from `penalty_and_grad`;
    'cond': the shared forward pass under a `lax.cond` on the update count, the device picks.
  """
  tx = optax.chain(regularizers.add_penalty_gradient(STRENGTH),
                   optax.sgd(LEARNING_RATE, momentum=MOMENTUM))

  def loss_and_grads(params, inputs, labels):
    return jax.value_and_grad(
        lambda p: losses.cross_entropy(logits_fn(p, inputs), labels).mean())(params)

  def make(fresh):
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, inputs, labels, rng):
      penalty = None
      if mode == 'cond':
        cached = opt_state[0]  # The add_penalty_gradient state.

        def with_penalty(p):
          (loss, grads, _), penalty = regularizers.loss_and_penalty_grads(
              name, logits_fn, p, inputs, labels, rng=rng)
          return (loss, grads), penalty

        def without_penalty(p):
          return loss_and_grads(p, inputs, labels), (cached.value, cached.grads)

        (loss, grads), penalty = lax.cond(cached.count % every_k == 0, with_penalty,
                                          without_penalty, params)
      elif mode == 'host' and fresh:
        (loss, grads, _), penalty = regularizers.loss_and_penalty_grads(
            name, logits_fn, params, inputs, labels, rng=rng)
      else:
        loss, grads = loss_and_grads(params, inputs, labels)
        if fresh:
          penalty = regularizers.penalty_and_grad(name, logits_fn, params, inputs, labels,
                                                  rng=rng)
      updates, opt_state = tx.update(grads, opt_state, params, penalty=penalty)
      return optax.apply_updates(params, updates), opt_state, loss

    return step

  if mode == 'cond':
    return tx, {None: make(None)}
  return tx, {True: make(True), False: make(False)} if every_k > 1 else {True: make(True)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--cond', action='store_true',
                      help='Also time the lax.cond variant (on CPU its compilation and first '
                           '10 steps took ~25x those of the host-decided variant).')
  parser.add_argument('--only', default='', help='Comma-separated labels of the variants to run.')
  args = parser.parse_args()

  model = models.get_model('simple_cnn', num_classes=10)
  logits_fn = lambda p, x: model.apply({'params': p}, x)  # noqa: E731
  key = jax.random.key(0)
  inputs = jax.random.normal(key, (args.batch_size, 32, 32, 3), jnp.float32)
  labels = jax.random.randint(jax.random.fold_in(key, 1), (args.batch_size,), 0, 10)
  init_params = jax.jit(model.init)(key, inputs[:1])['params']
  copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731  (steps donate their inputs)

  # label -> (steps per timed call, call(rng) running them); steps keep their own state.
  variants = {}

  def add_steps(label, tx, steps, every_k=1, steps_per_call=1):
    state = {'params': copy(init_params), 'count': 0}
    state['opt_state'] = tx.init(state['params'])

    def call(rng):
      for i in range(steps_per_call):
        flag = None if None in steps else state['count'] % every_k == 0
        state['params'], state['opt_state'], loss = steps[flag](
            state['params'], state['opt_state'], inputs, labels, jax.random.fold_in(rng, i))
        state['count'] += 1
      return loss

    variants[label] = (steps_per_call, call)

  tx, plain_step = _make_plain_step(logits_fn)
  add_steps('plain SGD step', tx, {None: plain_step})
  fp_grad = jax.jit(lambda p, x, y, r: regularizers.penalty_and_grad(
      'fp', logits_fn, p, x, y, rng=r))
  fp_grad_ror = jax.jit(jax.value_and_grad(lambda p, x, y, r: regularizers.penalty(
      'fp', logits_fn, p, x, y, rng=r)))
  variants['fp grad (linearize)'] = (1, lambda r: fp_grad(init_params, inputs, labels, r))
  variants['fp grad (rev-over-rev)'] = (1, lambda r: fp_grad_ror(init_params, inputs, labels, r))
  add_steps('fp step', *_make_penalty_steps(logits_fn, 'fp', 1, 'host'))
  add_steps('fp step separate', *_make_penalty_steps(logits_fn, 'fp', 1, 'host_separate'))
  add_steps('fp step every_k=10', *_make_penalty_steps(logits_fn, 'fp', 10, 'host'),
            every_k=10, steps_per_call=10)
  if args.cond:
    add_steps('fp every_k=10 cond', *_make_penalty_steps(logits_fn, 'fp', 10, 'cond'),
              every_k=10, steps_per_call=10)
  for name in ('fp_per_example', 'gp', 'gpr', 'gpx'):
    add_steps(f'{name} step', *_make_penalty_steps(logits_fn, name, 1, 'host'))
  if args.only:
    keep = ['plain SGD step'] + args.only.split(',')
    variants = {k: v for k, v in variants.items() if k in keep}

  calls = {label: (lambda r, call=call: call(jax.random.fold_in(key, r)))
           for label, (_, call) in variants.items()}
  start = time.perf_counter()
  _timing.warm_up(calls, jax.block_until_ready)  # Compile and warm up.
  compile_seconds = time.perf_counter() - start
  times = {label: [t / variants[label][0] for t in ts] for label, ts in
           _timing.interleaved_rounds(calls, args.rounds, jax.block_until_ready).items()}
  plain = statistics.median(times['plain SGD step'])
  print(f'SimpleCNN 32x32x3, batch {args.batch_size}, float32, {jax.devices()[0].platform}, '
        f'{args.rounds} rounds (compile+warm-up took {compile_seconds / plain:.0f} plain steps)')
  print(f'{"variant":<24} {"ratio to plain SGD step":>24} {"spread (min-max)":>18}')
  for label, ts in times.items():
    print(f'{label:<24} {statistics.median(ts) / plain:>24.2f} '
          f'{min(ts) / plain:>8.2f}-{max(ts) / plain:.2f}')


if __name__ == '__main__':
  main()
