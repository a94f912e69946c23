"""Experiment 6 -- flat minima: does a low early Tr(F) lead to a flatter end point?

Phase 1 trains two models for `PHASE1_EPOCHS` at the small learning rate with different
regularization: variant 'fp' with the Fisher penalty (a low early Tr(F)), variant 'none' without
(the Fisher explosion). Phase 2 ('continue') starts from each phase-1 checkpoint
(`--config.init_from.workdir=<phase-1 workdir>`) and trains on in the low-regularization setting
(small learning rate, no penalty) with several seeds, measuring Tr(H) (Hutchinson) and the test
accuracy. The figure is the histogram, over seeds, of Tr(H) at the best-test point and of the best
test accuracy, per starting model (`experiment.group`, which the sweep sets to the phase-1
variant).

Full scale (ours): WRN-16-4 on CIFAR-100, lr 0.00316, phase 1 20 epochs with FP strength 0.1 vs
none, phase 2 180 epochs with Tr(H) every 5 epochs, 5 seeds.

  python -m fisher_jax.main --config configs/flat_minima.py:wrn_cifar100,fp \
      --workdir runs/full/flat_minima/phase1_fp
  python -m fisher_jax.main --config configs/flat_minima.py:wrn_cifar100,continue \
      --config.init_from.workdir=runs/full/flat_minima/phase1_fp --config.experiment.group=fp \
      --config.seed=1 --workdir runs/full/flat_minima/phase2_fp_s1

CPU scale (Fashion-MNIST MLP, lr 0.01): phase 1 30 epochs (FP 0.3 vs none), 3 seeds each; every
phase-1 run is continued once (same seed) for 24 epochs with Tr(H) every 4 epochs, so the 3 + 3
phase-2 runs are independent.
Figure: `experiments.plots.plot_flat_minima`.
"""

from configs import recipes

VARIANTS = ('fp', 'none', 'continue')
PHASE1_EPOCHS = {'cpu': 30, 'full': 20}
PHASE1_FP_STRENGTH = {'cpu': 0.3, 'full': 0.1}  # Strong: the largest CPU FP strength that trained.
PHASE2_EPOCHS = {'cpu': 24, 'full': 180}
HESSIAN_EVERY = {'cpu': 4, 'full': 5}


def get_config(arg=None):
  setting, variant = recipes.parse_arg(arg, VARIANTS, 'wrn_cifar100', 'flat_minima.py')
  scale = 'cpu' if setting == recipes.CPU else 'full'
  config = recipes.get_config(setting)
  config.experiment.name = 'flat_minima'
  recipes.set_learning_rate(config, 'small_lr')
  if variant == 'continue':
    config.experiment.variant = 'phase2'
    config.experiment.group = ''  # The sweep names the starting model.
    config.num_epochs = PHASE2_EPOCHS[scale]
    config.measure.hessian_every_epochs = HESSIAN_EVERY[scale]
    config.eval_every_epochs = 4 if scale == 'cpu' else config.eval_every_epochs
  else:
    config.experiment.variant = 'phase1'
    config.experiment.group = variant
    config.num_epochs = PHASE1_EPOCHS[scale]
    config.checkpoint_every_epochs = config.num_epochs
    if variant == 'fp':
      recipes.set_penalty(config, 'fp', PHASE1_FP_STRENGTH[scale])
  return config
