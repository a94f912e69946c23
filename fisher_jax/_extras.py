"""The optional parts of fisher_jax and the one sentence a missing one ends with.

`pip install fisher_jax` installs the library (jax, flax, optax, numpy: `curvature`,
`regularizers`, `models`, `losses`). Training, analysis and tuning need an extra
(pyproject.toml lists their packages); a module that needs one calls `require` before importing
them:

    from fisher_jax import _extras
    _extras.require('train', __name__)
"""

import importlib.util

# extra -> the top-level modules of its packages (pyproject.toml's optional-dependencies; the
# test suite checks the two agree).
MODULES = {
    'train': ('absl', 'clu', 'filelock', 'importlib_resources', 'ml_collections', 'orbax',
              'sklearn', 'tensorboard', 'tensorflow', 'tensorflow_datasets', 'tqdm'),
    'analysis': ('matplotlib', 'pandas', 'scipy'),
    'tune': ('optuna', 'submitit'),
}


def missing(extra: str):
  """The modules of `extra` that cannot be imported here, sorted."""
  return sorted(m for m in MODULES[extra] if importlib.util.find_spec(m) is None)


def require(extra: str, feature: str):
  """Raises ImportError, in one sentence naming the extra, when a package of `extra` is missing.

  Args:
    extra: 'train', 'analysis' or 'tune'.
    feature: what needs it, e.g. the calling module's `__name__`.
  """
  absent = missing(extra)
  if absent:
    raise ImportError(
        f"{feature} needs fisher_jax's {extra!r} extra, which is not installed (no module "
        f"{', '.join(absent)}): pip install 'fisher_jax[{extra}]' (in a clone: "
        f"pip install -e '.[{extra}]').")
