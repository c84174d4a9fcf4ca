"""Ahead-of-time compilation for a TPU slice, from any machine.

Will a configuration fit a TPU slice, and how fast could it go? With the
`libtpu` wheel installed (no TPU needed), `jax.experimental.topologies`
describes the devices of a named slice (e.g. 'v5e:4x4'); the engine's own
train and eval steps (`loop.jit_steps`: the loss, optimizer, precision,
FSDP, remat and accumulation of the config, with the trainer's shardings)
are lowered with abstract inputs (`jax.ShapeDtypeStruct`s; nothing is
allocated) and compiled for that slice. `compile_report` reads the compiled
executables:

- memory per device (arguments, outputs, temporaries, generated code; less
  the donated arguments that the outputs reuse) against the chip's HBM;
- FLOPs and bytes accessed per step per device (XLA's cost analysis), and
  the FLOPs of the step's matrix products counted from its jaxpr with every
  loop's trip count (XLA's figure counts a while loop's body once: with
  `accumulation_steps > 1` or scanned blocks it is too low);
- the collectives of the compiled HLO and the bytes of their operands;
- the roofline lower bound of the step time: the larger of FLOPs / peak
  FLOP/s and bytes accessed / HBM bandwidth, from `CHIPS` (published
  per-chip figures, each with its source), and the examples/s it implies.

Shapes: B global batch (`config.batch_size`), D devices of the slice.
Units: bytes, FLOP, seconds.
"""

import json
import math
import os
import re
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import jax
import ml_collections
import numpy as np

from perceiver.train import config as config_lib
from perceiver.train import data as data_lib
from perceiver.train import evaluation
from perceiver.train import mesh as mesh_lib
from perceiver.train.task import Task

REPORT_FILE = 'compile_report.json'
LIBTPU_INSTALL = "pip install 'jax[tpu]'"
GiB = 2**30


class Chip(NamedTuple):
  """Published figures of one TPU chip (dense bf16, per chip).

  Attributes:
    peak_flops: peak bf16 FLOP/s of the chip.
    hbm_bytes: HBM capacity of the chip, bytes.
    hbm_bandwidth: HBM bandwidth of the chip, bytes/s.
    devices_per_chip: JAX devices per chip (v3: each of the 2 TensorCores
      is a device; v4 and v5p run as one 'megacore' device per chip).
    device_kinds: `jax.Device.device_kind` of its devices.
    shapes: the slice shapes accepted after 'NAME:' (Cloud TPU's common
      single-slice topologies).
    source: where the figures are published.
  """

  peak_flops: float
  hbm_bytes: float
  hbm_bandwidth: float
  devices_per_chip: int
  device_kinds: Sequence[str]
  shapes: Sequence[str]
  source: str


_SHAPES_2D = ('1x1', '2x2', '2x4', '4x4', '4x8', '8x8', '8x16', '16x16')
_SHAPES_3D = (
  '2x2x1',
  '2x2x2',
  '2x2x4',
  '2x4x4',
  '4x4x4',
  '4x4x8',
  '4x8x8',
  '8x8x8',
  '8x8x16',
  '8x16x16',
  '16x16x16',
)

