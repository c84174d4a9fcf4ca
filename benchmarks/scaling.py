"""Cost linear in input and output size: time and memory against M and O.

  python -m benchmarks.scaling --out=bench_out/scaling --max_log2=22
  python -m benchmarks.scaling --out=/tmp/scaling --max_log2=8 --min_log2=5 \
      --latents=8 --width=16 --input_channels=4 --scaling_repeats=1

Forward time and peak memory of a small Perceiver (`--latents` x `--width`,
one cross-attention and two self-attentions, 'chunked' attention, chunked
decoding) for M = 2^min_log2 .. 2^max_log2 inputs (O fixed at 2^min_log2)
and O outputs likewise (M fixed), with log-log slopes fitted by least
squares; and a Transformer encoder of the same width and depth (three
self-attention layers, 'reference' attention) on the same M inputs, until it
needs more than `--mem_budget_gb` (XLA's memory analysis) or the timeout.
Finally the Perceiver with M = O = 2^max_log2 (Perceiver IO, Sec. 2: the
cost is linear in M and in O, quadratic in neither).

Every point runs in a fresh process (benchmarks/common.py) under
`--timeout`; one that runs out of memory or time is recorded as 'OOM' or
'timeout' and the sweep goes on (the Transformer stops at its first
failure). The JAX matmul peak is measured first, for the report's header.
Writes `<out>/results.json`, `<out>/results.md`, `<out>/scaling_time.png`
and `<out>/scaling_memory.png` after every point; `--report_only` re-renders
the last three from results.json.

Shapes: B batch, M inputs, N latents, O outputs, C channels.
"""

import argparse
import functools
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from benchmarks import common

MODULE = 'benchmarks.scaling'
GB = common.GB


# ---------------------------------------------------------------------------
# The models and one measurement (inside a worker process).
# ---------------------------------------------------------------------------


def scaling_perceiver(
  num_outputs: int, *, latents: int, width: int, decode_chunk: int
):
  """A Perceiver: [B, M, C] inputs -> [B, O, 1] outputs at Fourier queries."""
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import perceiver as P  # pylint: disable=g-import-not-at-top

  def forward(x_BMC):
    encoder = P.PerceiverEncoder(
      num_self_attends_per_block=2,
      num_blocks=1,
      z_index_dim=latents,
      num_z_channels=width,
      num_cross_attend_heads=1,
      num_self_attend_heads=8,
      attention_impl='chunked',
    )
    decoder = P.BasicDecoder(
      output_num_channels=1,
      position_encoding_type='fourier',
      output_index_dims=(num_outputs,),
      qk_channels=64,
      v_channels=64,
      fourier_position_encoding_kwargs=dict(
        num_bands=16,
        max_resolution=(num_outputs,),
        sine_only=False,
        concat_pos=True,
      ),
    )
    return P.Perceiver(encoder=encoder, decoder=decoder)(
      x_BMC, is_training=False, decode_chunk_size=min(num_outputs, decode_chunk)
    )  # [B, O, 1]

  return hk.transform(forward)


def scaling_transformer(*, width: int):
  """Three self-attention layers of `width` on all M inputs: [B, M, 1]."""
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import perceiver as P  # pylint: disable=g-import-not-at-top

  def forward(x_BMC):
    h_BMC = hk.Linear(width)(x_BMC)
    for _ in range(3):
      h_BMC = P.SelfAttention(
        widening_factor=1, num_heads=8, attention_impl='reference'
      )(h_BMC, is_training=False)
    return hk.Linear(1)(h_BMC)

  return hk.transform(forward)


