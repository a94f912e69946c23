"""Pure step functions: training, evaluation and curvature measurement.

`train_step` and `eval_step` are ONE device's program: they see this device's slice of the
global batch and reduce over the mesh axis 'data' with explicit collectives (wrap them with
`parallel.data_parallel`). Because every device holds an equal slice, the mean of the devices'
means is the global mean: 1 and N devices give the same numbers for the same global batch.

BatchNorm: in training each device normalizes with its own batch statistics (as with pmap);
the updated running averages are averaged across devices so the state stays replicated.

Measurements (`make_measure_fn`, `make_hessian_fn`) are global functions for plain `jax.jit` on
batch-sharded inputs: XLA partitions them, so their numbers do not depend on the device count.
They use eval-mode (running-average) BatchNorm, so per-example quantities are per-example.
"""

from typing import Any, Callable, Dict, Mapping, Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import optax

from fisher_jax import curvature
from fisher_jax import losses
from fisher_jax import optim
from fisher_jax import regularizers
from fisher_jax.parallel import AXIS
from fisher_jax.state import TrainState

Batch = Mapping[str, jax.Array]


def _variables(params, batch_stats) -> Dict[str, Any]:
  if batch_stats:
    return {'params': params, 'batch_stats': batch_stats}
  return {'params': params}


def _train_mode_logits_fn(model: nn.Module, batch_stats, rng) -> Callable:
  """`logits_fn(params, inputs)` as the training forward pass sees it (batch statistics)."""

  def logits_fn(params, inputs):
    variables = _variables(params, batch_stats)
    if batch_stats:
      return model.apply(variables, inputs, train=True, mutable=['batch_stats'],
                         rngs={'dropout': rng})[0]
    return model.apply(variables, inputs, train=True, rngs={'dropout': rng})

  return logits_fn


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    regularizer: str = 'none',
                    recompute_penalty: Optional[bool] = None) -> Callable:
  """Builds `train_step(state, batch) -> (state, metrics)` for one device.

  Args:
    model: the flax model.
    tx: the optax optimizer; with a regularizer, it must chain the penalty transformation
      (`optim.make_optimizer` does), which receives `penalty_fn` as an extra argument.
    regularizer: `config.regularizer.name`. Batch-level penalties (fp, gp, gpr) use the
      training forward pass (BatchNorm with batch statistics); the per-example ones
      (`regularizers.PER_EXAMPLE`: fp_per_example, gpx) use eval-mode logits, which are per-example
      independent. The penalty is that of the global batch (see `regularizers`).
    recompute_penalty: who decides whether a step recomputes the penalty (see
      `optim.add_penalty_gradient`). None: the device, with `lax.cond`, one step for all.
      True / False: the host; this step always / never recomputes it, and the caller picks the
      step with `optim.make_recompute_fn` (no `lax.cond`, which on XLA:CPU runs convolutions
      several times slower). Ignored without a regularizer.

  The step's metrics are global means over the batch: 'loss' (mean cross-entropy), 'accuracy',
  and 'penalty' (the latest penalty value) when a regularizer is configured.
  """
  regularizer = regularizers.validate_name(regularizer)

  def train_step(state: TrainState, batch: Batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    device_rng = jax.random.fold_in(step_rng, lax.axis_index(AXIS))
    images, labels = batch['image'], batch['label']

    def loss_fn(params):
      variables = _variables(params, state.batch_stats)
      if state.batch_stats:
        logits, updated = model.apply(variables, images, train=True, mutable=['batch_stats'],
                                      rngs={'dropout': device_rng})
        batch_stats = updated['batch_stats']
      else:
        logits = model.apply(variables, images, train=True, rngs={'dropout': device_rng})
        batch_stats = state.batch_stats
      loss = jnp.mean(losses.cross_entropy(logits, labels))
      return loss, (logits, batch_stats)

    def loss_grads(params):
      (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      return lax.pmean(loss, AXIS), lax.pmean(grads, AXIS), logits, batch_stats

    extra = {}
    if regularizer != 'none' and recompute_penalty is not None:
      extra['recompute_penalty'] = recompute_penalty
    if regularizer == 'none' or recompute_penalty is False:
      loss, grads, logits, batch_stats = loss_grads(state.params)
    elif not state.batch_stats:
      # No BatchNorm: training and eval forward passes agree, so when the penalty is due the
      # loss gradient and the penalty share one forward pass; the cached penalty otherwise.
      logits_fn = _train_mode_logits_fn(model, {}, device_rng)

      def with_penalty(params):
        fused = regularizers.loss_and_penalty_grads(regularizer, logits_fn, params, images,
                                                    labels, rng=step_rng, axis_name=AXIS)
        return (fused.loss, fused.loss_grads, fused.logits), (fused.penalty,
                                                              fused.penalty_grads)

      def without_penalty(params):
        loss, grads, logits, _ = loss_grads(params)
        return (loss, grads, logits), (jnp.zeros([], loss.dtype),
                                       jax.tree.map(jnp.zeros_like, params))

      if recompute_penalty:
        (loss, grads, logits), penalty = with_penalty(state.params)
      else:
        (loss, grads, logits), penalty = lax.cond(optim.penalty_due(state.opt_state),
                                                  with_penalty, without_penalty, state.params)
      batch_stats = state.batch_stats
      extra['penalty_fn'] = lambda _: penalty
    else:
      loss, grads, logits, batch_stats = loss_grads(state.params)
      if regularizer in regularizers.PER_EXAMPLE:
        logits_fn = curvature.make_logits_fn(model, state.batch_stats)
      else:
        logits_fn = _train_mode_logits_fn(model, state.batch_stats, device_rng)
      extra['penalty_fn'] = regularizers.make_penalty_fn(
          regularizer, logits_fn, images, labels, rng=step_rng, axis_name=AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss,
               'accuracy': lax.pmean(jnp.mean(losses.accuracy(logits, labels)), AXIS)}
    if regularizer != 'none':
      metrics['penalty'] = optim.latest_penalty(opt_state)
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
    logits = model.apply(_variables(state.params, state.batch_stats), batch['image'],
                         train=False)
    mask = batch['mask'].astype(jnp.float32)
    sums = {
        'loss': jnp.sum(losses.cross_entropy(logits, batch['label']) * mask),
        'accuracy': jnp.sum(losses.accuracy(logits, batch['label']) * mask),
        'count': jnp.sum(mask),
    }
    return lax.psum(sums, AXIS)

  return eval_step


def make_measure_fn(model: nn.Module, *, estimator: str, batch_size: int) -> Callable:
  """Builds `measure(state, inputs, labels, rng) -> metrics` (global; for `jax.jit`).

  On the n examples given (a fixed training subset):
    * 'curvature/fisher_trace': Tr(F) = mean_i E_c ||grad CE(x_i, c)||^2 by `estimator`;
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
    return {
        'curvature/fisher_trace': curvature.fisher_trace(
            logits_fn, state.params, inputs, estimator=estimator, rng=fisher_rng,
            labels=labels),
        'curvature/fisher_trace_batch': jnp.mean(batch_traces),
        'curvature/grad_norm': curvature.gradient_norm(logits_fn, state.params, inputs, labels),
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
