"""Experiment 8 -- Tr(F) against the mini-batch Tr(F_B), and Tr(F) against Tr(H).

Every epoch each run logs Tr(F), Tr(F_B) and Tr(H) on fixed training examples; the figure pools
every logged point of every run (several learning rates, so the curvature spans a wide range)
and reports the Pearson correlation of the logarithms and the Spearman correlation.

Full scale (ours): SimpleCNN on CIFAR-10, lr in {0.001, 0.00316, 0.01, 0.0316, 0.1}, 50 epochs.

  python -m fisher_jax.main --config configs/curvature_correlations.py:simple_cnn_cifar10 \
      --config.optimizer.learning_rate=0.01 --workdir runs/full/curvature_correlations/lr_0.01

CPU scale (Fashion-MNIST MLP): lr in {0.03, 0.1, 0.3}, 20 epochs, Tr(H) every 2 epochs.
Figure: `experiments.plots.plot_curvature_correlations`.
"""

from configs import recipes

VARIANTS = ('lr',)


def get_config(arg=None):
  setting, _ = recipes.parse_arg(arg, VARIANTS, 'simple_cnn_cifar10',
                                 'curvature_correlations.py')
  config = recipes.get_config(setting)
  config.experiment.name = 'curvature_correlations'
  config.experiment.variant = ''  # The sweep labels each run.
  config.measure.hessian_every_epochs = 2 if setting == recipes.CPU else 1
  config.num_epochs = 20 if setting == recipes.CPU else 50
  return config
