"""The Fashion-MNIST recipe: a 2-hidden-layer MLP (512 ReLU units each) trained with plain SGD.

The full training split (54,000 examples after the fixed 10% validation carve-out), batch 128,
the tuned learning rate of configs/recipes.py's `mlp_fashion_mnist` setting, Tr(F) every epoch.
The data is prepared offline on first use from the Debian package's IDX files
(`apt-get install dataset-fashion-mnist`; docs/data.md).

  python -m fisher_jax.main --config configs/fashion_mnist.py --workdir runs/fashion_mnist
  python -m fisher_jax.main --config configs/fashion_mnist.py --workdir runs/fmnist_small \
      --config.optimizer.learning_rate=0.003
"""

from configs import recipes


def get_config(arg=None):
  del arg  # One recipe.
  return recipes.get_config('mlp_fashion_mnist')
