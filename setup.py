"""fisher_jax: curvature in the early phase of training (Fisher explosion, Fisher penalty)."""

import setuptools

setuptools.setup(
    name='fisher_jax',
    version='0.1.0',
    description=('Exact Fisher/Hessian trace measurements and curvature '
                 'regularizers for JAX/Flax image classifiers.'),
    packages=setuptools.find_packages(include=['fisher_jax', 'fisher_jax.*']),
    python_requires='>=3.10',
    install_requires=[
        'absl-py',
        'clu>=0.0.12',
        'flax>=0.10',
        'importlib_resources',  # tensorflow-datasets imports it without declaring it.
        'jax>=0.7',
        'matplotlib',
        'ml-collections',
        'numpy',
        'optax>=0.2.4',
        'orbax-checkpoint>=0.11',
        'pandas',
        'scikit-learn',
        'scipy',
        'tensorboard',
        'tensorflow-cpu',
        'tensorflow-datasets>=4.9',
    ],
    extras_require={'test': ['pytest']},
)
