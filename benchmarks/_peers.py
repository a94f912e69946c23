"""The PyTorch peers of `benchmarks/accelerator.py`: torch.func, BackPACK, curvlinops, PyHessian.

`run_peers(...)` (called by `accelerator.py --peers`) times, on the same device kind, the same
architecture (`benchmarks/_torch_models.py`), the same batch shape and the same quantities as
far as each library has them, as ratios to PyTorch's own gradient of the mean cross-entropy
(`torch.autograd.grad`, evaluation-mode BatchNorm); rows of `torch.compile`d calls are ratios
to the `torch.compile`d gradient. It runs them in a separate process (this file run as a
script) that never imports JAX, and which runs before any JAX process takes the accelerator's
memory. A library that is not installed gets rows whose status is 'not installed'; a call that
fails gets 'failed: <the error>'; nothing here raises.

What each library's rows compute:

* torch.func: per-example gradients as `vmap(grad(loss of one example))` (the vmap engine's
  method), their squared norms; Tr(F) = the mean over examples of the squared norms at labels
  sampled from one forward pass; H v = `jvp(grad(loss))` (forward-over-reverse); Tr(H) per
  probe by `vmap` of that over the Rademacher probes; the sampled Fisher diagonal.
* BackPACK: `BatchL2Grad`, which with the mean loss returns ||g_i||^2 / B^2 (multiplied by B^2
  here), at the true labels (per-example norms) and at sampled labels (Tr(F), per-leaf Tr(F)),
  from the layers' inputs and output gradients (the layers engine's method); the Fisher
  diagonal by `DiagGGNMC(mc_samples=1)` on the model converted by `extend(model,
  use_converter=True)` (needed for residual connections).
* curvlinops: `HessianLinearOperator @ v`, `GGNLinearOperator @ v` (the exact GGN, equal to
  the Fisher for the cross-entropy), `hutchinson_trace(H, num_matvecs)` per matvec, eager, and
  the two products under `torch.compile` as curvlinops' own benchmark does.
* PyHessian (`cuda=True` on a GPU): `hessian(model, criterion, data=(x, y))` (a forward and a
  backward pass with `create_graph=True`) then one `hessian_vector_product` (reverse-over-
  reverse); `.trace(maxIter=N, tol=-1)` per probe (setup included; tol=-1 runs exactly N);
  `.eigenvalues(top_n=10, maxIter=I / 10, tol=-1)`: power iteration with deflation, not
  Lanczos, given the Lanczos row's I products in all.

Memory (CUDA only; None on CPU): `torch.cuda.max_memory_allocated()` after
`reset_peak_memory_stats()`, less what was allocated before the call, plus the parameters, the
batch and (for the products) v: the call's own inputs, outputs and temporaries, as the JAX rows.
"""

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_LABELS = {
    'gradient': 'mean-loss gradient (the baseline)',
    'per_example_norms_layers': 'per-example squared gradient norms',
    'per_example_norms_vmap': 'per-example squared gradient norms',
    'fisher_trace_layers': 'Tr(F) sampled',
    'fisher_trace_vmap': 'Tr(F) sampled',
    'fisher_trace_per_leaf': 'per-leaf Tr(F), sampled',
    'fisher_diagonal': 'Fisher diagonal, sampled',
    'hvp': 'Hessian-vector product H v',
    'fisher_vp': 'Fisher-vector product F v',
    'hessian_trace_per_probe': 'Tr(H) by Hutchinson, per probe',
    'lanczos_top10': 'top-10 Hessian eigenvalues',
}

