"""Benchmarks: the released presets (JAX vs transformers) and scaling in M, O.

  python -m benchmarks.presets --out=bench_out \
      --presets=language_mlm,imagenet_fourier --batch=1 --repeats=5 \
      --dtypes=float32,bfloat16 --torch
  python -m benchmarks.presets --out=bench_out --presets= --scaling \
      --max_log2=22

  python -m benchmarks.presets --out=bench_out --input_pipeline \
      --input_workers=0,1,2

  python -m benchmarks.presets --out=bench_out --streamed_encode \
      --stream_dir=/tmp/perceiver_stream --max_log2_points=30

(`make bench ARGS='...'`). Writes `<out>/results.json`, `<out>/results.md`
and, with `--scaling`, `<out>/scaling_time.png` and `<out>/scaling_memory.png`.

Input pipeline (`--input_pipeline`, nothing else runs): examples/s of the
digits training input alone (experiments/digits.py's `train_iterator`: grain
loader, normalisation, random shifts, batches of its `batch_size`; no model)
for each `--input_workers` worker count, timed over `--input_batches`
batches after `--input_warmup` untimed ones (which include starting the
workers). Writes `<out>/input_pipeline.json`.

Streamed encode (`--streamed_encode`, nothing else runs): inputs larger
than memory (Perceiver IO, App. I). A file of 2^max_log2_points points x 3
uint8 channels is written to (or reused from) `--stream_dir`, a point cloud
filling a cube grid in flat order; for M = 2^min_log2_points,
2^(min + step), ... up to 2^max_log2_points, a fresh process encodes its
first M points, read as a `np.memmap` block by block
(perceiver/streaming.py; Fourier position features computed per block),
with a small encoder (`--stream_latents` x `--stream_width`, 2
self-attentions). Records the wall time of the encode (after compiling on
one block), points/s, the peak resident set size and the fitted log-log
slope of time in M. Each M runs under `--timeout` if given, else two hours
(2^30 points take minutes). Writes `<out>/streamed_encode.json` and `.md`.

Preset table: for each preset, dtype and mode ('forward': inference,
`is_training=False`; 'train': forward + backward of a cross-entropy (MSE for
regression outputs) loss + an Adam update), the median wall time of
`--repeats` calls after `--warmup` calls, the compile time, XLA's FLOP count
(`compiled.cost_analysis()`), FLOP/s and its ratio to the matmul peak
measured in the same run for the same dtype, the peak memory and XLA's
compiled memory analysis. With `--torch`, the same model in transformers'
PyTorch Perceiver, with the same initial weights (converted by
`perceiver.hf_convert`) and inputs, in float32 and under
`torch.autocast(bfloat16)` (benchmarks/presets_torch.py).

Every configuration runs in a fresh subprocess (JAX and PyTorch thread pools
never share a process, and peak memory is that process's peak resident set
size minus its resident set size before the model was built), under a
timeout; one that runs out of memory or time is recorded as 'OOM' or
'timeout' and the run goes on.

Scaling (`--scaling`): forward time and peak memory of a small Perceiver
(`--latents` x `--width`, one cross-attention and two self-attentions,
'chunked' attention, chunked decoding) for M = 2^min_log2 .. 2^max_log2 inputs
(O fixed at 2^min_log2) and O outputs likewise (M fixed), with log-log slopes
fitted by least squares; and a Transformer encoder of the same width and depth
(three self-attention layers, 'reference' attention) on the same M inputs,
until it needs more than `--mem_budget_gb` (XLA's memory analysis) or the
timeout. Finally the Perceiver with M = O = 2^max_log2.

Shapes: B batch, M inputs, N latents, O outputs, C channels.
"""

import datetime
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

from absl import app
from absl import flags
import numpy as np

