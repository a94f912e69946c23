"""The one validation of a config (settings.read) and the one cadence check (cadence.is_due)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fisher_jax.training import cadence
from fisher_jax.training import settings


def test_read_types_every_section_of_the_default_config(default_config):
  run = settings.read(default_config)
  assert run.batch_size == default_config.batch_size and run.seed == default_config.seed
  assert run.optimizer == settings.read_optimizer(default_config.optimizer)
  assert run.optimizer.learning_rate == default_config.optimizer.learning_rate
  assert run.regularizer.name == default_config.regularizer.name
  assert run.measure.num_examples == default_config.measure.num_examples
  assert run.dataset.name == default_config.dataset.name
  assert run.model.name == default_config.model.name and run.init_from.workdir is None


@pytest.mark.parametrize('section, field', [('optimizer', 'momentum'), ('regularizer', 'every_k'),
                                            ('measure', 'hessian_probes'), ('', 'seed')])
def test_a_missing_field_is_an_error_naming_it_not_a_default_in_code(default_config, section,
                                                                     field):
  del (default_config[section] if section else default_config)[field]
  name = f'{section}.{field}' if section else field
  with pytest.raises(ValueError, match=rf'^{name} is missing; add it to the config'):
    settings.read(default_config)


def test_the_removed_regularizer_name_fp_exact_is_unknown(default_config):
  default_config.regularizer.name = 'fp_exact'  # The per-example penalty is 'fp_per_example'.
  with pytest.raises(ValueError, match=r"regularizer.name='fp_exact' is unknown; choose one of "
                                       r".*'fp_per_example'"):
    settings.read(default_config)


def test_is_due_is_the_cadence_definition_for_ints_and_arrays():
  due_jit = jax.jit(cadence.is_due, static_argnames=('every', 'start'))
  for every in (0, 1, 3):
    for start in (0, 2):
      for step in range(12):
        expected = bool(every) and step >= start and (step - start) % every == 0
        assert cadence.is_due(step, every, start=start) == expected, (step, every, start)
        assert cadence.is_due(step, every, start=start, last=True)  # The last one always is.
        assert bool(due_jit(jnp.asarray(step), every=every, start=start)) == expected
  np.testing.assert_array_equal(cadence.is_due(jnp.arange(6), 2, last=jnp.arange(6) == 5),
                                [True, False, True, False, True, True])


def test_epochs_to_steps_rounds_fractions_of_epochs():
  assert [cadence.epochs_to_steps(e, 10) for e in (0, 0.25, 1.5, 2.04, 2.06)] == [0, 2, 15,
                                                                                    20, 21]
