"""Experiment 4 -- the Fisher penalty applied only from epoch e.

Variant 'fp': small learning rate with FP (every 10 steps) from `regularizer.start_epoch`, which
the sweep sets (`--config.regularizer.start_epoch=e`); baselines 'tuned_lr' and 'small_lr'
without penalty. The figure is the final test accuracy against e, with the baselines as
horizontal lines: if the early phase decides, FP helps only when it starts early.

Full scale (ours): WRN-16-4 on CIFAR-100, lr 0.1 (tuned) vs 0.00316 (small), 200 epochs,
e in {0, 2, 5, 10, 20, 50, 100}.

  python -m fisher_jax.main --config configs/fp_start.py:wrn_cifar100,fp \
      --config.regularizer.start_epoch=10 --workdir runs/full/fp_start/fp_from_10

CPU scale (Fashion-MNIST MLP, lr 0.01, FP strength 0.1, 80 epochs, e in {10, 40}, 1 seed (e = 0 is regularizers' FP 0.1 run); the
baselines are fisher_explosion's runs):

  python -m fisher_jax.main --config configs/fp_start.py:cpu,fp \
      --config.regularizer.start_epoch=2 --workdir runs/cpu/fp_start/fp_from_2

Figure: `experiments.plots.plot_fp_start`.
"""

from configs import recipes

VARIANTS = ('fp', 'tuned_lr', 'small_lr')


def get_config(arg=None):
  setting, variant = recipes.parse_arg(arg, VARIANTS, 'wrn_cifar100', 'fp_start.py')
  config = recipes.get_config(setting)
  config.experiment.name = 'fp_start'
  config.experiment.variant = variant
  recipes.set_learning_rate(config, 'tuned_lr' if variant == 'tuned_lr' else 'small_lr')
  if variant == 'fp':
    recipes.set_penalty(config, 'fp')
  return config
