"""Inputs larger than memory: the streamed encode against M (App. I).

  python -m benchmarks.streamed_encode --out=bench_out/streamed_encode \
      --stream_dir=/tmp/perceiver_stream --max_log2_points=30
  python -m benchmarks.streamed_encode --out=/tmp/stream --min_log2_points=9 \
      --max_log2_points=10 --stream_block=256 --stream_latents=8 \
      --stream_width=16 --stream_bands=2

A file of 2^max_log2_points points x 3 uint8 channels is written to (or
reused from) `--stream_dir`, a point cloud filling a cube grid in flat order;
for M = 2^min_log2_points, 2^(min + step), ... up to 2^max_log2_points, a
fresh process (benchmarks/common.py) encodes its first M points, read as a
`np.memmap` block by block (perceiver/streaming.py; Fourier position
features computed per block), with a small encoder (`--stream_latents` x
`--stream_width`, 2 self-attentions). Records the wall time of the encode
(after compiling on one block), points/s, the peak resident set size and the
fitted log-log slope of time in M. Each M runs under `--timeout` if given,
else two hours (2^30 points take minutes). Writes
`<out>/streamed_encode.json` and `<out>/streamed_encode.md` after every M.
"""

import argparse
import os
import tempfile
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np

from benchmarks import common

MODULE = 'benchmarks.streamed_encode'
GB = common.GB
DEFAULT_TIMEOUT_S = 7200
STREAM_FILE = 'points_uint8_x3.bin'
_STREAM_WRITE_CHUNK = 2**24  # Points generated and written at a time.


