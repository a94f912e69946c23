"""The confirmatory study (protocol v2, docs/experiments.md): one config per arm.

Fashion-MNIST on a fixed 3,000-example training subset, an MLP with 2 hidden layers of 512 ReLU
units, plain SGD, batch 128, trained to a fit target: a run stops FIT_EXTRA_EPOCHS epochs after
its accuracy on the whole training subset first reaches FIT_TARGET, and its converged test
accuracy is the mean over those last FIT_EXTRA_EPOCHS + 1 epochs. Tr(F) (sampled estimator, 512
fixed training examples) is measured every 5 steps up to epoch 7 and at every epoch end after;
the primary early-phase Tr(F_i) is its mean over the epochs (1, 7]
(`fisher_jax.analysis.early_fisher_window`).

  python -m experiments.run confirmatory --root runs/v2 --workers 2
  python -m fisher_jax.main --config configs/confirmatory.py:lr_0.015 --config.seed=500 \
      --workdir runs/v2/confirmatory/lr_0.015_s500

The argument names the arm (`ARMS`); `experiment.group` and `experiment.variant` are the arm.
The constants below are the protocol's: the analysis (experiments/confirmatory.py) imports them.
"""

import ml_collections

from configs import recipes

ETA_STAR = 0.15  # eta*: v1's validation tie with 0.3, which diverged in one v1 seed
ETA_S = 0.015  # eta_s = eta*/10 (the paper's ratio is about 30: a stated deviation)
LR_AXIS = (0.015, 0.03, 0.06, 0.15)
BATCH_AXIS = (128, 256, 512)  # at ETA_STAR
FP_STRENGTHS = (0.01, 0.03)  # at ETA_S, recomputed every 10 steps; fixed before any run
PHASE1_FP_STRENGTH = 0.03
NOISY_FP_STRENGTH = 0.03  # at ETA_STAR (v1's validation choice at its eta*)
PHASE1_EPOCHS = 10
LABEL_NOISE = 0.25
NOISY_EPOCHS = 40  # the noisy-label arms' fixed budget (no fit target)
LENET_EPOCHS = 10
SEEDS = (500, 501, 502, 503, 504)  # paired across arms: same initialization and data order
LENET_SEEDS = (500, 501)
TRAIN_SUBSET = 3000
FIT_TARGET = 0.99
FIT_EXTRA_EPOCHS = 2
WINDOW = (1.0, 7.0)  # the primary Tr(F_i): mean of Tr(F) over epochs (1, 7]
MEASURE_EVERY_STEPS = 5
# Budget caps (epochs at batch 128) of the fit-target arms, from the pilot's training speed (seed
# 900, epochs to the fit target: lr 0.15: 30, 0.03: 71, 0.015: 121; FP 0.03 at 0.015: 215; batch
# 512 at 0.15: 92): about 2.5x the pilot's epochs; a batch B run gets B/128 times the cap.
BUDGET = {0.015: 400, 0.03: 200, 0.06: 150, 0.15: 100}
# The statistical rules (docs/experiments.md, "Protocol v2"): one-sided tests at ALPHA per claim
# (Bonferroni over the five claims), split again within a claim that makes several tests.
ALPHA = 0.01
MIN_EFFECT = {'C0': 0.005, 'C1': 1.5, 'C2_trf': 1 / 1.5, 'C2_acc': 0.005, 'C3': -0.3,
              'C4': 0.05, 'C5': 0.9}


def _fmt(value: float) -> str:
  return f'{value:g}'


ARMS = tuple([f'lr_{_fmt(lr)}' for lr in LR_AXIS] + [f'bs_{b}' for b in BATCH_AXIS[1:]]
             + [f'fp_{_fmt(s)}' for s in FP_STRENGTHS]
             + ['noisy_none', 'noisy_fp', 'noisy_half_lr', 'phase1_fp', 'phase1_none',
                'phase2_fp', 'phase2_none']
             + [f'lenet_lr_{_fmt(lr)}' for lr in (ETA_STAR, ETA_S)])


