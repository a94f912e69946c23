"""Cost of the curvature measurements, the Fisher penalty and training on any JAX backend.

One command times, on whatever backend JAX finds (GPU, TPU or CPU), as ratios to one mean-loss
gradient measured in the same run (same model, same batch, same process), with the peak device
memory of each call beside its time:

* per-example squared gradient norms ||grad CE(x_i, y_i)||^2 and sampled Tr(F) =
  (1/B) sum_i ||grad CE(x_i, yhat_i)||^2 on both engines of `fisher_jax.curvature`
  (`engine='layers'`: from each layer's inputs and output gradients; `engine='vmap'`: a
  per-example backward pass under `jax.vmap`);
* Tr(F_B) = ||(1/B) sum_i grad CE(x_i, yhat_i)||^2 (`batch_fisher_trace`), the Hessian-vector
  product H v (forward-over-reverse), Tr(H) by Hutchinson (seconds per probe; all probes in one
  vmapped batch unless chunked), the Fisher-vector product F v, the sampled Fisher diagonal,
  per-leaf Tr(F), the top-10 Hessian eigenpairs by Lanczos (`top_eigenpairs`);
* the Fisher penalty's value and gradient (`regularizers.penalty_and_grad('fp', ...)`), a
  training step with the penalty recomputed every step, and one with `every_k=10` (the average
  of 10 consecutive steps: one recomputes the penalty, nine reuse it), both built as the trainer
  builds them (`fisher_jax.training`: `steps.make_train_step` mapped by
  `mesh.data_parallel`, the optimizer from `optim.make_optimizer`, SGD with momentum 0.9, the
  host deciding which steps recompute);
* the plain training step (no penalty), reported as steps/s, in float32 and in bfloat16.

The curvature rows and the penalty gradient use evaluation-mode BatchNorm
(`curvature.make_logits_fn(model, batch_stats)`), as every per-example quantity must, and so
does the baseline gradient; the training steps use training-mode BatchNorm, as training does.

Models: ResNet-18 with the CIFAR stem (`resnet18`) and WRN-16-4 (`wrn16_4`), or any name of
`fisher_jax.models`, on random 32x32x3 inputs with 10 classes (no dataset is read). bfloat16 here
is the model zoo's `dtype='bfloat16'`: convolutions, dense layers and activations compute in
bfloat16, while parameters, optimizer state, BatchNorm statistics, the logits and the loss stay
float32 (mixed precision). The training step runs in every dtype of `--dtypes`; the other rows
in every dtype of `--curvature_dtypes` (float32 by default); each (model, batch, dtype) has its
own baseline gradient.

Backend choices (`jax.default_backend()`; `--unroll`/`--no_unroll` and `--chunk_size`
override them): on CPU the Lanczos steps are unrolled and per-example work runs on the whole
batch at once, because XLA:CPU runs convolutions inside a loop body (`fori_loop`, `lax.map`)
several times slower; on GPU/TPU Lanczos is a `fori_loop` (compile time flat in the number of
iterations), the layers engine takes the whole batch and the vmap engine runs in chunks of 64
examples (its per-example gradients are [chunk, P] floats: 2.9 GB for ResNet-18 instead of
23 GB at batch 512). Hutchinson's probes run as one vmapped batch everywhere.

Timing: every call is compiled ahead of time (on CPU several at once, in threads; on GPU/TPU
one at a time, since autotuning times kernels on the device), called once to warm up, then all
calls run in `--rounds` interleaved rounds and a cost is the median over rounds
(`benchmarks/_timing.py`).

Memory: `peak_bytes` is read from `jax.Device.memory_stats()['peak_bytes_in_use']` (GPU, TPU;
None on CPU, which has no such statistic). The high-water mark of a process cannot be reset,
so by default every (model, batch, dtype) runs in a process of its own, the gradient is measured
first, and the other calls are first run in increasing order of the memory XLA planned for them;
a row's `peak_bytes` is the high-water mark after its first call less the bytes other calls'
inputs held then (its own inputs, outputs and temporaries), and `peak_exact` says whether that
call raised the mark (False: the value is an upper bound). `xla_bytes` is what XLA's compiled
memory analysis plans for the call (arguments + outputs + temporaries - aliased), on every
backend.

  python -m benchmarks.accelerator                              # GPU/TPU: the full table
  python -m benchmarks.accelerator --toy --rounds 1 --out /tmp/b  # tiny models, batch 8 (CPU)
  python -m benchmarks.accelerator --peers   # also torch.func, BackPACK, curvlinops, PyHessian

It writes `accelerator.json` (every row: framework, model, batch, dtype, quantity, seconds,
ratio to the gradient, peak memory bytes and its ratio to the gradient's, XLA's planned bytes)
and `accelerator.md` (the table) to `--out`, and prints the table. It imports only jax, flax,
optax, numpy and fisher_jax's library modules (never TensorFlow, TFDS, clu, ml_collections,
pandas or torch; absl.logging comes in with optax); `--peers` runs the PyTorch libraries in a
separate process that never imports JAX.
"""

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import _peers  # noqa: E402  (standard library only at import)
from benchmarks import _timing  # noqa: E402
from fisher_jax import curvature  # noqa: E402
from fisher_jax import models  # noqa: E402
from fisher_jax import regularizers  # noqa: E402
from fisher_jax.training import cadence  # noqa: E402
from fisher_jax.training import mesh as mesh_lib  # noqa: E402
from fisher_jax.training import optim  # noqa: E402
from fisher_jax.training import settings  # noqa: E402
from fisher_jax.training import state as state_lib  # noqa: E402
from fisher_jax.training import steps  # noqa: E402

