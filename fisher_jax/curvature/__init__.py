"""Curvature measurements: Fisher and Hessian traces, per-example gradient norms, operators
(H v, F v) and the estimators that take any of them (trace, diagonal, eigenpairs, spectrum).

All functions are pure and jit-able and take the model as a function:
`logits_fn(params, inputs [B, ...]) -> logits [B, C]` (per-example independent; see
`make_logits_fn` for flax models with BatchNorm) or `loss_fn(params) -> scalar` (Hessian; see
`make_loss_fn`). Brute-force references live in `fisher_jax.curvature.dense` (tests only).
"""

from fisher_jax.curvature.datasets import DatasetEstimate, over_batches
from fisher_jax.curvature.estimators import (TRACE_METHODS, density_on_grid, diagonal_estimate,
                                             spectral_density, top_eigenpairs, trace_estimate)
from fisher_jax.curvature.fisher import (FISHER_ESTIMATORS, batch_fisher_trace, fisher_diagonal,
                                         fisher_trace, gradient_norm, map_in_chunks,
                                         per_example_grad_sq_norms)
from fisher_jax.curvature.flax_utils import make_logits_fn
from fisher_jax.curvature.hessian import (HESSIAN_TRACE_METHODS, hessian_diagonal,
                                          hessian_top_eigenvalue, hessian_trace, hvp, make_loss_fn)
from fisher_jax.curvature.operators import fisher_vp, make_fisher_vp, make_hvp
