"""The default experiment: SimpleCNN on the embedded digits data (offline, minutes on a CPU).

SGD with momentum; Tr(F) is measured every epoch on a fixed subset of training examples.

  python -m fisher_jax.main --config configs/default.py --workdir runs/default
  python -m fisher_jax.main --config configs/default.py --workdir runs/small_lr \
      --config.optimizer.learning_rate=0.003

Every other experiment config starts from this one and overrides what differs.
"""

import ml_collections


def get_config():
  """Returns the default ConfigDict (every field overridable as --config.a.b=value)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 128  # Global: split across all devices of all processes.
  config.num_epochs = 12

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'digits'
  config.dataset.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.dataset.label_noise = 0.0
  config.dataset.augment = False
  config.dataset.val_fraction = 0.1
  config.dataset.train_subset = ml_collections.FieldReference(None, field_type=int)

  config.model = ml_collections.ConfigDict()
  config.model.name = 'simple_cnn'

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'momentum'
  config.optimizer.learning_rate = 0.03
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 0.0
  config.optimizer.schedule = 'constant'
  config.optimizer.warmup_epochs = 0.0
  # schedule='step': multiply the learning rate by decay_factor at each of decay_epochs.
  config.optimizer.decay_epochs = ()
  config.optimizer.decay_factor = 0.1

  config.regularizer = ml_collections.ConfigDict()
  config.regularizer.name = 'none'
  config.regularizer.strength = 0.0
  config.regularizer.every_k = 1
  config.regularizer.start_epoch = 0.0  # Epochs (a fraction is allowed) before the penalty.

  config.measure = ml_collections.ConfigDict()
  config.measure.every_epochs = 1  # Tr(F), Tr(F_B), grad norm at epoch ends (and at step 0).
  config.measure.every_steps = 0  # > 0: also every this many steps (per-step curves).
  config.measure.every_steps_until_epoch = 0.0  # > 0: every_steps only up to this epoch.
  config.measure.num_examples = 256  # Fixed subset of training examples.
  config.measure.fisher_estimator = 'sampled'
  config.measure.hessian_every_epochs = 0  # 0: Tr(H) is not measured.
  config.measure.hessian_probes = 16
  config.measure.hessian_num_examples = 256
  # Off by default. per_leaf: also Tr(F) of every parameter leaf
  # ('curvature/fisher_trace/<leaf path>', from the same per-example pass).
  config.measure.per_leaf = False
  # > 0: every this many epochs, the eigen_k largest Hessian eigenvalues and the Fisher's top
  # eigenvalue by Lanczos with eigen_iterations products each, on the Tr(H) subset
  # (hessian_num_examples): 'curvature/hessian_eigenvalue/<j>', 'curvature/fisher_top_eigenvalue'.
  config.measure.eigen_every_epochs = 0
  config.measure.eigen_k = 5
  config.measure.eigen_iterations = 30

  # Start from another run's parameters and BatchNorm statistics (fresh optimizer state, step
  # and RNG), e.g. to continue a run with another regularizer: workdir of that run, and the
  # step of its checkpoint (None: the latest). Ignored once this run has checkpoints of its own.
  config.init_from = ml_collections.ConfigDict()
  config.init_from.workdir = ml_collections.FieldReference(None, field_type=str)
  config.init_from.step = ml_collections.FieldReference(None, field_type=int)

  # Training to a fit target (fisher_jax.training.fit_stop): with train_accuracy > 0, the
  # accuracy on the whole training set ('train_full/accuracy', evaluation mode) is measured
  # after every epoch; from the first epoch that reaches it, every epoch is evaluated, and the
  # run ends extra_epochs later. num_epochs stays the budget cap (a run that reaches it first is
  # unconverged).
  config.stop = ml_collections.ConfigDict()
  config.stop.train_accuracy = 0.0
  config.stop.extra_epochs = 0

  config.eval_every_epochs = 1
  config.checkpoint_every_epochs = 1
  # The latest checkpoints kept; the best-by-val/accuracy one is kept besides them.
  config.checkpoint_keep = 3
  config.log_every_steps = 0  # 0: train metrics once per epoch.

  # Divergence guard: 'stop' ends the run at the first non-finite training loss or penalty
  # (exit status fisher_jax.training.exit_codes.DIVERGED, diverged.json in the workdir); 'off'
  # trains on.
  config.guard = ml_collections.ConfigDict()
  config.guard.nonfinite = 'stop'
  return config
