"""Experiment 5 -- memorization: the Fisher penalty and noisy labels.

A fraction `dataset.label_noise` of the training labels is replaced by random ones (fixed by the
seed). Every epoch the run logs the training accuracy and gradient norm on fixed subsets of clean
and of noisy examples (`train_clean/*`, `train_noisy/*`, against their training labels). Variant
'none' trains without penalty; 'fp' adds FP (every 10 steps) with the strength the sweep sets
(`--config.regularizer.strength`: 1e-2 ... 1e1 at full scale; 1e-3 ... 1e-2 on CPU, where the
tuned learning rate 0.1 with FP 1.0 collapsed the model to a constant prediction). If FP limits
memorization, it slows the fitting of the noisy labels more than that of the clean ones.

Full scale (ours where the paper does not pin it down): VGG-11 and ResNet-50 (CIFAR stem) on
CIFAR-100 without augmentation, 25% noisy labels, the setting's tuned learning rate, 100 epochs.

  python -m fisher_jax.main --config configs/memorization.py:vgg11_cifar100,fp \
      --config.regularizer.strength=0.1 --workdir runs/full/memorization/vgg11_fp_0.1

CPU scale (Fashion-MNIST MLP, 25% noisy labels, lr 0.3, 40 epochs, none vs FP {0.03, 0.1}, 3
seeds):

  python -m fisher_jax.main --config configs/memorization.py:cpu,fp \
      --config.regularizer.strength=0.01 --workdir runs/cpu/memorization/fp_0.01

Figure: `experiments.plots.plot_memorization`.
"""

from configs import recipes

VARIANTS = ('none', 'fp')
LABEL_NOISE = 0.25


def get_config(arg=None):
  setting, variant = recipes.parse_arg(arg, VARIANTS, 'vgg11_cifar100', 'memorization.py')
  config = recipes.get_config(setting)
  config.experiment.name = 'memorization'
  config.experiment.variant = variant
  config.dataset.label_noise = LABEL_NOISE
  config.dataset.augment = False
  config.num_epochs = 40 if setting == recipes.CPU else 100
  recipes.set_learning_rate(config, 'tuned_lr')
  if variant == 'fp':
    recipes.set_penalty(config, 'fp')
  return config
