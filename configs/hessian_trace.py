"""Experiment 7 -- Tr(H) over training for several learning rates and batch sizes.

Tr(H) (Hutchinson, Rademacher probes, `measure.hessian_probes` on `measure.hessian_num_examples`
fixed training examples) and Tr(F) are logged every epoch. The sweep sets the learning rate or the
batch size and the run's label (`--config.experiment.variant`); `experiment.group` is the axis.

Full scale (ours): SimpleCNN on CIFAR-10, lr in {0.001, 0.01, 0.1} at batch 128, batch in
{32, 128, 512} at lr 0.0316, 100 epochs, 16 probes on 512 examples.

  python -m fisher_jax.main --config configs/hessian_trace.py:simple_cnn_cifar10,lr \
      --config.optimizer.learning_rate=0.01 --workdir runs/full/hessian_trace/lr_0.01

CPU scale (Fashion-MNIST MLP): lr in {0.01, 0.3} (80 and 40 epochs), Tr(H) every 4 epochs, 8
probes on 512 examples.
Figure: `experiments.plots.plot_hessian_trace`.
"""

from configs import recipes

VARIANTS = ('lr', 'batch_size')


def get_config(arg=None):
  setting, axis = recipes.parse_arg(arg, VARIANTS, 'simple_cnn_cifar10', 'hessian_trace.py')
  config = recipes.get_config(setting)
  config.experiment.name = 'hessian_trace'
  config.experiment.group = axis
  config.experiment.variant = ''  # The sweep labels each run.
  config.measure.hessian_every_epochs = 4 if setting == recipes.CPU else 1
  if setting != recipes.CPU:
    config.num_epochs = 100  # On CPU the sweep sets the budget of each learning rate.
  return config