FRAMEWORK = 'fisher_jax'
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
LANCZOS_K = 10
FP_STRENGTH = 0.01
# The trainer's optimizer for the training steps: SGD with momentum, a constant learning rate.
OPTIMIZER = dict(name='momentum', learning_rate=0.01, momentum=0.9, nesterov=False,
                 weight_decay=0.0, schedule='constant', warmup_epochs=0.0, decay_epochs=(),
                 decay_factor=0.1)
STEPS_PER_EPOCH = 100  # Only converts the (zero) epochs of the settings into steps.

# --models name -> (zoo name, kwargs, tiny kwargs for --toy). The tiny ResNet has ResNet-18's
# blocks and stem but one block in each of two stages (6 convolutions instead of 20: XLA:CPU
# compiles each of the ~20 programs in seconds); the tiny Wide ResNet is WRN-10-1.
MODELS = {
    'resnet18': ('resnet18', {'stem': 'cifar'},
                 {'stage_sizes': (1, 1), 'block': 'basic', 'stem': 'cifar', 'width': 4}),
    'wrn16_4': ('wide_resnet', {'depth': 16, 'widen_factor': 4},
                {'depth': 10, 'widen_factor': 1}),
}


class Quantity(NamedTuple):
  """A row of the table: its key (`--quantities`), what it is, and the goal on a GPU."""
  key: str
  label: str
  goal: str = ''


QUANTITIES = (
    Quantity('gradient', 'mean-loss gradient (the baseline)'),
    Quantity('per_example_norms_layers', "per-example squared gradient norms, engine='layers'",
             '<= 1.2'),
    Quantity('per_example_norms_vmap', "per-example squared gradient norms, engine='vmap'"),
    Quantity('fisher_trace_layers', "Tr(F) sampled, engine='layers'", '<= 1.2'),
    Quantity('fisher_trace_vmap', "Tr(F) sampled, engine='vmap'"),
    Quantity('batch_fisher_trace', 'Tr(F_B), batch_fisher_trace'),
    Quantity('hvp', 'Hessian-vector product H v', '<= 2.2; memory <= 2.5'),
    Quantity('hessian_trace_per_probe', 'Tr(H) by Hutchinson, per probe'),
    Quantity('fisher_vp', 'Fisher-vector product F v'),
    Quantity('fisher_diagonal', 'Fisher diagonal, sampled'),
    Quantity('fisher_trace_per_leaf', 'per-leaf Tr(F), sampled'),
    Quantity('lanczos_top10', f'Lanczos top-{LANCZOS_K} Hessian eigenpairs'),
    Quantity('fp_penalty_grad', "FP penalty and its gradient, penalty_and_grad('fp')"),
    Quantity('fp_step', 'FP training step (penalty every step)', '<= 2.5'),
    Quantity('fp_step_every10', 'FP training step, every_k=10 (per step)'),
    Quantity('train_step', 'training step, no penalty', 'bfloat16 faster than float32'),
)
QUANTITY_KEYS = tuple(q.key for q in QUANTITIES)
# The quantities timed in every dtype of --dtypes (the others: --curvature_dtypes).
TRAINING_QUANTITIES = ('gradient', 'train_step')
DTYPES = ('float32', 'bfloat16')
# Never imported by the benchmark's JAX processes (checked at the end of every run: the JSON's
# environment lists any that were). absl is not among them: optax imports absl.logging itself.
FORBIDDEN_MODULES = ('tensorflow', 'tensorflow_datasets', 'clu', 'ml_collections', 'pandas',
                     'torch')


class Choices(NamedTuple):
  """How the backend runs loops and per-example work.

  Attributes:
    unroll: Lanczos steps unrolled at trace time (True) or a `fori_loop` (False).
    chunk_size: engine ('layers', 'vmap') -> examples per chunk of the per-example functions
      (None: the whole batch at once).
    probe_chunk: Hutchinson probes per vmapped product (None: all at once).
    compile_workers: programs compiled at once (threads; XLA releases the GIL).
  """
  unroll: bool
  chunk_size: Dict[str, Optional[int]]
  probe_chunk: Optional[int]
  compile_workers: int = 1


def backend_choices(backend: str, unroll: Optional[bool] = None,
                    chunk_size: Optional[int] = None) -> Choices:
  """The loop and chunk choices for `backend` ('cpu', 'gpu', 'tpu'), with overrides.

  Args:
    backend: `jax.default_backend()`.
    unroll: overrides the Lanczos unrolling when not None.
    chunk_size: overrides both engines' chunk sizes when not None (0: the whole batch).
  """
  if backend == 'cpu':  # XLA:CPU runs convolutions inside loop bodies several times slower.
    choice = Choices(unroll=True, chunk_size={'layers': None, 'vmap': None}, probe_chunk=None,
                     compile_workers=os.cpu_count() or 1)
  else:  # GPU/TPU: loops compile once; the vmap engine's [chunk, P] gradients bound memory.
    # One compilation at a time: autotuning times kernels on the device.
    choice = Choices(unroll=False, chunk_size={'layers': None, 'vmap': 64}, probe_chunk=None,
                     compile_workers=1)
  if unroll is not None:
    choice = choice._replace(unroll=unroll)
  if chunk_size is not None:
    size = chunk_size or None
    choice = choice._replace(chunk_size={'layers': size, 'vmap': size})
  return choice


