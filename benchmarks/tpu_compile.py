"""Every paper configuration compiled for real TPU slices: which fits where.

  python -m benchmarks.tpu_compile                       # all, all chips
  python -m benchmarks.tpu_compile --only=mlm --chips=v5p
  python -m benchmarks.tpu_compile --chips= --set=precision=bfloat16 \
      --out=docs/bench/tpu_compile_bfloat16.md     # Table 8 alone

For each configuration of `CONFIGS` (the paper's batch sizes: ImageNet's
three architectures at 1,024, MLM at 2,048, optical flow at 512, video
autoencoding at 1,024, AudioSet at 512) and each chip of `--chips`, the
engine's real training step (`perceiver.train.aot.compile_report`: the
experiment's `compile_task`, the config's precision, FSDP, remat and
accumulation, the trainer's shardings) is compiled ahead of time for the
chip's single-slice shapes in increasing size, until one fits its HBM;
shapes whose device count does not divide the batch are skipped, and so are
shapes that a cached out-of-memory compile of the same configuration rules
out (`predicted_oom`). A
configuration that fits no shape up to `--max_devices` is reported as such
(a finding: it needs FSDP, remat or accumulation; rerun with
`--set=fsdp=True` or `--set=accumulation_steps=4` to check). Beside it, the
ImageNet models on 64 TPU v3 chips (v3:8x8, 128 TensorCores), the machine
of the paper's Table 8 (train steps/s), against their roofline bound.

Each compile's summary is kept in `--cache` (JSON, keyed by configuration,
overrides and topology), so an interrupted run resumes; the Markdown table
goes to `--out`. Needs the `libtpu` wheel (requirements-test.txt; no TPU).
"""

import argparse
import importlib
import json
import math
import os
import re
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax

from perceiver.train import aot

# name -> (experiment module, variant).
CONFIGS: Dict[str, Tuple[str, str]] = {
  'imagenet_fourier': ('imagenet', 'fourier'),
  'imagenet_conv': ('imagenet', 'conv'),
  'imagenet_learned': ('imagenet', 'learned'),
  'mlm': ('mlm', ''),
  'flow': ('flow', ''),
  'video_autoencoding': ('video_autoencoding', ''),
  'audioset': ('audioset', ''),
}
# Column order; v5p first: its large HBM finds each configuration's need in
# the fewest compiles, which then prunes the smaller chips' searches.
CHIPS = ('v5p', 'v6e', 'v4', 'v5e')
# Paper Table 8: ImageNet train steps/s on 64 TPUv3 (Perceiver IO rows).
TABLE_8 = {
  'imagenet_fourier': 4.85,
  'imagenet_conv': 5.58,
  'imagenet_learned': 4.14,
}
# 64 v3 chips: on v3:4x8 (32 chips, 64 TensorCores) the paper's rates are
# 1.8-2.2x the roofline bound (docs/bench/README.md), so its 64 are chips.
TABLE_8_TOPOLOGY = 'v3:8x8'
DEFAULT_CACHE = os.path.join('docs', 'bench', 'tpu_compile.json')
DEFAULT_OUT = os.path.join('docs', 'bench', 'tpu_compile.md')


def _value(text: str) -> Any:
  """A --set value: JSON where it parses (numbers, true/false), else text."""
  try:
    return json.loads(text.lower() if text in ('True', 'False') else text)
  except json.JSONDecodeError:
    return text


def load_config(name: str, overrides: Dict[str, Any]):
  """(the experiment module, the config of CONFIGS[name] with overrides)."""
  if name not in CONFIGS:
    raise ValueError(
      f'--only: expected names among {sorted(CONFIGS)}, got {name!r}.'
    )
  module, variant = CONFIGS[name]
  experiment = importlib.import_module(f'experiments.{module}')
  config = experiment.get_config(variant).unlock()
  for key, value in overrides.items():
    *path, last = key.split('.')
    section = config
    for part in path:
      section = section[part]
    if last not in section:
      raise ValueError(f'--set: {key!r} is not a field of the {name} config.')
    section[last] = value
  return experiment, config


def _chips(topology: str) -> int:
  """The chips of a 'NAME:AxB[xC]' topology."""
  return math.prod(int(n) for n in topology.split(':')[1].split('x'))


def shapes_by_size(chip: str) -> List[str]:
  """The chip's known single-slice topologies, fewest chips first."""
  topologies = [t for t in aot.known_topologies() if t.split(':')[0] == chip]
  return sorted(topologies, key=_chips)