# The figures as the Cloud TPU system-architecture pages state them
# (GB = 1e9 bytes, GiB = 2**30 bytes, GBps = 1e9 bytes/s).
CHIPS: Dict[str, Chip] = {
  # "Peak compute per chip 123 teraflops (bf16); HBM2 capacity and
  # bandwidth 32 GiB, 900 GBps"; two TensorCores per chip.
  'v3': Chip(
    peak_flops=123e12,
    hbm_bytes=32 * GiB,
    hbm_bandwidth=900e9,
    devices_per_chip=2,
    device_kinds=('TPU v3',),
    shapes=('2x2', '4x4', '4x8', '8x8', '8x16', '16x16', '16x32', '32x32'),
    source='https://cloud.google.com/tpu/docs/v3',
  ),
  # "Peak compute per chip 275 teraflops (bf16 or int8); HBM2 capacity and
  # bandwidth 32 GiB, 1200 GBps".
  'v4': Chip(
    peak_flops=275e12,
    hbm_bytes=32 * GiB,
    hbm_bandwidth=1200e9,
    devices_per_chip=1,
    device_kinds=('TPU v4',),
    shapes=_SHAPES_3D,
    source='https://cloud.google.com/tpu/docs/v4',
  ),
  # "Peak compute per chip (bf16) 197 TFLOPs; HBM2 capacity and bandwidth
  # 16 GB, 819 GBps".
  'v5e': Chip(
    peak_flops=197e12,
    hbm_bytes=16e9,
    hbm_bandwidth=819e9,
    devices_per_chip=1,
    device_kinds=('TPU v5 lite', 'TPU v5e'),
    shapes=_SHAPES_2D,
    source='https://cloud.google.com/tpu/docs/v5e',
  ),
  # "Peak compute per chip (BF16) (TFLOPs) 459; HBM capacity per chip (GiB)
  # 95; HBM2e ... 2765 GBps".
  'v5p': Chip(
    peak_flops=459e12,
    hbm_bytes=95 * GiB,
    hbm_bandwidth=2765e9,
    devices_per_chip=1,
    device_kinds=('TPU v5', 'TPU v5p'),
    shapes=_SHAPES_3D[:2] + _SHAPES_3D[3:] + ('16x16x24',),
    source='https://cloud.google.com/tpu/docs/v5p',
  ),
  # "Peak compute per chip (bf16) 918 TFLOPs; HBM capacity per chip 32 GB;
  # HBM bandwidth per chip 1638 GBps".
  'v6e': Chip(
    peak_flops=918e12,
    hbm_bytes=32e9,
    hbm_bandwidth=1638e9,
    devices_per_chip=1,
    device_kinds=('TPU v6 lite', 'TPU v6e'),
    shapes=_SHAPES_2D,
    source='https://cloud.google.com/tpu/docs/v6e',
  ),
}


def known_topologies() -> List[str]:
  """Every 'CHIP:SHAPE' name `topology_devices` accepts."""
  return [f'{name}:{s}' for name, chip in CHIPS.items() for s in chip.shapes]


def chip_of_device_kind(kind: str) -> Optional[str]:
  """The `CHIPS` key of a `jax.Device.device_kind`, or None (CPU, GPU or
  an unlisted TPU)."""
  for name, chip in CHIPS.items():
    if kind in chip.device_kinds:
      return name
  return None


def per_device(chip: Chip) -> Dict[str, float]:
  """Peak FLOP/s, HBM bytes and HBM bytes/s of one JAX device of `chip`."""
  n = chip.devices_per_chip
  return {
    'peak_flops': chip.peak_flops / n,
    'hbm_bytes': chip.hbm_bytes / n,
    'hbm_bandwidth': chip.hbm_bandwidth / n,
  }


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """The compile-only devices of `num_slices` slices of `topology`.

  Args:
    topology: 'CHIP:SHAPE', e.g. 'v5e:4x4' or 'v5p:4x4x4' (see
      `known_topologies`).
    num_slices: slices joined over the data-centre network (Multislice).

  Raises:
    ValueError: an unknown topology (the message lists the known ones), a
      num_slices below 1, or no `libtpu` (the message names the install).
  """
  if topology not in known_topologies():
    listed = ', '.join(known_topologies())
    raise ValueError(f'topology: expected one of {listed}; got {topology!r}.')
  if isinstance(num_slices, bool) or not isinstance(num_slices, int):
    raise ValueError(
      f'num_slices: expected a positive integer, got {num_slices!r}.'
    )
  if num_slices < 1:
    raise ValueError(
      f'num_slices: expected a positive integer, got {num_slices!r}.'
    )
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  # libtpu takes a machine-wide lock on loading; compiling touches no TPU,
  # so other processes (tests, a second report) may load it too.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  chip = CHIPS[topology.split(':')[0]]
  kwargs = {}
  if chip.devices_per_chip == 1 and topology.count('x') == 2:
    kwargs['chip_config_name'] = 'megacore'  # v4 / v5p: a device per chip
  if num_slices > 1:
    kwargs['num_slices'] = num_slices
  try:
    desc = topologies.get_topology_desc(
      platform='tpu', topology_name=topology, **kwargs
    )
  except RuntimeError as e:
    if 'TPU' in str(e) and 'not installed' in str(e):
      raise ValueError(
        f'topology: compiling for {topology} needs the libtpu wheel (no '
        f'TPU needed); install it with: {LIBTPU_INSTALL}'
      ) from None
    raise
  return list(desc.devices)


# ---------------------------------------------------------------------------
# What the compiled step costs.
# ---------------------------------------------------------------------------