# ---------------------------------------------------------------------------------------------
# One configuration: (model, batch, dtype) in this process.


@dataclasses.dataclass
class _Case:
  """One timed call: `call(round_index)` returns what `jax.block_until_ready` waits for."""
  key: str
  call: Callable[[int], Any]
  executables: List[Any]
  input_bytes: int
  divisor: int = 1  # The call does this many units (probes, steps); seconds are per unit.
  detail: str = ''
  compile_seconds: float = 0.0


def _nbytes(tree) -> int:
  return int(sum(x.nbytes for x in jax.tree.leaves(tree) if hasattr(x, 'nbytes')))


def _xla_bytes(executables) -> Optional[int]:
  """The largest memory XLA planned for one of the executables: arguments + outputs +
  temporaries - aliased (donated) bytes; None where the backend gives no analysis."""
  planned = []
  for executable in executables:
    try:
      m = executable.memory_analysis()
    except Exception:  # pylint: disable=broad-except  (not implemented on this backend)
      m = None
    if m is None:
      return None
    planned.append(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
  return max(planned) if planned else None


def _memory_stats(device) -> Optional[Dict[str, int]]:
  try:
    return device.memory_stats()
  except Exception:  # pylint: disable=broad-except  (backends without allocator statistics)
    return None


def build_model(name: str, dtype: str, toy: bool):
  """`--models` name -> the flax model (tiny with `toy`); any zoo name is accepted as is."""
  zoo, kwargs, toy_kwargs = MODELS.get(name, (name, {}, {}))
  if toy and 'stage_sizes' in toy_kwargs:  # Not a registered variant: the family's class.
    return models.ResNet(num_classes=NUM_CLASSES, dtype=jnp.dtype(dtype), **toy_kwargs)
  return models.get_model(zoo, NUM_CLASSES, dtype=dtype, **(toy_kwargs if toy else kwargs))


def _curvature_functions(model, choices: Choices, probes: int, iterations: int):
  """key -> (argument names, function of them, divisor, detail): the jitted curvature calls."""

  def logits_fn(bs):  # Evaluation-mode BatchNorm, the running averages passed traced.
    return curvature.make_logits_fn(model, bs or None)

  def loss_fn(bs, x, y):
    return curvature.make_loss_fn(logits_fn(bs), x, y)

  layers, vmap = choices.chunk_size['layers'], choices.chunk_size['vmap']
  chunks = lambda c: 'whole batch' if c is None else f'chunk_size={c}'  # noqa: E731
  probe_batch = ('in one vmapped batch' if choices.probe_chunk is None
                 else f'vmapped {choices.probe_chunk} at a time')
  loop = 'unrolled' if choices.unroll else 'fori_loop'
  return {
      'gradient': (
          ('p', 'bs', 'x', 'y'), lambda p, bs, x, y: jax.grad(loss_fn(bs, x, y))(p), 1,
          'jax.grad of the mean cross-entropy'),
      'per_example_norms_layers': (
          ('p', 'bs', 'x', 'y'),
          lambda p, bs, x, y: curvature.per_example_grad_sq_norms(
              logits_fn(bs), p, x, y, engine='layers', chunk_size=layers), 1, chunks(layers)),
      'per_example_norms_vmap': (
          ('p', 'bs', 'x', 'y'),
          lambda p, bs, x, y: curvature.per_example_grad_sq_norms(
              logits_fn(bs), p, x, y, engine='vmap', chunk_size=vmap), 1, chunks(vmap)),
      'fisher_trace_layers': (
          ('p', 'bs', 'x', 'r'),
          lambda p, bs, x, r: curvature.fisher_trace(
              logits_fn(bs), p, x, estimator='sampled', rng=r, engine='layers',
              chunk_size=layers), 1, chunks(layers)),
      'fisher_trace_vmap': (
          ('p', 'bs', 'x', 'r'),
          lambda p, bs, x, r: curvature.fisher_trace(
              logits_fn(bs), p, x, estimator='sampled', rng=r, engine='vmap',
              chunk_size=vmap), 1, chunks(vmap)),
      'batch_fisher_trace': (
          ('p', 'bs', 'x', 'r'),
          lambda p, bs, x, r: curvature.batch_fisher_trace(logits_fn(bs), p, x, rng=r), 1,
          'one gradient at sampled labels'),
      'hvp': (
          ('p', 'bs', 'x', 'y', 'v'),
          lambda p, bs, x, y, v: curvature.hvp(loss_fn(bs, x, y), p, v), 1,
          'forward-over-reverse'),
      'hessian_trace_per_probe': (
          ('p', 'bs', 'x', 'y', 'r'),
          lambda p, bs, x, y, r: curvature.hessian_trace(
              loss_fn(bs, x, y), p, rng=r, num_probes=probes, chunk_size=choices.probe_chunk),
          probes, f'{probes} Rademacher probes {probe_batch}; seconds per probe'),
      'fisher_vp': (
          ('p', 'bs', 'x', 'v'),
          lambda p, bs, x, v: curvature.fisher_vp(logits_fn(bs), p, x, v), 1,
          'exact Fisher (= GGN of the cross-entropy)'),
      'fisher_diagonal': (
          ('p', 'bs', 'x', 'r'),
          lambda p, bs, x, r: curvature.fisher_diagonal(
              logits_fn(bs), p, x, estimator='sampled', rng=r, chunk_size=layers), 1,
          f"engine='auto', {chunks(layers)}"),
      'fisher_trace_per_leaf': (
          ('p', 'bs', 'x', 'r'),
          lambda p, bs, x, r: curvature.fisher_trace(
              logits_fn(bs), p, x, estimator='sampled', rng=r, per_leaf=True,
              chunk_size=layers), 1, f"engine='auto', {chunks(layers)}"),
      'lanczos_top10': (
          ('p', 'bs', 'x', 'y', 'r'),
          lambda p, bs, x, y, r: curvature.top_eigenpairs(
              curvature.make_hvp(loss_fn(bs, x, y), p), p, k=LANCZOS_K, rng=r,
              num_iterations=iterations, unroll=choices.unroll), 1,
          f'{iterations} iterations ({iterations} HVPs), full reorthogonalization, {loop}'),
      'fp_penalty_grad': (
          ('p', 'bs', 'x', 'y', 'r'),
          lambda p, bs, x, y, r: regularizers.penalty_and_grad('fp', logits_fn(bs), p, x, y,
                                                               rng=r), 1,
          'forward-over-reverse (jax.linearize)'),
  }


# key -> (regularizer name, every_k, steps per timed call).
_TRAIN_CASES = {
    'fp_step': ('fp', 1, 1),
    'fp_step_every10': ('fp', 10, 10),
    'train_step': ('none', 1, 1),
}


def _lower_train_case(key: str, model, mesh, variables, batch, rng):
  """A training step as the trainer builds it, its state kept between calls.

  The state starts from a copy of `variables` (the steps donate it), which spares compiling
  the model's initialization again.

  Returns:
    (the lowered steps, `case(executables, compile_seconds) -> _Case`).
  """
  name, every_k, steps_per_call = _TRAIN_CASES[key]
  reg = settings.read_regularizer(dict(name=name, strength=FP_STRENGTH, every_k=every_k,
                                       start_epoch=0))
  tx = optim.make_optimizer(settings.read_optimizer(OPTIMIZER), reg,
                            steps_per_epoch=STEPS_PER_EPOCH, num_epochs=1)
  penalty_start = cadence.epochs_to_steps(reg.start_epoch, STEPS_PER_EPOCH)
  fresh_due = lambda count: reg.name != 'none' and cadence.penalty_due(  # noqa: E731
      count, every_k=reg.every_k, start_step=penalty_start)
  params = jax.tree.map(jnp.copy, variables['params'])
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               batch_stats=jax.tree.map(jnp.copy,
                                                        variables.get('batch_stats', {})),
                               opt_state=tx.init(params), rng=jnp.copy(rng))
  held = {'state': mesh_lib.replicate(state, mesh), 'count': 0}
  flags = sorted({fresh_due(i) for i in range(every_k)})
  lowered = [mesh_lib.data_parallel(
      steps.make_train_step(model, tx, reg.name, fresh_penalty=flag), mesh,
      batch_args=(1,), num_args=2, donate_argnums=(0,)).lower(held['state'], batch)
             for flag in flags]
  detail = {'fp_step': f'strength {FP_STRENGTH}, recomputed every step',
            'fp_step_every10': 'mean of 10 steps: 1 recomputes the penalty, 9 reuse it',
            'train_step': 'SGD with momentum; the steps/s column is 1 / seconds'}[key]

  def case(executables, compile_seconds):
    compiled = dict(zip(flags, executables))

    def call(round_index):
      del round_index
      for _ in range(steps_per_call):
        step = compiled[fresh_due(held['count'])]
        held['state'], metrics = step(held['state'], batch)
        held['count'] += 1
      return held['state'], metrics

    return _Case(key, call, executables, _nbytes((held['state'], batch)),
                 divisor=steps_per_call, detail=detail, compile_seconds=compile_seconds)

  return lowered, case


