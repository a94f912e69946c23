"""fisher_jax: curvature in the early phase of training (Fisher explosion, Fisher penalty).

Entry point: `python -m fisher_jax.main --config configs/default.py --workdir DIR`, or
`fisher_jax.training.train_and_evaluate(config, workdir)` from Python.
"""

__version__ = '0.1.0'
