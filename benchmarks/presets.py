"""The released presets: step time, FLOPs and memory, JAX against PyTorch.

  python -m benchmarks.presets --out=bench_out/presets \
      --presets=language_mlm,imagenet_fourier --batch=1 --repeats=5 \
      --dtypes=float32,bfloat16 --torch
  python -m benchmarks.presets --out=/tmp/presets --presets=imagenet_fourier \
      --overrides='{"image_size": 8, "num_blocks": 1}' --dtypes=float32 \
      --repeats=1 --warmup=0 --matmul_size=64

(`make bench ARGS='...'`.) For each preset, dtype and mode ('forward':
inference, `is_training=False`; 'train': forward + backward of a
cross-entropy (MSE for regression outputs) loss + an Adam update), the median
wall time of `--repeats` calls after `--warmup` calls, the compile time,
XLA's FLOP count (`compiled.cost_analysis()`), FLOP/s and its ratio to the
matmul peak measured in the same run for the same dtype, the peak memory and
XLA's compiled memory analysis. With `--torch`, the same model in
transformers' PyTorch Perceiver, with the same initial weights (converted by
`perceiver.hf_convert`) and inputs, in float32 and under
`torch.autocast(bfloat16)` (benchmarks/presets_torch.py).

Every configuration runs in a fresh process (benchmarks/common.py: JAX and
PyTorch thread pools never share a process, and peak memory is that
process's peak resident set size minus its resident set size before the
model was built), under `--timeout`; one that runs out of memory or time is
recorded as 'OOM' or 'timeout' and the run goes on. Writes
`<out>/results.json` and `<out>/results.md` after every configuration;
`--report_only` re-renders results.md from results.json.
"""

import functools
import json
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from benchmarks import common

MODULE = 'benchmarks.presets'
TORCH_MODULE = 'benchmarks.presets_torch'
GB = common.GB