def _compile_one(program):
  """(the executable of a lowered program, the seconds its compilation took)."""
  start = time.perf_counter()
  executable = program.compile()
  return executable, time.perf_counter() - start


_LABELS = {q.key: q.label for q in QUANTITIES}


def _row(model_name, batch, dtype, key, **fields) -> Dict[str, Any]:
  """A row of the JSON: the configuration, the quantity and what was measured (None: not
  measured or not available; `status` 'ok' or 'failed: <the error>')."""
  row = dict(framework=FRAMEWORK, model=model_name, batch=batch, dtype=dtype, quantity=key,
             label=_LABELS.get(key, key), detail='', status='ok', seconds=None, ratio=None,
             peak_bytes=None, peak_ratio=None, peak_exact=None, xla_bytes=None,
             xla_ratio=None, compile_seconds=None)
  row.update(fields)
  return row


def _failure(error: BaseException) -> str:
  text = f'{type(error).__name__}: {error}'.strip().splitlines()[0]
  return 'failed: ' + text[:300]


def run_config(model_name: str, batch: int, dtype: str, keys: Sequence[str], *, rounds: int,
               choices: Choices, probes: int, iterations: int, toy: bool,
               log: Callable[[str], None] = _timing.log) -> List[Dict[str, Any]]:
  """Times `keys` (with the gradient) for one (model, batch, dtype) in this process.

  Returns:
    One row per key (see the module docstring), 'gradient' first.
  """
  device = jax.devices()[0]
  mesh = mesh_lib.make_mesh([device])
  model = build_model(model_name, dtype, toy)
  k_p, k_d, k_r, k_s = jax.random.split(jax.random.PRNGKey(0), 4)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1,) + IMAGE_SHAPE), train=False))(k_p)

  @jax.jit
  def draw(key, params):  # The batch and a random direction v like params, in one program.
    k_x, k_y, k_v = jax.random.split(key, 3)
    leaves, treedef = jax.tree.flatten(params)
    v = [jax.random.normal(k, a.shape, a.dtype)
         for k, a in zip(jax.random.split(k_v, len(leaves)), leaves)]
    return (jax.random.normal(k_x, (batch,) + IMAGE_SHAPE, jnp.float32),
            jax.random.randint(k_y, (batch,), 0, NUM_CLASSES), treedef.unflatten(v))

  x, y, v = draw(k_d, variables['params'])
  arrays = {'p': variables['params'], 'bs': variables.get('batch_stats', {}), 'x': x, 'y': y,
            'v': v}
  rngs = list(jax.random.split(k_r, rounds + 1))
  train_batch = jax.device_put({'image': x, 'label': y}, mesh_lib.batch_sharded(mesh))
  functions = _curvature_functions(model, choices, probes, iterations)
  keys = ['gradient'] + [k for k in keys if k != 'gradient']

  def lower(key):  # -> (lowered programs, case(executables, compile seconds) -> _Case)
    if key in _TRAIN_CASES:
      return _lower_train_case(key, model, mesh, variables, train_batch, k_s)
    names, fn, divisor, detail = functions[key]
    args = [arrays[n] for n in names if n != 'r']
    rng = rngs[:1] if 'r' in names else []  # The key, last, is drawn anew each round.
    lowered = jax.jit(fn).lower(*args, *rng)

    def case(executables, seconds):
      (executable,) = executables
      call = lambda r: executable(*args, *([rngs[r]] if rng else []))  # noqa: E731
      return _Case(key, call, executables, _nbytes(args), divisor, detail, seconds)

    return [lowered], case

  rows, cases, memory = {}, {}, {}

  def first_call(case):  # The warm-up call, with the memory it took.
    before = _memory_stats(device)
    _timing.timed_call(case.call, 0, jax.block_until_ready)
    after = _memory_stats(device)
    if before and after and 'peak_bytes_in_use' in after:
      others = before.get('bytes_in_use', 0) - case.input_bytes
      memory[case.key] = (after['peak_bytes_in_use'] - max(others, 0),
                          after['peak_bytes_in_use'] > before['peak_bytes_in_use'])

  def fail(key, error):
    rows[key] = _row(model_name, batch, dtype, key, status=_failure(error))
    log(f'{model_name} batch {batch} {dtype}: {key} {rows[key]["status"]}')

  # The gradient first, before other compilations can raise the high-water mark; then the
  # others, traced one by one in this thread while `compile_workers` threads compile them.
  for group in (keys[:1], keys[1:]):
    jobs, finishers = {}, {}
    with concurrent.futures.ThreadPoolExecutor(choices.compile_workers) as pool:
      for key in group:
        try:
          programs, finishers[key] = lower(key)
        except Exception as error:  # pylint: disable=broad-except  (reported in the row)
          if key == 'gradient':
            raise
          fail(key, error)
          continue
        jobs[key] = [pool.submit(_compile_one, program) for program in programs]
      for key, futures in jobs.items():
        try:
          done = [future.result() for future in futures]
        except Exception as error:  # pylint: disable=broad-except
          if key == 'gradient':
            raise
          fail(key, error)
          continue
        cases[key] = finishers[key]([e for e, _ in done], sum(t for _, t in done))
        log(f'{model_name} batch {batch} {dtype}: compiled {key} '
            f'({cases[key].compile_seconds:.1f} s)')
    if 'gradient' in group:
      first_call(cases['gradient'])
  planned = {key: _xla_bytes(case.executables) for key, case in cases.items()}
  for key in sorted((k for k in cases if k != 'gradient'), key=lambda k: planned[k] or 0):
    try:
      first_call(cases[key])
    except Exception as error:  # pylint: disable=broad-except
      fail(key, error)
      del cases[key]
  times = _timing.interleaved_rounds({k: c.call for k, c in cases.items()}, rounds,
                                     jax.block_until_ready, log)
  base_seconds = _timing.median(times['gradient'])
  base_peak = memory.get('gradient', (None,))[0]
  base_xla = planned['gradient']
  for key, case in cases.items():
    seconds = _timing.median(times[key]) / case.divisor
    peak, exact = memory.get(key, (None, None))
    fields = dict(detail=case.detail, seconds=seconds, ratio=seconds / base_seconds,
                  peak_bytes=peak, peak_exact=exact,
                  peak_ratio=peak / base_peak if peak and base_peak else None,
                  xla_bytes=planned[key],
                  xla_ratio=planned[key] / base_xla if planned[key] and base_xla else None,
                  compile_seconds=case.compile_seconds)
    if key in _TRAIN_CASES:
      fields['steps_per_second'] = 1.0 / seconds
    rows[key] = _row(model_name, batch, dtype, key, **fields)
  return [rows[k] for k in keys if k in rows]


