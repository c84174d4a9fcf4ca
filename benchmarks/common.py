"""What several benchmarks share: processes, memory, timing and reports.

Every configuration of a benchmark runs in a fresh process (`spawn`): JAX and
PyTorch thread pools never share a process, and a peak resident set size is
that configuration's alone. The process runs `python -m <module>
--worker=<JSON spec>` (`run_worker`), which writes its record to the spec's
`result_path`; one that runs out of memory or time is recorded as 'OOM' or
'timeout' and the benchmark goes on.

Also here: peak memory (Linux /proc: the peak RSS, its reset, meminfo), wall
times of repeated calls, XLA's FLOP count and memory analysis of a compiled
function (`compile_and_time`), the matmul peak, the machine and the code
measured (`machine_info`), the load average, the log-log slope of a sweep,
and the Markdown pieces of the reports. Nothing here imports JAX until a
measurement needs it, so the PyTorch worker (benchmarks/presets_torch.py)
uses it too.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

GB = 2.0**30
# What a record keeps of its spec: not the plumbing.
_PRIVATE_SPEC_KEYS = ('export_dir', 'result_path', 'mem_budget', 'kind')


# ---------------------------------------------------------------------------
# Command lines.
# ---------------------------------------------------------------------------


def new_parser(module: str, doc: str) -> argparse.ArgumentParser:
  """The parser of `python -m module`: described by `doc`'s first line, no
  abbreviated flags."""
  return argparse.ArgumentParser(
    prog=f'python -m {module}',
    description=doc.split('\n')[0],
    allow_abbrev=False,
  )


def comma_list(text: str) -> List[str]:
  """'a,b' -> ['a', 'b']; '' -> [] (e.g. `--presets=`: none)."""
  return [item.strip() for item in text.split(',') if item.strip()]


def add_bool(
  parser: argparse.ArgumentParser, name: str, *, default: bool, help: str
) -> None:
  """`--name` and `--noname` (the spelling of the recorded commands)."""
  parser.add_argument(
    f'--{name}', action='store_true', default=default, help=help
  )
  parser.add_argument(
    f'--no{name}', dest=name, action='store_false', help=f'not --{name}'
  )


def add_worker_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--worker', help='Internal: run one configuration (JSON spec).'
  )


def add_report_flags(parser: argparse.ArgumentParser, *, row: str) -> None:
  """The flags of a benchmark that measures each `row` of its
  results.json / results.md in a process of its own: --timeout,
  --mem_budget_gb, --matmul_size (the header's peak), --out, --report_only
  and --worker."""
  parser.add_argument(
    '--timeout', type=int, default=600, help=f'Seconds per {row} (a process).'
  )
  parser.add_argument(
    '--mem_budget_gb',
    type=float,
    default=None,
    help=f'Skip (as OOM) a {row} whose XLA memory analysis exceeds this; '
    'default: 60%% of the memory available at start.',
  )
  parser.add_argument(
    '--matmul_size',
    type=int,
    default=2048,
    help='n of the n x n x n matmul peak.',
  )
  parser.add_argument('--out', default='bench_out', help='Output directory.')
  add_bool(
    parser,
    'report_only',
    default=False,
    help='Only re-render the report from <out>/results.json.',
  )
  add_worker_flag(parser)


def command(module: str, argv: Optional[Sequence[str]]) -> str:
  """The command line run: `python -m module` and its arguments."""
  args = sys.argv[1:] if argv is None else list(argv)
  return ' '.join([f'python -m {module}', *args])


# ---------------------------------------------------------------------------
# Memory (Linux: /proc; elsewhere what getrusage gives).
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


def meminfo_bytes(field: str) -> Optional[int]:
  """A /proc/meminfo field (e.g. 'MemAvailable') in bytes; None elsewhere."""
  return _proc_kib_field_bytes('/proc/meminfo', field)


def reset_peak_rss() -> bool:
  """Resets this process's peak RSS (VmHWM) to its current RSS (Linux)."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return proc_status_bytes('VmHWM') is not None
  except OSError:
    return False


def mem_budget_bytes(gib: Optional[float]) -> float:
  """`--mem_budget_gb` in bytes; if unset, 60% of the memory available now
  (8 GiB where /proc/meminfo is missing)."""
  if gib:
    return gib * GB
  return 0.6 * (meminfo_bytes('MemAvailable') or 8 * GB)


# ---------------------------------------------------------------------------
# Timing and XLA's view of a compiled function.
# ---------------------------------------------------------------------------


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int) -> List[float]:
  """Wall times (s) of `repeats` calls of `fn` (which blocks) after `warmup`."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def matmul_peak(
  n: int,
  *,
  dtypes: Sequence[str] = ('float32', 'bfloat16'),
  warmup: int = 2,
  repeats: int = 5,
) -> Dict[str, float]:
  """{dtype: FLOP/s} of a jitted n x n x n matmul of `dtype` inputs with
  float32 accumulation (preferred_element_type), median of `repeats` calls
  after `warmup`, on JAX's default device."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  out = {}
  for dtype in dtypes:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    times = time_calls(lambda: f(a, b).block_until_ready(), warmup, repeats)
    out[dtype] = 2.0 * n**3 / float(np.median(times))
  return out


def matmul_record(spec: Dict[str, Any]) -> Dict[str, Any]:
  """The worker record of a 'matmul' spec: JAX's peak for `spec['n']`."""
  return dict(matmul_peak_flops=matmul_peak(spec['n']))