# ---------------------------------------------------------------------------
# Inputs, losses, one measurement (inside a worker process).
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
  """One (preset, dtype, mode) measurement in JAX; `spec`: `run_presets`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from perceiver import hf_convert  # pylint: disable=g-import-not-at-top
  from perceiver import presets  # pylint: disable=g-import-not-at-top

  jnp.zeros(1).block_until_ready()  # Start the backend before the baseline.
  baseline = common.peak_rss_bytes()
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
      common.compile_and_time(
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
      common.compile_and_time(
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
  rec['peak_rss_bytes'] = common.peak_rss_bytes()
  rec['baseline_rss_bytes'] = baseline
  rec['peak_mem_bytes'] = rec['peak_rss_bytes'] - baseline
  if spec.get('matmul_size'):  # The peak under this run's machine load.
    rec['matmul_peak_flops'] = common.matmul_peak(spec['matmul_size'])
  return rec


# ---------------------------------------------------------------------------
# The table: one process per configuration.
# ---------------------------------------------------------------------------


def torch_available() -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top

  return all(
    importlib.util.find_spec(m) is not None for m in ('torch', 'transformers')
  )


def run_presets(
  config: Dict[str, Any],
  *,
  out_dir: str,
  mem_budget: float,
  records: List[Dict[str, Any]],
  save,
) -> None:
  """Appends the table's records for the run's `config` (see `main`): per
  preset, JAX's, then transformers' with `config['torch']`; calls `save()`
  after each. The JAX worker leaves the weights and inputs for the torch one
  in a temporary folder under `out_dir`."""
  for name in config['presets']:
    export = tempfile.mkdtemp(prefix=f'bench_{name}_', dir=out_dir)
    try:
      for framework in ('jax', 'torch') if config['torch'] else ('jax',):
        for dtype in config['dtypes']:
          for mode in config['modes']:
            spec = dict(
              kind='preset',
              framework=framework,
              preset=name,
              overrides=config['overrides'],
              batch=config['batch'],
              dtype=dtype,
              mode=mode,
              warmup=config['warmup'],
              repeats=config['repeats'],
              export_dir=export,
            )
            if framework == 'jax':
              spec.update(
                attention_impl=config['attention_impl'],
                mem_budget=mem_budget,
                matmul_size=config['matmul_size'],
              )
              rec = common.spawn(MODULE, spec, config['timeout'])
            elif not os.path.exists(os.path.join(export, 'inputs.npz')):
              rec = dict(
                status='skipped',
                reason=(
                  'no transformers inputs (video_autoencoding: transformers '
                  'decodes only subsampled points) or no exported weights'
                ),
              )
            else:
              rec = common.spawn(TORCH_MODULE, spec, config['timeout'])
            records.append(dict(common.public(spec), **rec))
            save()
            common.log(
              f'{framework} {name} {dtype} {mode}: {common.brief(rec)}'
            )
    finally:
      shutil.rmtree(export, ignore_errors=True)


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------


def markdown(results: Dict[str, Any]) -> str:
  """results.md: the header (benchmarks/common.py), then one row per
  preset, dtype and mode, JAX beside transformers, and notes."""
  lines = common.report_header(results)
  peak = results.get('matmul_peak', {})
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
            common.ms(r),
            common.fmt(r.get('compile_s'), '.1f'),
            common.fmt(r.get('flops'), '.1f', 1e9),
            common.fmt(r.get('flops_per_s') if ok else None, '.1f', 1e9),
            common.fmt(frac, '.0%') if frac is not None else '–',
            common.fmt(r.get('peak_mem_bytes') if ok else None, '.2f', GB),
            common.fmt(xla, '.2f', GB),
            common.ms(t),
            common.fmt(t.get('peak_mem_bytes') if t_ok else None, '.2f', GB),
            common.fmt(ratio, '.2f'),
            common.fmt(t.get('max_rel_err') if t_ok else None, '.1e'),
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
  return '\n'.join(lines)


def write_report(results: Dict[str, Any], out_dir: str) -> None:
  """results.json and results.md."""
  common.write_json(os.path.join(out_dir, 'results.json'), results)
  with open(os.path.join(out_dir, 'results.md'), 'w') as f:
    f.write(markdown(results))


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def add_preset_flags(p) -> None:
  """--presets, --overrides, --batch, --repeats and --warmup (with
  benchmarks/gpu.py)."""
  p.add_argument(
    '--presets',
    type=common.comma_list,
    default=['language_mlm', 'imagenet_fourier'],
    help='Presets (comma-separated; empty: none).',
  )
  p.add_argument(
    '--overrides',
    type=json.loads,
    default={},
    help='JSON dict of preset size overrides for a custom size, applied to '
    'every preset, e.g. \'{"num_blocks": 1, "image_size": 32}\'.',
  )
  p.add_argument('--batch', type=int, default=1, help='Batch size.')
  p.add_argument('--repeats', type=int, default=5, help='Timed calls (median).')
  p.add_argument(
    '--warmup', type=int, default=1, help='Untimed calls after compiling.'
  )


def parser():
  p = common.new_parser(MODULE, __doc__)
  add_preset_flags(p)
  p.add_argument(
    '--dtypes',
    type=common.comma_list,
    default=['float32', 'bfloat16'],
    help='Compute dtypes (float32, bfloat16).',
  )
  p.add_argument(
    '--modes',
    type=common.comma_list,
    default=['forward', 'train'],
    help='What to time: forward, train.',
  )
  p.add_argument(
    '--attention_impl',
    default='reference',
    help='attention_impl of the presets.',
  )
  common.add_bool(
    p, 'torch', default=True, help="Also time transformers' PyTorch Perceiver."
  )
  common.add_report_flags(p, row='configuration')
  return p


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parser().parse_args(argv)
  if args.worker:
    common.run_worker(
      args.worker, dict(preset=run_preset, matmul=common.matmul_record)
    )
    return
  os.makedirs(args.out, exist_ok=True)
  if args.report_only:
    with open(os.path.join(args.out, 'results.json')) as f:
      write_report(json.load(f), args.out)
    common.log(f'rewrote {args.out}/results.md from results.json')
    return
  if not isinstance(args.overrides, dict):
    raise ValueError(
      f'--overrides: expected a JSON object, got {args.overrides!r}.'
    )
  for name, allowed in (
    ('dtypes', ('float32', 'bfloat16')),
    ('modes', ('forward', 'train')),
  ):
    bad = [v for v in getattr(args, name) if v not in allowed]
    if bad:
      raise ValueError(f'--{name}: expected values among {allowed}, got {bad}.')
  mem_budget = common.mem_budget_bytes(args.mem_budget_gb)
  if args.torch and not torch_available():
    common.log(
      'torch/transformers not installed (requirements-test.txt): '
      'the transformers columns stay empty'
    )
    args.torch = False
  config = dict(
    presets=args.presets,
    overrides=args.overrides,
    batch=args.batch,
    dtypes=args.dtypes,
    modes=args.modes,
    attention_impl=args.attention_impl,
    repeats=args.repeats,
    warmup=args.warmup,
    torch=args.torch,
    timeout=args.timeout,
    mem_budget_gib=mem_budget / GB,
    matmul_size=args.matmul_size,
  )
  results = common.new_results(MODULE, argv, config)
  peak = {
    'jax': common.spawn_matmul_peak(MODULE, args.matmul_size, args.timeout)
  }
  if args.torch and args.presets:
    peak['torch'] = common.spawn_matmul_peak(
      TORCH_MODULE, args.matmul_size, args.timeout
    )
  results['matmul_peak'] = peak
  common.log('matmul peak (GFLOP/s): ' + common.peak_text(peak))
  results['presets'] = []

  def save():  # After every configuration: a stopped run keeps its numbers.
    common.stamp_end(results)
    write_report(results, args.out)

  run_presets(
    config,
    out_dir=args.out,
    mem_budget=mem_budget,
    records=results['presets'],
    save=save,
  )
  save()
  common.log(f'wrote {args.out}/results.json, results.md')


if __name__ == '__main__':
  main()
