"""Experiment 3 -- regularizers at a small learning rate: GPx, GP, FP, GPr vs the baselines.

Variants: 'tuned_lr' and 'small_lr' (no regularizer), and 'gpx', 'gp', 'fp', 'gpr' (the penalty
at the small learning rate, recomputed every 10 steps, strength from the recipe's
`experiment.strengths`). The table is the final test accuracy per setting and variant; the curves
are the validation accuracy and Tr(F) of FP and GPx against the small-lr baseline.

Full scale: the five settings WRN/TinyImageNet, DenseNet/CIFAR-100, VGG-11/CIFAR-100,
WRN/CIFAR-100, SimpleCNN/CIFAR-10 of configs/recipes.py (200 epochs, batch 128, momentum 0.9).

  python -m fisher_jax.main --config configs/regularizers.py:densenet_cifar100,fp \
      --workdir runs/full/regularizers/densenet_cifar100_fp

CPU scale (Fashion-MNIST MLP, lr 0.01, 80 epochs, 3 seeds): FP at strengths {0.03, 0.1, 0.3}, GP,
GPr and GPx at 0.1 (1 seed); the tuned and small baselines are fisher_explosion's runs:

  python -m fisher_jax.main --config configs/regularizers.py:cpu,fp --workdir runs/cpu/reg/fp

Penalty strengths are our starting points (the paper tuned each per setting): override with
`--config.regularizer.strength=...`. Figures: `plots.plot_regularizers`,
`plots.table_regularizers`.
"""

from configs import recipes

VARIANTS = ('tuned_lr', 'small_lr', 'gpx', 'gp', 'fp', 'gpr')


def get_config(arg=None):
  setting, variant = recipes.parse_arg(arg, VARIANTS, 'wrn_tiny_imagenet', 'regularizers.py')
  config = recipes.get_config(setting)
  config.experiment.name = 'regularizers'
  config.experiment.variant = variant
  if variant == 'tuned_lr':
    recipes.set_learning_rate(config, 'tuned_lr')
  else:
    recipes.set_learning_rate(config, 'small_lr')
  if variant not in ('tuned_lr', 'small_lr'):
    recipes.set_penalty(config, variant)
  return config
