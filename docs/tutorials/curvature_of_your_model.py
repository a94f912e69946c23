# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The curvature of your own model
#
# `fisher_jax.curvature` measures the curvature of any flax model: it only needs the model as
# a function `logits_fn(params, inputs) -> logits`. This tutorial defines a small MLP of its
# own, trains it for a few hundred steps on scikit-learn's handwritten digits, and measures,
# before and after training:
#
# * Tr(F), the trace of the Fisher information, exactly from per-example gradients (the
#   study's sampled estimator and the exact expectation over classes);
# * Tr(H), the trace of the Hessian of the mean loss, by Hutchinson's estimator with its
#   standard error;
# * the spectral density of the Hessian and of the Fisher, by stochastic Lanczos quadrature;
# * Tr(F) of every parameter leaf (per layer) from the same per-example pass.
#
# It runs in well under a minute on a CPU.

# %%
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

from fisher_jax import curvature

# %% [markdown]
# ## A model and data of your own
#
# Any `flax.linen` module works; nothing in it needs to know about fisher_jax. The digits are
# 1,797 images of 8×8 pixels with 10 classes; we keep 1,024 for training and measure on a fixed
# batch of 256 of them.

# %%
class MLP(nn.Module):
  """Two hidden layers of 64 units: 8,970 parameters on 8x8 images."""
  width: int = 64
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.width, name='hidden_1')(x))
    x = nn.relu(nn.Dense(self.width, name='hidden_2')(x))
    return nn.Dense(self.num_classes, name='logits')(x)


digits = load_digits()
images = jnp.asarray(digits.images[:1024, :, :, None] / 16.0, jnp.float32)  # [N, 8, 8, 1]
labels = jnp.asarray(digits.target[:1024])
batch_x, batch_y = images[:256], labels[:256]  # the measurement batch

model = MLP()
params = model.init(jax.random.PRNGKey(0), images[:1])['params']
print('parameters:', sum(p.size for p in jax.tree.leaves(params)))

# %% [markdown]
# ## Tr(F) and Tr(H)
#
# `make_logits_fn(model)` turns the module into `logits_fn(params, inputs)` (for a model with
# BatchNorm, pass its `batch_stats`: curvature is measured in evaluation mode). Build it
# *inside* the jitted function, from the arguments: a closure over concrete arrays would be
# constant-folded by XLA.
#
# With per-example gradients g_i(y) = ∇θ CE(x_i, y) and predictive distributions p_i,
# Tr(F) = (1/B) Σ_i E_{y~p_i} ‖g_i(y)‖²: `'sampled'` draws one label per example (unbiased,
# the study's estimator), `'exact'` sums over the 10 classes (no sampling noise, 10× the cost).

# %%
@jax.jit
def measure(params, x, y, rng):
  logits_fn = curvature.make_logits_fn(model)
  sampled = curvature.fisher_trace(logits_fn, params, x, estimator='sampled', rng=rng)
  exact = curvature.fisher_trace(logits_fn, params, x, estimator='exact')
  loss_fn = curvature.make_loss_fn(logits_fn, x, y)
  tr_h, tr_h_stderr = curvature.hessian_trace(loss_fn, params, rng=jax.random.fold_in(rng, 1),
                                              num_probes=64)
  return {'Tr(F) sampled': sampled, 'Tr(F) exact': exact, 'Tr(H)': tr_h,
          'Tr(H) stderr': tr_h_stderr}


def show(values):
  print('  '.join(f'{name} {float(value):9.3f}' for name, value in values.items()))


rng = jax.random.PRNGKey(1)
initial_params = params
show(measure(params, batch_x, batch_y, rng))

# %% [markdown]
# ## Train, then measure again
#
# A plain optax loop: 300 steps of SGD with momentum on mini-batches of 128.

# %%
tx = optax.sgd(0.1, momentum=0.9)


@jax.jit
def train_step(params, opt_state, x, y):
  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': p}, x),
                                                           y).mean()
  value, grads = jax.value_and_grad(loss)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, value


opt_state = tx.init(params)
order = np.random.default_rng(0)
for _ in range(300):
  idx = order.choice(len(labels), 128, replace=False)
  params, opt_state, loss_value = train_step(params, opt_state, images[idx], labels[idx])
accuracy = float(jnp.mean(jnp.argmax(model.apply({'params': params}, images), -1) == labels))
print(f'after 300 steps: loss {float(loss_value):.4f}, training accuracy {accuracy:.3f}')
show(measure(params, batch_x, batch_y, rng))

# %% [markdown]
# ## The spectrum
#
# Traces are sums of eigenvalues; the spectral density shows how they are spread.
# `spectral_density` takes any symmetric operator `v -> M v` on parameter pytrees — here the
# Hessian (`make_hvp`) and the Fisher (`make_fisher_vp`, exact, no sampled labels) — and
# returns Gauss quadrature nodes and weights per probe; `density_on_grid` smooths them with
# Gaussians of width σ.

# %%
@jax.jit
def spectra(params, x, y, rng):
  logits_fn = curvature.make_logits_fn(model)
  hvp = curvature.make_hvp(curvature.make_loss_fn(logits_fn, x, y), params)
  fvp = curvature.make_fisher_vp(logits_fn, params, x)
  return {name: curvature.spectral_density(matvec, params, rng=rng, num_probes=4,
                                           num_iterations=40)
          for name, matvec in (('Hessian', hvp), ('Fisher', fvp))}


fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for ax, (label, p) in zip(axes, (('initialization', initial_params), ('after training', params))):
  for name, (nodes, weights) in spectra(p, batch_x, batch_y, jax.random.PRNGKey(2)).items():
    grid = np.linspace(float(nodes.min()) - 1, float(nodes.max()) + 1, 1000)
    density = curvature.density_on_grid(nodes, weights, grid, sigma=0.1)
    ax.semilogy(grid, np.maximum(np.asarray(density), 1e-8), label=name)
    print(f'{label:15s} {name:8s} largest eigenvalue {float(nodes.max()):7.3f}')
  ax.set(title=label, xlabel='eigenvalue', ylabel='density', ylim=(1e-6, None))
  ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Most eigenvalues sit at zero (an MLP of 8,970 parameters on 256 examples of 10 classes has
# at most 256 × 9 non-zero Fisher eigenvalues), and a few large outliers carry most of the
# trace.
#
# ## Per-layer Tr(F)
#
# With `per_leaf=True`, `fisher_trace` returns a pytree like `params` whose leaves are each
# parameter's part of the squared norms, from the same per-example pass; they sum to the
# total.

# %%
@jax.jit
def per_layer(params, x, rng):
  logits_fn = curvature.make_logits_fn(model)
  return curvature.fisher_trace(logits_fn, params, x, estimator='exact', per_leaf=True)


for label, p in (('initialization', initial_params), ('after training', params)):
  leaves = per_layer(p, batch_x, rng)
  total = sum(float(v) for v in jax.tree.leaves(leaves))
  print(f'{label}: total {total:.3f}')
  for path, value in jax.tree_util.tree_flatten_with_path(leaves)[0]:
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    print(f'  {name:18s} {float(value):9.3f}  ({float(value) / total:6.1%})')

# %% [markdown]
# Next: [the Fisher penalty in your own training loop](fisher_penalty_in_your_loop.py), and
# the [curvature guide](../curvature.md) for the rest of the API (Tr(F_B), Hutch++, Lanczos
# eigenpairs, diagonals, whole datasets with error bars, several devices).
