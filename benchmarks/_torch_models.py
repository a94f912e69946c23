"""ResNet-18 (CIFAR stem) and WRN-16-4 in PyTorch, layer for layer the model zoo's.

For the PyTorch peers of `benchmarks/accelerator.py` (torch.func, BackPACK, curvlinops,
PyHessian), which need the same architecture in torch. Each layer has the shape, stride,
padding and bias of its counterpart in `fisher_jax.models.resnet` / `wide_resnet`:

* ResNet-18, CIFAR stem: conv3x3(3 -> w, stride 1, no bias)-BN-ReLU, four stages of two basic
  blocks (w, 2w, 4w, 8w channels; the first block of stages 2-4 strides 2), each block
  conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (identity, or conv1x1(stride)-BN where the shape
  changes), then ReLU; global average pooling and a linear layer with bias. w = 64: 11,173,962
  parameters for 10 classes, as the JAX model.
* WRN-d-k: conv3x3(3 -> 16, no bias), three groups of (d - 4) / 6 pre-activation blocks with
  16k, 32k, 64k channels (BN-ReLU-conv3x3(stride), BN-ReLU-conv3x3; a conv1x1 projection of the
  pre-activated input where the shape changes), then BN-ReLU, global average pooling, linear.
  WRN-16-4: 2,748,890 parameters for 10 classes.

With `--toy`, the tiny variants of benchmarks/accelerator.py: a ResNet of one block in each of
two stages (width 4) and WRN-10-1.

BatchNorm has epsilon 1e-5 (PyTorch's momentum 0.1 is flax's 0.9). Inputs are NCHW
[B, 3, 32, 32]. The modules are plain `nn.Module`s with `nn.ReLU` (not in-place),
`nn.AdaptiveAvgPool2d` and `nn.Flatten` modules, so that BackPACK's graph converter
(`extend(model, use_converter=True)`) and torch.fx can trace them. Initialization follows
PyTorch's defaults (the timings do not depend on the values).
"""

from torch import nn

# Parameter counts of the full models for 10 classes, those of the JAX models.
EXPECTED_PARAMETERS = {'resnet18': 11_173_962, 'wrn16_4': 2_748_890}


def _conv(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Conv2d:
  return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
  """ResNet basic block: relu(shortcut(x) + BN(conv(relu(BN(conv(x))))))."""

  def __init__(self, c_in: int, c_out: int, stride: int):
    super().__init__()
    self.conv1, self.bn1, self.relu1 = (_conv(c_in, c_out, 3, stride), nn.BatchNorm2d(c_out),
                                        nn.ReLU())
    self.conv2, self.bn2 = _conv(c_out, c_out, 3, 1), nn.BatchNorm2d(c_out)
    if stride != 1 or c_in != c_out:
      self.shortcut = nn.Sequential(_conv(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))
    else:
      self.shortcut = nn.Identity()
    self.relu2 = nn.ReLU()

  def forward(self, x):
    y = self.relu1(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu2(self.shortcut(x) + y)


class ResNet(nn.Module):
  """A ResNet of basic blocks with the CIFAR stem (3x3 stride-1 conv, no max-pool).

  `stage_sizes=(2, 2, 2, 2)` is ResNet-18; stage s has `width * 2**s` channels.
  """

  def __init__(self, num_classes: int = 10, width: int = 64, stage_sizes=(2, 2, 2, 2)):
    super().__init__()
    self.stem = nn.Sequential(_conv(3, width, 3, 1), nn.BatchNorm2d(width), nn.ReLU())
    blocks, c_in = [], width
    for stage, num_blocks in enumerate(stage_sizes):
      c_out = width * 2**stage
      for i in range(num_blocks):
        blocks.append(BasicBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1))
        c_in = c_out
    self.blocks = nn.Sequential(*blocks)
    self.pool, self.flatten = nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()
    self.fc = nn.Linear(c_in, num_classes)

  def forward(self, x):
    return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


class WideBasicBlock(nn.Module):
  """Pre-activation block: shortcut + conv(relu(BN(conv(relu(BN(x)), stride)))).

  The shortcut is x, or a conv1x1(stride) of the pre-activated input relu(BN(x)) where the
  width or the resolution changes (as the reference and the JAX model).
  """

  def __init__(self, c_in: int, c_out: int, stride: int):
    super().__init__()
    self.bn1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU()
    self.conv1 = _conv(c_in, c_out, 3, stride)
    self.bn2, self.relu2 = nn.BatchNorm2d(c_out), nn.ReLU()
    self.conv2 = _conv(c_out, c_out, 3, 1)
    self.projection = (_conv(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out
                       else None)

  def forward(self, x):
    pre = self.relu1(self.bn1(x))
    shortcut = x if self.projection is None else self.projection(pre)
    y = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
    return shortcut + y


class WideResNet(nn.Module):
  """WRN-`depth`-`widen_factor` for 32x32 inputs (stem stride 1)."""

  def __init__(self, num_classes: int = 10, depth: int = 16, widen_factor: int = 4):
    super().__init__()
    if depth < 10 or (depth - 4) % 6:
      raise ValueError(f'depth={depth} is invalid for a Wide ResNet; use 6n + 4 (10, 16, ...).')
    per_group = (depth - 4) // 6
    self.stem = _conv(3, 16, 3, 1)
    blocks, c_in = [], 16
    for group, base in enumerate((16, 32, 64)):
      for i in range(per_group):
        c_out = base * widen_factor
        blocks.append(WideBasicBlock(c_in, c_out, 2 if group > 0 and i == 0 else 1))
        c_in = c_out
    self.blocks = nn.Sequential(*blocks)
    self.bn, self.relu = nn.BatchNorm2d(c_in), nn.ReLU()
    self.pool, self.flatten = nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()
    self.fc = nn.Linear(c_in, num_classes)

  def forward(self, x):
    x = self.relu(self.bn(self.blocks(self.stem(x))))
    return self.fc(self.flatten(self.pool(x)))


# --models name -> (class, kwargs, tiny kwargs for --toy): the variants of
# benchmarks/accelerator.py's MODELS.
MODELS = {
    'resnet18': (ResNet, {'width': 64}, {'width': 4, 'stage_sizes': (1, 1)}),
    'wrn16_4': (WideResNet, {'depth': 16, 'widen_factor': 4}, {'depth': 10, 'widen_factor': 1}),
}


def build(name: str, toy: bool = False, num_classes: int = 10) -> nn.Module:
  """The torch model of a `--models` name (tiny with `toy`), in evaluation mode.

  Raises:
    ValueError: a name without a torch version here.
  """
  if name not in MODELS:
    raise ValueError(f'--models {name!r} has no PyTorch version in benchmarks/_torch_models.py; '
                     f'the peers run {sorted(MODELS)}.')
  cls, kwargs, toy_kwargs = MODELS[name]
  return cls(num_classes=num_classes, **(toy_kwargs if toy else kwargs)).eval()


def parameter_count(model: nn.Module) -> int:
  """The number of parameters P."""
  return sum(p.numel() for p in model.parameters())

