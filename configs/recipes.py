"""Training recipes shared by the experiment configs: one per (dataset, model) setting.

Each experiment config (`configs/<experiment>.py`) starts from `get_config(setting)` of this file
and changes what its experiment varies. A recipe is itself a runnable config:

  python -m fisher_jax.main --config configs/recipes.py:wrn_cifar100 --workdir runs/wrn
  python -m fisher_jax.main --config configs/recipes.py:cpu --workdir runs/cpu

Published settings (Jastrzebski et al. 2021, "Catastrophic Fisher explosion"): SGD with momentum
0.9, batch size 128, a tuned learning rate against a small one (0.0316 vs 0.001 for the Wide
ResNet on TinyImageNet), penalties recomputed every 10 steps. The values below that the paper does
not pin down are our choices, marked "ours": a constant learning rate (so the runs differ only in
the early-phase regime they are about), no weight decay, 200 epochs (90 for ImageNet), Tr(F)
measured every epoch on 512 fixed training examples with sampled labels, Tr(H) with 16
Hutchinson probes on 512 examples.

| setting | dataset | model | augment | tuned lr | small lr |
| --- | --- | --- | --- | --- | --- |
| wrn_tiny_imagenet | tiny_imagenet | WRN-16-4 | yes | 0.0316 | 0.001 |
| densenet_cifar100 | cifar100 | DenseNet-BC-100-12 | no | 0.1 (ours) | 0.00316 (ours) |
| vgg11_cifar100 | cifar100 | VGG-11, no BatchNorm | no | 0.01 (ours) | 0.001 (ours) |
| wrn_cifar100 | cifar100 | WRN-16-4 | no | 0.1 (ours) | 0.00316 (ours) |
| simple_cnn_cifar10 | cifar10 | SimpleCNN | no | 0.0316 (ours) | 0.001 (ours) |
| resnet50_cifar100 | cifar100 | ResNet-50, CIFAR stem | no | 0.1 (ours) | 0.00316 (ours) |
| resnet50_imagenet | imagenet2012 | ResNet-50 | yes | 0.1 (ours, batch 256) | 0.00316 (ours) |
| mlp_fashion_mnist | fashion_mnist | MLP 2x512, plain SGD | no | 0.3 (ours, by validation) | 0.01 (tuned / 30) |
| cpu | fashion_mnist, 10,000-example subset | MLP 2x512, plain SGD | no | 0.3 | 0.01 |

The `experiment` block labels a run for the analysis (`name`, `group`, `variant`; the trainer
ignores it) and holds the setting's derived values: `tuned_lr`, `small_lr`, the penalty
strengths used when an experiment adds a regularizer at the small learning rate, and
`early_epochs`, the end of the fixed window of the window-based Tr(F_i) sensitivity analysis
(10 epochs at full scale, 5 on CPU), and `setting`, the recipe's name (for `budget`).

The `cpu` recipe is the CPU scale of every experiment, fixed by the protocol in
docs/experiments.md: Fashion-MNIST (offline from the Debian package's IDX files) on a fixed
10,000-example training subset, the MLP with plain SGD, 40 epochs at learning rates >= the tuned
one and 60 below it (`budget`), evaluation every 4 (6) epochs, Tr(F) on 512 examples every
epoch, penalty strength 0.1 (1 diverged). The digits data stays the one-minute default of configs/default.py.
"""

import dataclasses
from typing import Any, Mapping, Optional

import ml_collections