def ensure_points_file(path: str, num_points: int) -> Dict[str, Any]:
  """Makes `path` hold at least `num_points` x 3 uint8 (appending if short).

  Uniform random bytes, 2^24 points at a time seeded by the chunk's index,
  so a file's bytes do not depend on the length it was written for and a
  longer file extends a shorter one. Returns {'written_bytes', 'write_s'}.
  """
  need = 3 * num_points
  have = os.path.getsize(path) if os.path.exists(path) else 0
  start = time.perf_counter()
  written = 0
  if have < need:
    have -= have % (3 * _STREAM_WRITE_CHUNK)  # Rewrites a partial chunk.
    with open(path, 'r+b' if os.path.exists(path) else 'wb') as f:
      f.seek(have)
      f.truncate()
      for first in range(have // 3, num_points, _STREAM_WRITE_CHUNK):
        rows = min(_STREAM_WRITE_CHUNK, num_points - first)
        # The whole chunk, of which the first `rows`: a file's bytes do not
        # depend on the length it was written for.
        chunk = np.random.default_rng(first // _STREAM_WRITE_CHUNK).integers(
          0, 256, (_STREAM_WRITE_CHUNK, 3), dtype=np.uint8
        )[:rows]
        f.write(chunk.tobytes())
        written += chunk.nbytes
  return dict(written_bytes=written, write_s=time.perf_counter() - start)


def stream_encoder_kwargs(latents: int, width: int) -> Dict[str, Any]:
  """The small encoder of the streamed benchmark."""
  return dict(
    num_self_attends_per_block=2,
    num_blocks=1,
    z_index_dim=latents,
    num_z_channels=width,
    num_cross_attend_heads=1,
    num_self_attend_heads=4,
  )


def run_streamed_encode(spec: Dict[str, Any]) -> Dict[str, Any]:
  """Encodes the first M points of the file, streamed (module docstring):
  the worker of one `sweep` point."""
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from perceiver import encoder  # pylint: disable=g-import-not-at-top
  from perceiver import streaming  # pylint: disable=g-import-not-at-top

  jnp.zeros(1).block_until_ready()
  baseline = common.peak_rss_bytes()
  m, block, bands = spec['M'], spec['block'], spec['bands']
  grid = (spec['grid_side'],) * 3
  kwargs = stream_encoder_kwargs(spec['latents'], spec['width'])
  preprocess = streaming.fourier_preprocess(
    grid, bands, value_scale=2 / 255, value_offset=-1.0
  )
  features = 3 + 3 * 2 * bands + 3  # values, positions, sin and cos

  def forward(x):
    enc = encoder.PerceiverEncoder(**kwargs)
    return enc(x, enc.latents(x), is_training=False)

  params = jax.jit(hk.transform(forward).init)(
    jax.random.PRNGKey(0), jnp.zeros((1, 16, features))
  )
  source = np.memmap(spec['path'], np.uint8, 'r', shape=(m, 3))
  stream = streaming.StreamingEncoder(
    kwargs, preprocess=preprocess, block_size=block
  )
  start = time.perf_counter()  # Compiles the step and the finish.
  stream.encode(params, source[: min(m, block)]).block_until_ready()
  compile_s = time.perf_counter() - start
  latents = {}

  def encode():
    latents['z'] = stream.encode(params, source).block_until_ready()

  times = common.time_calls(encode, 0, spec['repeats'])
  z = latents['z']
  median = float(np.median(times))
  peak = common.peak_rss_bytes()
  return dict(
    status='ok',
    times_s=times,
    median_s=median,
    compile_s=compile_s,
    points_per_s=m / median,
    peak_rss_bytes=peak,
    baseline_rss_bytes=baseline,
    peak_mem_bytes=peak - baseline,
    input_bytes=3 * m,
    in_memory_inputs_bytes=4 * features * m,
    latents_finite=bool(jnp.all(jnp.isfinite(z))),
    latents_mean_abs=float(jnp.mean(jnp.abs(z))),
  )


def sweep(
  config: Dict[str, Any], *, out_dir: str, argv: Optional[Sequence[str]]
) -> Dict[str, Any]:
  """Encodes 2^min_log2_points .. 2^max_log2_points points of the config's
  file (`config_from_args`), one process each; after each writes the
  report to `out_dir` and returns it at the end."""
  lo, hi = config['min_log2_points'], config['max_log2_points']
  logs = list(range(lo, hi + 1, config['log2_points_step']))
  if logs[-1] != hi:
    logs.append(hi)
  path = config['path']
  os.makedirs(os.path.dirname(path), exist_ok=True)
  results = common.new_results(MODULE, argv, config)
  results.update(file=ensure_points_file(path, 2**hi), records=[])
  common.log(
    f'points file {path}: wrote {results["file"]["written_bytes"]} bytes'
  )

  def save():
    ok = [r for r in results['records'] if r.get('status') == 'ok']
    sizes, times = [r['M'] for r in ok], [r['median_s'] for r in ok]
    top = len(ok) // 2
    results['time_slope'] = common.fit_slope(sizes, times)
    results['time_slope_upper_half'] = common.fit_slope(
      sizes[top:], times[top:]
    )
    results['load_end'] = common.load()
    common.write_json(os.path.join(out_dir, 'streamed_encode.json'), results)
    with open(os.path.join(out_dir, 'streamed_encode.md'), 'w') as f:
      f.write(markdown(results))

  for k in logs:
    spec = dict(config, kind='streamed_encode', M=2**k)
    rec = common.spawn(MODULE, spec, config['timeout'])
    rec.update(M=2**k, load=common.load())
    results['records'].append(rec)
    save()
    extra = (
      f', {rec["points_per_s"] / 1e6:.2f} M points/s, peak RSS '
      f'{rec["peak_rss_bytes"] / GB:.2f} GiB'
      if rec.get('status') == 'ok'
      else ''
    )
    common.log(f'streamed encode M=2^{k}: {common.brief(rec)}{extra}')
  return results


def markdown(results: Dict[str, Any]) -> str:
  """streamed_encode.md: the run, the encoder, one row per M, the slope."""
  cfg, m = results['config'], results['machine']
  lines = [
    '# Streamed encode (inputs larger than memory)',
    '',
    f'`{results["command"]}`',
    '',
    f'Machine: {m.get("cpu")}, {m.get("cpu_count")} cores, '
    f'{m.get("memory_gib")} GiB; jax {m.get("jax")}; commit '
    f'{m.get("git_commit", "?")}. Load average at start '
    f'{results["load_start"]}, at end {results.get("load_end")}.',
    '',
    f'Encoder: {cfg["latents"]} latents x {cfg["width"]} channels, one '
    'cross-attention (1 head) + 2 self-attentions (4 heads). Inputs: the '
    'first M points of a uint8 x 3 file read as a np.memmap in blocks of '
    f'{cfg["block"]}, values scaled to [-1, 1] and {cfg["bands"]} Fourier '
    f'bands per dimension of their position on a {cfg["grid_side"]}^3 '
    'grid computed per block (perceiver/streaming.py). Seconds: wall time '
    'of the encode after compiling (page cache warm or not, as it came). '
    "Peak RSS: the process's peak resident set size (getrusage). "
    'In-memory inputs: the float32 preprocessed inputs an in-memory '
    'encode would hold.',
    '',
    '| M | s | M points/s | peak RSS GiB | file GiB | in-memory inputs GiB '
    '| load |',
    '|' + '---|' * 7,
  ]
  for r in results['records']:
    ok = r.get('status') == 'ok'
    lines.append(
      '| '
      + ' | '.join(
        [
          f'2^{int(np.log2(r["M"]))}',
          common.fmt(r.get('median_s'), '.2f') if ok else r.get('status', '?'),
          common.fmt(r.get('points_per_s'), '.2f', 1e6),
          common.fmt(r.get('peak_rss_bytes'), '.2f', GB),
          common.fmt(3 * r['M'], '.3f', GB),
          common.fmt(r.get('in_memory_inputs_bytes'), '.1f', GB),
          str(r.get('load', ['?'])[0]),
        ]
      )
      + ' |'
    )
  lines += [
    '',
    f'Fitted slope of log time vs log M: '
    f'{common.fmt(results.get("time_slope"), ".3f")} (all points), '
    f'{common.fmt(results.get("time_slope_upper_half"), ".3f")} (upper '
    'half).',
    '',
  ]
  lines += [
    f'- M={r["M"]}: {r.get("status")} ({r.get("reason", "")})'
    for r in results['records']
    if r.get('status') != 'ok'
  ]
  return '\n'.join(lines) + '\n'


def config_from_args(args: argparse.Namespace) -> Dict[str, Any]:
  """The run's configuration (recorded in streamed_encode.json).

  Raises:
    ValueError: sizes out of range (2^31 points is the largest file).
  """
  lo, hi = args.min_log2_points, args.max_log2_points
  if not 0 <= lo <= hi <= 31:
    raise ValueError(
      f'--min_log2_points/--max_log2_points: expected 0 <= '
      f'min <= max <= 31, got {lo} and {hi}.'
    )
  if args.log2_points_step < 1:
    raise ValueError(
      f'--log2_points_step: expected at least 1, got {args.log2_points_step}.'
    )
  stream_dir = args.stream_dir or os.path.join(
    tempfile.gettempdir(), 'perceiver_stream'
  )
  return dict(
    min_log2_points=lo,
    max_log2_points=hi,
    log2_points_step=args.log2_points_step,
    block=args.stream_block,
    latents=args.stream_latents,
    width=args.stream_width,
    bands=args.stream_bands,
    repeats=args.stream_repeats,
    grid_side=2 ** (-(-hi // 3)),
    timeout=DEFAULT_TIMEOUT_S if args.timeout is None else args.timeout,
    path=os.path.join(stream_dir, STREAM_FILE),
  )


def parser() -> argparse.ArgumentParser:
  p = common.new_parser(MODULE, __doc__)
  p.add_argument(
    '--stream_dir',
    help='Directory of the points file (written once, reused; 3 x '
    '2^max_log2_points bytes); default: <tempdir>/perceiver_stream.',
  )
  p.add_argument(
    '--min_log2_points', type=int, default=20, help='Smallest M: 2^min.'
  )
  p.add_argument(
    '--max_log2_points', type=int, default=30, help='Largest M: 2^max.'
  )
  p.add_argument(
    '--log2_points_step', type=int, default=2, help='Step of log2 M.'
  )
  p.add_argument(
    '--stream_block', type=int, default=8192, help='Points per block.'
  )
  p.add_argument(
    '--stream_latents', type=int, default=64, help='Encoder: latents N.'
  )
  p.add_argument(
    '--stream_width', type=int, default=64, help='Encoder: latent width.'
  )
  p.add_argument(
    '--stream_bands',
    type=int,
    default=4,
    help='Fourier bands per dimension.',
  )
  p.add_argument(
    '--stream_repeats',
    type=int,
    default=1,
    help='Timed encodes per M (median).',
  )
  p.add_argument(
    '--timeout',
    type=int,
    default=None,
    help=f'Seconds per M (a process); default {DEFAULT_TIMEOUT_S}.',
  )
  p.add_argument('--out', default='bench_out', help='Output directory.')
  common.add_worker_flag(p)
  return p


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parser().parse_args(argv)
  if args.worker:
    common.run_worker(args.worker, dict(streamed_encode=run_streamed_encode))
    return
  config = config_from_args(args)
  os.makedirs(args.out, exist_ok=True)
  sweep(config, out_dir=args.out, argv=argv)
  common.log(f'wrote {args.out}/streamed_encode.json, streamed_encode.md')


if __name__ == '__main__':
  main()
