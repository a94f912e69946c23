"""Pure step functions: training, evaluation and curvature measurement.

`train_step` and `eval_step` are ONE device's program: they see this device's slice of the
global batch and reduce over the mesh axis 'data' with explicit collectives (wrap them with
`mesh.data_parallel`). Because every device holds an equal slice, the mean of the devices'
means is the global mean: 1 and N devices give the same numbers for the same global batch.

BatchNorm: in training each device normalizes with its own batch statistics (as with pmap);
the updated running averages are averaged across devices so the state stays replicated.

Measurements (`make_measure_fn`, `make_hessian_fn`) are global functions for plain `jax.jit` on
batch-sharded inputs: XLA partitions them, so their numbers do not depend on the device count.
They use eval-mode (running-average) BatchNorm, so per-example quantities are per-example.
"""

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import optax

from fisher_jax import curvature
from fisher_jax import losses
from fisher_jax import regularizers
from fisher_jax.training.mesh import AXIS
from fisher_jax.training.state import TrainState

Batch = Mapping[str, jax.Array]


def _apply_train(model: nn.Module, state: TrainState, params, inputs, rng):
  """The training forward pass at `params`: (logits, updated batch_stats ({} without BN))."""
  variables = state.replace(params=params).variables()
  if state.batch_stats:
    logits, updated = model.apply(variables, inputs, train=True, mutable=['batch_stats'],
                                  rngs={'dropout': rng})
    return logits, updated['batch_stats']
  return model.apply(variables, inputs, train=True, rngs={'dropout': rng}), state.batch_stats


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    regularizer: str = 'none', *, fresh_penalty: bool = True) -> Callable:
  """Builds `train_step(state, batch) -> (state, metrics)` for one device.

  Args:
    model: the flax model.
    tx: the optax optimizer; with a regularizer, it must chain the penalty transformation
      (`optim.make_optimizer` does), which receives the fresh penalty as the extra argument
      `penalty`.
    regularizer: `config.regularizer.name`. Batch-level penalties (fp, gp, gpr) use the
      training forward pass (BatchNorm with batch statistics); the per-example ones
      (`regularizers.PER_EXAMPLE`: fp_per_example, gpx) use eval-mode logits on a model with
      BatchNorm, which are per-example independent. The penalty is that of the global batch
      (see `regularizers`).
    fresh_penalty: whether this step computes the penalty and its gradient (True) or lets the
      transformation reuse the cached gradient (False). The training loop builds both steps and
      picks one per update with `cadence.penalty_due`, on the host: no `lax.cond` (inside
      which XLA:CPU runs convolutions several times slower). A fresh step of a model without
      BatchNorm shares one forward pass between the loss gradient and the penalty
      (`regularizers.loss_and_penalty_grads`); with BatchNorm the penalty has its own
      (`regularizers.penalty_and_grad`). Ignored without a regularizer.

  The step's metrics are global means over the batch: 'loss' (mean cross-entropy), 'accuracy',
  and 'penalty' (the latest penalty value) when a regularizer is configured.
  """
  regularizer = regularizers.validate_name(regularizer)
  fresh_penalty = fresh_penalty and regularizer != 'none'

  def train_step(state: TrainState, batch: Batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    device_rng = jax.random.fold_in(step_rng, lax.axis_index(AXIS))
    images, labels = batch['image'], batch['label']

    def train_logits_fn(params, inputs):
      return _apply_train(model, state, params, inputs, device_rng)[0]

    def loss_grads(params):
      def loss_fn(p):
        logits, batch_stats = _apply_train(model, state, p, images, device_rng)
        return jnp.mean(losses.cross_entropy(logits, labels)), (logits, batch_stats)
      (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      return lax.pmean(loss, AXIS), lax.pmean(grads, AXIS), logits, batch_stats

    penalty = None
    if fresh_penalty and not state.batch_stats:
      # Training and eval forward passes agree (no BatchNorm): the loss gradient and the
      # penalty share one forward pass.
      (loss, grads, logits), penalty = regularizers.loss_and_penalty_grads(
          regularizer, train_logits_fn, state.params, images, labels, rng=step_rng,
          axis_name=AXIS)
      batch_stats = state.batch_stats
    else:
      loss, grads, logits, batch_stats = loss_grads(state.params)
      if fresh_penalty:  # BatchNorm: the penalty's own forward pass.
        if regularizer in regularizers.PER_EXAMPLE:
          penalty_logits_fn = curvature.make_logits_fn(model, state.batch_stats)
        else:
          penalty_logits_fn = train_logits_fn
        penalty = regularizers.penalty_and_grad(regularizer, penalty_logits_fn, state.params,
                                                images, labels, rng=step_rng, axis_name=AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, penalty=penalty)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss,
               'accuracy': lax.pmean(jnp.mean(losses.accuracy(logits, labels)), AXIS)}
    if regularizer != 'none':
      metrics['penalty'] = regularizers.latest_penalty(opt_state)
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=lax.pmean(batch_stats, AXIS), opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module) -> Callable:
  """Builds `eval_step(state, batch) -> sums` for one device.

  `batch` holds 'image', 'label' and 'mask' (1 for real examples, 0 for padding). Returns the
  global sums {'loss', 'accuracy', 'count'} over real examples, so a split evaluated in several
  batches is averaged by dividing the summed sums by the summed count: every example counts
  exactly once, whatever the batch size.
  """

  def eval_step(state: TrainState, batch: Batch):
    logits = model.apply(state.variables(), batch['image'], train=False)
    mask = batch['mask'].astype(jnp.float32)
    sums = {
        'loss': jnp.sum(losses.cross_entropy(logits, batch['label']) * mask),
        'accuracy': jnp.sum(losses.accuracy(logits, batch['label']) * mask),
        'count': jnp.sum(mask),
    }
    return lax.psum(sums, AXIS)

  return eval_step