def summarize(report: Dict[str, Any]) -> Dict[str, Any]:
  """The few figures of a compile report that the table shows."""
  train = report['train']
  out = dict(
    topology=report['topology'],
    devices=report['devices'],
    batch_size=report['batch_size'],
    params=report['params'],
    fits=bool(train['fits']),
  )
  if 'compile_error' in train:
    out['error'] = train['compile_error'][:300]
    return out
  roof = train['roofline']
  out.update(
    memory=train['memory']['total'],
    hbm=report['chip'][report['topology'].split(':')[0]]['per_device'][
      'hbm_bytes'
    ],
    step_flops=train['step_flops'],
    roofline_s=roof['step_s'],
    compute_s=roof['compute_s'],
    memory_s=roof['memory_s'],
    examples_per_s=roof['examples_per_s'],
    compile_s=train['compile_s'],
  )
  return out


def compile_one(
  name: str, overrides: Dict[str, Any], topology: str, cache: Dict[str, Any]
) -> Optional[Dict[str, Any]]:
  """The summary of one compile (from `cache` when there), or None when the
  slice's device count does not divide the batch."""
  key = json.dumps([name, overrides, topology], sort_keys=True)
  if key in cache:
    return cache[key]
  experiment, config = load_config(name, overrides)
  try:
    devices = len(aot.topology_devices(topology))
  except jax.errors.JaxRuntimeError as e:  # e.g. v5e:1x1 on some libtpus
    print(f'{topology}: skipped, libtpu cannot lay it out ({e})', flush=True)
    return None
  if config.batch_size % devices:
    return None
  task = experiment.compile_task(config)
  started = time.time()
  report = aot.compile_report(
    task.config or config, task, topology, eval_step=False
  )
  summary = summarize(report)
  summary['wall_s'] = time.time() - started
  cache[key] = summary
  return summary


# XLA's compile-time HBM check: "... the total memory required for HLO
# temporaries (143.91G) exceeds available HBM (95.73G) ...".
_OOM = re.compile(
  r'temporaries \(([0-9.]+)([MGT])\) exceeds available HBM '
  r'\(([0-9.]+)([MGT])\)'
)
_UNIT = {'M': 1e-3, 'G': 1.0, 'T': 1e3}
# How far over the HBM a scaled estimate must be to skip compiling (see
# `predicted_oom`).
OOM_MARGIN = 1.5


def predicted_oom(
  name: str,
  overrides: Dict[str, Any],
  topology: str,
  cache: Dict[str, Any],
) -> Optional[str]:
  """Why `name` cannot fit `topology`, judged from cached compiles, or None.

  A data-parallel step's temporaries hold the per-device share of the
  batch's activations plus buffers that do not shrink with more devices, so
  a cached compile that needed T temporaries on D devices needs about
  T * D / D' on D' devices. XLA's fusion and rematerialisation choices
  change with the shapes, so the scaling is not exact: video autoencoding's
  total fell 4.8x from 8 to 32 v5p devices. A shape is skipped only when
  the estimate exceeds `OOM_MARGIN` times the available HBM of
  `topology`'s devices (the failed compile's available HBM scaled by the
  ratio of the two chips' per-device HBM).
  """
  chip = aot.CHIPS[topology.split(':')[0]]
  devices = _chips(topology) * chip.devices_per_chip
  for key, summary in cache.items():
    cached_name, cached_overrides, cached_topology = json.loads(key)
    match = _OOM.search(summary.get('error', ''))
    if cached_name != name or cached_overrides != overrides or not match:
      continue
    cached_chip = aot.CHIPS[cached_topology.split(':')[0]]
    required, unit, hbm, hbm_unit = match.groups()
    need = float(required) * _UNIT[unit] * summary['devices'] / devices
    available = (
      float(hbm)
      * _UNIT[hbm_unit]
      * aot.per_device(chip)['hbm_bytes']
      / aot.per_device(cached_chip)['hbm_bytes']
    )
    if need > OOM_MARGIN * available:
      return (
        f'needs ~{need:.1f}G of temporaries per device (from '
        f'{required}{unit} on {cached_topology}), over {OOM_MARGIN} x '
        f'{available:.1f}G available'
      )
  return None


def smallest_fit(
  name: str,
  overrides: Dict[str, Any],
  chip: str,
  cache: Dict[str, Any],
  max_devices: int,
  save,
) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]:
  """(the first shape of `chip` that fits, every summary tried)."""
  tried = []
  for topology in shapes_by_size(chip):
    if _chips(topology) * aot.CHIPS[chip].devices_per_chip > max_devices:
      break
    key = json.dumps([name, overrides, topology], sort_keys=True)
    reason = (
      None if key in cache else predicted_oom(name, overrides, topology, cache)
    )
    if reason is not None:
      print(f'{name} {topology}: skipped, {reason}', flush=True)
      tried.append(dict(topology=topology, fits=False, skipped=reason))
      continue
    summary = compile_one(name, overrides, topology, cache)
    if summary is None:
      continue
    save()
    tried.append(summary)
    print(_line(name, chip, summary), flush=True)
    if summary['fits']:
      return summary, tried
  return None, tried


