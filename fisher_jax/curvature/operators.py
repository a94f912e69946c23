"""Curvature matrices as operators: v -> H v and v -> F v on params-shaped pytrees.

Neither matrix is formed. The estimators of `fisher_jax.curvature.estimators` take any such
`matvec`, so every estimator works on the Hessian and on the Fisher alike.

* The Hessian of `loss_fn(params) -> scalar`, H = ∇²θ loss: H v is forward-over-reverse, a jvp
  of the gradient. `make_hvp` linearizes the gradient once (`jax.linearize`: one forward and
  one backward pass), after which every product costs one tangent pass.
* The Fisher of the model's predictive distribution, averaged over the B inputs,

      F = (1/B) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i,   J_i = ∂z_i/∂θ [C, P], p_i = softmax(z_i),

  which for the cross-entropy is also the generalized Gauss-Newton matrix. F v is a
  Jacobian-vector product u = J v [B, C] (forward mode), the C x C output Fisher applied to each
  row, (diag p_i − p_i p_iᵀ) u_i = p_i ⊙ u_i − p_i (p_iᵀ u_i), and a vector-Jacobian product
  back to the parameters (reverse mode): J is never formed. `make_fisher_vp` linearizes the
  logits once and transposes the linear map (`jax.linear_transpose`), so every product costs one
  tangent pass and its transpose. The batch is coupled only through the mean, so `logits_fn`
  may be batch-coupled here (no per-example vmap), but F is the Fisher of the logits it returns.

Devices: under `jax.jit` with a sharded batch XLA partitions the products. Inside
`jax.shard_map` (each device's view of a batch split evenly over the manual axes), `fisher_vp`
returns the global F v on every device: the parameters and v are cast to device-varying and the
local products averaged over the manual axes. The Hessian products differentiate `loss_fn` as
given (use a mean loss over the global batch under `jax.jit`).
"""

from typing import Callable

import jax

from fisher_jax.curvature import _core

Matvec = Callable[..., object]


def make_hvp(loss_fn: Callable, params) -> Matvec:
  """`v -> H v` for H = ∇²θ loss_fn(θ) at `params`, sharing one linearization of the gradient.

  Args:
    loss_fn: `loss_fn(params) -> scalar`.
    params: the parameter pytree θ.

  Returns:
    A linear function of a params-shaped pytree v returning H v (params-shaped). Each call
    costs one tangent pass of the gradient (about a gradient); `jax.vmap` it over probes.
  """
  return jax.linearize(jax.grad(loss_fn), params)[1]


def _output_fisher(logits, u):
  """(diag p − p pᵀ) u row by row: logits, u [..., C] -> [..., C]."""
  p = jax.nn.softmax(logits)
  return p * u - p * (p * u).sum(-1, keepdims=True)


def make_fisher_vp(logits_fn: Callable, params, inputs, *,
                   axis_name: _core.AxisName = None) -> Matvec:
  """`v -> F v` for the Fisher (= Gauss-Newton matrix of CE) of the B inputs at `params`.

  F = (1/B) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i, a mean over inputs (see the module docstring).

  Args:
    logits_fn: `logits_fn(params, inputs [B, ...]) -> [B, C]`.
    params: the parameter pytree θ.
    inputs: [B, ...] examples (inside shard_map: this device's slice of the global batch).
    axis_name: inside `jax.shard_map`, the mesh axes the batch is split over (default: every
      manual axis).

  Returns:
    A linear function of a params-shaped pytree v returning F v (params-shaped); each call
    costs one Jacobian-vector and one vector-Jacobian product of the logits (the forward pass
    is shared by all calls).
  """
  axes = _core.batch_axes(axis_name)
  params = _core.as_varying(params, axes)
  logits, jvp = jax.linearize(lambda p: logits_fn(p, inputs), params)
  vjp = jax.linear_transpose(jvp, params)
  batch = logits.shape[0]

  def fisher_vp_(v):
    (fv,) = vjp(_output_fisher(logits, jvp(_core.as_varying(v, axes))) / batch)
    return _core.global_mean(fv, axes)

  return fisher_vp_


def fisher_vp(logits_fn: Callable, params, inputs, v, *, axis_name: _core.AxisName = None):
  """F v, the Fisher of the model's predictive distribution (mean over the B inputs) times v.

  F = (1/B) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i, the exact Fisher (no sampled labels), equal to
  the Gauss-Newton matrix of the cross-entropy. Costs one forward pass, one Jacobian-vector and
  one vector-Jacobian product of the logits (about 1.5-2 gradients); J is never formed. For many
  products at the same point use `make_fisher_vp`, which shares the forward pass.

  Args:
    logits_fn: `logits_fn(params, inputs [B, ...]) -> [B, C]`.
    params: the parameter pytree θ.
    inputs: [B, ...] examples.
    v: pytree shaped like `params`.
    axis_name: inside `jax.shard_map`, the mesh axes the batch is split over (default: every
      manual axis).

  Returns:
    F v, a pytree shaped like `params`.
  """
  return make_fisher_vp(logits_fn, params, inputs, axis_name=axis_name)(v)
