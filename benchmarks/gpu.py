"""bf16 training-step throughput and FLOP utilisation of the presets on a GPU.

  python -m benchmarks.gpu --presets=imagenet_fourier,language_mlm \
      --batch=8 --repeats=10 --out=bench_out/gpu
  python -m benchmarks.gpu --allow_cpu --presets=imagenet_fourier \
      --overrides='{"image_size": 8, "num_blocks": 1}' --gpu_matmul_size=64

For each preset: `presets.build(name, compute_dtype=bfloat16,
attention_impl='cudnn')` (float32 parameters, bfloat16 matmuls), one jitted
training step (forward, cross-entropy or MSE loss, backward, Adam update,
donated buffers), the median step time over `--repeats` steps after
`--warmup`, examples/s, XLA's FLOP count per step and the FLOP utilisation:
achieved FLOP/s over the bf16 matmul peak measured on the same GPU in the
same run (an 8192^3 `jnp.dot` with float32 accumulation) and over the
nominal dense bf16 peak of the card where known. Where cuDNN's fused
attention does not take a preset's shapes (e.g. a head width above its
limit), the preset falls back to `attention_impl='xla'` and says so.

Everything runs in this process (one GPU). Prints a line per preset and
writes `<out>/gpu_results.json`. On a machine without a GPU it prints 'no GPU
found' and exits 0 (`--allow_cpu`: runs on the CPU, to check the script).
"""

import os
import sys
from typing import Any, Dict, Optional, Sequence

from benchmarks import common
from benchmarks import presets as preset_table

MODULE = 'benchmarks.gpu'
# Nominal dense bf16 tensor-core peaks (FLOP/s), by device-kind substring.
NOMINAL_BF16 = {
  'H200': 989e12,
  'H100': 989e12,
  'A100': 312e12,
  'L4': 121e12,
  'A10': 125e12,
}


def time_preset(
  name: str,
  *,
  attention_impl: str,
  overrides: Dict[str, Any],
  batch: int,
  remat: bool,
  warmup: int,
  repeats: int,
) -> Dict[str, Any]:
  """Compiles and times one preset's bf16 training step (module docstring).

  Raises:
    Exception: whatever building, compiling or running raises (e.g. cuDNN
      not taking the shapes); `main` then tries the next attention_impl.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from perceiver import presets  # pylint: disable=g-import-not-at-top

  model = presets.build(
    name,
    compute_dtype=jnp.bfloat16,
    attention_impl=attention_impl,
    remat=remat,
    **overrides,
  )
  args, targets = preset_table.preset_inputs(
    name, dict(presets.defaults(name), **overrides), batch
  )
  args, targets = jax.device_put((args, targets))
  params, state = jax.jit(lambda r, *a: model.init(r, *a, is_training=True))(
    jax.random.PRNGKey(0), *args
  )
  optimizer = optax.adam(1e-4)
  rec = common.compile_and_time(
    preset_table.make_train_step(model, optimizer),
    (params, state, optimizer.init(params), args, targets),
    warmup=warmup,
    repeats=repeats,
    mem_budget=None,
    donate=(0, 1, 2),
    feed_back=lambda a, o: (o[0], o[1], o[2], a[3], a[4]),
  )
  mem = jax.devices()[0].memory_stats() or {}
  return dict(
    preset=name,
    attention_impl=attention_impl,
    batch=batch,
    compile_s=rec['compile_s'],
    step_s=rec['median_s'],
    times_s=rec['times_s'],
    examples_per_s=batch / rec['median_s'],
    flops=rec['flops'],
    flops_per_s=rec.get('flops_per_s'),
    loss=float(rec['last_outputs'][3]),
    peak_bytes=mem.get('peak_bytes_in_use'),
  )


def parser():
  p = common.new_parser(MODULE, __doc__)
  preset_table.add_preset_flags(p)
  p.add_argument('--out', default='bench_out', help='Output directory.')
  common.add_bool(
    p, 'remat', default=False, help='Rematerialise self-attentions.'
  )
  common.add_bool(
    p,
    'allow_cpu',
    default=False,
    help='Debug: run on the CPU when there is no GPU (with tiny --overrides '
    'and --gpu_matmul_size), to check the script itself.',
  )
  p.add_argument(
    '--gpu_matmul_size',
    type=int,
    default=8192,
    help='n of the n x n x n bf16 matmul peak.',
  )
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parser().parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top

  try:
    gpus = jax.devices('gpu')
  except RuntimeError:
    gpus = []
  if not gpus and not args.allow_cpu:
    print('no GPU found')
    return 0
  kind = gpus[0].device_kind if gpus else 'cpu (debug run)'
  peak = common.matmul_peak(
    args.gpu_matmul_size, dtypes=('bfloat16',), warmup=3, repeats=10
  )['bfloat16']
  nominal = next((v for k, v in NOMINAL_BF16.items() if k in kind), None)
  print(
    f'{kind}: measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s'
    + (f', nominal {nominal / 1e12:.0f}' if nominal else ''),
    flush=True,
  )
  results = []
  for name in args.presets:
    rec = None
    for impl in ('cudnn', 'xla'):
      try:
        rec = time_preset(
          name,
          attention_impl=impl,
          overrides=args.overrides,
          batch=args.batch,
          remat=args.remat,
          warmup=args.warmup,
          repeats=args.repeats,
        )
        break
      except Exception as e:  # pylint: disable=broad-except
        print(
          f'{name} ({impl}): {type(e).__name__}: {str(e)[:300]}', flush=True
        )
    if rec is None:
      results.append(dict(preset=name, status='failed'))
      continue
    rec['status'] = 'ok'
    rec['utilisation_measured'] = (
      rec['flops_per_s'] / peak if rec['flops_per_s'] else None
    )
    rec['utilisation_nominal'] = (
      rec['flops_per_s'] / nominal if rec['flops_per_s'] and nominal else None
    )
    results.append(rec)
    tf = (rec['flops_per_s'] or 0) / 1e12
    print(
      f'{name:20s} {rec["attention_impl"]:6s} batch {rec["batch"]:3d} '
      f'step {rec["step_s"] * 1e3:8.1f} ms  '
      f'{rec["examples_per_s"]:8.1f} ex/s  {tf:6.1f} TFLOP/s  '
      f'{100 * (rec["utilisation_measured"] or 0):5.1f}% of measured '
      f'peak  compile {rec["compile_s"]:.0f} s  peak mem '
      f'{(rec["peak_bytes"] or 0) / 2**30:.1f} GiB',
      flush=True,
    )
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, 'gpu_results.json')
  common.write_json(
    path,
    dict(
      device=kind,
      matmul_peak_bf16=peak,
      nominal_peak_bf16=nominal,
      results=results,
    ),
  )
  print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