def _gib(x: float) -> str:
  return f'{x / 2**30:.1f}'


def _line(name: str, chip: str, s: Dict[str, Any]) -> str:
  if 'error' in s:
    return f'{name} {s["topology"]}: does not fit ({s["error"][:120]})'
  return (
    f'{name} {s["topology"]}: {_gib(s["memory"])} / {_gib(s["hbm"])} GiB, '
    f'{s["step_flops"] / 1e12:.2f} TFLOP per device, roofline '
    f'{1e3 * s["roofline_s"]:.1f} ms ({s["examples_per_s"]:.0f} examples/s), '
    f'compiled in {s["compile_s"]:.0f} s'
  )


def table(rows: Sequence[Tuple[str, str, Optional[Dict[str, Any]], list]]):
  """Markdown: one row per (configuration, chip)."""
  lines = [
    '| configuration | batch | chip | smallest slice that fits | per-device'
    ' memory / HBM (GiB) | TFLOP per step per device | roofline step'
    ' (ms) | roofline examples/s | compile (s) |',
    '|---|---|---|---|---|---|---|---|---|',
  ]
  for name, chip, fit, tried in rows:
    if fit is None:
      largest = tried[-1]['topology'] if tried else 'none tried'
      lines.append(f'| {name} | | {chip} | none up to {largest} | | | | | |')
      continue
    lines.append(
      f'| {name} | {fit["batch_size"]} | {chip} | {fit["topology"]} '
      f'({fit["devices"]} devices) | {_gib(fit["memory"])} / '
      f'{_gib(fit["hbm"])} | {fit["step_flops"] / 1e12:.2f} | '
      f'{1e3 * fit["roofline_s"]:.1f} | {fit["examples_per_s"]:.0f} | '
      f'{fit["compile_s"]:.0f} |'
    )
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--only', default=','.join(CONFIGS))
  parser.add_argument('--chips', default=','.join(CHIPS))
  parser.add_argument('--set', action='append', default=[], metavar='K=V')
  parser.add_argument('--max_devices', type=int, default=256)
  parser.add_argument(
    '--table_8', action=argparse.BooleanOptionalAction, default=True
  )
  parser.add_argument('--cache', default=DEFAULT_CACHE)
  parser.add_argument('--out', default=DEFAULT_OUT)
  args = parser.parse_args(argv)
  overrides = {}
  for item in args.set:
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'--set: expected KEY=VALUE, got {item!r}.')
    overrides[key] = _value(value)
  # `--chips=` (none): Table 8 alone.
  chips = [chip for chip in args.chips.split(',') if chip]
  for chip in chips:
    if chip not in aot.CHIPS:
      raise ValueError(
        f'--chips: expected chips among {sorted(aot.CHIPS)}, got {chip!r}.'
      )
  cache = {}
  if os.path.exists(args.cache):
    with open(args.cache) as f:
      cache = json.load(f)

  def save():
    os.makedirs(os.path.dirname(args.cache) or '.', exist_ok=True)
    with open(args.cache, 'w') as f:
      json.dump(cache, f, indent=1, sort_keys=True)

  rows = []
  names = args.only.split(',')
  # Chip by chip, so that an interrupted run leaves whole columns, and each
  # chip's out-of-memory compiles prune the next chips' searches.
  for chip in chips:
    for name in names:
      fit, tried = smallest_fit(
        name, overrides, chip, cache, args.max_devices, save
      )
      rows.append((name, chip, fit, tried))
  rows.sort(key=lambda row: names.index(row[0]))
  text = [table(rows)] if rows else []
  if args.table_8:
    lines = [
      '| configuration | paper steps/s (Table 8, 64 TPUv3) | roofline'
      f' steps/s ({TABLE_8_TOPOLOGY}) | paper / roofline | FLOP / memory'
      ' part of the bound (ms) |',
      '|---|---|---|---|---|',
    ]
    for name in names:
      if name not in TABLE_8:
        continue
      s = compile_one(name, overrides, TABLE_8_TOPOLOGY, cache)
      save()
      if s is not None:
        print(_line(name, 'v3', s), flush=True)
      if s is None or 'error' in s:
        lines.append(f'| {name} | {TABLE_8[name]} | does not fit | | |')
        continue
      bound = 1.0 / s['roofline_s']
      lines.append(
        f'| {name} | {TABLE_8[name]} | {bound:.2f} | '
        f'{TABLE_8[name] / bound:.0%} | {1e3 * s["compute_s"]:.0f} / '
        f'{1e3 * s["memory_s"]:.0f} |'
      )
    text.append('\n'.join(lines))
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  with open(args.out, 'w') as f:
    f.write('\n\n'.join(text) + '\n')
  print('\n\n'.join(text))


if __name__ == '__main__':
  main()
