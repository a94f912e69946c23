"""Datasets and the input pipeline: spec registry, TFDS builders, tf.data input.

    from fisher_jax import data
    inp = data.make_input(config.dataset, batch_size=config.batch_size, seed=config.seed)
    for batch in inp.train_iterator(start_step): ...

See docs/data.md for the datasets, how to prepare them (`python -m fisher_jax.data.prepare`)
and the fields of `config.dataset`.
"""

from fisher_jax import _extras

_extras.require('train', __name__)

from fisher_jax.data.base import EVAL_SPLITS
from fisher_jax.data.base import TRAIN_EVAL_SPLIT
from fisher_jax.data.base import InputBase
from fisher_jax.data.digits import SklearnDigits
from fisher_jax.data.label_noise import corrupt_labels
from fisher_jax.data.pipeline import DatasetNotPreparedError
from fisher_jax.data.pipeline import DatasetSettings
from fisher_jax.data.pipeline import Input
from fisher_jax.data.pipeline import make_input
from fisher_jax.data.pipeline import missing_dataset_message
from fisher_jax.data.pipeline import prepared_builder
from fisher_jax.data.pipeline import read_settings
from fisher_jax.data.specs import available_datasets
from fisher_jax.data.specs import DatasetSpec
from fisher_jax.data.specs import get_spec
from fisher_jax.data.specs import register_dataset
