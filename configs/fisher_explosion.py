"""Experiment 1 -- Fisher explosion: a tuned vs a small learning rate.

Full scale (published setting): Wide ResNet (WRN-16-4) on TinyImageNet with augmentation, SGD
momentum 0.9, batch 128, constant learning rate 0.0316 (tuned) vs 0.001 (small), 200 epochs;
train/val accuracy, Tr(F) (512 examples, sampled labels) and the gradient norm every epoch.

  python -m fisher_jax.main --config configs/fisher_explosion.py:wrn_tiny_imagenet,small_lr \
      --workdir runs/full/fisher_explosion/small_lr

CPU scale (digits, SimpleCNN, lr 0.03 vs 0.003, 8 epochs):

  python -m fisher_jax.main --config configs/fisher_explosion.py:cpu,small_lr \
      --workdir runs/cpu/fisher_explosion/small_lr

The argument is SETTING[,VARIANT]: SETTING one of configs/recipes.py's settings, VARIANT
'tuned_lr' (default) or 'small_lr'. Sweep: `python -m experiments.run fisher_explosion`.
Figure: `fisher_jax.analysis.plots.plot_fisher_explosion`.
"""

from configs import recipes

VARIANTS = ('tuned_lr', 'small_lr')


def get_config(arg=None):
  setting, variant = recipes.parse_arg(arg, VARIANTS, 'wrn_tiny_imagenet', 'fisher_explosion.py')
  config = recipes.get_config(setting)
  config.experiment.name = 'fisher_explosion'
  config.experiment.variant = variant
  recipes.set_learning_rate(config, variant)
  return config