_PRESETS = flags.DEFINE_list(
  'presets',
  ['language_mlm', 'imagenet_fourier'],
  'Presets for the preset table (empty: none).',
)
_OVERRIDES = flags.DEFINE_string(
  'overrides',
  '{}',
  'JSON dict of preset size overrides for a custom size, applied to every '
  'preset, e.g. \'{"num_blocks": 1, "image_size": 32}\'.',
)
_BATCH = flags.DEFINE_integer('batch', 1, 'Batch size of the preset table.')
_DTYPES = flags.DEFINE_list(
  'dtypes', ['float32', 'bfloat16'], 'Compute dtypes (float32, bfloat16).'
)
_MODES = flags.DEFINE_list(
  'modes', ['forward', 'train'], 'What to time: forward, train.'
)
_ATTENTION = flags.DEFINE_string(
  'attention_impl', 'reference', 'attention_impl of the presets.'
)
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls (median).')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed calls after compiling.')
_TORCH = flags.DEFINE_bool(
  'torch', True, "Also time transformers' PyTorch Perceiver."
)
_SCALING = flags.DEFINE_bool('scaling', False, 'Run the scaling sweep.')
_MIN_LOG2 = flags.DEFINE_integer('min_log2', 10, 'Smallest M, O: 2^min_log2.')
_MAX_LOG2 = flags.DEFINE_integer('max_log2', 22, 'Largest M, O: 2^max_log2.')
_LOG2_STEP = flags.DEFINE_integer('log2_step', 1, 'Step of log2 M, O.')
_TRANSFORMER_LOG2_STEP = flags.DEFINE_integer(
  'transformer_log2_step',
  1,
  'Step of log2 M of the Transformer baseline (it stops at its first failure).',
)
_LATENTS = flags.DEFINE_integer('latents', 256, 'Scaling model: latents N.')
_WIDTH = flags.DEFINE_integer('width', 256, 'Scaling model: latent width.')
_INPUT_CHANNELS = flags.DEFINE_integer(
  'input_channels', 32, 'Scaling model: input channels.'
)
_DECODE_CHUNK = flags.DEFINE_integer(
  'decode_chunk', 16384, 'Scaling model: decode_chunk_size.'
)
_SCALING_REPEATS = flags.DEFINE_integer(
  'scaling_repeats', 3, 'Timed calls per scaling point.'
)
_TIMEOUT = flags.DEFINE_integer(
  'timeout', 600, 'Seconds per configuration (subprocess).'
)
_MEM_BUDGET_GB = flags.DEFINE_float(
  'mem_budget_gb',
  None,
  'Skip (as OOM) a configuration whose XLA memory analysis exceeds this; '
  'default: 60% of the memory available at start.',
)
_MATMUL_SIZE = flags.DEFINE_integer(
  'matmul_size', 2048, 'n of the n x n x n matmul peak.'
)
_INPUT_PIPELINE = flags.DEFINE_bool(
  'input_pipeline',
  False,
  'Only measure the digits input pipeline (examples/s per worker count).',
)
_INPUT_WORKERS = flags.DEFINE_list(
  'input_workers', ['0', '1', '2'], 'Loader worker counts to time.'
)
_INPUT_BATCHES = flags.DEFINE_integer(
  'input_batches', 100, 'Timed batches per worker count.'
)
_INPUT_WARMUP = flags.DEFINE_integer(
  'input_warmup', 10, 'Untimed batches first (start-up of the workers).'
)
_STREAMED = flags.DEFINE_bool(
  'streamed_encode',
  False,
  'Only time the streamed encode of M uint8 points from a memmap.',
)
_STREAM_DIR = flags.DEFINE_string(
  'stream_dir',
  None,
  'Directory of the points file of --streamed_encode '
  '(written once, reused; 3 x 2^max_log2_points bytes); default: '
  '<tempdir>/perceiver_stream.',
)
_MIN_LOG2_POINTS = flags.DEFINE_integer(
  'min_log2_points', 20, 'Streamed encode: smallest M, 2^min_log2_points.'
)
_MAX_LOG2_POINTS = flags.DEFINE_integer(
  'max_log2_points', 30, 'Streamed encode: largest M, 2^max_log2_points.'
)
_LOG2_POINTS_STEP = flags.DEFINE_integer(
  'log2_points_step', 2, 'Streamed encode: step of log2 M.'
)
_STREAM_BLOCK = flags.DEFINE_integer(
  'stream_block', 8192, 'Streamed encode: points per block.'
)
_STREAM_LATENTS = flags.DEFINE_integer(
  'stream_latents', 64, 'Streamed encode: latents N.'
)
_STREAM_WIDTH = flags.DEFINE_integer(
  'stream_width', 64, 'Streamed encode: latent width.'
)
_STREAM_BANDS = flags.DEFINE_integer(
  'stream_bands', 4, 'Streamed encode: Fourier bands per dimension.'
)
_STREAM_REPEATS = flags.DEFINE_integer(
  'stream_repeats', 1, 'Streamed encode: timed encodes per M (median).'
)
_OUT = flags.DEFINE_string('out', 'bench_out', 'Output directory.')
_REPORT_ONLY = flags.DEFINE_bool(
  'report_only',
  False,
  'Only re-render <out>/results.md and the plots from <out>/results.json.',
)
_WORKER = flags.DEFINE_string(
  'worker', None, 'Internal: run one configuration (JSON spec).'
)

FLAGS = flags.FLAGS
GB = 2.0**30


# ---------------------------------------------------------------------------
# Measurements (inside a worker process).
# ---------------------------------------------------------------------------


def peak_rss_bytes() -> int:
  """This process's peak resident set size (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _proc_kib_field_bytes(path: str, field: str) -> Optional[int]:
  """A 'Field: N kB' line of a /proc file, in bytes; None elsewhere."""
  try:
    with open(path) as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def proc_status_bytes(field: str) -> Optional[int]:
  """A /proc/self/status field (e.g. 'VmRSS', 'VmHWM') in bytes, or None."""
  return _proc_kib_field_bytes('/proc/self/status', field)


def reset_peak_rss() -> bool:
  """Resets this process's peak RSS (VmHWM) to its current RSS (Linux)."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return proc_status_bytes('VmHWM') is not None
  except OSError:
    return False


def time_calls(fn, warmup: int, repeats: int) -> List[float]:
  """Wall times of `repeats` calls of `fn` (which blocks) after `warmup`."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def matmul_peak(n: int, repeats: int = 5) -> Dict[str, float]:
  """FLOP/s of a jitted n x n x n matmul: float32, and bfloat16 inputs with
  float32 accumulation (preferred_element_type)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  out = {}
  for dtype in ('float32', 'bfloat16'):
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    times = time_calls(lambda: f(a, b).block_until_ready(), 2, repeats)
    out[dtype] = 2.0 * n**3 / float(np.median(times))
  return out


def _cost(compiled) -> Optional[float]:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


