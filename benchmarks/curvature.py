"""Cost of the curvature measurements as ratios to one mean-loss gradient, measured in one run.

SimpleCNN (or `--model`, any of the zoo's) on 32x32x3 inputs, batch 128, float32, CPU. Every
function is jitted and warmed up; the timed calls are interleaved over rounds (so background
load hits all of them alike) and each cost is the median over rounds divided by the median of
the mean-loss gradient.

  python -m benchmarks.curvature [--batch 128] [--rounds 7] [--probes 8] [--part all] [--unroll]
                                 [--model simple_cnn]

`--part traces` times the traces and norms (per-example gradient norms, Tr(F), Tr(F_B), H v,
Tr(H)); `--part operators` the breakdowns, operators and estimators (per-leaf Tr(F), the Fisher
diagonal, fisher_vp, Lanczos, SLQ) with the baseline and the H v row they are compared to; the
rows whose goal is in H v products are also shown per product.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks import _timing  # noqa: E402
from fisher_jax import curvature, losses  # noqa: E402
from fisher_jax.models import get_model  # noqa: E402


def _vmap_grad_sq_norms(logits_fn, params, inputs, labels):
  """Alternative kept for comparison: materialize vmap(grad) per-example gradients, then norms."""
  def one(x, y):
    return jax.grad(lambda p: losses.cross_entropy(logits_fn(p, x[None]), y[None])[0])(params)
  grads = jax.vmap(one)(inputs, labels)
  return sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for g in jax.tree.leaves(grads))


def _broadcast_params_sq_norms(logits_fn, params, inputs, labels):
  """Alternative kept for comparison: gradient w.r.t. per-example copies of the parameters."""
  batch = inputs.shape[0]
  copies = jax.tree.map(lambda p: jnp.broadcast_to(p, (batch,) + p.shape), params)

  def total(copies):
    per_example = jax.vmap(lambda p, x, y: losses.cross_entropy(logits_fn(p, x[None]),
                                                                y[None])[0])
    return jnp.sum(per_example(copies, inputs, labels))
  grads = jax.grad(total)(copies)
  return sum(jnp.sum(g.reshape(batch, -1) ** 2, axis=1) for g in jax.tree.leaves(grads))


def _vmapped_jvp_of_grad_forms(loss_fn, params, probes):
  """Alternative kept for comparison: vmap over probes of jvp(grad) without jax.linearize."""
  def form(v):
    return optax.tree.vdot(v, jax.jvp(jax.grad(loss_fn), (params,), (v,))[1])
  return jax.vmap(form)(probes)


def _reverse_over_reverse_hvp(loss_fn, params, v):
  return jax.grad(lambda p: optax.tree.vdot(jax.grad(loss_fn)(p), v))(params)


def _operator_cases(logits_fn, loss_of, args):
  """The rows of the breakdowns, operators and estimators (see docs/curvature.md), and for the
  rows whose goal is stated in HVPs, their number of HVPs."""
  k, m, n = args.lanczos_k, args.iterations, args.slq_probes
  unrolled = ', unrolled' if args.unroll else ''
  lanczos = f'top_eigenpairs k={k}, {m} iterations (Hessian{unrolled})'
  slq = f'spectral_density {n} probes x {m} iterations (Hessian{unrolled})'
  cases = {
      "fisher_trace 'sampled' per_leaf": (
          lambda p, x, y, r, v: curvature.fisher_trace(logits_fn, p, x, estimator='sampled',
                                                       rng=r, per_leaf=True), 1),
      "  fisher_trace 'sampled' per_leaf, engine='vmap'": (
          lambda p, x, y, r, v: curvature.fisher_trace(logits_fn, p, x, estimator='sampled',
                                                       rng=r, per_leaf=True, engine='vmap'), 1),
      "fisher_diagonal 'sampled'": (
          lambda p, x, y, r, v: curvature.fisher_diagonal(logits_fn, p, x, estimator='sampled',
                                                          rng=r), 1),
      "  fisher_diagonal 'sampled', engine='vmap'": (
          lambda p, x, y, r, v: curvature.fisher_diagonal(logits_fn, p, x, estimator='sampled',
                                                          rng=r, engine='vmap'), 1),
      'fisher_vp': (
          lambda p, x, y, r, v: curvature.fisher_vp(logits_fn, p, x, v), 1),
      lanczos: (
          lambda p, x, y, r, v: curvature.top_eigenpairs(
              curvature.make_hvp(loss_of(x, y), p), p, k=k, rng=r, num_iterations=m,
              unroll=args.unroll), 1),
      slq: (
          lambda p, x, y, r, v: curvature.spectral_density(
              curvature.make_hvp(loss_of(x, y), p), p, rng=r, num_probes=n,
              num_iterations=m, unroll=args.unroll), 1),
  }
  return cases, {lanczos: m, slq: n * m}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--model', default='simple_cnn',
                      help='a model of the zoo (fisher_jax.models), e.g. resnet18')
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--probes', type=int, default=8)
  parser.add_argument('--chunk', type=int, default=32)
  parser.add_argument('--copies_alternative', action='store_true',
                      help='also time per-example gradients via per-example parameter copies')
  parser.add_argument('--part', choices=('all', 'traces', 'operators'), default='all',
                      help='the rows to time: the traces and norms, the operators and '
                           'estimators (with the baseline and the HVP), or all')
  parser.add_argument('--lanczos_k', type=int, default=10)
  parser.add_argument('--iterations', type=int, default=30)
  parser.add_argument('--slq_probes', type=int, default=4)
  parser.add_argument('--unroll', action='store_true',
                      help='Lanczos and SLQ with their steps unrolled (no fori_loop)')
  args = parser.parse_args()

  model = get_model(args.model, num_classes=10)
  k_x, k_y, k_p, k_v = jax.random.split(jax.random.PRNGKey(0), 4)
  inputs = jax.random.normal(k_x, (args.batch, 32, 32, 3), jnp.float32)
  labels = jax.random.randint(k_y, (args.batch,), 0, 10)
  variables = model.init(k_p, inputs[:1])
  params = variables['params']
  # BatchNorm models in evaluation mode (their running averages are small: closing over them
  # costs no compile time).
  logits_fn = curvature.make_logits_fn(model, variables.get('batch_stats'))
  v = optax.tree.random_like(k_v, params)
  rng = jax.random.PRNGKey(1)
  probes = args.probes

  def loss_of(x, y):
    return curvature.make_loss_fn(logits_fn, x, y)

  # name -> (jitted function of (params, inputs, labels, rng, v), divisor for a per-unit cost)
  cases = {
      'mean-loss gradient (baseline)': (
          lambda p, x, y, r, v: jax.grad(loss_of(x, y))(p), 1),
      'per_example_grad_sq_norms': (
          lambda p, x, y, r, v: curvature.per_example_grad_sq_norms(logits_fn, p, x, y), 1),
      "  per_example_grad_sq_norms, engine='vmap'": (
          lambda p, x, y, r, v: curvature.per_example_grad_sq_norms(logits_fn, p, x, y,
                                                                    engine='vmap'), 1),
      f'per_example_grad_sq_norms chunk_size={args.chunk}': (
          lambda p, x, y, r, v: curvature.per_example_grad_sq_norms(logits_fn, p, x, y,
                                                                    chunk_size=args.chunk), 1),
      '  alternative: vmap(grad), then norms': (
          lambda p, x, y, r, v: _vmap_grad_sq_norms(logits_fn, p, x, y), 1),
      "fisher_trace 'sampled'": (
          lambda p, x, y, r, v: curvature.fisher_trace(logits_fn, p, x, estimator='sampled',
                                                       rng=r), 1),
      "  fisher_trace 'sampled', engine='vmap'": (
          lambda p, x, y, r, v: curvature.fisher_trace(logits_fn, p, x, estimator='sampled',
                                                       rng=r, engine='vmap'), 1),
      "fisher_trace 'exact' (C=10)": (
          lambda p, x, y, r, v: curvature.fisher_trace(logits_fn, p, x, estimator='exact'), 1),
      'batch_fisher_trace': (
          lambda p, x, y, r, v: curvature.batch_fisher_trace(logits_fn, p, x, rng=r), 1),
      'hvp (forward-over-reverse)': (
          lambda p, x, y, r, v: curvature.hvp(loss_of(x, y), p, v), 1),
      '  comparison: hvp reverse-over-reverse': (
          lambda p, x, y, r, v: _reverse_over_reverse_hvp(loss_of(x, y), p, v), 1),
      f'hessian_trace per probe ({probes} probes batched)': (
          lambda p, x, y, r, v: curvature.hessian_trace(loss_of(x, y), p, rng=r,
                                                        num_probes=probes), probes),
      '  alternative: vmap(jvp(grad)) per probe, no linearize': (
          lambda p, x, y, r, v: _vmapped_jvp_of_grad_forms(
              loss_of(x, y), p, jax.tree.map(lambda a: jnp.stack([a] * probes), v)), probes),
  }
  if args.part == 'operators':
    cases = {name: cases[name] for name in ('mean-loss gradient (baseline)',
                                            'hvp (forward-over-reverse)')}
  operator_cases, per_hvp = _operator_cases(logits_fn, loss_of, args)
  if args.part != 'traces':
    cases.update(operator_cases)
  if args.copies_alternative:  # slow to compile (convolutions with B feature groups)
    cases['  alternative: grad w.r.t. per-example parameter copies'] = (
        lambda p, x, y, r, v: _broadcast_params_sq_norms(logits_fn, p, x, y), 1)
  jitted = {name: (jax.jit(fn), div) for name, (fn, div) in cases.items()}

  # The Python loop over examples: a jitted single-example gradient norm, called B times.
  one_norm = jax.jit(lambda p, x, y: optax.tree.norm(jax.grad(loss_of(x, y))(p), squared=True))
  def python_loop(p, x, y, r, v):
    return [one_norm(p, x[i:i + 1], y[i:i + 1]) for i in range(x.shape[0])]
  if args.part != 'operators':
    jitted['  comparison: Python loop over examples'] = (python_loop, 1)

  call_args = (params, inputs, labels, rng, v)
  calls = {name: (lambda r, fn=fn: fn(*call_args)) for name, (fn, _) in jitted.items()}
  _timing.warm_up(calls, jax.block_until_ready)  # compile and warm up
  times = _timing.interleaved_rounds(calls, args.rounds, jax.block_until_ready)
  base = np.median(times['mean-loss gradient (baseline)'])
  print(f'{args.model}, inputs [{args.batch}, 32, 32, 3] float32, {jax.devices()[0].platform}, '
        f'{args.rounds} rounds; cost / one mean-loss gradient (median):')
  hvp_cost = np.median(times['hvp (forward-over-reverse)']) / base
  for name, (_, div) in jitted.items():
    ratio = np.median(times[name]) / div / base
    in_hvps = ''
    if name in per_hvp:
      in_hvps = f'   = {ratio / (per_hvp[name] * hvp_cost):5.2f} x {per_hvp[name]} HVPs'
    print(f'  {name:58s} {ratio:6.2f}{in_hvps}')


if __name__ == '__main__':
  main()
