"""Experiment 9 -- the Fisher penalty recomputed every 10 steps vs every step, and per-example FP.

Variants at the small learning rate: 'fp_k10' (mini-batch FP, gradient recomputed every 10 steps
and reused in between), 'fp_k1' (recomputed every step), 'fp_exact' (the per-example penalty
`fp_per_example`, (1/B) sum_i |grad CE(x_i, y_i~p)|^2, every step, strength divided by the batch
size so it is comparable, see configs/recipes.py; the variant keeps its old run name);
baselines 'small_lr' and 'tuned_lr'. The figure is the validation accuracy and Tr(F) per epoch.

Full scale (ours): SimpleCNN on CIFAR-10, lr 0.0316 vs 0.001, FP strength 0.1, 200 epochs.

  python -m fisher_jax.main --config configs/fp_every_k.py:simple_cnn_cifar10,fp_k1 \
      --workdir runs/full/fp_every_k/fp_k1

CPU scale (Fashion-MNIST MLP, lr 0.01, FP strength 0.1, 10 epochs, 1 seed; the small-lr baseline
is fisher_explosion's):

  python -m fisher_jax.main --config configs/fp_every_k.py:cpu,fp_exact --workdir runs/x

Figure: `experiments.plots.plot_fp_every_k`.
"""

from configs import recipes

VARIANTS = ('fp_k10', 'fp_k1', 'fp_exact', 'small_lr', 'tuned_lr')


def get_config(arg=None):
  setting, variant = recipes.parse_arg(arg, VARIANTS, 'simple_cnn_cifar10', 'fp_every_k.py')
  config = recipes.get_config(setting)
  config.experiment.name = 'fp_every_k'
  config.experiment.variant = variant
  recipes.set_learning_rate(config, 'tuned_lr' if variant == 'tuned_lr' else 'small_lr')
  if variant in ('fp_k10', 'fp_k1'):
    recipes.set_penalty(config, 'fp')
    config.regularizer.every_k = 10 if variant == 'fp_k10' else 1
  elif variant == 'fp_exact':
    recipes.set_penalty(config, 'fp_per_example')
    config.regularizer.every_k = 1
  if setting == recipes.CPU:
    config.num_epochs = 10  # The early phase: what the per-step variants could change.
  return config