def _memory(compiled) -> Optional[Dict[str, int]]:
  """XLA's compiled memory analysis (bytes), or None where unavailable."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if stats is None:
    return None
  names = (
    'argument_size_in_bytes',
    'output_size_in_bytes',
    'alias_size_in_bytes',
    'temp_size_in_bytes',
    'generated_code_size_in_bytes',
  )
  out = {n: int(getattr(stats, n)) for n in names if hasattr(stats, n)}
  if out:
    out['total_bytes'] = (
      out.get('argument_size_in_bytes', 0)
      + out.get('output_size_in_bytes', 0)
      - out.get('alias_size_in_bytes', 0)
      + out.get('temp_size_in_bytes', 0)
    )
  return out or None


def compile_and_time(
  fn,
  args,
  *,
  warmup: int,
  repeats: int,
  mem_budget: Optional[float],
  donate=(),
  feed_back=None,
  flops_fn=None,
) -> Dict[str, Any]:
  """Jits `fn`, compiles it for `args`, checks the memory budget, times it.

  `feed_back(args, outputs)` gives the next call's arguments (a training step
  feeds its updated parameters back; the donated ones are consumed).
  XLA's cost analysis counts the body of a loop (`lax.scan`) once, so the
  FLOP count comes from `flops_fn`, the same computation without loops,
  where given (lowered only, not compiled); `flops_compiled` keeps XLA's
  count of the compiled `fn`.
  """
  import jax  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  lowered = jax.jit(fn, donate_argnums=donate).lower(*args)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  rec = dict(
    lower_s=lower_s,
    compile_s=lower_s + compile_s,
    flops=_cost(compiled),
    xla_memory=_memory(compiled),
  )
  rec['flops_compiled'] = rec['flops']
  if flops_fn is not None:
    rec['flops'] = _cost(jax.jit(flops_fn).lower(*args))
  need = (rec['xla_memory'] or {}).get('total_bytes')
  if mem_budget and need and need > mem_budget:
    rec.update(
      status='OOM',
      reason=f'XLA memory analysis: needs '
      f'{need / GB:.1f} GiB > budget {mem_budget / GB:.1f} GiB; '
      'not run',
    )
    return rec
  state = {'args': args}

  def call():
    outputs = compiled(*state['args'])
    jax.block_until_ready(outputs)
    if feed_back is not None:
      state['args'] = feed_back(state['args'], outputs)
    state['outputs'] = outputs

  times = time_calls(call, warmup, repeats)
  rec.update(
    status='ok',
    times_s=times,
    median_s=float(np.median(times)),
    min_s=float(np.min(times)),
    last_outputs=state['outputs'],
  )
  if rec['flops']:
    rec['flops_per_s'] = rec['flops'] / rec['median_s']
  return rec


# ---------------------------------------------------------------------------
# Presets: inputs, losses, one measurement.
# ---------------------------------------------------------------------------


def preset_inputs(name: str, cfg: Dict[str, Any], batch: int, seed: int = 0):
  """(args, targets) of preset `name` with configuration `cfg` (numpy)."""
  rng = np.random.default_rng(seed)
  if name.startswith('imagenet'):
    s = cfg['image_size']
    images = rng.normal(size=(batch, s, s, 3)).astype(np.float32)
    return (images,), rng.integers(0, cfg['num_classes'], batch)
  if name == 'language_mlm':
    length, vocab = cfg['max_seq_len'], cfg['vocab_size']
    ids = rng.integers(0, vocab, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    return (ids, mask), rng.integers(0, vocab, (batch, length))
  if name == 'optical_flow':
    h, w = cfg['image_size']
    images = rng.uniform(-1, 1, (batch, 2, h, w, 3)).astype(np.float32)
    return (images,), np.zeros((batch, h, w, 2), np.float32)
  t, s = cfg['num_frames'], cfg['image_size']
  n_audio, n_classes = cfg['audio_samples'], cfg['num_classes']
  inputs = dict(
    image=rng.normal(size=(batch, t, s, s, 3)).astype(np.float32),
    audio=rng.normal(size=(batch, n_audio, 1)).astype(np.float32),
    label=np.zeros((batch, n_classes), np.float32),
  )
  targets = dict(
    image=inputs['image'],
    audio=inputs['audio'],
    label=rng.integers(0, n_classes, batch),
  )
  return (inputs,), targets


def loss_fn(outputs, targets):
  """Cross-entropy for integer targets, mean squared error otherwise."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  if isinstance(outputs, dict):
    return sum(loss_fn(outputs[k], targets[k]) for k in sorted(outputs))
  if np.issubdtype(targets.dtype, np.integer):
    return jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(
        outputs.astype(jnp.float32), targets
      )
    )
  return jnp.mean(jnp.square(outputs.astype(jnp.float32) - targets))


def make_train_step(model, optimizer):
  """(params, state, opt_state, args, targets) -> same + loss: one step."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  def objective(params, state, args, targets):
    outputs, state = model.apply(params, state, None, *args, is_training=True)
    return loss_fn(outputs, targets), state

  def step(params, state, opt_state, args, targets):
    (loss, state), grads = jax.value_and_grad(objective, has_aux=True)(
      params, state, args, targets
    )
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state, loss

  return step


def _torch_inputs(name, args) -> Optional[Dict[str, np.ndarray]]:
  """The transformers call's keyword arguments for our `args`."""
  if name.startswith('imagenet'):
    return dict(inputs=np.ascontiguousarray(args[0].transpose(0, 3, 1, 2)))
  if name == 'language_mlm':
    return dict(
      inputs=args[0].astype(np.int64), attention_mask=args[1].astype(np.float32)
    )
  if name == 'optical_flow':
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from perceiver import io_processors  # pylint: disable=g-import-not-at-top

    patches = np.asarray(io_processors.patches_for_flow(jnp.asarray(args[0])))
    return dict(inputs=np.ascontiguousarray(patches.transpose(0, 1, 4, 2, 3)))
  return None  # video_autoencoding: transformers cannot decode it fully.