def run_scaling(spec: Dict[str, Any]) -> Dict[str, Any]:
  """Forward time and memory of one scaling point; see `scaling_specs`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  jnp.zeros(1).block_until_ready()
  baseline = common.peak_rss_bytes()
  m, o, c = spec['M'], spec['O'], spec['input_channels']
  if spec['model'] == 'perceiver':
    make = functools.partial(
      scaling_perceiver,
      latents=spec['latents'],
      width=spec['width'],
      decode_chunk=spec['decode_chunk'],
    )
    # Parameters do not depend on M or O: initialise at a small size.
    params = jax.jit(make(16).init)(
      jax.random.PRNGKey(0), jnp.zeros((1, 16, c))
    )
    model = make(o)
  else:
    model = scaling_transformer(width=spec['width'])
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, c)))
  x = jax.jit(lambda k: jax.random.normal(k, (1, m, c)))(jax.random.PRNGKey(1))
  x.block_until_ready()
  # Memory the model needs on top of its parameters and inputs: the peak
  # from here on (generating the inputs took more than the inputs).
  with_inputs = (
    common.proc_status_bytes('VmRSS') if common.reset_peak_rss() else None
  )
  rec = common.compile_and_time(
    lambda p, x: model.apply(p, None, x),
    (params, x),
    warmup=spec['warmup'],
    repeats=spec['repeats'],
    mem_budget=spec.get('mem_budget'),
  )
  outputs = rec.pop('last_outputs', None)
  rec['input_bytes'] = int(x.nbytes)
  if outputs is not None:
    rec['output_bytes'] = int(outputs.nbytes)
  rec['peak_rss_bytes'] = common.peak_rss_bytes()
  rec['peak_mem_bytes'] = rec['peak_rss_bytes'] - baseline
  if with_inputs is not None:
    rec['model_mem_bytes'] = common.proc_status_bytes('VmHWM') - with_inputs
  return rec


# ---------------------------------------------------------------------------
# The sweep: one process per point.
# ---------------------------------------------------------------------------


def scaling_specs(
  config: Dict[str, Any], *, mem_budget: float
) -> List[Dict[str, Any]]:
  """The points of the run's `config` (see `main`): the Perceiver's M sweep
  and O sweep, the Transformer's M sweep, then the Perceiver at M = O max."""
  lo, hi, step = config['min_log2'], config['max_log2'], config['log2_step']
  sizes = [2**k for k in range(lo, hi + 1, step)]
  if sizes[-1] != 2**hi:
    sizes.append(2**hi)
  base = dict(
    kind='scaling',
    latents=config['latents'],
    width=config['width'],
    input_channels=config['input_channels'],
    decode_chunk=config['decode_chunk'],
    warmup=1,
    repeats=config['scaling_repeats'],
    mem_budget=mem_budget,
  )
  specs = [
    dict(base, sweep='M', model='perceiver', M=m, O=2**lo) for m in sizes
  ]
  specs += [
    dict(base, sweep='O', model='perceiver', M=2**lo, O=o) for o in sizes
  ]
  specs += [
    dict(base, sweep='M', model='transformer', M=2**k, O=2**k)
    for k in range(lo, hi + 1, config['transformer_log2_step'])
  ]
  specs.append(dict(base, sweep='M=O', model='perceiver', M=2**hi, O=2**hi))
  return specs


def run_sweep(
  config: Dict[str, Any],
  *,
  mem_budget: float,
  records: List[Dict[str, Any]],
  save,
) -> None:
  """Appends the records of `scaling_specs` to `records`, calling `save()`
  after each; the Transformer's points after its first failure are
  'skipped'."""
  transformer_failed = False
  for spec in scaling_specs(config, mem_budget=mem_budget):
    label = f'{spec["model"]} {spec["sweep"]} M={spec["M"]} O={spec["O"]}'
    if spec['model'] == 'transformer' and transformer_failed:
      rec = dict(status='skipped', reason='a smaller M already failed')
    else:
      rec = common.spawn(MODULE, spec, config['timeout'])
      transformer_failed |= (
        spec['model'] == 'transformer' and rec.get('status') != 'ok'
      )
    records.append(dict(common.public(spec), **rec))
    save()
    common.log(f'{label}: {common.brief(rec)}')


