"""Per-example cross-entropy and accuracy.

Both return one value per example, `[B]`, so that callers choose how to reduce (the mean loss of
a training step, a sum over an evaluation set divided by the true count, per-example curvature).
"""

import jax.numpy as jnp
import optax


def cross_entropy(logits, labels):
  """Per-example cross-entropy  -log p(y_i | x_i) = logsumexp(z_i) - z_i[y_i].

  Args:
    logits: [B, C] unnormalized log-probabilities z.
    labels: [B] integer classes in [0, C).

  Returns:
    [B] losses in the dtype of `logits`.
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def accuracy(logits, labels):
  """Per-example 0/1 correctness of the arg-max prediction.

  Args:
    logits: [B, C].
    labels: [B] integer classes.

  Returns:
    [B] floats in the dtype of `logits`, 1.0 where argmax_c z_ic == y_i, else 0.0.
  """
  return (jnp.argmax(logits, axis=-1) == labels).astype(logits.dtype)