def forbidden_imports() -> List[str]:
  """The modules of `FORBIDDEN_MODULES` that this process has imported (none, by design)."""
  return sorted(m for m in FORBIDDEN_MODULES if m in sys.modules)


def environment(choices: Choices) -> Dict[str, Any]:
  """The backend, its device, the choices made for it and the modules it must not import."""
  device = jax.devices()[0]
  return {'backend': jax.default_backend(), 'device': device.device_kind,
          'device_count': jax.device_count(), 'jax': jax.__version__,
          'unroll': choices.unroll, 'chunk_size': choices.chunk_size,
          'probe_chunk': choices.probe_chunk,
          'memory_stats': _memory_stats(device) is not None,
          'forbidden_imports': forbidden_imports()}


# ---------------------------------------------------------------------------------------------
# The command line: the plan, one process per configuration, the outputs.


class Config(NamedTuple):
  model: str
  batch: int
  dtype: str
  keys: Sequence[str]


def _csv(kind: Callable[[str], Any]):
  def parse(text: str):
    return [kind(t) for t in text.split(',') if t.strip()]
  return parse


def make_parser() -> argparse.ArgumentParser:
  """The command line; every flag is documented here (and in --help)."""
  parser = argparse.ArgumentParser(
      prog='python -m benchmarks.accelerator', description=__doc__.split('\n\n')[0],
      epilog='See the module docstring and docs/performance.md for what each row computes.')
  parser.add_argument('--models', type=_csv(str), default=['resnet18', 'wrn16_4'],
                      help='comma-separated models: resnet18 (CIFAR stem), wrn16_4, or any '
                           'name of fisher_jax.models (default resnet18,wrn16_4)')
  parser.add_argument('--batch_sizes', type=_csv(int), default=None,
                      help='comma-separated batch sizes, each timed for every model '
                           '(default 256,512; 8 with --toy)')
  parser.add_argument('--dtypes', type=_csv(str), default=list(DTYPES),
                      help='compute dtypes of the training-step rows (steps/s), each with its '
                           'own baseline gradient (default float32,bfloat16)')
  parser.add_argument('--curvature_dtypes', type=_csv(str), default=['float32'],
                      help='compute dtypes of every other row: curvature, the penalty, the FP '
                           'steps (default float32)')
  parser.add_argument('--quantities', type=_csv(str), default=list(QUANTITY_KEYS),
                      help='comma-separated subset of the rows to time (default all; the '
                           'gradient is always timed): ' + ', '.join(QUANTITY_KEYS))
  parser.add_argument('--rounds', type=int, default=7,
                      help='interleaved timing rounds after the warm-up; costs are medians '
                           '(default 7)')
  parser.add_argument('--probes', type=int, default=8,
                      help='Hutchinson probes of the Tr(H) row, vmapped together; its seconds '
                           'are per probe (default 8)')
  parser.add_argument('--lanczos_iterations', type=int, default=None,
                      help=f'Lanczos iterations (Hessian-vector products) of the top-{LANCZOS_K} '
                           'row (default 30; 10 with --toy)')
  parser.add_argument('--out', default=os.path.join('runs', 'accelerator_benchmark'),
                      help='directory for accelerator.json and accelerator.md (default '
                           'runs/accelerator_benchmark)')
  parser.add_argument('--toy', action='store_true',
                      help='tiny models (a ResNet of two ResNet-18 blocks of width 4, WRN-10-1), '
                           'batch 8 and 10 Lanczos iterations unless given: the CPU smoke test')
  parser.add_argument('--unroll', dest='unroll', action='store_true', default=None,
                      help='unroll the Lanczos steps (default: only on CPU)')
  parser.add_argument('--no_unroll', dest='unroll', action='store_false', default=None,
                      help='run the Lanczos steps in a fori_loop (default on GPU/TPU)')
  parser.add_argument('--chunk_size', type=int, default=None,
                      help='examples per chunk of the per-example rows on both engines, 0 for '
                           'the whole batch (default by backend: whole batch on CPU; on GPU/TPU '
                           'whole for the layers engine, 64 for the vmap engine)')
  parser.add_argument('--peers', action='store_true',
                      help='also time torch.func, BackPACK, curvlinops and PyHessian on the same '
                           'models and batches (PyTorch, in a separate process; a library that '
                           "is not installed gets rows saying 'not installed')")
  parser.add_argument('--isolate', dest='isolate', action='store_true', default=True,
                      help='run each (model, batch, dtype) in a process of its own, so that '
                           "every peak memory is that configuration's own (the default)")
  parser.add_argument('--no_isolate', dest='isolate', action='store_false',
                      help='run every configuration in this process (peak memories of later '
                           'configurations may then be upper bounds)')
  parser.add_argument('--one_config', default=None, metavar='MODEL:BATCH:DTYPE',
                      help='run only this configuration in this process and write its rows to '
                           '--rows_file (how the isolated processes are started)')
  parser.add_argument('--rows_file', default=None,
                      help='with --one_config: the JSON file its rows go to')
  return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """Parses and checks the flags, filling the defaults that depend on --toy."""
  parser = make_parser()
  args = parser.parse_args(argv)
  if args.batch_sizes is None:
    args.batch_sizes = [8] if args.toy else [256, 512]
  if args.lanczos_iterations is None:
    args.lanczos_iterations = LANCZOS_K if args.toy else 30
  unknown = sorted(set(args.quantities) - set(QUANTITY_KEYS))
  if unknown:
    parser.error(f'--quantities names {unknown}, which are not rows; choose from '
                 f'{", ".join(QUANTITY_KEYS)}.')
  for flag in ('dtypes', 'curvature_dtypes'):
    bad = sorted(set(getattr(args, flag)) - set(DTYPES))
    if bad:
      parser.error(f'--{flag} names {bad}; choose from {", ".join(DTYPES)}.')
  for name in args.models:
    if name not in MODELS and name not in models.available_models():
      parser.error(f'--models names {name!r}; choose from {sorted(MODELS)} or '
                   f'{models.available_models()}.')
  if any(b < 1 for b in args.batch_sizes) or args.rounds < 1:
    parser.error('--batch_sizes and --rounds must be positive integers.')
  if args.probes < 2:
    parser.error(f'--probes={args.probes} must be at least 2 (Hutchinson\'s standard error).')
  if args.lanczos_iterations < LANCZOS_K:
    parser.error(f'--lanczos_iterations={args.lanczos_iterations} must be at least '
                 f'{LANCZOS_K} (the number of eigenpairs).')
  if args.chunk_size is not None and args.chunk_size < 0:
    parser.error('--chunk_size must be 0 (the whole batch) or a positive integer.')
  if bool(args.one_config) != bool(args.rows_file):
    parser.error('--one_config and --rows_file go together.')
  if args.one_config:
    fields = args.one_config.split(':')
    if (len(fields) != 3 or fields[0] not in args.models or not fields[1].isdigit()
        or fields[2] not in DTYPES):
      parser.error(f'--one_config={args.one_config!r} must be MODEL:BATCH:DTYPE with MODEL in '
                   f'--models and DTYPE one of {", ".join(DTYPES)}.')
  return args