# framework -> (module that must be importable, the baseline gradient's framework,
#               [(quantity, detail)]); {probes} and {iterations} are filled in.
PEERS = {
    'torch': ('torch', 'torch', [
        ('gradient', 'torch.autograd.grad of the mean cross-entropy')]),
    'torch (torch.compile)': ('torch', 'torch (torch.compile)', [
        ('gradient', 'torch.compile of the same function')]),
    'torch.func': ('torch', 'torch', [
        ('per_example_norms_vmap', 'vmap(grad) over examples, then squared norms'),
        ('fisher_trace_vmap', 'vmap(grad) at labels sampled from one forward pass'),
        ('hvp', 'jvp(grad): forward-over-reverse'),
        ('hessian_trace_per_probe', '{probes} Rademacher probes, vmap of jvp(grad); per probe'),
        ('fisher_diagonal', 'vmap(grad) at sampled labels, squared and averaged')]),
    'BackPACK': ('backpack', 'torch', [
        ('per_example_norms_layers', 'BatchL2Grad (x B^2: the mean loss scales it by 1/B^2)'),
        ('fisher_trace_layers', 'BatchL2Grad at sampled labels'),
        ('fisher_trace_per_leaf', 'BatchL2Grad at sampled labels, per parameter'),
        ('fisher_diagonal', 'DiagGGNMC(mc_samples=1), extend(use_converter=True)')]),
    'curvlinops': ('curvlinops', 'torch', [
        ('hvp', 'HessianLinearOperator @ v, eager'),
        ('fisher_vp', 'GGNLinearOperator @ v (exact GGN), eager'),
        ('hessian_trace_per_probe', 'hutchinson_trace(H, {probes}); per matvec')]),
    'curvlinops (torch.compile)': ('curvlinops', 'torch (torch.compile)', [
        ('hvp', 'torch.compile(lambda: H @ v)'),
        ('fisher_vp', 'torch.compile(lambda: G @ v)')]),
    'PyHessian': ('pyhessian', 'torch', [
        ('hvp', 'hessian() setup (backward with create_graph) + one reverse-over-reverse '
                'product'),
        ('hessian_trace_per_probe', '.trace(maxIter={probes}, tol=-1), setup included; per '
                                    'probe'),
        ('lanczos_top10', '.eigenvalues(top_n=10, maxIter={per_eigenvalue}, tol=-1): power '
                          'iteration with deflation, {iterations} products in all')]),
}


def installed(module: str) -> bool:
  """Whether `module` can be imported here (found without importing it)."""
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def _row(framework, model, batch, quantity, detail, **fields) -> Dict[str, Any]:
  row = dict(framework=framework, model=model, batch=batch, dtype='float32', quantity=quantity,
             label=_LABELS[quantity], detail=detail, status='ok', seconds=None, ratio=None,
             peak_bytes=None, peak_ratio=None, peak_exact=None, xla_bytes=None,
             xla_ratio=None, compile_seconds=None)
  row.update(fields)
  return row


def _details(probes: int, iterations: int):
  """framework -> [(quantity, detail)] with the counts filled in."""
  return {name: [(q, d.format(probes=probes, iterations=iterations,
                              per_eigenvalue=_per_eigenvalue(iterations))) for q, d in cases]
          for name, (_, _, cases) in PEERS.items()}


