# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A hyperparameter search that prunes on early Tr(F)
#
# If a run whose Fisher trace explodes early ends worse, a search can stop it early.
# `fisher_jax.pruners.FisherExplosionPruner` is an Optuna pruner with that rule: at each epoch
# e it compares a trial's early-phase Tr(F) so far — the mean of Tr(F) over the records with
# 1 < epoch ≤ min(e, 7) — with the same quantity of the best completed trials at the same
# epochs, and prunes the trial when it is more than `factor` times the largest of theirs.
# `FisherOrMedianPruner` adds Optuna's median rule on the reported objective, which catches the
# failures with a *low* Tr(F) (a learning rate too large or too small to learn) that the Fisher
# rule leaves alone by design.
#
# This tutorial searches the learning rate of a small MLP on the digits data, each trial a
# plain JAX training of 8 epochs, under no pruner and under each of the two. The objective
# calls `pruners.record_metrics` (the per-epoch curves the Fisher rule reads) and
# `trial.report` (what the median rule reads) after every epoch. `experiments.tune` does the
# same for trials that are full fisher_jax runs ([Hyperparameter search](../tuning.md)).
# It takes well under a minute on a CPU.

# %%
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import optuna
import pandas as pd
from sklearn.datasets import load_digits

from fisher_jax import curvature
from fisher_jax import pruners

optuna.logging.set_verbosity(optuna.logging.WARNING)

# %% [markdown]
# ## One trial: a short training that reports every epoch

# %%
class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(10)(nn.relu(nn.Dense(128)(x)))


digits = load_digits()
x_all = jnp.asarray(digits.images[..., None], jnp.float32)
x_all = (x_all - x_all[:1200].mean()) / x_all[:1200].std()  # standardized, as the trainer does
y_all = jnp.asarray(digits.target)
x_train, y_train = x_all[:1200], y_all[:1200]
x_val, y_val = x_all[1200:], y_all[1200:]
model = MLP()
init_params = model.init(jax.random.PRNGKey(0), x_train[:1])['params']
# The learning rate lives in the optimizer state, so one compiled step serves every trial.
tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
EPOCHS, BATCH = 8, 128
STEPS_PER_EPOCH = len(y_train) // BATCH


@jax.jit
def train_step(params, opt_state, x, y):
  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': p}, x),
                                                           y).mean()
  grads = jax.grad(loss)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


@jax.jit
def evaluate(params, rng):
  logits_fn = curvature.make_logits_fn(model)
  fisher = curvature.fisher_trace(logits_fn, params, x_train[:256], estimator='sampled', rng=rng)
  accuracy = lambda x, y: jnp.mean(jnp.argmax(model.apply({'params': params}, x), -1) == y)
  return fisher, accuracy(x_train, y_train), accuracy(x_val, y_val)


def objective(trial):
  learning_rate = trial.suggest_float('learning_rate', 1e-3, 1.0, log=True)
  params = init_params
  opt_state = tx.init(params)
  opt_state.hyperparams['learning_rate'] = jnp.asarray(learning_rate)
  order = np.random.default_rng(0)  # the same batches in every trial
  records, best = [], 0.0
  for epoch in range(EPOCHS + 1):
    if epoch:
      perm = order.permutation(len(y_train))
      for i in range(STEPS_PER_EPOCH):
        idx = perm[i * BATCH:(i + 1) * BATCH]
        params, opt_state = train_step(params, opt_state, x_train[idx], y_train[idx])
    fisher, train_acc, val_acc = map(float, evaluate(params, jax.random.PRNGKey(epoch)))
    records.append({'step': epoch * STEPS_PER_EPOCH, 'epoch': float(epoch),
                    'curvature/fisher_trace': fisher, 'train/accuracy': train_acc,
                    'val/accuracy': val_acc})
    if epoch == 0:
      continue
    best = max(best, val_acc if np.isfinite(fisher) else 0.0)
    pruners.record_metrics(trial, pd.DataFrame.from_records(records))  # what the Fisher rule reads
    trial.report(val_acc, epoch)  # what the median rule reads
    if trial.should_prune():
      raise optuna.TrialPruned()
  return best

# %% [markdown]
# ## Three searches over the same proposals
#
# The same sampler seed proposes the same learning rates in the same order under each pruner,
# so the searches differ only in what is stopped. The Fisher rule waits for 3 completed trials,
# acts from epoch 2 on, compares with the best fifth of the completed trials (at least the
# best one) and prunes above 1.5 times their early Tr(F) (the default factor is 2).

# %%
def search(pruner, trials=12):
  study = optuna.create_study(direction='maximize', pruner=pruner,
                              sampler=optuna.samplers.RandomSampler(seed=3))
  study.optimize(objective, n_trials=trials)
  return study


settings = dict(factor=1.5, top_fraction=0.2, warmup_epochs=2, min_completed_trials=3)
studies = {
    'none': search(optuna.pruners.NopPruner()),
    'fisher': search(pruners.FisherExplosionPruner(**settings)),
    'fisher_or_median': search(pruners.FisherOrMedianPruner(**settings)),
}
for name, study in studies.items():
  trials = study.trials
  epochs = sum(len(t.intermediate_values) for t in trials)
  pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
  print(f'{name:17s} epochs trained {epochs:3d}, pruned {pruned:2d} of {len(trials)}, '
        f'best learning rate {study.best_params["learning_rate"]:.4f}, '
        f'best val accuracy {study.best_value:.4f}')
  for t in trials:
    if t.state == optuna.trial.TrialState.PRUNED:
      print(f'    pruned: learning rate {t.params["learning_rate"]:.4f} at epoch {t.last_step}')

# %% [markdown]
# ## What the Fisher rule saw
#
# Each trial's Tr(F) curve under the Fisher pruner (a cross where it was pruned), and its
# learning rate against its early-phase Tr(F) at the end of its curve.

# %%
study = studies['fisher']
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
for trial in study.trials:
  run = pruners.trial_run(trial)
  was_pruned = trial.state == optuna.trial.TrialState.PRUNED
  curve = run.metrics.dropna(subset=['curvature/fisher_trace'])
  line, = left.plot(curve['epoch'], curve['curvature/fisher_trace'],
                    ls='--' if was_pruned else '-', lw=1)
  if was_pruned:
    left.plot(curve['epoch'].iloc[-1], curve['curvature/fisher_trace'].iloc[-1], 'x',
              color=line.get_color())
  right.scatter(trial.params['learning_rate'], pruners.window_early_fisher(run),
                marker='x' if was_pruned else 'o', color=line.get_color())
left.axvspan(1, 7, color='grey', alpha=0.12)
left.set(yscale='log', xlabel='epoch', ylabel='Tr(F)',
         title='Tr(F) per trial (dashed, x: pruned)')
right.set(xscale='log', yscale='log', xlabel='learning rate', ylabel='early-phase Tr(F) so far',
          title='the quantity the rule compares')
fig.tight_layout()
plt.show()

# %% [markdown]
# The Fisher rule can only stop a trial whose early Tr(F) rises well above the best trials' —
# here, if any, small learning rates whose Tr(F) climbs while they learn slowly — and it never
# stops the best trial; the median rule stops far more, earlier, and with no such guarantee.
# Whether the Fisher rule saves time on real searches without losing the best trial is what
# `python -m benchmarks.pruning` measures (its replay results are in the
# [Hyperparameter search](../tuning.md) guide).