from configs import default


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One (dataset, model) setting: what its runs share (see the table above).

  Attributes:
    dataset: `config.dataset.name`.
    model: `config.model` (name and model kwargs).
    augment: `config.dataset.augment`.
    tuned_lr, small_lr: the setting's tuned and small learning rates (`experiment.*`).
    batch_size, num_epochs: `config.batch_size`, `config.num_epochs`.
    val_fraction: `config.dataset.val_fraction`.
    measure_examples: `measure.num_examples` and `measure.hessian_num_examples`.
    hessian_probes: `measure.hessian_probes`.
    checkpoint_every_epochs: `config.checkpoint_every_epochs`.
    early_epochs: `experiment.early_epochs`, the end of the early-phase window.
    strength: the penalty strength at the small learning rate (`experiment.strengths`).
    optimizer: `config.optimizer.name` ('momentum' with 0.9, or plain 'sgd').
    train_subset: `config.dataset.train_subset` (None: the whole training split).
    eval_every_epochs: `config.eval_every_epochs`.
    slow_epochs, slow_eval_every_epochs: the budget of runs whose learning rate is below
      `tuned_lr` (None: the same as the others); see `budget`.
    measure_every_steps, measure_every_epochs: `config.measure.every_steps` / `every_epochs`.
  """
  dataset: str
  model: Mapping[str, Any]
  augment: bool
  tuned_lr: float
  small_lr: float
  batch_size: int = 128
  num_epochs: int = 200
  val_fraction: float = 0.1
  measure_examples: int = 512
  hessian_probes: int = 16
  checkpoint_every_epochs: int = 5
  early_epochs: float = 10.0
  # Penalty strengths at the small learning rate (ours; the paper tuned each per setting).
  strength: float = 0.1
  optimizer: str = 'momentum'
  train_subset: Optional[int] = None
  eval_every_epochs: int = 1
  slow_epochs: Optional[int] = None
  slow_eval_every_epochs: Optional[int] = None
  measure_every_steps: int = 0
  measure_every_epochs: int = 1


CPU = 'cpu'
# The Fashion-MNIST MLP (ours): 2 hidden layers of 512 ReLU units, plain SGD, batch 128, the
# full training split (54,000 after the 10% validation carve-out); `configs/fashion_mnist.py`.
# tuned_lr: chosen by validation accuracy in the pilot of docs/experiments.md ("Protocol"),
# small_lr = tuned_lr / 30.
_FASHION_TUNED_LR = 0.3
_MLP_FASHION_MNIST = Recipe(
    dataset='fashion_mnist', model=dict(name='mlp', depth=2, width=512, activation='relu'),
    augment=False, tuned_lr=_FASHION_TUNED_LR, small_lr=_FASHION_TUNED_LR / 30,
    optimizer='sgd', num_epochs=40, checkpoint_every_epochs=10, early_epochs=5.0, strength=0.1)
RECIPES = {
    'wrn_tiny_imagenet': Recipe(
        dataset='tiny_imagenet', model=dict(name='wide_resnet', depth=16, widen_factor=4),
        augment=True, tuned_lr=0.0316, small_lr=0.001),
    'densenet_cifar100': Recipe(
        dataset='cifar100', model=dict(name='densenet', depth=100, growth_rate=12),
        augment=False, tuned_lr=0.1, small_lr=0.00316),
    'vgg11_cifar100': Recipe(
        dataset='cifar100', model=dict(name='vgg11', batch_norm=False), augment=False,
        tuned_lr=0.01, small_lr=0.001),
    'wrn_cifar100': Recipe(
        dataset='cifar100', model=dict(name='wide_resnet', depth=16, widen_factor=4),
        augment=False, tuned_lr=0.1, small_lr=0.00316),
    'simple_cnn_cifar10': Recipe(
        dataset='cifar10', model=dict(name='simple_cnn'), augment=False, tuned_lr=0.0316,
        small_lr=0.001),
    'resnet50_cifar100': Recipe(
        dataset='cifar100', model=dict(name='resnet50', stem='cifar'), augment=False,
        tuned_lr=0.1, small_lr=0.00316),
    'resnet50_imagenet': Recipe(
        dataset='imagenet2012', model=dict(name='resnet50'), augment=True, tuned_lr=0.1,
        small_lr=0.00316, batch_size=256, num_epochs=90, val_fraction=0.0),
    'mlp_fashion_mnist': _MLP_FASHION_MNIST,
    # The CPU scale of every experiment: the Fashion-MNIST MLP on a fixed 10,000-example
    # training subset, with the budgets and measurement cadence of the protocol
    # (docs/experiments.md, "Protocol of the CPU-scale study").
    CPU: dataclasses.replace(
        _MLP_FASHION_MNIST, train_subset=10_000, eval_every_epochs=4, slow_epochs=60,
        slow_eval_every_epochs=6, measure_every_steps=0, measure_every_epochs=1,
        checkpoint_every_epochs=20, hessian_probes=8),
}
SETTINGS = tuple(RECIPES)


def budget(setting: str, learning_rate: float):
  """(num_epochs, eval_every_epochs) of a run of `setting` at `learning_rate`: the slow budget
  below the setting's tuned learning rate, where the recipe has one."""
  recipe = RECIPES[setting]
  if recipe.slow_epochs is None or learning_rate >= recipe.tuned_lr * (1 - 1e-9):
    return recipe.num_epochs, recipe.eval_every_epochs
  return recipe.slow_epochs, recipe.slow_eval_every_epochs or recipe.eval_every_epochs