def _per_eigenvalue(iterations: int) -> int:
  """PyHessian's power iterations per eigenvalue: the Lanczos row's products over 10."""
  return max(1, iterations // 10)


def _status_rows(models, batch_sizes, probes, iterations, status_of: Callable[[str], str]):
  rows = []
  for name in models:
    for batch in batch_sizes:
      for framework, cases in _details(probes, iterations).items():
        rows += [_row(framework, name, batch, q, d, status=status_of(framework))
                 for q, d in cases]
  return rows


def run_peers(*, models: Sequence[str], batch_sizes: Sequence[int], toy: bool, rounds: int,
              probes: int, iterations: int, cwd: str = _REPO) -> List[Dict[str, Any]]:
  """The peers' rows for every model and batch size (never raises).

  Without PyTorch every row says 'not installed'. Otherwise this file runs as a script in a
  process of its own (no JAX there), and the rows of a library it cannot import say 'not
  installed'.
  """
  if not installed('torch'):
    return _status_rows(models, batch_sizes, probes, iterations, lambda f: 'not installed')
  with tempfile.TemporaryDirectory() as scratch:
    rows_file = os.path.join(scratch, 'peers.json')
    argv = [sys.executable, os.path.abspath(__file__), '--models', ','.join(models),
            '--batch_sizes', ','.join(map(str, batch_sizes)), '--rounds', str(rounds),
            '--probes', str(probes), '--iterations', str(iterations), '--rows_file', rows_file]
    if toy:
      argv.append('--toy')
    code = subprocess.call(argv, cwd=cwd)
    if code == 0 and os.path.exists(rows_file):
      with open(rows_file) as f:
        return json.load(f)
  status = f'failed: the PyTorch process exited with status {code} (see the messages above)'
  return _status_rows(models, batch_sizes, probes, iterations, lambda f: status)


# ---------------------------------------------------------------------------------------------
# The PyTorch process.


def _failure(error: BaseException) -> str:
  text = f'{type(error).__name__}: {error}'.strip().splitlines()[0]
  return 'failed: ' + text[:300]


def _torch_cases(name: str, batch: int, toy: bool, probes: int, iterations: int):
  """The calls of one model and batch size, each library's built if it is installed.

  Returns:
    (framework -> 'not installed' | 'failed: ...' | {quantity -> (call() or 'failed: ...',
    divisor, input bytes)}, the torch device, the model's number of parameters).
  """
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from torch.func import functional_call, grad, jvp, vmap  # pylint: disable=g-import-not-at-top
  from benchmarks import _torch_models  # pylint: disable=g-import-not-at-top

  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  torch.manual_seed(0)
  model = _torch_models.build(name, toy).to(device)
  x = torch.randn(batch, 3, 32, 32, device=device)
  y = torch.randint(0, 10, (batch,), device=device)
  criterion = torch.nn.CrossEntropyLoss()  # reduction='mean'
  named = dict(model.named_parameters())
  params = {n: p.detach() for n, p in named.items()}
  buffers = dict(model.named_buffers())
  v = {n: torch.randn_like(p) for n, p in params.items()}
  v_flat = torch.cat([t.flatten() for t in v.values()])
  nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
  base_bytes = nbytes(list(params.values()) + [x, y])
  v_bytes = nbytes(v.values())

  def sample(logits):
    return torch.distributions.Categorical(logits=logits.detach()).sample()

  def loss_of(p, xb, yb):
    return F.cross_entropy(functional_call(model, (p, buffers), (xb,)), yb)

  per_example = vmap(grad(lambda p, xi, yi: loss_of(p, xi[None], yi[None])), in_dims=(None, 0, 0))

  def sq_norms(g):
    return sum(t.pow(2).flatten(1).sum(1) for t in g.values())

  def sampled_labels():
    with torch.no_grad():
      return sample(model(x))

  def gradient():
    return torch.autograd.grad(criterion(model(x), y), list(named.values()))

  def hvp(u):
    return jvp(grad(lambda p: loss_of(p, x, y)), (params,), (u,))[1]

  def hessian_trace():
    rademacher = {n: torch.randint(0, 2, (probes,) + p.shape, device=device).to(p.dtype) * 2 - 1
                  for n, p in params.items()}
    products = vmap(hvp)(rademacher)
    return sum((rademacher[n] * products[n]).sum() for n in params) / probes

  builders: Dict[str, Callable[[], Dict[str, Any]]] = {}
  builders['torch'] = lambda: {'gradient': (gradient, 1, base_bytes)}
  builders['torch (torch.compile)'] = lambda: {
      'gradient': (torch.compile(gradient), 1, base_bytes)}
  builders['torch.func'] = lambda: {
      'per_example_norms_vmap': (lambda: sq_norms(per_example(params, x, y)), 1, base_bytes),
      'fisher_trace_vmap': (lambda: sq_norms(per_example(params, x, sampled_labels())).mean(),
                            1, base_bytes),
      'hvp': (lambda: hvp(v), 1, base_bytes + v_bytes),
      'hessian_trace_per_probe': (hessian_trace, probes, base_bytes),
      'fisher_diagonal': (lambda: {n: g.pow(2).mean(0) for n, g in
                                   per_example(params, x, sampled_labels()).items()},
                          1, base_bytes)}

  def backpack_cases():
    from backpack import backpack, extend  # pylint: disable=g-import-not-at-top
    from backpack.extensions import BatchL2Grad, DiagGGNMC  # pylint: disable=g-import-not-at-top
    first = extend(copy.deepcopy(model))
    first_loss = extend(torch.nn.CrossEntropyLoss())

    def squares(labels_of):  # name -> [B] ||g_i||^2 restricted to that parameter
      first.zero_grad(set_to_none=True)
      logits = first(x)
      with backpack(BatchL2Grad()):
        first_loss(logits, labels_of(logits)).backward()
      return {n: p.batch_l2 * batch**2 for n, p in first.named_parameters()}

    cases = {
        'per_example_norms_layers': (lambda: sum(squares(lambda z: y).values()), 1, base_bytes),
        'fisher_trace_layers': (lambda: sum(squares(sample).values()).mean(), 1, base_bytes),
        'fisher_trace_per_leaf': (lambda: {n: s.mean() for n, s in squares(sample).items()}, 1,
                                  base_bytes)}
    try:
      converted = extend(copy.deepcopy(model), use_converter=True)
      converted_loss = extend(torch.nn.CrossEntropyLoss())

      def diagonal():
        converted.zero_grad(set_to_none=True)
        with backpack(DiagGGNMC(mc_samples=1)):
          converted_loss(converted(x), y).backward()
        return [p.diag_ggn_mc for p in converted.parameters()]
      cases['fisher_diagonal'] = (diagonal, 1, base_bytes)
    except Exception as error:  # pylint: disable=broad-except  (the converter's limits)
      cases['fisher_diagonal'] = _failure(error)
    return cases
  builders['BackPACK'] = backpack_cases

  def curvlinops_operators():
    import curvlinops  # pylint: disable=g-import-not-at-top

    def operator(cls):
      # Released versions take a list of parameters, later ones a dict of named parameters.
      error = None
      for given in (list(named.values()), dict(named)):
        try:
          return cls(model, criterion, given, [(x, y)], check_deterministic=False)
        except Exception as e:  # pylint: disable=broad-except
          error = e
      raise error
    return curvlinops, operator(curvlinops.HessianLinearOperator), operator(
        curvlinops.GGNLinearOperator)

  def curvlinops_cases():
    curvlinops, hessian, ggn = curvlinops_operators()
    return {'hvp': (lambda: hessian @ v_flat, 1, base_bytes + v_bytes),
            'fisher_vp': (lambda: ggn @ v_flat, 1, base_bytes + v_bytes),
            'hessian_trace_per_probe': (lambda: curvlinops.hutchinson_trace(hessian, probes),
                                        probes, base_bytes)}
  builders['curvlinops'] = curvlinops_cases

  def curvlinops_compiled_cases():
    _, hessian, ggn = curvlinops_operators()
    return {'hvp': (torch.compile(lambda: hessian @ v_flat), 1, base_bytes + v_bytes),
            'fisher_vp': (torch.compile(lambda: ggn @ v_flat), 1, base_bytes + v_bytes)}
  builders['curvlinops (torch.compile)'] = curvlinops_compiled_cases

  def pyhessian_cases():
    from pyhessian import hessian as pyhessian_hessian  # pylint: disable=g-import-not-at-top
    from pyhessian.utils import hessian_vector_product  # pylint: disable=g-import-not-at-top
    cuda = device.type == 'cuda'
    v_list = [v[n] for n in named]

    def setup():
      model.zero_grad(set_to_none=True)  # Frees the previous call's graph in p.grad.
      return pyhessian_hessian(model, criterion, data=(x, y), cuda=cuda)

    def product():
      h = setup()
      return hessian_vector_product(h.gradsH, h.params, v_list)

    return {'hvp': (product, 1, base_bytes + v_bytes),
            'hessian_trace_per_probe': (lambda: setup().trace(maxIter=probes, tol=-1.0),
                                        probes, base_bytes),
            'lanczos_top10': (lambda: setup().eigenvalues(
                maxIter=_per_eigenvalue(iterations), tol=-1.0, top_n=10)[0], 1, base_bytes)}
  builders['PyHessian'] = pyhessian_cases

  cases = {}
  for framework, build in builders.items():
    if not installed(PEERS[framework][0]):
      cases[framework] = 'not installed'
      continue
    try:
      cases[framework] = build()
    except Exception as error:  # pylint: disable=broad-except
      cases[framework] = _failure(error)
  return cases, device, _torch_models.parameter_count(model)


def _measure(name: str, batch: int, toy: bool, rounds: int, probes: int, iterations: int,
             log: Callable[[str], None]) -> List[Dict[str, Any]]:
  """The rows of one model and batch size (in the PyTorch process)."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import _timing  # pylint: disable=g-import-not-at-top
  from benchmarks import _torch_models  # pylint: disable=g-import-not-at-top

  cases, device, count = _torch_cases(name, batch, toy, probes, iterations)
  cuda = device.type == 'cuda'

  def finish(_):
    if cuda:
      torch.cuda.synchronize()

  expected = None if toy else _torch_models.EXPECTED_PARAMETERS.get(name)
  note = f' [P = {count:,}' + (f'; JAX model: {expected:,}]' if expected else ']')
  details = _details(probes, iterations)
  rows, calls, meta = {}, {}, {}
  for framework, by_quantity in cases.items():
    for quantity, detail in details[framework]:
      key = (framework, quantity)
      case = by_quantity if isinstance(by_quantity, str) else by_quantity.get(quantity)
      if isinstance(case, str) or case is None:
        rows[key] = _row(framework, name, batch, quantity, detail + note,
                         status=case or 'failed: not built')
        continue
      call, divisor, input_bytes = case
      meta[key] = (divisor, input_bytes, detail + note)
      calls[key] = lambda r, call=call: call()
  # Compile (torch.compile) and warm up, then the memory of each call, then the rounds.
  memory, ready = {}, {}
  for key, call in calls.items():
    try:
      seconds = _timing.timed_call(call, 0, finish)
      log(f'{name} batch {batch}: warmed up {key[0]} {key[1]} ({seconds:.1f} s)')
      if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        finish(call(0))
        memory[key] = torch.cuda.max_memory_allocated() - before + meta[key][1]
      ready[key] = call
    except Exception as error:  # pylint: disable=broad-except
      rows[key] = _row(key[0], name, batch, key[1], meta[key][2], status=_failure(error))
      log(f'{key}: {rows[key]["status"]}')
  times = _timing.interleaved_rounds({f'{f}/{q}': c for (f, q), c in ready.items()}, rounds,
                                     finish, log) if ready else {}
  for key in ready:
    divisor, _, detail = meta[key]
    seconds = _timing.median(times[f'{key[0]}/{key[1]}']) / divisor
    rows[key] = _row(key[0], name, batch, key[1], detail, seconds=seconds,
                     peak_bytes=memory.get(key), peak_exact=True if cuda else None)
  for (framework, _), row in rows.items():  # Ratios to the framework's own gradient.
    base = rows.get((PEERS[framework][1], 'gradient'))
    if row['status'] == 'ok' and base and base['status'] == 'ok':
      row['ratio'] = row['seconds'] / base['seconds']
      if row['peak_bytes'] and base['peak_bytes']:
        row['peak_ratio'] = row['peak_bytes'] / base['peak_bytes']
  return list(rows.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The PyTorch process: measures every model and batch size, writes the rows."""
  parser = argparse.ArgumentParser(description='The PyTorch peers of benchmarks/accelerator.py '
                                               '(run by it with --peers).')
  parser.add_argument('--models', required=True, help='comma-separated: resnet18, wrn16_4')
  parser.add_argument('--batch_sizes', required=True, help='comma-separated batch sizes')
  parser.add_argument('--rounds', type=int, required=True, help='interleaved timing rounds')
  parser.add_argument('--probes', type=int, required=True, help='Hutchinson probes')
  parser.add_argument('--iterations', type=int, required=True,
                      help="the Lanczos row's products; PyHessian gets a tenth per eigenvalue")
  parser.add_argument('--toy', action='store_true', help='tiny models (the smoke test)')
  parser.add_argument('--rows_file', required=True, help='where the rows go (JSON)')
  args = parser.parse_args(argv)
  sys.path.insert(0, _REPO)
  from benchmarks import _timing  # pylint: disable=g-import-not-at-top
  rows = []
  for name in args.models.split(','):
    for batch in map(int, args.batch_sizes.split(',')):
      try:
        rows += _measure(name, batch, args.toy, args.rounds, args.probes, args.iterations,
                         _timing.log)
      except Exception as error:  # pylint: disable=broad-except  (e.g. a model without torch)
        status = _failure(error)
        rows += _status_rows([name], [batch], args.probes, args.iterations,
                             lambda f, status=status: status)
  with open(args.rows_file, 'w') as f:
    json.dump(rows, f)
  return 0


if __name__ == '__main__':
  sys.exit(main())