def leaf_metric_names(prefix: str, params) -> Mapping[str, Any]:
  """{'<prefix>/<leaf path>': leaf} for every leaf of a params pytree ('Conv_0/kernel')."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {prefix + '/' + '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path):
          leaf for path, leaf in flat}


def make_measure_fn(model: nn.Module, *, estimator: str, batch_size: int,
                    per_leaf: bool = False) -> Callable:
  """Builds `measure(state, inputs, labels, rng) -> metrics` (global; for `jax.jit`).

  On the n examples given (a fixed training subset):
    * 'curvature/fisher_trace': Tr(F) = mean_i E_c ||grad CE(x_i, c)||^2 by `estimator`;
    * with `per_leaf`, also 'curvature/fisher_trace/<leaf path>' (e.g. '.../Conv_0/kernel'):
      the same mean over that parameter leaf only (its diagonal block's trace), from the same
      per-example pass; the leaves sum to 'curvature/fisher_trace';
    * 'curvature/fisher_trace_batch': Tr(F_B) = ||(1/B) sum_i grad CE(x_i, yhat_i)||^2 for
      mini-batches of the training batch size B (min(B, n)), averaged over the n // B batches;
    * 'curvature/grad_norm': ||(1/n) sum_i grad CE(x_i, y_i)|| with the trained labels.
  """

  def measure(state: TrainState, inputs: jax.Array, labels: jax.Array, rng: jax.Array):
    logits_fn = curvature.make_logits_fn(model, state.batch_stats or None)
    fisher_rng, batch_rng = jax.random.split(rng)
    n = inputs.shape[0]
    b = min(batch_size, n)
    chunks = inputs[:n // b * b].reshape((n // b, b) + inputs.shape[1:])

    def one_batch(i_chunk):
      i, chunk = i_chunk
      return curvature.batch_fisher_trace(logits_fn, state.params, chunk,
                                          rng=jax.random.fold_in(batch_rng, i))

    batch_traces = lax.map(one_batch, (jnp.arange(n // b), chunks))
    fisher = curvature.fisher_trace(logits_fn, state.params, inputs, estimator=estimator,
                                    rng=fisher_rng, labels=labels, per_leaf=per_leaf)
    metrics = {}
    if per_leaf:
      metrics = leaf_metric_names('curvature/fisher_trace', fisher)
      fisher = sum(jax.tree.leaves(fisher))
    return {
        'curvature/fisher_trace': fisher,
        'curvature/fisher_trace_batch': jnp.mean(batch_traces),
        'curvature/grad_norm': curvature.gradient_norm(logits_fn, state.params, inputs, labels),
        **metrics,
    }

  return measure


def make_subset_metrics_fn(model: nn.Module) -> Callable:
  """Builds `subset_metrics(state, inputs, labels) -> (accuracy, grad_norm)` (global).

  Used on the fixed clean and noisy training subsets of label-noise runs: eval-mode accuracy
  against the trained labels, and ||(1/n) sum_i grad CE(x_i, y_i)||.
  """

  def subset_metrics(state: TrainState, inputs: jax.Array, labels: jax.Array):
    logits_fn = curvature.make_logits_fn(model, state.batch_stats or None)
    accuracy = jnp.mean(losses.accuracy(logits_fn(state.params, inputs), labels))
    return accuracy, curvature.gradient_norm(logits_fn, state.params, inputs, labels)

  return subset_metrics


def make_hessian_fn(model: nn.Module, *, num_probes: int) -> Callable:
  """Builds `hessian(state, inputs, labels, rng) -> metrics` (global; for `jax.jit`).

  Tr(H) of the mean cross-entropy over the given examples (eval-mode BatchNorm) by Hutchinson
  with `num_probes` Rademacher probes: 'curvature/hessian_trace' and its standard error
  'curvature/hessian_trace_stderr'.
  """

  def hessian(state: TrainState, inputs: jax.Array, labels: jax.Array, rng: jax.Array):
    logits_fn = curvature.make_logits_fn(model, state.batch_stats or None)
    estimate, stderr = curvature.hessian_trace(
        curvature.make_loss_fn(logits_fn, inputs, labels), state.params, rng=rng,
        num_probes=num_probes)
    return {'curvature/hessian_trace': estimate, 'curvature/hessian_trace_stderr': stderr}

  return hessian


def make_eigen_fn(model: nn.Module, *, k: int, num_iterations: int) -> Callable:
  """Builds `eigen(state, inputs, labels, rng) -> metrics` (global; for `jax.jit`).

  Lanczos (`curvature.top_eigenpairs`, `num_iterations` products each, full
  reorthogonalization) on the given examples, eval-mode BatchNorm:
    * 'curvature/hessian_eigenvalue/<j>', j = 1..k: the k largest eigenvalues of the Hessian of
      the mean cross-entropy, 1 the largest;
    * 'curvature/fisher_top_eigenvalue': the largest eigenvalue of the Fisher
      (1/n) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i (`curvature.make_fisher_vp`).
  On CPU the Lanczos steps are unrolled: XLA:CPU runs convolutions inside a loop body about 10x
  slower (measured: 14.4 vs 1.55 HVPs per step for SimpleCNN), at the price of a longer compile.
  """
  unroll = jax.default_backend() == 'cpu'

  def eigen(state: TrainState, inputs: jax.Array, labels: jax.Array, rng: jax.Array):
    logits_fn = curvature.make_logits_fn(model, state.batch_stats or None)
    hessian_rng, fisher_rng = jax.random.split(rng)
    hvp = curvature.make_hvp(curvature.make_loss_fn(logits_fn, inputs, labels), state.params)
    values, _ = curvature.top_eigenpairs(hvp, state.params, k=k, rng=hessian_rng,
                                         num_iterations=num_iterations, unroll=unroll)
    fisher = curvature.make_fisher_vp(logits_fn, state.params, inputs)
    top, _ = curvature.top_eigenpairs(fisher, state.params, k=1, rng=fisher_rng,
                                      num_iterations=num_iterations, unroll=unroll)
    metrics = {f'curvature/hessian_eigenvalue/{j + 1}': values[j] for j in range(k)}
    metrics['curvature/fisher_top_eigenvalue'] = top[0]
    return metrics

  return eigen