def run_preset(spec: Dict[str, Any]) -> Dict[str, Any]:
  """One (preset, dtype, mode) measurement in JAX; see `main` for `spec`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from perceiver import hf_convert  # pylint: disable=g-import-not-at-top
  from perceiver import presets  # pylint: disable=g-import-not-at-top

  jnp.zeros(1).block_until_ready()  # Start the backend before the baseline.
  baseline = peak_rss_bytes()
  name, overrides = spec['preset'], spec['overrides']
  cfg = dict(presets.defaults(name), **overrides)
  options = dict(
    attention_impl=spec['attention_impl'],
    compute_dtype=getattr(jnp, spec['dtype']),
  )
  model = presets.build(name, **options, **overrides)
  # The same model without loops, only to count FLOPs (see compile_and_time):
  # no scans, and 'reference' cross-attention ('chunked' loops over blocks).
  unrolled = {
    k: False for k in ('scan_blocks', 'scan_layers', 'remat') if k in cfg
  }
  flat = presets.build(
    name,
    **options,
    **dict(overrides, **unrolled, cross_attention_impl='reference'),
  )
  args, targets = preset_inputs(name, cfg, spec['batch'])
  params, state = jax.jit(functools.partial(model.init, is_training=True))(
    jax.random.PRNGKey(0), *args
  )
  rec = dict(
    num_params=int(sum(x.size for x in jax.tree.leaves(params))),
    options={
      k: dict(cfg, **options)[k]
      for k in (*unrolled, 'attention_impl', 'cross_attention_impl')
    },
  )
  export = spec.get('export_dir')
  if export and not os.path.exists(os.path.join(export, 'weights.npz')):
    sd = hf_convert.haiku_to_transformers(params, state, name)
    np.savez(os.path.join(export, 'weights.npz'), **sd)
    torch_args = _torch_inputs(name, args)
    if torch_args is not None:
      np.savez(os.path.join(export, 'inputs.npz'), **torch_args)
      loss_targets = targets if not isinstance(targets, dict) else None
      if loss_targets is not None:
        np.save(os.path.join(export, 'targets.npy'), loss_targets)
  timing = dict(
    warmup=spec['warmup'],
    repeats=spec['repeats'],
    mem_budget=spec.get('mem_budget'),
  )
  if spec['mode'] == 'forward':

    def forward(model, params, state, args):
      return model.apply(params, state, None, *args, is_training=False)[0]

    rec.update(
      compile_and_time(
        functools.partial(forward, model),
        (params, state, args),
        flops_fn=functools.partial(forward, flat),
        **timing,
      )
    )
  else:
    optimizer = optax.adam(1e-4)
    opt_state = optimizer.init(params)
    rec.update(
      compile_and_time(
        make_train_step(model, optimizer),
        (params, state, opt_state, args, targets),
        donate=(0, 1, 2),
        feed_back=lambda a, o: (o[0], o[1], o[2], a[3], a[4]),
        flops_fn=make_train_step(flat, optimizer),
        **timing,
      )
    )
  outputs = rec.pop('last_outputs', None)
  if (
    export
    and rec['status'] == 'ok'
    and spec['mode'] == 'forward'
    and spec['dtype'] == 'float32'
    and not isinstance(outputs, dict)
  ):
    np.save(os.path.join(export, 'jax_outputs.npy'), np.asarray(outputs))
  rec['peak_rss_bytes'] = peak_rss_bytes()
  rec['baseline_rss_bytes'] = baseline
  rec['peak_mem_bytes'] = rec['peak_rss_bytes'] - baseline
  if spec.get('matmul_size'):  # The peak under this run's machine load.
    rec['matmul_peak_flops'] = matmul_peak(spec['matmul_size'])
  return rec


# ---------------------------------------------------------------------------
# Scaling: a small Perceiver and a Transformer encoder of the same size.
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
  baseline = peak_rss_bytes()
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
  with_inputs = proc_status_bytes('VmRSS') if reset_peak_rss() else None
  rec = compile_and_time(
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
  rec['peak_rss_bytes'] = peak_rss_bytes()
  rec['peak_mem_bytes'] = rec['peak_rss_bytes'] - baseline
  if with_inputs is not None:
    rec['model_mem_bytes'] = proc_status_bytes('VmHWM') - with_inputs
  return rec


# ---------------------------------------------------------------------------
# Orchestration: one subprocess per configuration.
# ---------------------------------------------------------------------------


def spawn(module: str, spec: Dict[str, Any], timeout: float) -> Dict[str, Any]:
  """Runs `python -m module --worker=spec` and returns its result record."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'result.json')
    spec = dict(spec, result_path=path)
    cmd = [sys.executable, '-m', module, f'--worker={json.dumps(spec)}']
    start = time.perf_counter()
    try:
      proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout
      )
    except subprocess.TimeoutExpired:
      return dict(status='timeout', reason=f'over {timeout:.0f} s')
    wall = time.perf_counter() - start
    if os.path.exists(path):
      with open(path) as f:
        rec = json.load(f)
      rec['process_s'] = wall
      return rec
    err = (proc.stderr or '').strip().splitlines()
    last = err[-1] if err else f'exit code {proc.returncode}'
    if (
      proc.returncode in (-9, 137)
      or 'MemoryError' in last
      or ('RESOURCE_EXHAUSTED' in last)
    ):
      return dict(status='OOM', reason=last[-300:])
    return dict(status='error', reason=last[-300:])


def worker_main(spec: Dict[str, Any]) -> None:
  if spec['kind'] == 'preset':
    rec = run_preset(spec)
  elif spec['kind'] == 'scaling':
    rec = run_scaling(spec)
  elif spec['kind'] == 'streamed_encode':
    rec = run_streamed_encode(spec)
  else:
    rec = dict(matmul_peak_flops=matmul_peak(spec['n']))
  with open(spec['result_path'], 'w') as f:
    json.dump(rec, f)


def meminfo_bytes(field: str) -> Optional[int]:
  """A /proc/meminfo field (e.g. 'MemAvailable') in bytes; None elsewhere."""
  return _proc_kib_field_bytes('/proc/meminfo', field)


def torch_available() -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top

  return all(
    importlib.util.find_spec(m) is not None for m in ('torch', 'transformers')
  )


