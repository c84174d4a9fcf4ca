"""The digits training input alone: examples/s per loader worker count.

  python -m benchmarks.input_pipeline --out=bench_out/input_pipeline \
      --input_workers=0,1,2
  python -m benchmarks.input_pipeline --out=/tmp/input --input_workers=0 \
      --input_batches=3 --input_warmup=1

The input of experiments/digits.py's `train_iterator` (grain loader,
normalisation, random shifts, batches of its `batch_size`; no model), for
each `--input_workers` worker count, timed over `--input_batches` batches
after `--input_warmup` untimed ones (which include starting the workers), in
this process. Writes `<out>/input_pipeline.json`: the command, the machine,
the load average before and after, and one record per worker count.
"""

import argparse
import os
import time
from typing import Any, Dict, List, Optional, Sequence

from benchmarks import common

MODULE = 'benchmarks.input_pipeline'


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
    common.log(
      f'input pipeline, {count} workers: '
      f'{records[-1]["examples_per_s"]:.0f} examples/s'
    )
    del data
  return records


def parser() -> argparse.ArgumentParser:
  p = common.new_parser(MODULE, __doc__)
  p.add_argument(
    '--input_workers',
    type=common.comma_list,
    default=['0', '1', '2'],
    help='Loader worker counts to time (comma-separated).',
  )
  p.add_argument(
    '--input_batches',
    type=int,
    default=100,
    help='Timed batches per worker count.',
  )
  p.add_argument(
    '--input_warmup',
    type=int,
    default=10,
    help='Untimed batches first (start-up of the workers).',
  )
  p.add_argument('--out', default='bench_out', help='Output directory.')
  return p


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = parser().parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  results = dict(
    command=common.command(MODULE, argv),
    machine=common.machine_info(),
    load_start=common.load(),
    input_pipeline=input_pipeline(
      [int(w) for w in args.input_workers],
      args.input_batches,
      args.input_warmup,
    ),
    load_end=common.load(),
  )
  common.write_json(os.path.join(args.out, 'input_pipeline.json'), results)
  common.log(f'wrote {args.out}/input_pipeline.json')


if __name__ == '__main__':
  main()
