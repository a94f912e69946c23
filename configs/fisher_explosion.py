"""Experiment 1 -- Fisher explosion: a tuned vs a small learning rate.

Full scale (published setting): Wide ResNet (WRN-16-4) on TinyImageNet with augmentation, SGD
momentum 0.9, batch 128, constant learning rate 0.0316 (tuned) vs 0.001 (small), 200 epochs;
train/val accuracy, Tr(F) (512 examples, sampled labels) and the gradient norm every epoch.

  python -m fisher_jax.main --config configs/fisher_explosion.py:wrn_tiny_imagenet,small_lr \
      --workdir runs/full/fisher_explosion/small_lr

CPU scale (Fashion-MNIST MLP, plain SGD, lr 0.3 vs 0.01, 40 vs 80 epochs; the variants
'tuned_lr_momentum' and 'small_lr_momentum' use momentum 0.9 at a tenth of the learning rate,
the same effective step):

  python -m fisher_jax.main --config configs/fisher_explosion.py:cpu,small_lr \
      --workdir runs/cpu/fisher_explosion/small_lr

The argument is SETTING[,VARIANT]: SETTING one of configs/recipes.py's settings, VARIANT
'tuned_lr' (default), 'small_lr', 'tuned_lr_momentum' or 'small_lr_momentum'. Sweep: `python -m experiments.run fisher_explosion`.
Figure: `experiments.plots.plot_fisher_explosion`.
"""

from configs import recipes

VARIANTS = ('tuned_lr', 'small_lr', 'tuned_lr_momentum', 'small_lr_momentum')


def get_config(arg=None):
  setting, variant = recipes.parse_arg(arg, VARIANTS, 'wrn_tiny_imagenet', 'fisher_explosion.py')
  config = recipes.get_config(setting)
  config.experiment.name = 'fisher_explosion'
  config.experiment.variant = variant
  recipes.set_learning_rate(config, variant.replace('_momentum', ''))
  if variant.endswith('_momentum'):
    if config.optimizer.name != 'sgd':
      raise ValueError(f'configs/fisher_explosion.py:{arg}: the momentum variants are of a '
                       'plain-SGD setting (cpu, mlp_fashion_mnist); this setting already uses '
                       'momentum, choose tuned_lr or small_lr.')
    recipes.use_momentum(config)
  return config