def parse_arg(arg, variants, default_setting: str, file: str):
  """Splits a config argument 'setting[,variant]' and checks both parts.

  Args:
    arg: the text after ':' in `--config configs/<file>:<arg>` (None: the default setting).
    variants: the variants the experiment accepts (the first is the default).
    default_setting: the setting used when `arg` is empty.
    file: the config file's name, for the error message.

  Returns:
    (setting, variant).

  Raises:
    ValueError: an unknown setting or variant, naming the allowed ones.
  """
  parts = [p.strip() for p in (arg or '').split(',')] if arg else []
  setting = parts[0] if parts and parts[0] else default_setting
  variant = parts[1] if len(parts) > 1 else variants[0]
  if setting not in SETTINGS or len(parts) > 2:
    raise ValueError(f'configs/{file}:{arg} names an unknown setting; use configs/{file}:'
                     f'SETTING[,VARIANT] with SETTING one of {list(SETTINGS)}.')
  if variant not in variants:
    raise ValueError(f'configs/{file}:{arg} names an unknown variant {variant!r}; choose one of '
                     f'{list(variants)}.')
  return setting, variant


def get_config(setting: str = 'cpu') -> ml_collections.ConfigDict:
  """The recipe of `setting` (see the table in the module docstring), at the tuned lr."""
  if setting not in SETTINGS:
    raise ValueError(f'configs/recipes.py:{setting} is unknown; choose one of {list(SETTINGS)}.')
  recipe = RECIPES[setting]
  config = default.get_config()
  experiment = ml_collections.ConfigDict()
  experiment.name = 'recipe'
  experiment.group = setting
  experiment.variant = 'tuned_lr'
  strength = recipe.strength
  experiment.strengths = ml_collections.ConfigDict(
      dict(fp=strength, gp=strength, gpr=strength, gpx=strength))
  experiment.tuned_lr = recipe.tuned_lr
  experiment.small_lr = recipe.small_lr
  experiment.early_epochs = recipe.early_epochs
  experiment.setting = setting
  config.experiment = experiment
  config.dataset.name = recipe.dataset
  config.dataset.augment = recipe.augment
  config.dataset.val_fraction = recipe.val_fraction
  config.model = ml_collections.ConfigDict(dict(recipe.model))
  config.batch_size = recipe.batch_size
  config.num_epochs = recipe.num_epochs
  config.measure.num_examples = recipe.measure_examples
  config.measure.hessian_probes = recipe.hessian_probes
  config.measure.hessian_num_examples = recipe.measure_examples
  config.checkpoint_every_epochs = recipe.checkpoint_every_epochs
  config.eval_every_epochs = recipe.eval_every_epochs
  config.measure.every_steps = recipe.measure_every_steps
  config.measure.every_epochs = recipe.measure_every_epochs
  config.dataset.train_subset = recipe.train_subset
  config.optimizer.name = recipe.optimizer
  config.optimizer.momentum = 0.9 if recipe.optimizer == 'momentum' else 0.0
  config.optimizer.schedule = 'constant'
  config.optimizer.weight_decay = 0.0
  config.optimizer.learning_rate = experiment.tuned_lr
  config.regularizer.every_k = 10  # Penalty gradients recomputed every 10 steps (published).
  # The per-example penalty (1/B) sum_i |g_i|^2 is about B times the mini-batch one |mean_i g_i|^2
  # (Tr(F) against Tr(F_B)); dividing by B gives fp_per_example a comparable strength.
  experiment.strengths.fp_per_example = experiment.strengths.fp / config.batch_size
  return config


def set_learning_rate(config: ml_collections.ConfigDict, which: str):
  """Sets `optimizer.learning_rate` to the setting's 'tuned_lr' or 'small_lr', with the
  setting's budget for it (`budget`)."""
  set_budget(config, config.experiment[which])


def set_budget(config: ml_collections.ConfigDict, learning_rate: float):
  """Sets `optimizer.learning_rate`, `num_epochs` and `eval_every_epochs` for `learning_rate`."""
  config.optimizer.learning_rate = learning_rate
  config.num_epochs, config.eval_every_epochs = budget(config.experiment.setting,
                                                       learning_rate)


def use_momentum(config: ml_collections.ConfigDict):
  """Turns a plain-SGD run into SGD with momentum 0.9 at the same effective learning rate
  eta / (1 - 0.9), keeping its budget."""
  config.optimizer.name = 'momentum'
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = config.optimizer.learning_rate * (1 - 0.9)


def set_penalty(config: ml_collections.ConfigDict, name: str, strength=None):
  """Adds regularizer `name` at the setting's strength (or `strength`)."""
  config.regularizer.name = name
  config.regularizer.strength = (config.experiment.strengths[name] if strength is None
                                 else strength)
