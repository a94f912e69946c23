"""Experiment 10 -- per-step Tr(F) and mini-batch accuracy in the early phase.

Tr(F) is measured after every step (`measure.every_steps=1`) and the training accuracy of every
mini-batch is logged (`log_every_steps=1`). Groups (`experiment.group`, the config argument
after the comma): 'lr' (two learning rates at batch 128), 'batch_size' (a small vs a large batch
at the tuned learning rate), 'large_batch_fp' (the large batch with FP strengths). The sweep sets
the swept value and the run's label (`--config.experiment.variant`).

Full scale (ours): SimpleCNN on CIFAR-10, lr 0.0316 vs 0.001, batch 128 vs 1024, FP strengths
{0.01, 0.1, 1} at batch 1024, 10 epochs.

  python -m fisher_jax.main --config configs/per_step.py:simple_cnn_cifar10,large_batch_fp \
      --config.batch_size=1024 --config.regularizer.strength=0.1 --workdir runs/full/per_step/x

CPU scale (Fashion-MNIST MLP): lr 0.3 vs 0.01, batch 32 vs 512 at lr 0.3, 2 epochs.
Figure: `experiments.plots.plot_per_step`.
"""

from configs import recipes

VARIANTS = ('lr', 'batch_size', 'large_batch_fp')


def get_config(arg=None):
  setting, group = recipes.parse_arg(arg, VARIANTS, 'simple_cnn_cifar10', 'per_step.py')
  config = recipes.get_config(setting)
  config.experiment.name = 'per_step'
  config.experiment.group = group
  config.experiment.variant = ''  # The sweep labels each run.
  config.measure.every_steps = 1
  config.log_every_steps = 1
  config.num_epochs = 2 if setting == recipes.CPU else 10
  if group == 'large_batch_fp':
    recipes.set_penalty(config, 'fp')
  return config