def _cost(compiled) -> Optional[float]:
  """XLA's FLOP count of a lowered or compiled function, or None."""
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
  count of the compiled `fn`. A configuration whose XLA memory analysis
  exceeds `mem_budget` (bytes; None or 0: no limit) is not run: status
  'OOM'. Else status 'ok', the wall times (s) of the `repeats` calls after
  `warmup` (each blocks on its outputs), their median and minimum,
  FLOP/s, and the last call's outputs (`last_outputs`).
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


def fit_slope(xs, ys) -> Optional[float]:
  """Least-squares slope of log(y) against log(x), None under two points
  (points with a missing or non-positive value are left out)."""
  pairs = [(x, y) for x, y in zip(xs, ys) if x and y and y > 0]
  if len(pairs) < 2:
    return None
  x, y = np.log2(np.array(pairs, np.float64)).T
  return float(np.polyfit(x, y, 1)[0])


# ---------------------------------------------------------------------------
# One process per configuration.
# ---------------------------------------------------------------------------


def spawn(module: str, spec: Dict[str, Any], timeout: float) -> Dict[str, Any]:
  """Runs `python -m module --worker=spec` and returns its result record:
  the worker's, with `process_s` (the process's wall time), or status
  'timeout' (over `timeout` s), 'OOM' (killed, or an out-of-memory error
  last) or 'error', each with the `reason`."""
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


def run_worker(
  spec_json: str,
  handlers: Mapping[str, Callable[[Dict[str, Any]], Dict[str, Any]]],
) -> None:
  """The worker side of `spawn`: runs `handlers[spec['kind']](spec)` and
  writes the record to `spec['result_path']`.

  Raises:
    ValueError: a kind with no handler.
  """
  spec = json.loads(spec_json)
  if spec['kind'] not in handlers:
    raise ValueError(
      f'--worker: expected a kind among {sorted(handlers)}, got '
      f'{spec["kind"]!r}.'
    )
  rec = handlers[spec['kind']](spec)
  with open(spec['result_path'], 'w') as f:
    json.dump(rec, f)


def spawn_matmul_peak(module: str, n: int, timeout: float) -> Dict[str, float]:
  """{dtype: FLOP/s} of an n x n x n matmul in a process of `module` (whose
  worker measures JAX's, or torch's), {} if that process failed."""
  rec = spawn(module, dict(kind='matmul', n=n), timeout)
  return rec.get('matmul_peak_flops', {})


def public(spec: Dict[str, Any]) -> Dict[str, Any]:
  """What a record keeps of its spec (not the paths, budget and kind)."""
  return {k: v for k, v in spec.items() if k not in _PRIVATE_SPEC_KEYS}


# ---------------------------------------------------------------------------
# The machine, the load and the log.
# ---------------------------------------------------------------------------


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
  try:  # The code measured: commit, and whether it had edits.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    git = lambda *a: subprocess.run(
      ['git', *a], cwd=root, capture_output=True, text=True, timeout=30
    ).stdout.strip()
    info['git_commit'] = git('rev-parse', '--short', 'HEAD')
    info['git_uncommitted'] = git(
      'status', '--porcelain', 'perceiver', 'experiments', 'benchmarks'
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


def load() -> List[float]:
  """The 1, 5 and 15 minute load averages, rounded to 0.01."""
  return [round(x, 2) for x in os.getloadavg()]


def log(msg: str) -> None:
  """Prints `msg` after the UTC time and the 1-minute load."""
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%H:%M:%S')
  print(f'[{stamp} load {load()[0]:.1f}] {msg}', flush=True)


def _utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M')


def new_results(
  module: str, argv: Optional[Sequence[str]], config: Dict[str, Any]
) -> Dict[str, Any]:
  """A report's start: the command, machine, config, start time and load."""
  return dict(
    command=command(module, argv),
    machine=machine_info(),
    config=config,
    started_utc=_utc_now(),
    load_start=load(),
  )


def stamp_end(results: Dict[str, Any]) -> None:
  """Sets the report's `finished_utc` and `load_end` to now."""
  results['finished_utc'] = _utc_now()
  results['load_end'] = load()


def write_json(path: str, obj: Any) -> None:
  with open(path, 'w') as f:
    json.dump(obj, f, indent=1)


# ---------------------------------------------------------------------------
# Markdown.
# ---------------------------------------------------------------------------


def fmt(x, spec='.3g', scale=1.0, suffix='') -> str:
  """`x / scale` formatted with `spec`, or '–' for None."""
  if x is None:
    return '–'
  return f'{x / scale:{spec}}{suffix}'


def ms(rec: Optional[Dict[str, Any]]) -> str:
  """A record's median in ms, its status if not 'ok', '–' if None."""
  if rec is None:
    return '–'
  if rec.get('status') != 'ok':
    return rec.get('status', '?')
  return fmt(rec['median_s'], '.1f', 1e-3)


def brief(rec: Dict[str, Any]) -> str:
  """One line of a record for the log: its median and peak, or status."""
  if rec.get('status') != 'ok':
    return f'{rec.get("status")}: {rec.get("reason", "")}'
  mem = rec.get('peak_mem_bytes')
  return f'median {rec["median_s"]:.4f} s' + (
    f', peak mem {mem / GB:.2f} GiB' if mem is not None else ''
  )


def report_header(results: Dict[str, Any]) -> List[str]:
  """The lines that open results.md: title, command, machine, code, load
  and the matmul peak measured at the start."""
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
      f'Measured matmul peak ({n}x{n}x{n}, GFLOP/s): ' + peak_text(peak),
      '',
    ]
  return lines


def peak_text(peak: Dict[str, Dict[str, float]]) -> str:
  """{framework: {dtype: FLOP/s}} as 'jax float32 300, ...' (GFLOP/s)."""
  return ', '.join(
    f'{fw} {dt} {v / 1e9:.0f}' for fw, d in peak.items() for dt, v in d.items()
  )