def plan(args: argparse.Namespace) -> List[Config]:
  """The configurations to run: every model and batch, in each dtype that has rows."""
  wanted = [k for k in QUANTITY_KEYS if k in args.quantities or k == 'gradient']
  configs = []
  for name in args.models:
    for batch in args.batch_sizes:
      for dtype in DTYPES:
        training, measuring = dtype in args.dtypes, dtype in args.curvature_dtypes
        keys = [k for k in wanted if k != 'gradient' and (
            training if k in TRAINING_QUANTITIES else measuring)]
        if keys or (measuring and wanted == ['gradient']):
          configs.append(Config(name, batch, dtype, ['gradient'] + keys))
  return configs


def _child_argv(args, config: Config, rows_file: str) -> List[str]:
  """The command line of the process that runs `config` alone (`--one_config`)."""
  argv = [sys.executable, os.path.abspath(__file__), '--models', config.model,
          '--rounds', str(args.rounds), '--probes', str(args.probes),
          '--lanczos_iterations', str(args.lanczos_iterations),
          '--quantities', ','.join(config.keys),
          '--one_config', f'{config.model}:{config.batch}:{config.dtype}',
          '--rows_file', rows_file]
  if args.toy:
    argv.append('--toy')
  if args.unroll is not None:
    argv.append('--unroll' if args.unroll else '--no_unroll')
  if args.chunk_size is not None:
    argv += ['--chunk_size', str(args.chunk_size)]
  return argv