_DTYPE_BYTES = {
  'pred': 1,
  's4': 0.5,
  'u4': 0.5,
  's8': 1,
  'u8': 1,
  's16': 2,
  'u16': 2,
  'f16': 2,
  'bf16': 2,
  's32': 4,
  'u32': 4,
  'f32': 4,
  's64': 8,
  'u64': 8,
  'f64': 8,
  'c64': 8,
  'c128': 16,
}
COLLECTIVES = (
  'all-reduce',
  'all-gather',
  'reduce-scatter',
  'all-to-all',
  'collective-permute',
)
_COLLECTIVE = re.compile(
  r'^\s*(?:ROOT\s+)?\S+\s*=\s*(?P<result>.+?)\s(?P<op>'
  + '|'.join(COLLECTIVES)
  + r')(?P<start>-start)?\('
)
_ARRAY = re.compile(r'\b(f8\w*|[a-z]+\d*)\[([\d,]*)\]')


def _arrays(text: str) -> List[float]:
  """Bytes of each array shape written in `text` ('f32[8,128]{1,0}', a
  tuple of them), in order; f8 types count 1 byte, unknown types 0."""
  out = []
  for dtype, dims in _ARRAY.findall(text):
    size = 1 if dtype.startswith('f8') else _DTYPE_BYTES.get(dtype, 0)
    out.append(size * math.prod(int(d) for d in dims.split(',') if d))
  return out


