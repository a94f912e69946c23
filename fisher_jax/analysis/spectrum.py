"""The spectral density of a checkpoint's Hessian (and Fisher), by stochastic Lanczos quadrature.

  python -m fisher_jax.analysis.spectrum --workdir runs/default --out spectrum.png \
      [--step N] [--num_examples 256] [--probes 8] [--iterations 40] [--operator both]

It reads the run's `config.json`, rebuilds its model and dataset, restores the parameters and
BatchNorm statistics of the checkpoint at `--step` (default: the latest) through
`fisher_jax.training.checkpoint`, and on a fixed subset of training examples (the same subset the
run measured Tr(H) on, chosen by the run's seed) computes `curvature.spectral_density` of the
Hessian of the mean loss and/or the Fisher, smooths it with `density_on_grid` and plots it on a
symmetric-log eigenvalue axis (PyHessian's plot, Ghorbani et al., 2019). The nodes and
weights are saved next to the figure (`.npz`) for other plots.
"""

import argparse
import json
import os
import sys
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fisher_jax import curvature
from fisher_jax import data
from fisher_jax import models
from fisher_jax import rundir
from fisher_jax.training import checkpoint
from fisher_jax.training import settings

OPERATORS = ('hessian', 'fisher', 'both')


def _load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, rundir.CONFIG_FILE)
  if not os.path.exists(path):
    raise ValueError(f'--workdir={workdir!r} has no config.json; point it at a fisher_jax run.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def checkpoint_spectra(workdir: str, *, step: Optional[int] = None,
                       num_examples: Optional[int] = None, num_probes: int = 8,
                       num_iterations: int = 40, operator: str = 'both',
                       seed: int = 0) -> Dict[str, np.ndarray]:
  """SLQ nodes and weights of a checkpoint's curvature on a fixed subset of training examples.

  Args:
    workdir: the run's workdir (config.json and checkpoints/).
    step: the checkpoint's step; None for the latest.
    num_examples: examples of the fixed training subset (default: the run's
      `measure.hessian_num_examples`).
    num_probes, num_iterations: SLQ probes N and Lanczos steps m.
    operator: 'hessian', 'fisher' or 'both'.
    seed: the SLQ probes' seed.

  Returns:
    {'step': step, '<operator>_nodes': [N, m], '<operator>_weights': [N, m], ...}.

  Raises:
    ValueError: a missing run or checkpoint, or an unknown operator.
  """
  if operator not in OPERATORS:
    raise ValueError(f'--operator={operator!r} is unknown; choose one of {list(OPERATORS)}.')
  config = _load_config(workdir)
  step, params, batch_stats = checkpoint.restore_model_variables(
      os.path.join(workdir, rundir.CHECKPOINT_DIR), step)
  inp = data.make_input(config.dataset, batch_size=config.batch_size, seed=config.seed,
                        process_index=0, process_count=1)
  model_settings = settings.read_model(config.model)
  model = models.get_model(model_settings.name, inp.spec.num_classes, **model_settings.kwargs)
  n = num_examples or config.measure.hessian_num_examples
  subset = inp.fixed_subset(n, kind='all')
  wanted = ('hessian', 'fisher') if operator == 'both' else (operator,)

  @jax.jit
  def spectra(params, batch_stats, images, labels, rng):
    logits_fn = curvature.make_logits_fn(model, batch_stats or None)
    operators = {
        'hessian': lambda: curvature.make_hvp(
            curvature.make_loss_fn(logits_fn, images, labels), params),
        'fisher': lambda: curvature.make_fisher_vp(logits_fn, params, images)}
    # Unrolled on CPU: XLA:CPU runs convolutions inside a loop body about 10x slower.
    return {name: curvature.spectral_density(operators[name](), params, rng=rng,
                                             num_probes=num_probes,
                                             num_iterations=num_iterations,
                                             unroll=jax.default_backend() == 'cpu')
            for name in wanted}

  out = spectra(params, batch_stats, jnp.asarray(subset['image']),
                jnp.asarray(subset['label']), jax.random.PRNGKey(seed))
  result = {'step': np.asarray(step)}
  for name, (nodes, weights) in out.items():
    result[f'{name}_nodes'] = np.asarray(nodes, np.float64)
    result[f'{name}_weights'] = np.asarray(weights, np.float64)
  return result


def plot_spectra(result: Dict[str, np.ndarray], out: str, *, title: str = ''):
  """Plots each operator's smoothed density on a symmetric-log eigenvalue axis into `out`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  names = [k[:-len('_nodes')] for k in result if k.endswith('_nodes')]
  fig, ax = plt.subplots(figsize=(6, 4))
  for name in names:
    nodes, weights = result[f'{name}_nodes'], result[f'{name}_weights']
    span = max(float(np.abs(nodes).max()), 1e-12)
    sigma = 0.01 * span  # PyHessian's default smoothing, relative to the spectrum's extent
    grid = np.linspace(nodes.min() - 5 * sigma, nodes.max() + 5 * sigma, 2000)
    density = np.asarray(curvature.density_on_grid(nodes, weights, grid, sigma=sigma))
    ax.semilogy(grid, density + 1e-12, label=f'{name} (top {nodes.max():.3g})')
  ax.set_xscale('symlog', linthresh=1e-3 * max(float(np.abs(result[f'{n}_nodes']).max())
                                              for n in names))
  ax.set_xlabel('eigenvalue')
  ax.set_ylabel('density (smoothed SLQ)')
  ax.set_title(title or f'spectral density at step {int(result["step"])}')
  ax.legend()
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--out', required=True, help='figure file, e.g. spectrum.png')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (latest)')
  parser.add_argument('--num_examples', type=int, default=None)
  parser.add_argument('--probes', type=int, default=8)
  parser.add_argument('--iterations', type=int, default=40)
  parser.add_argument('--operator', default='both', choices=OPERATORS)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  try:
    result = checkpoint_spectra(args.workdir, step=args.step, num_examples=args.num_examples,
                                num_probes=args.probes, num_iterations=args.iterations,
                                operator=args.operator, seed=args.seed)
  except ValueError as e:
    print(f'fisher_jax.analysis.spectrum: {e}', file=sys.stderr)
    return 1
  plot_spectra(result, args.out, title=f'{args.workdir} step {int(result["step"])}')
  np.savez(os.path.splitext(args.out)[0] + '.npz', **result)
  print(f'wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