def _run_here(args, config: Config):
  """(rows, environment) of one configuration run in this process."""
  choices = backend_choices(jax.default_backend(), args.unroll, args.chunk_size)
  rows = run_config(config.model, config.batch, config.dtype, config.keys,
                    rounds=args.rounds, choices=choices, probes=args.probes,
                    iterations=args.lanczos_iterations, toy=args.toy)
  return rows, environment(choices)


def _run_isolated(args, config: Config, scratch: str):
  """(rows, environment) of one configuration run in a process of its own."""
  rows_file = os.path.join(scratch, f'{config.model}_{config.batch}_{config.dtype}.json')
  code = subprocess.call(_child_argv(args, config, rows_file), cwd=_REPO)
  if code == 0 and os.path.exists(rows_file):
    with open(rows_file) as f:
      result = json.load(f)
    return result['rows'], result['environment']
  status = f'failed: its process exited with status {code} (see the messages above)'
  return [_row(config.model, config.batch, config.dtype, k, status=status)
          for k in config.keys], None


def _fmt(value, spec: str, none: str = 'n/a') -> str:
  return none if value is None else format(value, spec)


def markdown(rows: Sequence[Dict[str, Any]], env: Dict[str, Any], command: str) -> str:
  """The table of `rows` (and the training steps/s by dtype) as markdown."""
  order = {k: i for i, k in enumerate(QUANTITY_KEYS)}
  goals = {q.key: q.goal for q in QUANTITIES}
  lines = [f'`{command}`', '',
           f"Backend {env.get('backend')} ({env.get('device')}), jax {env.get('jax')}; "
           f"Lanczos {'unrolled' if env.get('unroll') else 'fori_loop'}, chunk sizes "
           f"{env.get('chunk_size')}. Seconds are medians over the rounds; ratios are to the "
           'gradient of the same framework, model, batch and dtype. Memory: peak bytes of the '
           "call (n/a: the backend has no allocator statistics; '<=': an upper bound), and "
           "XLA's planned bytes.", '',
           '| framework | model | batch | dtype | quantity | seconds | × gradient | peak MiB | '
           "memory × gradient's | XLA memory × gradient's | goal (GPU) | detail |",
           '|---|---|---|---|---|---|---|---|---|---|---|---|']
  rows = sorted(rows, key=lambda r: (r['model'], r['batch'], r['dtype'] != 'float32',
                                     r['dtype'], order.get(r['quantity'], 99),
                                     r['framework'] != FRAMEWORK, r['framework']))
  for r in rows:
    if r['status'] != 'ok':
      cells = [r['status']] + [''] * 5
    else:
      bound = '<= ' if r.get('peak_exact') is False else ''
      peak = (None if r['peak_bytes'] is None else r['peak_bytes'] / 2**20)
      cells = [_fmt(r['seconds'], '.4g'), '**' + _fmt(r['ratio'], '.2f') + '**',
               bound + _fmt(peak, '.0f'), bound + _fmt(r['peak_ratio'], '.2f'),
               _fmt(r.get('xla_ratio'), '.2f'),
               goals.get(r['quantity'], '') if r['framework'] == FRAMEWORK else '']
    lines.append(f"| {r['framework']} | {r['model']} | {r['batch']} | {r['dtype']} | "
                 f"{r['label']} | " + ' | '.join(cells) + f" | {r.get('detail', '')} |")
  speeds = {}
  for r in rows:
    if r['quantity'] == 'train_step' and r['status'] == 'ok':
      speeds.setdefault((r['model'], r['batch']), {})[r['dtype']] = r['steps_per_second']
  if speeds:
    lines += ['', '| model | batch | float32 steps/s | bfloat16 steps/s | bfloat16 speed-up |',
              '|---|---|---|---|---|']
    for (model_name, batch), by_dtype in sorted(speeds.items()):
      f32, bf16 = by_dtype.get('float32'), by_dtype.get('bfloat16')
      speed_up = bf16 / f32 if f32 and bf16 else None
      lines.append(f'| {model_name} | {batch} | {_fmt(f32, ".2f")} | {_fmt(bf16, ".2f")} | '
                   f'{_fmt(speed_up, ".2f")} |')
  return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the benchmark; returns the exit status (1 if a fisher_jax row failed)."""
  args = parse_args(argv)
  if args.one_config:
    model_name, batch, dtype = args.one_config.split(':')
    config = Config(model_name, int(batch), dtype, args.quantities)
    rows, env = _run_here(args, config)
    with open(args.rows_file, 'w') as f:
      json.dump({'rows': rows, 'environment': env}, f)
    return 0
  command = 'python -m benchmarks.accelerator ' + ' '.join(
      sys.argv[1:] if argv is None else argv)
  rows, env = [], None
  if args.peers:  # First, before this process or a child holds the accelerator's memory.
    rows += _peers.run_peers(models=args.models, batch_sizes=args.batch_sizes, toy=args.toy,
                             rounds=args.rounds, probes=args.probes,
                             iterations=args.lanczos_iterations, cwd=_REPO)
  forbidden = set()
  with tempfile.TemporaryDirectory() as scratch:
    for config in plan(args):
      config_rows, config_env = (_run_isolated(args, config, scratch) if args.isolate
                                 else _run_here(args, config))
      rows += config_rows
      env = env or config_env
      forbidden.update((config_env or {}).get('forbidden_imports', []))
  env = env or {}
  env['forbidden_imports'] = sorted(forbidden.union(forbidden_imports()))
  env.update(date=datetime.datetime.now().isoformat(timespec='seconds'), command=command,
             rounds=args.rounds)
  os.makedirs(args.out, exist_ok=True)
  table = markdown(rows, env, command)
  with open(os.path.join(args.out, 'accelerator.json'), 'w') as f:
    json.dump({'environment': env, 'rows': rows}, f, indent=1)
  with open(os.path.join(args.out, 'accelerator.md'), 'w') as f:
    f.write(table)
  print(table)
  failed = [r for r in rows if r['framework'] == FRAMEWORK and r['status'] != 'ok']
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