def budget(learning_rate: float, batch_size: int) -> int:
  """The epoch cap of a fit-target run: BUDGET at the smallest axis learning rate >= this one,
  times batch_size / 128 (a larger batch takes fewer steps per epoch)."""
  cap = BUDGET[min(BUDGET)]
  for lr in sorted(BUDGET, reverse=True):
    if learning_rate <= lr * (1 + 1e-9):
      cap = BUDGET[lr]
  return int(cap * max(1, batch_size // 128))


def get_config(arg=None) -> ml_collections.ConfigDict:
  """The config of arm `arg` (one of `ARMS`; default 'lr_0.15', eta*), seed 500."""
  arm = arg or f'lr_{_fmt(ETA_STAR)}'
  if arm not in ARMS:
    raise ValueError(f'configs/confirmatory.py:{arm} is unknown; choose one of {list(ARMS)}.')
  config = recipes.get_config(recipes.CPU)
  config.experiment.name = 'confirmatory'
  config.experiment.group = arm
  config.experiment.variant = arm
  config.experiment.tuned_lr = ETA_STAR
  config.experiment.small_lr = ETA_S
  config.experiment.early_epochs = WINDOW[1]
  config.experiment.setting = 'confirmatory'
  config.seed = SEEDS[0]
  config.dataset.train_subset = TRAIN_SUBSET
  config.batch_size = 128
  config.optimizer.learning_rate = ETA_STAR
  config.measure.num_examples = 512
  config.measure.every_epochs = 1
  config.measure.every_steps = MEASURE_EVERY_STEPS
  config.measure.every_steps_until_epoch = WINDOW[1]
  config.stop.train_accuracy = FIT_TARGET
  config.stop.extra_epochs = FIT_EXTRA_EPOCHS
  config.eval_every_epochs = 10  # and every epoch from the fit target on
  config.checkpoint_every_epochs = 20
  config.checkpoint_keep = 1
  config.regularizer.every_k = 10

  kind, _, value = arm.rpartition('_')
  if kind == 'lr':
    config.optimizer.learning_rate = float(value)
  elif kind == 'bs':
    config.batch_size = int(value)
  elif kind == 'fp':
    config.optimizer.learning_rate = ETA_S
    recipes.set_penalty(config, 'fp', float(value))
  elif arm.startswith('noisy_'):
    config.dataset.label_noise = LABEL_NOISE
    config.stop.train_accuracy = 0.0
    config.num_epochs = NOISY_EPOCHS
    if arm == 'noisy_fp':
      recipes.set_penalty(config, 'fp', NOISY_FP_STRENGTH)
    elif arm == 'noisy_half_lr':
      config.optimizer.learning_rate = ETA_STAR / 2
  elif arm.startswith('phase1_'):
    config.optimizer.learning_rate = ETA_S
    config.stop.train_accuracy = 0.0
    config.num_epochs = PHASE1_EPOCHS
    config.checkpoint_every_epochs = PHASE1_EPOCHS
    if arm == 'phase1_fp':
      recipes.set_penalty(config, 'fp', PHASE1_FP_STRENGTH)
  elif arm.startswith('phase2_'):
    # The sweep sets init_from.workdir to the phase-1 run of the same seed.
    config.optimizer.learning_rate = ETA_S
    config.measure.hessian_every_epochs = 10_000  # at the converged epochs (and the cap) only
    config.measure.hessian_probes = 32
    config.measure.hessian_num_examples = 512
  elif kind.startswith('lenet_lr'):
    config.model = ml_collections.ConfigDict(dict(name='lenet5'))
    config.optimizer.learning_rate = float(value)
    config.stop.train_accuracy = 0.0
    config.num_epochs = LENET_EPOCHS
  if config.stop.train_accuracy:
    config.num_epochs = budget(config.optimizer.learning_rate, config.batch_size)
  return config
