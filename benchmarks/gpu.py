"""bf16 training-step throughput and FLOP utilisation of the presets on a GPU.

  python -m benchmarks.gpu --presets=imagenet_fourier,language_mlm \
      --batch=8 --repeats=10 --out=bench_out

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

On a machine without a GPU it prints 'no GPU found' and exits 0.
"""

import json
import os
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import presets as benchmark

# Shared with the CPU benchmark: --presets, --overrides, --batch, --repeats
# (timed steps), --warmup, --out (a directory).
FLAGS = flags.FLAGS
_REMAT = flags.DEFINE_bool('remat', False, 'Rematerialise self-attentions.')
_ALLOW_CPU = flags.DEFINE_bool(
  'allow_cpu',
  False,
  'Debug: run on the CPU when there is no GPU (with '
  'tiny --overrides and --gpu_matmul_size), to check the script itself.',
)
_GPU_MATMUL_SIZE = flags.DEFINE_integer(
  'gpu_matmul_size', 8192, 'n of the n x n x n bf16 matmul peak.'
)

# Nominal dense bf16 tensor-core peaks (FLOP/s), by device-kind substring.
NOMINAL_BF16 = {
  'H200': 989e12,
  'H100': 989e12,
  'A100': 312e12,
  'L4': 121e12,
  'A10': 125e12,
}


def bf16_matmul_peak(n: int, repeats: int = 10) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  for _ in range(3):
    f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2.0 * n**3 / float(np.median(times))


def time_preset(name: str, attention_impl: str):
  """Compiles and times one preset's bf16 training step."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from perceiver import presets  # pylint: disable=g-import-not-at-top

  overrides = json.loads(FLAGS.overrides)
  model = presets.build(
    name,
    compute_dtype=jnp.bfloat16,
    attention_impl=attention_impl,
    remat=_REMAT.value,
    **overrides,
  )
  args, targets = benchmark.preset_inputs(
    name, dict(presets.defaults(name), **overrides), FLAGS.batch
  )
  args, targets = jax.device_put((args, targets))
  params, state = jax.jit(lambda r, *a: model.init(r, *a, is_training=True))(
    jax.random.PRNGKey(0), *args
  )
  optimizer = optax.adam(1e-4)
  opt_state = optimizer.init(params)
  step = jax.jit(
    benchmark.make_train_step(model, optimizer), donate_argnums=(0, 1, 2)
  )
  start = time.perf_counter()
  compiled = step.lower(params, state, opt_state, args, targets).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  flops = float(cost['flops']) if cost and 'flops' in cost else None
  times = []
  for i in range(FLAGS.warmup + FLAGS.repeats):
    start = time.perf_counter()
    params, state, opt_state, loss = compiled(
      params, state, opt_state, args, targets
    )
    jax.block_until_ready((params, loss))
    if i >= FLAGS.warmup:
      times.append(time.perf_counter() - start)
  median = float(np.median(times))
  mem = jax.devices()[0].memory_stats() or {}
  return dict(
    preset=name,
    attention_impl=attention_impl,
    batch=FLAGS.batch,
    compile_s=compile_s,
    step_s=median,
    times_s=times,
    examples_per_s=FLAGS.batch / median,
    flops=flops,
    flops_per_s=flops / median if flops else None,
    loss=float(loss),
    peak_bytes=mem.get('peak_bytes_in_use'),
  )


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  try:
    gpus = jax.devices('gpu')
  except RuntimeError:
    gpus = []
  if not gpus and not _ALLOW_CPU.value:
    print('no GPU found')
    return 0
  kind = gpus[0].device_kind if gpus else 'cpu (debug run)'
  peak = bf16_matmul_peak(_GPU_MATMUL_SIZE.value)
  nominal = next((v for k, v in NOMINAL_BF16.items() if k in kind), None)
  print(
    f'{kind}: measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s'
    + (f', nominal {nominal / 1e12:.0f}' if nominal else ''),
    flush=True,
  )
  results = []
  for name in FLAGS.presets:
    rec = None
    for impl in ('cudnn', 'xla'):
      try:
        rec = time_preset(name, impl)
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
  os.makedirs(FLAGS.out, exist_ok=True)
  path = os.path.join(FLAGS.out, 'gpu_results.json')
  with open(path, 'w') as f:
    json.dump(
      dict(
        device=kind,
        matmul_peak_bf16=peak,
        nominal_peak_bf16=nominal,
        results=results,
      ),
      f,
      indent=1,
    )
  print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  app.run(main)
