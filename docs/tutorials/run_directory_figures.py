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
# # A run directory and the study's figures
#
# Every fisher_jax run writes a *run directory* (its workdir): the resolved `config.json`, one
# JSON record per logged point in `metrics.jsonl`, TensorBoard events and checkpoints. The
# analysis reads nothing but `config.json` and `metrics.jsonl`, so the figures and numbers of
# a study come from the run directories alone. This tutorial:
#
# 1. trains two tiny runs with `train_and_evaluate` (what `python -m fisher_jax.main` runs):
#    an MLP on the embedded digits data for 3 epochs, at a tuned and at a small learning
#    rate, with Tr(F) measured every 2 steps;
# 2. reads them back with `fisher_jax.analysis`;
# 3. computes the study's early-phase Tr(F_i) and draws the Fisher-explosion figure.
#
# Run it from the root of a clone (it reads `configs/default.py`); it takes about a minute on
# two CPU cores.

# %%
import json
import os
import pathlib
import tempfile

import matplotlib.pyplot as plt

from fisher_jax import analysis
from fisher_jax import training

REPO = next(p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents)
            if (p / 'configs' / 'default.py').exists())  # the root of the clone
root = tempfile.mkdtemp(prefix='fisher_jax_runs_')

# %% [markdown]
# ## Two tiny runs
#
# `load_config` gives the config that `--config configs/default.py` gives; each assignment
# below is what `--config.<field>=<value>` would do on the command line.
# `train_and_evaluate` returns the last value of every metric.

# %%
for name, learning_rate in (('tuned_lr', 0.1), ('small_lr', 0.005)):
  config = training.load_config(str(REPO / 'configs' / 'default.py'))
  config.model.name = 'mlp'
  config.num_epochs = 3
  config.optimizer.learning_rate = learning_rate
  config.measure.every_steps = 2  # Tr(F) every 2 steps besides every epoch end
  config.measure.num_examples = 128
  final = training.train_and_evaluate(config, os.path.join(root, 'fisher_explosion', name))
  print(f"{name}: val accuracy {final['val/accuracy']:.4f}, "
        f"Tr(F) {final['curvature/fisher_trace']:.2f}")

# %% [markdown]
# ## What a run directory holds

# %%
workdir = os.path.join(root, 'fisher_explosion', 'small_lr')
print(sorted(os.listdir(workdir)))
with open(os.path.join(workdir, 'metrics.jsonl')) as f:
  records = [json.loads(line) for line in f]
print(len(records), 'records; the last one:')
print(json.dumps(records[-1], indent=1)[:800])

# %% [markdown]
# ## Reading the runs
#
# `load_runs(root)` finds every run directory under `root` at any depth and names each by its
# path relative to it; `Run.metrics` is a pandas DataFrame with one row per logged step.

# %%
runs = analysis.load_runs(root)
print([run.name for run in runs])
print(analysis.runs_table(runs).T)
runs[0].metrics[['step', 'epoch', 'curvature/fisher_trace', 'train/accuracy',
                 'val/accuracy']].head(8)

# %% [markdown]
# ## The early-phase Tr(F_i)
#
# The confirmatory study's primary summary of a run's early phase is the mean of Tr(F) over the
# records with `start_epoch < epoch <= end_epoch`, never reading step 0 (runs of one seed share
# their initialization). The study's window is (1, 7]; these runs are 3 epochs long, so we
# read (1, 3].

# %%
for run in runs:
  early = analysis.early_fisher_window(run, start_epoch=1.0, end_epoch=3.0)
  print(f'{run.name:28s} early Tr(F_i) {early:8.2f}   '
        f'test accuracy at the best validation point {analysis.test_at_best_val(run):.4f}')

# %% [markdown]
# ## The Fisher-explosion figure
#
# Tr(F) against the epoch for each learning rate, and the validation accuracy, drawn from
# `Run.metrics` with matplotlib; the shaded band is the early-phase window read above.

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
for run in sorted(runs, key=lambda r: r.name):
  label = analysis.label_of(run)  # the config's experiment.variant, else its learning rate...
  fisher = run.metrics.dropna(subset=['curvature/fisher_trace'])
  left.plot(fisher['epoch'], fisher['curvature/fisher_trace'], marker='.', label=label)
  val = run.metrics.dropna(subset=['val/accuracy'])
  right.plot(val['epoch'], val['val/accuracy'], marker='o', label=label)
left.axvspan(1.0, 3.0, color='grey', alpha=0.15, label='early-phase window')
left.set(xlabel='epoch', ylabel='Tr(F)', title='Tr(F) on 128 fixed training examples')
right.set(xlabel='epoch', ylabel='validation accuracy', title='validation accuracy')
left.legend()
right.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The study's own figures (`python -m experiments.report`, see [Experiments](../experiments.md))
# are drawn the same way from many seeds per setting, and its claims are tested on the
# early-phase Tr(F_i) with confidence intervals (`analysis.ratio`, `analysis.correlation`).
