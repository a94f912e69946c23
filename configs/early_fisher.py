"""Experiment 2 -- early Tr(F) predicts generalization: learning-rate and batch-size sweeps.

Each run is one point of a sweep; `experiments.run early_fisher` sets the swept value
(`--config.optimizer.learning_rate` or `--config.batch_size`), the seed and the point's label
(`--config.experiment.variant`). The figure plots the early-phase Tr(F_i) (the maximum of Tr(F)
over the first `experiment.early_epochs` epochs) against the best test accuracy, mean and standard
deviation over seeds.

Full scale (ours where the paper does not pin it down): learning-rate sweeps on ImageNet
(ResNet-50, batch 256), CIFAR-10 (SimpleCNN) and CIFAR-100 (WRN-16-4); batch-size sweeps on
CIFAR-10 and CIFAR-100 at the setting's tuned learning rate; 3 seeds per point.

  python -m fisher_jax.main --config configs/early_fisher.py:simple_cnn_cifar10,lr \
      --workdir runs/full/early_fisher/cifar10_lr_0.01_s0 --config.optimizer.learning_rate=0.01 \
      --config.seed=0 --config.experiment.variant=lr=0.01

CPU scale (Fashion-MNIST MLP, plain SGD, 3 seeds): lr in {0.06, 0.15} at batch 128 (80 and 40
epochs); with fisher_explosion's 0.01 and 0.3 runs they make the protocol's learning-rate axis.
The batch-size axis runs at full scale only.

  python -m fisher_jax.main --config configs/early_fisher.py:cpu,lr \
      --workdir runs/cpu/early_fisher/lr_0.01_s0 --config.optimizer.learning_rate=0.01

The argument is SETTING[,AXIS], AXIS 'lr' (default) or 'batch_size'; the run's
`experiment.group` is 'SETTING/AXIS'. Figure: `experiments.plots.plot_early_fisher`.
"""

from configs import recipes

VARIANTS = ('lr', 'batch_size')


def get_config(arg=None):
  setting, axis = recipes.parse_arg(arg, VARIANTS, 'simple_cnn_cifar10', 'early_fisher.py')
  config = recipes.get_config(setting)
  config.experiment.name = 'early_fisher'
  config.experiment.group = f'{setting}/{axis}'
  config.experiment.variant = ''  # The sweep labels each point (e.g. 'lr=0.01').
  return config