def machine_info() -> Dict[str, Any]:
  """The machine and the versions the numbers come from."""
  info = dict(
    platform=platform.platform(),
    python=platform.python_version(),
    cpu_count=os.cpu_count(),
  )
  try:
    with open('/proc/cpuinfo') as f:
      models = [
        ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')
      ]
    info['cpu'] = models[0] if models else platform.processor()
  except OSError:
    info['cpu'] = platform.processor()
  total = meminfo_bytes('MemTotal')
  if total:
    info['memory_gib'] = round(total / GB, 1)
  try:  # The code measured: commit, and whether the library had edits.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    git = lambda *a: subprocess.run(
      ['git', *a], cwd=root, capture_output=True, text=True, timeout=30
    ).stdout.strip()
    info['git_commit'] = git('rev-parse', '--short', 'HEAD')
    info['git_uncommitted'] = git(
      'status', '--porcelain', 'perceiver', 'experiments'
    ).splitlines()
  except (OSError, subprocess.SubprocessError):
    pass
  from importlib import metadata  # pylint: disable=g-import-not-at-top

  for pkg in ('jax', 'jaxlib', 'dm-haiku', 'torch', 'transformers'):
    try:
      info[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      info[pkg] = None
  return info


def _load() -> List[float]:
  return [round(x, 2) for x in os.getloadavg()]


def _log(msg: str) -> None:
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%H:%M:%S')
  print(f'[{stamp} load {_load()[0]:.1f}] {msg}', flush=True)


def _brief(rec: Dict[str, Any]) -> str:
  if rec.get('status') != 'ok':
    return f'{rec.get("status")}: {rec.get("reason", "")}'
  mem = rec.get('peak_mem_bytes')
  return f'median {rec["median_s"]:.4f} s' + (
    f', peak mem {mem / GB:.2f} GiB' if mem is not None else ''
  )


def run_presets(
  out_dir: str, mem_budget: float, records: List[Dict[str, Any]], save
) -> None:
  """Appends the preset table's records (JAX, then transformers, per
  preset) to `records`, calling `save()` after each."""
  overrides = json.loads(_OVERRIDES.value)
  for name in _PRESETS.value:
    export = tempfile.mkdtemp(prefix=f'bench_{name}_', dir=out_dir)
    try:
      for dtype in _DTYPES.value:
        for mode in _MODES.value:
          spec = dict(
            kind='preset',
            framework='jax',
            preset=name,
            overrides=overrides,
            batch=_BATCH.value,
            dtype=dtype,
            mode=mode,
            attention_impl=_ATTENTION.value,
            warmup=_WARMUP.value,
            repeats=_REPEATS.value,
            mem_budget=mem_budget,
            export_dir=export,
            matmul_size=_MATMUL_SIZE.value,
          )
          rec = spawn('benchmarks.presets', spec, _TIMEOUT.value)
          records.append(dict(_public(spec), **rec))
          save()
          _log(f'jax {name} {dtype} {mode}: {_brief(rec)}')
      if not _TORCH.value:
        continue
      for dtype in _DTYPES.value:
        for mode in _MODES.value:
          spec = dict(
            kind='preset',
            framework='torch',
            preset=name,
            overrides=overrides,
            batch=_BATCH.value,
            dtype=dtype,
            mode=mode,
            warmup=_WARMUP.value,
            repeats=_REPEATS.value,
            export_dir=export,
          )
          if not os.path.exists(os.path.join(export, 'inputs.npz')):
            rec = dict(
              status='skipped',
              reason=(
                'no transformers inputs (video_autoencoding: transformers '
                'decodes only subsampled points) or no exported weights'
              ),
            )
          else:
            rec = spawn('benchmarks.presets_torch', spec, _TIMEOUT.value)
          records.append(dict(_public(spec), **rec))
          save()
          _log(f'torch {name} {dtype} {mode}: {_brief(rec)}')
    finally:
      shutil.rmtree(export, ignore_errors=True)


def _public(spec):
  return {
    k: v
    for k, v in spec.items()
    if k not in ('export_dir', 'result_path', 'mem_budget', 'kind')
  }


def scaling_specs(mem_budget: float) -> List[Dict[str, Any]]:
  """The scaling points: M sweep, O sweep, Transformer M sweep, M = O max."""
  lo, hi, step = _MIN_LOG2.value, _MAX_LOG2.value, _LOG2_STEP.value
  sizes = [2**k for k in range(lo, hi + 1, step)]
  if sizes[-1] != 2**hi:
    sizes.append(2**hi)
  base = dict(
    kind='scaling',
    latents=_LATENTS.value,
    width=_WIDTH.value,
    input_channels=_INPUT_CHANNELS.value,
    decode_chunk=_DECODE_CHUNK.value,
    warmup=1,
    repeats=_SCALING_REPEATS.value,
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
    for k in range(lo, hi + 1, _TRANSFORMER_LOG2_STEP.value)
  ]
  specs.append(dict(base, sweep='M=O', model='perceiver', M=2**hi, O=2**hi))
  return specs


def run_scaling_sweep(
  mem_budget: float, records: List[Dict[str, Any]], save
) -> None:
  """Appends the scaling records to `records`, calling `save()` after each."""
  transformer_failed = False
  for spec in scaling_specs(mem_budget):
    label = f'{spec["model"]} {spec["sweep"]} M={spec["M"]} O={spec["O"]}'
    if spec['model'] == 'transformer' and transformer_failed:
      rec = dict(status='skipped', reason='a smaller M already failed')
    else:
      rec = spawn('benchmarks.presets', spec, _TIMEOUT.value)
      transformer_failed |= (
        spec['model'] == 'transformer' and rec.get('status') != 'ok'
      )
    records.append(dict(_public(spec), **rec))
    save()
    _log(f'{label}: {_brief(rec)}')


def fit_slope(xs, ys) -> Optional[float]:
  """Least-squares slope of log(y) against log(x), None under two points."""
  pairs = [(x, y) for x, y in zip(xs, ys) if x and y and y > 0]
  if len(pairs) < 2:
    return None
  x, y = np.log2(np.array(pairs, np.float64)).T
  return float(np.polyfit(x, y, 1)[0])


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
      entry[f'{what}_slope'] = fit_slope(sizes, [r.get(key) for r in recs])
      entry[f'{what}_slope_upper_half'] = fit_slope(
        top_sizes, [r.get(key) for r in top]
      )
    if model == 'perceiver' and all('model_mem_bytes' in r for r in top):
      entry['model_memory_slope_upper_half'] = fit_slope(
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


def _fmt(x, spec='.3g', scale=1.0, suffix=''):
  if x is None:
    return '–'
  return f'{x / scale:{spec}}{suffix}'


def _ms(rec):
  if rec is None:
    return '–'
  if rec.get('status') != 'ok':
    return rec.get('status', '?')
  return _fmt(rec['median_s'], '.1f', 1e-3)


def markdown(results: Dict[str, Any]) -> str:
  m = results['machine']
  lines = [
    '# Perceiver IO benchmark',
    '',
    f'Run {results["started_utc"]} – {results["finished_utc"]} UTC: '
    f'`{results["command"]}`',
    '',
    f'Machine: {m.get("cpu")}, {m.get("cpu_count")} cores, '
    f'{m.get("memory_gib")} GiB; {m.get("platform")}; jax {m.get("jax")}, '
    f'torch {m.get("torch")}, transformers {m.get("transformers")}; '
    f'commit {m.get("git_commit", "?")}'
    + (
      ' (uncommitted changes in ' + ', '.join(m['git_uncommitted']) + ')'
      if m.get('git_uncommitted')
      else ''
    )
    + '. '
    f'Load average (1/5/15 min) at start {results["load_start"]}, at end '
    f'{results["load_end"]} (a shared machine: other jobs ran at the same '
    'time).',
    '',
  ]
  peak = results.get('matmul_peak', {})
  if peak:
    n = results['config']['matmul_size']
    lines += [
      f'Measured matmul peak ({n}x{n}x{n}, GFLOP/s): '
      + ', '.join(
        f'{fw} {dt} {v / 1e9:.0f}'
        for fw, d in peak.items()
        for dt, v in d.items()
      ),
      '',
    ]
  recs = results.get('presets', [])
  if recs:
    lines += [
      '## Presets',
      '',
      'Median of the timed calls after warm-up, one process per row and '
      'framework. GFLOP: XLA cost analysis of the JAX call without '
      "`lax.scan` loops and with 'reference' cross-attention (XLA "
      "counts a loop body once; the chunked backward's recomputation is "
      'not counted); % peak: '
      'JAX FLOP/s over the JAX matmul peak of the same dtype, measured '
      + (
        'in the same process right after the row'
        if any(r.get('matmul_peak_flops') for r in recs)
        else 'at the start of the run'
      )
      + '. Peak mem: '
      'peak RSS minus RSS before the model was built. torch/JAX > 1: JAX '
      'is faster. rel err: max |JAX − torch| / max |torch| of the float32 '
      'forward outputs (same weights and inputs).',
      '',
      '| preset | dtype | mode | JAX ms | compile s | GFLOP | GFLOP/s | '
      '% peak | JAX mem GiB | XLA GiB | torch ms | torch mem GiB | '
      'torch/JAX | rel err |',
      '|' + '---|' * 14,
    ]
    by_key = {
      (r['framework'], r['preset'], r['dtype'], r['mode']): r for r in recs
    }
    for r in recs:
      if r['framework'] != 'jax':
        continue
      t = by_key.get(('torch', r['preset'], r['dtype'], r['mode']))
      ok = r.get('status') == 'ok'
      t_ok = t is not None and t.get('status') == 'ok'
      # The matmul peak measured right after this row's run, in its process
      # (the machine is shared); else the one measured at the start.
      row_peak = (r.get('matmul_peak_flops') or peak.get('jax', {})).get(
        r['dtype']
      )
      frac = (
        r['flops_per_s'] / row_peak
        if ok and r.get('flops_per_s') and row_peak
        else None
      )
      ratio = t['median_s'] / r['median_s'] if ok and t_ok else None
      xla = (r.get('xla_memory') or {}).get('total_bytes')
      lines.append(
        '| '
        + ' | '.join(
          [
            r['preset'],
            r['dtype'],
            r['mode'],
            _ms(r),
            _fmt(r.get('compile_s'), '.1f'),
            _fmt(r.get('flops'), '.1f', 1e9),
            _fmt(r.get('flops_per_s') if ok else None, '.1f', 1e9),
            _fmt(frac, '.0%') if frac is not None else '–',
            _fmt(r.get('peak_mem_bytes') if ok else None, '.2f', GB),
            _fmt(xla, '.2f', GB),
            _ms(t),
            _fmt(t.get('peak_mem_bytes') if t_ok else None, '.2f', GB),
            _fmt(ratio, '.2f'),
            _fmt(t.get('max_rel_err') if t_ok else None, '.1e'),
          ]
        )
        + ' |'
      )
    options = sorted(
      {
        (r['preset'], json.dumps(r['options'], sort_keys=True))
        for r in recs
        if r.get('options')
      }
    )
    notes = [f'JAX options of {p}: {o}' for p, o in options]
    notes += [
      f'{r["framework"]} {r["preset"]} {r["dtype"]} {r["mode"]}: '
      f'{r.get("status")} ({r.get("reason", "")})'
      for r in recs
      if r.get('status') != 'ok'
    ]
    if notes:
      lines += [''] + [f'- {n}' for n in notes]
    lines.append('')
  scaling = results.get('scaling')
  if scaling:
    cfg = results['config']
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
            _ms(r) if ok else f'{r.get("status")}',
            _fmt(r.get('compile_s'), '.1f'),
            _fmt(r.get('peak_mem_bytes') if ok else None, '.2f', GB),
            _fmt(r.get('model_mem_bytes') if ok else None, '.3f', GB),
            _fmt(r.get('input_bytes'), '.3f', GB),
            _fmt((r.get('xla_memory') or {}).get('total_bytes'), '.2f', GB),
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
      two = lambda k: _fmt(s[k], '.2f')  # pylint: disable=cell-var-from-loop
      line = (
        f'- {curve} ({s["points"]} points): time {two("time_slope")}; '
        f'{two("time_slope_upper_half")}, memory '
        f'{two("memory_slope")}; {two("memory_slope_upper_half")}'
      )
      if 'model_memory_slope_upper_half' in s:
        line += (
          '; model memory beyond the inputs (upper half) '
          f'{two("model_memory_slope_upper_half")}'
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
  """results.json, results.md and (with a scaling run) the two plots."""
  with open(os.path.join(out_dir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(out_dir, 'results.md'), 'w') as f:
    f.write(markdown(results))
  if results.get('scaling', {}).get('records'):
    plot_scaling(results['scaling']['records'], out_dir)


# ---------------------------------------------------------------------------
# Streamed encode: inputs larger than memory (perceiver/streaming.py).
# ---------------------------------------------------------------------------

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
  """Encodes the first M points of the file, streamed; see `main`."""
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from perceiver import encoder  # pylint: disable=g-import-not-at-top
  from perceiver import streaming  # pylint: disable=g-import-not-at-top

  jnp.zeros(1).block_until_ready()
  baseline = peak_rss_bytes()
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
  times = []
  for _ in range(spec['repeats']):
    start = time.perf_counter()
    z = stream.encode(params, source)
    z.block_until_ready()
    times.append(time.perf_counter() - start)
  median = float(np.median(times))
  peak = peak_rss_bytes()
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


def streamed_encode_sweep(out_dir: str) -> Dict[str, Any]:
  """Runs the streamed-encode points, one process each; writes the report."""
  lo, hi = _MIN_LOG2_POINTS.value, _MAX_LOG2_POINTS.value
  if not 0 <= lo <= hi <= 31:
    raise app.UsageError(
      f'--min_log2_points/--max_log2_points: expected 0 <= '
      f'min <= max <= 31, got {lo} and {hi}.'
    )
  logs = list(range(lo, hi + 1, _LOG2_POINTS_STEP.value))
  if logs[-1] != hi:
    logs.append(hi)
  stream_dir = _STREAM_DIR.value or os.path.join(
    tempfile.gettempdir(), 'perceiver_stream'
  )
  os.makedirs(stream_dir, exist_ok=True)
  path = os.path.join(stream_dir, STREAM_FILE)
  config = dict(
    min_log2_points=lo,
    max_log2_points=hi,
    block=_STREAM_BLOCK.value,
    latents=_STREAM_LATENTS.value,
    width=_STREAM_WIDTH.value,
    bands=_STREAM_BANDS.value,
    repeats=_STREAM_REPEATS.value,
    grid_side=2 ** (-(-hi // 3)),
    timeout=_TIMEOUT.value if FLAGS['timeout'].present else 7200,
    path=path,
  )
  results = dict(
    command=' '.join(['python -m benchmarks.presets'] + sys.argv[1:]),
    machine=machine_info(),
    config=config,
    load_start=_load(),
    file=ensure_points_file(path, 2**hi),
    records=[],
  )
  _log(f'points file {path}: wrote {results["file"]["written_bytes"]} bytes')

  def save():
    ok = [r for r in results['records'] if r.get('status') == 'ok']
    sizes, times = [r['M'] for r in ok], [r['median_s'] for r in ok]
    top = len(ok) // 2
    results['time_slope'] = fit_slope(sizes, times)
    results['time_slope_upper_half'] = fit_slope(sizes[top:], times[top:])
    results['load_end'] = _load()
    with open(os.path.join(out_dir, 'streamed_encode.json'), 'w') as f:
      json.dump(results, f, indent=1)
    with open(os.path.join(out_dir, 'streamed_encode.md'), 'w') as f:
      f.write(streamed_markdown(results))

  for k in logs:
    spec = dict(config, kind='streamed_encode', M=2**k)
    rec = spawn('benchmarks.presets', spec, config['timeout'])
    rec.update(M=2**k, load=_load())
    results['records'].append(rec)
    save()
    extra = (
      f', {rec["points_per_s"] / 1e6:.2f} M points/s, peak RSS '
      f'{rec["peak_rss_bytes"] / GB:.2f} GiB'
      if rec.get('status') == 'ok'
      else ''
    )
    _log(f'streamed encode M=2^{k}: {_brief(rec)}{extra}')
  return results


def streamed_markdown(results: Dict[str, Any]) -> str:
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
          _fmt(r.get('median_s'), '.2f') if ok else r.get('status', '?'),
          _fmt(r.get('points_per_s'), '.2f', 1e6),
          _fmt(r.get('peak_rss_bytes'), '.2f', GB),
          _fmt(3 * r['M'], '.3f', GB),
          _fmt(r.get('in_memory_inputs_bytes'), '.1f', GB),
          str(r.get('load', ['?'])[0]),
        ]
      )
      + ' |'
    )
  lines += [
    '',
    f'Fitted slope of log time vs log M: '
    f'{_fmt(results.get("time_slope"), ".3f")} (all points), '
    f'{_fmt(results.get("time_slope_upper_half"), ".3f")} (upper '
    'half).',
    '',
  ]
  lines += [
    f'- M={r["M"]}: {r.get("status")} ({r.get("reason", "")})'
    for r in results['records']
    if r.get('status') != 'ok'
  ]
  return '\n'.join(lines) + '\n'


def input_pipeline(
  workers: List[int], batches: int, warmup: int
) -> List[Dict[str, Any]]:
  """Times the digits training input alone, for each worker count.

  Args:
    workers: loader worker counts (`data.worker_count`).
    batches: timed batches per worker count.
    warmup: untimed batches before them (starting the workers included).

  Returns:
    One record per worker count: 'worker_count', 'batch_size', 'batches',
    'seconds' (wall time of the timed batches), 'examples_per_s',
    'startup_s' (wall time of the warm-up batches).
  """
  from experiments import digits  # pylint: disable=g-import-not-at-top

  records = []
  for count in workers:
    config = digits.get_config()
    config.data.worker_count = count
    start = time.perf_counter()
    data = digits.build_task(config, 0, 1).train_data
    for _ in range(warmup):
      next(data)
    timed = time.perf_counter()
    for _ in range(batches):
      next(data)
    seconds = time.perf_counter() - timed
    records.append(
      dict(
        worker_count=count,
        batch_size=config.batch_size,
        batches=batches,
        seconds=seconds,
        examples_per_s=batches * config.batch_size / seconds,
        startup_s=timed - start,
      )
    )
    _log(
      f'input pipeline, {count} workers: '
      f'{records[-1]["examples_per_s"]:.0f} examples/s'
    )
    del data
  return records


def main(argv):
  del argv
  if _WORKER.value:
    worker_main(json.loads(_WORKER.value))
    return
  out_dir = _OUT.value
  os.makedirs(out_dir, exist_ok=True)
  if _INPUT_PIPELINE.value:
    results = dict(
      command=' '.join(['python -m benchmarks.presets'] + sys.argv[1:]),
      machine=machine_info(),
      load_start=_load(),
      input_pipeline=input_pipeline(
        [int(w) for w in _INPUT_WORKERS.value],
        _INPUT_BATCHES.value,
        _INPUT_WARMUP.value,
      ),
      load_end=_load(),
    )
    with open(os.path.join(out_dir, 'input_pipeline.json'), 'w') as f:
      json.dump(results, f, indent=1)
    _log(f'wrote {out_dir}/input_pipeline.json')
    return
  if _STREAMED.value:
    streamed_encode_sweep(out_dir)
    _log(f'wrote {out_dir}/streamed_encode.json, streamed_encode.md')
    return
  if _REPORT_ONLY.value:
    with open(os.path.join(out_dir, 'results.json')) as f:
      results = json.load(f)
    if results.get('scaling'):
      records = results['scaling']['records']
      results['scaling']['slopes'] = scaling_slopes(records)
    write_report(results, out_dir)
    _log(f'rewrote {out_dir}/results.md from results.json')
    return
  started = datetime.datetime.now(datetime.timezone.utc)
  load_start = _load()
  if _MEM_BUDGET_GB.value:
    mem_budget = _MEM_BUDGET_GB.value * GB
  else:
    mem_budget = 0.6 * (meminfo_bytes('MemAvailable') or 8 * GB)
  if _TORCH.value and not torch_available():
    _log(
      'torch/transformers not installed (requirements-test.txt): '
      'the transformers columns stay empty'
    )
    FLAGS.torch = False
  config = dict(
    presets=_PRESETS.value,
    overrides=json.loads(_OVERRIDES.value),
    batch=_BATCH.value,
    dtypes=_DTYPES.value,
    modes=_MODES.value,
    attention_impl=_ATTENTION.value,
    repeats=_REPEATS.value,
    warmup=_WARMUP.value,
    torch=_TORCH.value,
    scaling=_SCALING.value,
    min_log2=_MIN_LOG2.value,
    max_log2=_MAX_LOG2.value,
    latents=_LATENTS.value,
    width=_WIDTH.value,
    input_channels=_INPUT_CHANNELS.value,
    decode_chunk=_DECODE_CHUNK.value,
    scaling_repeats=_SCALING_REPEATS.value,
    timeout=_TIMEOUT.value,
    mem_budget_gib=mem_budget / GB,
    matmul_size=_MATMUL_SIZE.value,
  )
  results = dict(
    command=' '.join(['python -m benchmarks.presets'] + sys.argv[1:]),
    machine=machine_info(),
    config=config,
    started_utc=started.strftime('%Y-%m-%d %H:%M'),
    load_start=load_start,
  )
  spec = dict(kind='matmul', n=_MATMUL_SIZE.value)
  peak = {
    'jax': spawn('benchmarks.presets', spec, _TIMEOUT.value).get(
      'matmul_peak_flops', {}
    )
  }
  if _TORCH.value and _PRESETS.value:
    peak['torch'] = spawn('benchmarks.presets_torch', spec, _TIMEOUT.value).get(
      'matmul_peak_flops', {}
    )
  results['matmul_peak'] = peak
  _log(
    'matmul peak (GFLOP/s): '
    + ', '.join(
      f'{fw} {dt} {v / 1e9:.0f}'
      for fw, d in peak.items()
      for dt, v in d.items()
    )
  )

  def save():  # After every configuration: a stopped run keeps its numbers.
    results['finished_utc'] = datetime.datetime.now(
      datetime.timezone.utc
    ).strftime('%Y-%m-%d %H:%M')
    results['load_end'] = _load()
    if results.get('scaling'):
      results['scaling']['slopes'] = scaling_slopes(
        results['scaling']['records']
      )
    write_report(results, out_dir)

  if _SCALING.value:  # Bounded by the timeouts and the memory budget: first.
    results['scaling'] = dict(records=[], slopes={})
    run_scaling_sweep(mem_budget, results['scaling']['records'], save)
  if _PRESETS.value:
    results['presets'] = []
    run_presets(out_dir, mem_budget, results['presets'], save)
  save()
  _log(f'wrote {out_dir}/results.json, results.md')


if __name__ == '__main__':
  app.run(main)