def _curves(records):
  """{(model, sweep): [records ok, sorted by size]} of the scaling run."""
  curves = {}
  for rec in records:
    if rec['sweep'] == 'M=O':
      continue
    key = (rec['model'], rec['sweep'])
    curves.setdefault(key, [])
    if rec.get('status') == 'ok':
      curves[key].append(rec)
  for key, recs in curves.items():
    recs.sort(key=lambda r: r[key[1]])
  return curves


def scaling_slopes(records) -> Dict[str, Dict[str, Any]]:
  """Fitted log-log slopes per curve: over all points and the upper half."""
  out = {}
  for (model, sweep), recs in _curves(records).items():
    sizes = [r[sweep] for r in recs]
    top = recs[len(recs) // 2 :]
    top_sizes = [r[sweep] for r in top]
    entry = dict(points=len(recs))
    for what, key in (('time', 'median_s'), ('memory', 'peak_mem_bytes')):
      entry[f'{what}_slope'] = common.fit_slope(
        sizes, [r.get(key) for r in recs]
      )
      entry[f'{what}_slope_upper_half'] = common.fit_slope(
        top_sizes, [r.get(key) for r in top]
      )
    if model == 'perceiver' and all('model_mem_bytes' in r for r in top):
      entry['model_memory_slope_upper_half'] = common.fit_slope(
        top_sizes, [r['model_mem_bytes'] for r in top]
      )
    out[f'{model} vs {sweep}'] = entry
  return out


def plot_scaling(records, out_dir: str) -> List[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  paths = []
  styles = {
    ('perceiver', 'M'): ('Perceiver, M inputs (O fixed)', 'o-'),
    ('perceiver', 'O'): ('Perceiver, O outputs (M fixed)', 's-'),
    ('transformer', 'M'): ('Transformer encoder, M inputs', '^--'),
  }
  for what, key, unit, scale in (
    ('time', 'median_s', 's', 1.0),
    ('memory', 'peak_mem_bytes', 'GiB', GB),
  ):
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    firsts, top = [], 0.0
    for curve, recs in sorted(_curves(records).items()):
      label, style = styles[curve]
      xs = [r[curve[1]] for r in recs if r.get(key)]
      ys = [r[key] / scale for r in recs if r.get(key)]
      if xs:
        ax.plot(xs, ys, style, label=label)
        firsts.append((xs[0], ys[0]))
        top = max(top, max(ys))
    both = [
      r
      for r in records
      if r['sweep'] == 'M=O' and r.get(key) and r.get('status') == 'ok'
    ]
    for r in both:
      ax.plot(
        [r['M']],
        [r[key] / scale],
        '*',
        markersize=12,
        label=f'Perceiver, M = O = 2^{int(np.log2(r["M"]))}',
      )
      top = max(top, r[key] / scale)
    if what == 'memory':
      inputs = sorted(
        (r['M'], r['input_bytes'] / scale)
        for r in records
        if r['model'] == 'perceiver'
        and r['sweep'] == 'M'
        and r.get('input_bytes')
      )
      if inputs:
        ax.plot(
          *zip(*inputs),
          ':',
          color='C0',
          alpha=0.6,
          label='the inputs themselves (M sweep)',
        )
      # Configurations not run: XLA's estimate of what they would need.
      oom = [
        (r['M'], r['xla_memory']['total_bytes'] / scale)
        for r in records
        if r.get('status') == 'OOM'
        and (r.get('xla_memory') or {}).get('total_bytes')
      ]
      if oom:
        ax.plot(
          *zip(*oom),
          'x',
          color='C2',
          markersize=9,
          label='Transformer: XLA estimate, over budget (not run)',
        )
        top = max(top, max(y for _, y in oom))
    if firsts:  # Reference slopes 1 and 2 from the lowest first point,
      x0, y0 = min(firsts, key=lambda p: p[1])  # up to the highest point.
      x_max = max(max(r['M'], r['O']) for r in records)
      for n, style in ((1, ':'), (2, '-.')):
        x1 = min(x_max, x0 * (top / y0) ** (1.0 / n))
        xs = np.array([x0, x1])
        ax.plot(
          xs,
          y0 * (xs / x0) ** n,
          style,
          color='gray',
          linewidth=0.8,
          label=f'slope {n}',
        )
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xlabel('M inputs or O outputs')
    ax.set_ylabel(f'forward {what} ({unit})')
    ax.set_title(f'Forward {what} vs problem size (log-log)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, f'scaling_{what}.png')
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
  return paths


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------


def markdown(results: Dict[str, Any]) -> str:
  """results.md: the header (benchmarks/common.py), the table of points,
  the fitted slopes and the plots."""
  lines = common.report_header(results)
  scaling, cfg = results['scaling'], results['config']
  lines += [
    '## Scaling',
    '',
    f'Forward pass, batch 1, float32. Perceiver: {cfg["latents"]} latents '
    f'x {cfg["width"]} channels, {cfg["input_channels"]}-channel inputs, '
    "1 cross-attention ('chunked') + 2 self-attentions (8 heads), "
    'Fourier-query decoder (qk/v 64) with decode_chunk_size '
    f'{cfg["decode_chunk"]}, 1 output channel. Transformer: a linear '
    f'embedding to {cfg["width"]}, 3 self-attention layers (8 heads, '
    "'reference' attention), on all M inputs. Peak mem: peak RSS minus "
    'RSS after JAX started (includes generating the inputs and '
    'compiling). Model mem: peak RSS while compiling and running minus '
    'the RSS once parameters and inputs existed, i.e. the memory the '
    'model needs beyond its inputs (Linux: the peak is reset through '
    '/proc/self/clear_refs).',
    '',
    '| model | M | O | ms | compile s | peak mem GiB | model mem GiB | '
    'inputs GiB | XLA GiB |',
    '|' + '---|' * 9,
  ]
  for r in scaling['records']:
    ok = r.get('status') == 'ok'
    lines.append(
      '| '
      + ' | '.join(
        [
          r['model'],
          f'2^{int(np.log2(r["M"]))}',
          f'2^{int(np.log2(r["O"]))}',
          common.ms(r) if ok else f'{r.get("status")}',
          common.fmt(r.get('compile_s'), '.1f'),
          common.fmt(r.get('peak_mem_bytes') if ok else None, '.2f', GB),
          common.fmt(r.get('model_mem_bytes') if ok else None, '.3f', GB),
          common.fmt(r.get('input_bytes'), '.3f', GB),
          common.fmt((r.get('xla_memory') or {}).get('total_bytes'), '.2f', GB),
        ]
      )
      + ' |'
    )
  lines += [
    '',
    'Fitted log-log slopes (all points; upper half of the points):',
    '',
  ]
  for curve, s in scaling['slopes'].items():
    two = {k: common.fmt(v, '.2f') for k, v in s.items() if k != 'points'}
    line = (
      f'- {curve} ({s["points"]} points): time {two["time_slope"]}; '
      f'{two["time_slope_upper_half"]}, memory '
      f'{two["memory_slope"]}; {two["memory_slope_upper_half"]}'
    )
    if 'model_memory_slope_upper_half' in s:
      line += (
        '; model memory beyond the inputs (upper half) '
        f'{two["model_memory_slope_upper_half"]}'
      )
    lines.append(line)
  notes = [
    f'{r["model"]} M={r["M"]} O={r["O"]}: {r.get("status")} '
    f'({r.get("reason", "")})'
    for r in scaling['records']
    if r.get('status') != 'ok'
  ]
  lines += (
    ['']
    + [f'- {n}' for n in notes]
    + ['', '![time](scaling_time.png) ![memory](scaling_memory.png)', '']
  )
  return '\n'.join(lines)


def write_report(results: Dict[str, Any], out_dir: str) -> None:
  """results.json, results.md and (with points) the two plots."""
  common.write_json(os.path.join(out_dir, 'results.json'), results)
  with open(os.path.join(out_dir, 'results.md'), 'w') as f:
    f.write(markdown(results))
  if results['scaling']['records']:
    plot_scaling(results['scaling']['records'], out_dir)


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
  p = common.new_parser(MODULE, __doc__)
  p.add_argument(
    '--min_log2', type=int, default=10, help='Smallest M, O: 2^min_log2.'
  )
  p.add_argument(
    '--max_log2', type=int, default=22, help='Largest M, O: 2^max_log2.'
  )
  p.add_argument('--log2_step', type=int, default=1, help='Step of log2 M, O.')
  p.add_argument(
    '--transformer_log2_step',
    type=int,
    default=1,
    help='Step of log2 M of the Transformer baseline (it stops at its first '
    'failure).',
  )
  p.add_argument(
    '--latents', type=int, default=256, help='Perceiver: latents N.'
  )
  p.add_argument(
    '--width', type=int, default=256, help='Latent width (both models).'
  )
  p.add_argument(
    '--input_channels', type=int, default=32, help='Input channels C.'
  )
  p.add_argument(
    '--decode_chunk',
    type=int,
    default=16384,
    help='Perceiver: decode_chunk_size.',
  )
  p.add_argument(
    '--scaling_repeats',
    type=int,
    default=3,
    help='Timed calls per point (median).',
  )
  common.add_report_flags(p, row='point')
  return p


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parser().parse_args(argv)
  if args.worker:
    common.run_worker(
      args.worker, dict(scaling=run_scaling, matmul=common.matmul_record)
    )
    return
  os.makedirs(args.out, exist_ok=True)
  if args.report_only:
    with open(os.path.join(args.out, 'results.json')) as f:
      results = json.load(f)
    results['scaling']['slopes'] = scaling_slopes(results['scaling']['records'])
    write_report(results, args.out)
    common.log(f'rewrote {args.out}/results.md from results.json')
    return
  if not args.min_log2 <= args.max_log2:
    raise ValueError(
      f'--min_log2, --max_log2: expected min <= max, got {args.min_log2} '
      f'and {args.max_log2}.'
    )
  for name in ('log2_step', 'transformer_log2_step'):
    if getattr(args, name) < 1:
      raise ValueError(
        f'--{name}: expected at least 1, got {getattr(args, name)}.'
      )
  mem_budget = common.mem_budget_bytes(args.mem_budget_gb)
  config = dict(
    min_log2=args.min_log2,
    max_log2=args.max_log2,
    log2_step=args.log2_step,
    transformer_log2_step=args.transformer_log2_step,
    latents=args.latents,
    width=args.width,
    input_channels=args.input_channels,
    decode_chunk=args.decode_chunk,
    scaling_repeats=args.scaling_repeats,
    timeout=args.timeout,
    mem_budget_gib=mem_budget / GB,
    matmul_size=args.matmul_size,
  )
  results = common.new_results(MODULE, argv, config)
  results['matmul_peak'] = {
    'jax': common.spawn_matmul_peak(MODULE, args.matmul_size, args.timeout)
  }
  common.log(
    'matmul peak (GFLOP/s): ' + common.peak_text(results['matmul_peak'])
  )
  results['scaling'] = dict(records=[], slopes={})

  def save():  # After every point: a stopped run keeps its numbers.
    common.stamp_end(results)
    results['scaling']['slopes'] = scaling_slopes(results['scaling']['records'])
    write_report(results, args.out)

  run_sweep(
    config,
    mem_budget=mem_budget,
    records=results['scaling']['records'],
    save=save,
  )
  save()
  common.log(f'wrote {args.out}/results.json, results.md, scaling_*.png')


if __name__ == '__main__':
  main()