def collectives(hlo_text: str) -> Dict[str, Dict[str, float]]:
  """The collectives of an HLO module's text, by kind.

  Returns:
    {kind: {'count': n, 'bytes': result bytes per device}} for the kinds
    of `COLLECTIVES` present: what each device holds after the op (the
    gathered array of an all-gather, its shard of a reduce-scatter). An
    asynchronous '-start' / '-done' pair counts once, on its start, whose
    tuple holds the operands, then the results (then scalar contexts). An
    op inside a while loop's body is counted once, however many times the
    loop runs.
  """
  out: Dict[str, Dict[str, float]] = {}
  for line in hlo_text.splitlines():
    m = _COLLECTIVE.match(line)
    if m is None:
      continue
    sizes = _arrays(m.group('result'))
    if m.group('start') and m.group('op') != 'all-reduce':
      sizes = [b for b in sizes if b > 4]  # drop the u32[] contexts
      sizes = sizes[len(sizes) // 2 :]
    entry = out.setdefault(m.group('op'), {'count': 0, 'bytes': 0.0})
    entry['count'] += 1
    entry['bytes'] += float(sum(sizes))
  return out


def while_loops(hlo_text: str) -> int:
  """How many while loops an HLO module's text has."""
  return len(re.findall(r'\swhile\(', hlo_text))


def xla_costs(compiled) -> Dict[str, float]:
  """{'flops', 'bytes_accessed'} per device from XLA's cost analysis
  (a dict in current JAX, a one-element list in older ones)."""
  costs = compiled.cost_analysis()
  if isinstance(costs, (list, tuple)):
    costs = costs[0] if costs else {}
  costs = costs or {}
  return {
    'flops': float(costs.get('flops', 0.0)),
    'bytes_accessed': float(costs.get('bytes accessed', 0.0)),
  }


def _open(jaxpr):
  """The jaxpr with `.eqns` of a jaxpr or closed jaxpr (any JAX version),
  else None."""
  if hasattr(jaxpr, 'eqns'):
    return jaxpr
  inner = getattr(jaxpr, 'jaxpr', None)
  return inner if hasattr(inner, 'eqns') else None


def _sub_jaxprs(params: Dict[str, Any]):
  """The jaxprs among an equation's parameters (bodies, branches, calls)."""
  for value in params.values():
    for v in value if isinstance(value, (list, tuple)) else (value,):
      inner = _open(v)
      if inner is not None:
        yield inner


def jaxpr_matmul_flops(jaxpr) -> float:
  """2 x the multiply-adds of every `dot_general` and convolution of a
  (closed) jaxpr, each loop's body times its trip count.

  A `scan` counts `length` times, a `cond` its costliest branch, a
  `while` (trip count unknown to the jaxpr) once.
  """
  jaxpr = _open(jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      out = eqn.outvars[0].aval.shape
      total += 2.0 * math.prod(out) * math.prod(lhs[i] for i in contract)
    elif name == 'conv_general_dilated':
      rhs_spec = eqn.params['dimension_numbers'].rhs_spec
      kernel = eqn.invars[1].aval.shape
      out = eqn.outvars[0].aval.shape
      per_output = math.prod(kernel[i] for i in rhs_spec[1:])
      total += 2.0 * math.prod(out) * per_output
    else:
      inner = [jaxpr_matmul_flops(j) for j in _sub_jaxprs(eqn.params)]
      if not inner:
        continue
      if name == 'cond':
        total += max(inner)
      else:
        total += sum(inner) * eqn.params.get('length', 1)
  return total


def memory(compiled) -> Dict[str, float]:
  """Per-device bytes of a compiled executable (`memory_analysis`).

  'total' = arguments + outputs - aliased (donated arguments the outputs
  reuse) + temporaries + generated code: what the executable holds in HBM
  at its peak, the input pipeline's buffers aside.
  """
  m = compiled.memory_analysis()
  out = {
    'arguments': float(m.argument_size_in_bytes),
    'outputs': float(m.output_size_in_bytes),
    'aliased': float(m.alias_size_in_bytes),
    'temporaries': float(m.temp_size_in_bytes),
    'generated_code': float(m.generated_code_size_in_bytes),
  }
  out['total'] = (
    out['arguments']
    + out['outputs']
    - out['aliased']
    + out['temporaries']
    + out['generated_code']
  )
  return out


def shard_bytes(tree: Any) -> float:
  """Bytes one device holds of a pytree of sharded `ShapeDtypeStruct`s."""
  total = 0.0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def roofline(
  flops: float, bytes_accessed: float, chip: Chip, batch_size: int
) -> Dict[str, Any]:
  """The roofline lower bound of one step on one device of `chip`.

  Returns:
    'compute_s' (flops / peak FLOP/s), 'memory_s' (bytes / HBM bandwidth),
    'step_s' (the larger), 'bound' ('compute' or 'memory') and
    'examples_per_s' (batch_size / step_s: every device runs the step at
    once on its share of the global batch).
  """
  peak = per_device(chip)
  compute_s = flops / peak['peak_flops']
  memory_s = bytes_accessed / peak['hbm_bandwidth']
  step_s = max(compute_s, memory_s)
  return {
    'compute_s': compute_s,
    'memory_s': memory_s,
    'step_s': step_s,
    'bound': 'compute' if compute_s >= memory_s else 'memory',
    'examples_per_s': batch_size / step_s if step_s > 0 else float('inf'),
  }


# ---------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------


def abstract_batch(
  example_batch: Dict[str, Any], batch_size: int, sharding, eval_mask=False
) -> Dict[str, jax.ShapeDtypeStruct]:
  """`example_batch`'s leaves as [batch_size, ...] `ShapeDtypeStruct`s.

  The task's `example_batch` has the training batch's keys, dtypes and
  per-example shapes. With `eval_mask`, also the engine's float32
  `data.EVAL_MASK` entry of the evaluation batches.
  """
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(
    (batch_size,) + tuple(shape), dtype, sharding=sharding
  )
  out = {
    k: spec(np.shape(v)[1:], np.asarray(v).dtype)
    for k, v in example_batch.items()
  }
  if eval_mask:
    out[data_lib.EVAL_MASK] = spec((), np.float32)
  return out


def compile_costs(jitted, *args) -> Dict[str, Any]:
  """Lowers and compiles `jitted` for `args` (arrays or sharded
  `ShapeDtypeStruct`s); what the executable costs per device.

  Returns:
    'compile_s' (lowering and compiling), 'memory' (`memory`), 'flops' and
    'bytes_accessed' (`xla_costs`), 'matmul_flops' (`jaxpr_matmul_flops`
    over the devices), 'step_flops' (the larger of 'flops' and
    'matmul_flops': XLA counts a while loop's body once, the jaxpr count
    has every trip), 'while_loops' and 'collectives' of the compiled HLO.
  """
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - t0
  text = compiled.as_text()
  num_devices = len(jax.tree.leaves(args)[0].sharding.device_set)
  matmul = jaxpr_matmul_flops(jax.make_jaxpr(jitted)(*args)) / num_devices
  costs = xla_costs(compiled)
  return {
    'compile_s': seconds,
    'memory': memory(compiled),
    **costs,
    'matmul_flops': matmul,
    'step_flops': max(costs['flops'], matmul),
    'while_loops': while_loops(text),
    'collectives': collectives(text),
  }


_OOM_SIZES = re.compile(r'\(([\d.]+)([KMGT])\)')


def hbm_oom(error: Exception) -> Optional[Dict[str, Any]]:
  """The report of a compile that XLA refused for want of HBM, or None for
  any other error.

  The TPU compiler raises RESOURCE_EXHAUSTED ('... required for HLO
  temporaries (66.12G) exceeds available HBM (30.75G)') when the program
  cannot fit; the sizes are read from its message (G = GiB).
  """
  text = str(error)
  if 'RESOURCE_EXHAUSTED' not in text or 'HBM' not in text:
    return None
  line = next(
    (x for x in text.splitlines() if 'HBM' in x), text.splitlines()[0]
  )
  out: Dict[str, Any] = {'fits': False, 'compile_error': line.strip()}
  sizes = [
    float(v) * 1024 ** ' KMGT'.index(unit)
    for v, unit in _OOM_SIZES.findall(line)
  ]
  if len(sizes) >= 2:
    out['required_bytes'], out['available_bytes'] = sizes[:2]
    out['hbm_margin_bytes'] = sizes[1] - sizes[0]
  return out


def compile_report(
  config: ml_collections.ConfigDict,
  task: Task,
  topology: str,
  *,
  num_slices: int = 1,
  eval_step: bool = True,
) -> Dict[str, Any]:
  """Compiles the engine's train (and eval) step for a TPU slice.

  Args:
    config: an experiment config (see `config.base_config`).
    task: the experiment's task; `forward`, `per_example` and
      `example_batch` are used (its data is not).
    topology: 'CHIP:SHAPE' (see `known_topologies`).
    num_slices: slices of `topology` (Multislice).
    eval_step: also compile the engine's evaluation step
      (`evaluation.predict_step`: the forward pass and `task.per_example`,
      the means a held-out evaluator reports) at `config.eval_batch_size`.

  Returns:
    A JSON-ready dict: 'topology', 'devices', 'chip' (its figures and
    source), 'mesh', the config's batch / precision / fsdp / accumulation /
    remat, 'params' and 'state_bytes_per_device' (from the shardings),
    'train' and 'eval' (each: 'compile_s', 'memory' per device, 'flops'
    and 'bytes_accessed' per device, 'matmul_flops' and 'step_flops' per
    device, 'while_loops', 'collectives', 'fits', 'hbm_margin_bytes',
    'roofline'; or, when the compiler refused it for want of HBM,
    'fits': False, 'compile_error' and the sizes it names: `hbm_oom`).

  Raises:
    ValueError: an unknown topology, no libtpu, or a config that does not
      suit the slice (e.g. a batch that the devices do not divide).
  """
  from perceiver.train import loop  # pylint: disable=g-import-not-at-top  (loop uses this module)

  devices = topology_devices(topology, num_slices)
  chip_name = topology.split(':')[0]
  chip = CHIPS[chip_name]
  hosts = len(
    {(getattr(d, 'slice_index', 0), d.process_index) for d in devices}
  )
  checked = config
  if config.eval_batch_size % len(devices):
    # Reported below as a skipped eval step; the training step still
    # compiles (ImageNet's eval batch of 1,000 divides no slice of 16+).
    checked = ml_collections.ConfigDict(config.to_dict())
    checked.eval_batch_size = config.batch_size
  config_lib.validate(checked, device_count=len(devices), process_count=hosts)
  if config.batch_size % len(devices):
    raise ValueError(
      f'batch_size: expected a multiple of the {len(devices)} devices of '
      f'{num_slices} x {topology}, got {config.batch_size}.'
    )
  mesh = mesh_lib.make_mesh(config.fsdp, devices)
  steps = loop.jit_steps(config, task, mesh)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  train_batch = abstract_batch(
    task.example_batch, config.batch_size, batch_sharding
  )
  report: Dict[str, Any] = {
    'topology': topology,
    'num_slices': num_slices,
    'devices': len(devices),
    'device_kind': devices[0].device_kind,
    'chip': {chip_name: dict(chip._asdict(), per_device=per_device(chip))},
    'mesh': dict(mesh.shape),
    'batch_size': config.batch_size,
    'precision': config.precision,
    'fsdp': config.fsdp,
    'accumulation_steps': config.accumulation_steps,
    'remat': bool(config.get('model', {}).get('remat', False)),
    'params': int(
      sum(math.prod(x.shape) for x in jax.tree.leaves(steps.abstract.params))
    ),
    'state_bytes_per_device': {
      'params': shard_bytes(steps.abstract.params),
      'opt_state': shard_bytes(steps.abstract.opt_state),
      'model_state': shard_bytes(steps.abstract.state),
    },
  }
  parts = {'train': (steps.train_step, (steps.abstract, train_batch))}
  if eval_step:
    eval_batch = abstract_batch(
      task.example_batch,
      config.eval_batch_size,
      batch_sharding,
      eval_mask=True,
    )
    abstract, shardings = steps.abstract, steps.shardings
    evaluate = jax.jit(
      evaluation.predict_step(task.forward, task.per_example, config.precision),
      in_shardings=(shardings.params, shardings.state, batch_sharding),
      out_shardings=batch_sharding,
    )
    parts['eval'] = (evaluate, (abstract.params, abstract.state, eval_batch))
  hbm = per_device(chip)['hbm_bytes']
  for name, (jitted, args) in parts.items():
    if name == 'eval' and config.eval_batch_size % len(devices):
      report['eval'] = {
        'skipped': f'eval_batch_size {config.eval_batch_size} is not a '
        f'multiple of the {len(devices)} devices'
      }
      continue
    try:
      part = compile_costs(jitted, *args)
    except Exception as e:  # pylint: disable=broad-except
      part = hbm_oom(e)
      if part is None:
        raise
      report[name] = part
      continue
    batch = config.batch_size if name == 'train' else config.eval_batch_size
    part['roofline'] = roofline(
      part['step_flops'], part['bytes_accessed'], chip, batch
    )
    part['fits'] = part['memory']['total'] <= hbm
    part['hbm_margin_bytes'] = hbm - part['memory']['total']
    report[name] = part
  return report


def _gib(x: float) -> str:
  """Bytes in GiB, or MiB below 1 GiB."""
  if abs(x) < GiB:
    return f'{x / 2**20:.1f} MiB'
  return f'{x / GiB:.2f} GiB'


def format_report(report: Dict[str, Any]) -> str:
  """A few lines of `compile_report`'s result for the terminal."""
  ((chip_name, chip),) = report['chip'].items()
  hbm = chip['per_device']['hbm_bytes']
  lines = [
    f'{report["num_slices"]} x {report["topology"]}: {report["devices"]} '
    f'devices ({report["device_kind"]}), mesh {report["mesh"]}; '
    f'{report["params"] / 1e6:.1f}M parameters, global batch '
    f'{report["batch_size"]}, {report["precision"]}, fsdp '
    f'{report["fsdp"]}, accumulation {report["accumulation_steps"]}, '
    f'remat {report["remat"]}.'
  ]
  for name in ('train', 'eval'):
    part = report.get(name)
    if part is None:
      continue
    if 'skipped' in part:
      lines.append(f'{name}: not compiled ({part["skipped"]}).')
      continue
    if 'compile_error' in part:
      lines.append(
        f'{name} step DOES NOT FIT: the compiler refused it: '
        f'{part["compile_error"]}'
      )
      continue
    m, r = part['memory'], part['roofline']
    verdict = 'fits' if part['fits'] else 'DOES NOT FIT'
    lines.append(
      f'{name} step ({part["compile_s"]:.1f} s to compile), per device: '
      f'{_gib(m["total"])} of {_gib(hbm)} HBM, {verdict} (margin '
      f'{_gib(part["hbm_margin_bytes"])}; arguments {_gib(m["arguments"])}, '
      f'outputs {_gib(m["outputs"])}, aliased {_gib(m["aliased"])}, '
      f'temporaries {_gib(m["temporaries"])}).'
    )
    comms = ', '.join(
      f'{k} x{int(v["count"])} {_gib(v["bytes"])}'
      for k, v in sorted(part['collectives'].items())
    )
    loops = ''
    if part['while_loops']:
      loops = (
        f' ({part["while_loops"]} while loop(s): XLA counts each body once)'
      )
    lines.append(
      f'  {part["flops"] / 1e9:.3f} GFLOP (XLA){loops}, matmuls '
      f'{part["matmul_flops"] / 1e9:.3f} GFLOP, '
      f'{_gib(part["bytes_accessed"])} accessed; collectives: '
      f'{comms or "none"}.'
    )
    lines.append(
      f'  roofline ({chip_name}): step >= {r["step_s"] * 1e3:.2f} ms '
      f'({r["bound"]}-bound: compute {r["compute_s"] * 1e3:.2f} ms, memory '
      f'{r["memory_s"] * 1e3:.2f} ms), at most '
      f'{r["examples_per_s"]:.0f} examples/s.'
    )
  return '\n'.join(lines)


def write_report(report: Dict[str, Any], path: str) -> None:
  with open(path, 'w') as f:
    json.dump(report, f, indent=2, sort_keys=True)
    f.write('\n')
