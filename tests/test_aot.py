"""Compile-only reports for TPU slices (perceiver/train/aot.py) and the
utilisation and goodput figures of a training run.

References: FLOPs written out by hand (2 x the multiply-adds of a wide
MLP's matmuls), the FSDP factor of the parameter bytes, the chip table's
HBM, hand-made HLO lines, a fake clock. The compiles for a TPU slice need
the libtpu wheel (requirements-test.txt installs it on both Pythons); where
it is missing they skip, saying so.
"""

import functools
import importlib
import importlib.util
import json
import os
import subprocess
import sys

import haiku as hk
import jax
import numpy as np
import optax
import pytest

from tests import test_train_common as common
from perceiver.train import aot
from perceiver.train import loop
from perceiver.train import mesh as mesh_lib
from perceiver.train import metrics as metrics_lib
from perceiver.train import progress as progress_lib
from perceiver.train.task import Task

needs_libtpu = pytest.mark.skipif(
  importlib.util.find_spec('libtpu') is None,
  reason='the libtpu wheel is not installed (pip install libtpu; '
  'requirements-test.txt has it)',
)

IN, HIDDEN, OUT = 512, 1024, 16


def mlp_task(hidden=HIDDEN):
  """x [B, 512] -> Linear(hidden) -> gelu -> Linear(hidden) -> gelu ->
  Linear(16): matmuls dominate its FLOPs."""

  def forward(batch, *, is_training):
    del is_training
    x = jax.nn.gelu(hk.Linear(hidden)(batch['x']))
    x = jax.nn.gelu(hk.Linear(hidden)(x))
    return hk.Linear(OUT)(x)

  def per_example(logits, batch):
    return {
      'loss': optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['label']
      )
    }

  return Task(
    forward=hk.transform_with_state(forward),
    per_example=per_example,
    train_data=None,
    example_batch={
      'x': np.zeros((2, IN), np.float32),
      'label': np.zeros((2,), np.int32),
    },
  )


def hand_flops(batch, hidden=HIDDEN, train=True):
  """2 x the multiply-adds of the MLP's matmuls for `batch` examples.

  Forward: x @ W1, h1 @ W2, h2 @ W3. Training adds, per layer, the
  gradient of the weights (as many multiply-adds as the forward) and of
  the layer's input, except for the first layer, whose input (the data)
  needs no gradient.
  """
  forward = IN * hidden + hidden * hidden + hidden * OUT
  if not train:
    return 2 * batch * forward
  return 2 * batch * (3 * forward - IN * hidden)


def mlp_config(**overrides):
  c = common.toy_config(batch_size=1024, eval_batch_size=1024)
  c.unlock()
  del c['model']
  for k, v in overrides.items():
    c[k] = v
  return c


def test_unknown_topology_lists_the_known_ones():
  with pytest.raises(ValueError) as e:
    aot.topology_devices('v5e:3x3')
  assert "got 'v5e:3x3'" in str(e.value)
  assert 'v5e:4x4' in str(e.value) and 'v5p:4x4x4' in str(e.value)
  with pytest.raises(ValueError, match='num_slices'):
    aot.topology_devices('v5e:2x2', num_slices=0)


def test_missing_libtpu_is_one_line_naming_the_install(monkeypatch):
  from jax.experimental import topologies

  def no_tpu(*args, **kwargs):
    raise RuntimeError(
      'JAX TPU support not installed; cannot generate TPU topology.'
    )

  monkeypatch.setattr(topologies, 'get_topology_desc', no_tpu)
  with pytest.raises(ValueError) as e:
    aot.topology_devices('v5e:2x2')
  assert aot.LIBTPU_INSTALL in str(e.value)
  assert '\n' not in str(e.value)


def test_collectives_of_hlo_lines():
  text = '\n'.join(
    [
      '  %all-reduce = f32[512,128]{1,0:T(8,128)} all-reduce(%fusion), '
      'metadata={op_name="all-gather(x)"}',
      '  ROOT %t = (f32[4]{0}, bf16[8,2]{1,0}) all-reduce(%a, %b)',
      '  %ag = (bf16[4,8]{1,0}, bf16[16,8]{1,0}) all-gather-start(%p)',
      '  %agd = bf16[16,8]{1,0} all-gather-done(%ag)',
      '  %rs = f32[2,8]{1,0} reduce-scatter(%q), dimensions={0}',
      '  %f = f32[8]{0} fusion(%all-reduce), kind=kLoop',
      '  %cp = (f32[64]{0}, f32[64]{0}, u32[], u32[]) '
      'collective-permute-start(%r)',
    ]
  )
  assert aot.collectives(text) == {
    'all-reduce': {'count': 2, 'bytes': 512 * 128 * 4 + 4 * 4 + 16 * 2},
    'all-gather': {'count': 1, 'bytes': 16 * 8 * 2},
    'reduce-scatter': {'count': 1, 'bytes': 2 * 8 * 4},
    'collective-permute': {'count': 1, 'bytes': 64 * 4},
  }


def test_matmul_flops_count_loops_that_xla_counts_once():
  """On the CPU: with 2 microbatches the step is a while loop whose body
  XLA counts once; the jaxpr count has both trips and equals the hand
  count, as without accumulation."""
  task = mlp_task()
  mesh = mesh_lib.make_mesh(1, jax.devices()[:1])
  costs = {}
  for a in (1, 2):
    steps = loop.jit_steps(mlp_config(accumulation_steps=a), task, mesh)
    batch = aot.abstract_batch(
      task.example_batch, 1024, mesh_lib.batch_sharding(mesh)
    )
    costs[a] = aot.compile_costs(steps.train_step, steps.abstract, batch)
  want = hand_flops(1024)
  for a in (1, 2):
    assert costs[a]['matmul_flops'] == pytest.approx(want, rel=1e-6)
    assert costs[a]['step_flops'] == pytest.approx(want, rel=0.05)
  assert costs[1]['while_loops'] == 0 and costs[2]['while_loops'] >= 1
  assert costs[2]['flops'] < 0.6 * want  # XLA: one microbatch of two


@needs_libtpu
def test_report_flops_and_fsdp_bytes_on_v5e():
  """Per-device FLOPs of a matmul-dominated step against the hand count,
  and parameter bytes divided by the FSDP factor.

  Tolerance 5%: besides the matmuls, the step does ~25 FLOP per parameter
  (clipping + AdamW on 1.6M parameters: ~40 MFLOP per device) and ~30 per
  hidden activation (GELU and its gradient, softmax: ~20 MFLOP per device
  for 256 examples x 2048 activations), against 2.1 GFLOP of matmuls per
  device: under 3%.
  """
  task = mlp_task()
  reports = {
    f: aot.compile_report(
      mlp_config(fsdp=f), task, 'v5e:2x2', eval_step=(f == 1)
    )
    for f in (1, 4)
  }
  r = reports[1]
  assert r['devices'] == 4 and r['device_kind'] == 'TPU v5 lite'
  per_device = 1024 // 4
  assert r['train']['flops'] == pytest.approx(hand_flops(per_device), rel=0.05)
  assert r['train']['matmul_flops'] == pytest.approx(
    hand_flops(per_device), rel=1e-6
  )
  assert r['eval']['flops'] == pytest.approx(
    hand_flops(per_device, train=False), rel=0.05
  )
  # Parameters: the three weight matrices are split 4 ways (the largest
  # dimension of each divides by 4); biases (< 4096 entries) replicated.
  weights = IN * HIDDEN + HIDDEN * HIDDEN + HIDDEN * OUT
  biases = HIDDEN + HIDDEN + OUT
  bytes_1 = r['state_bytes_per_device']['params']
  bytes_4 = reports[4]['state_bytes_per_device']['params']
  assert bytes_1 == 4 * (weights + biases)
  assert bytes_4 == 4 * (weights / 4 + biases)
  # The compiled executable's arguments shrink with them (params, Adam's
  # two moments; the batch is the same).
  args_1 = r['train']['memory']['arguments']
  args_4 = reports[4]['train']['memory']['arguments']
  assert args_1 - args_4 == pytest.approx(3 * (bytes_1 - bytes_4), rel=0.05)
  # FSDP gathers the weights and reduce-scatters their gradients.
  assert 'all-gather' in reports[4]['train']['collectives']
  roofline = r['train']['roofline']
  peak = aot.CHIPS['v5e'].peak_flops
  assert roofline['compute_s'] == pytest.approx(r['train']['step_flops'] / peak)
  assert roofline['examples_per_s'] == pytest.approx(1024 / roofline['step_s'])
  assert r['train']['fits']


@needs_libtpu
def test_a_model_too_big_for_the_chip_is_reported_as_not_fitting():
  """A 2**23-wide hidden layer: 4 * (512 + 16) * 2**23 bytes = 17.7 GB of
  weights, three times over with Adam's moments, on a 32 GiB v4 chip."""
  hidden = 2**23
  task = mlp_task(hidden)
  task = task._replace(
    forward=hk.transform_with_state(
      lambda batch, *, is_training: hk.Linear(OUT)(
        jax.nn.gelu(hk.Linear(hidden)(batch['x']))
      )
    )
  )
  r = aot.compile_report(
    mlp_config(batch_size=4, eval_batch_size=4),
    task,
    'v4:2x2x1',
    eval_step=False,
  )
  # The TPU compiler itself refuses the program and names the sizes.
  part = r['train']
  assert not part['fits'] and 'HBM' in part['compile_error']
  assert part['required_bytes'] > part['available_bytes']
  assert part['available_bytes'] <= aot.CHIPS['v4'].hbm_bytes
  assert part['hbm_margin_bytes'] < 0
  assert 'DOES NOT FIT' in aot.format_report(r)


@needs_libtpu
def test_an_eval_batch_the_slice_does_not_divide_skips_only_the_eval_step():
  # 10 over 4 devices does not divide: the training step still compiles
  # (as ImageNet's eval batch of 1,000 on any slice of 16 or more devices).
  r = aot.compile_report(
    mlp_config(batch_size=64, eval_batch_size=10), mlp_task(), 'v5e:2x2'
  )
  assert r['eval'] == {
    'skipped': 'eval_batch_size 10 is not a multiple of the 4 devices'
  }
  assert r['train']['fits'] and r['train']['flops'] > 0
  # The training batch is still checked.
  with pytest.raises(ValueError, match='batch_size'):
    aot.compile_report(mlp_config(batch_size=66), mlp_task(), 'v5e:2x2')


@needs_libtpu
def test_compile_only_command_writes_the_report(tmp_path):
  """The digits :debug config through experiments.main on a v4 slice."""
  cmd = [
    sys.executable,
    '-m',
    'experiments.main',
    '--config=experiments/digits.py:debug',
    '--compile_only',
    '--topology=v4:2x2x1',
    f'--workdir={tmp_path}',
  ]
  out = subprocess.run(
    cmd, cwd=common.ROOT, capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'train step' in out.stdout and 'roofline (v4)' in out.stdout
  with open(tmp_path / aot.REPORT_FILE) as f:
    report = json.load(f)
  assert report['devices'] == 4 and report['device_kind'] == 'TPU v4'
  assert report['experiment'] == 'experiments/digits.py:debug'
  for part in ('train', 'eval'):
    assert report[part]['flops'] > 0 and report[part]['fits']
    assert report[part]['memory']['total'] > 0
  bad = subprocess.run(
    cmd[:-2] + ['--topology=v4:3x3x3', f'--workdir={tmp_path}'],
    cwd=common.ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert bad.returncode == 2
  assert "got 'v4:3x3x3'" in bad.stderr and 'v4:2x2x2' in bad.stderr


@pytest.mark.parametrize(
  'name', ['digits', 'imagenet', 'mlm', 'glue', 'flow', 'video_autoencoding']
)
def test_compile_task_has_the_training_batch_spec(name):
  # What --compile_only compiles without data is what training is fed: the
  # keys, dtypes and per-example shapes of a real `:debug` batch, and the
  # same model (equal parameter shapes from either example batch).
  experiment = importlib.import_module(f'experiments.{name}')
  config = experiment.get_config('debug')
  task = experiment.build_task(config, 0, 1)
  # (with the sizes the data gave, where the config leaves them to it)
  spec_task = experiment.compile_task(task.config or config)
  batch = next(task.train_data)
  assert {
    k: (v.dtype, v.shape[1:]) for k, v in spec_task.example_batch.items()
  } == {k: (v.dtype, v.shape[1:]) for k, v in batch.items()}

  def shapes(t):
    init = functools.partial(t.forward.init, is_training=True)
    params = jax.eval_shape(init, jax.random.PRNGKey(0), t.example_batch)
    return jax.tree.map(lambda x: (x.shape, x.dtype), params)

  assert shapes(spec_task) == shapes(task)


def test_imagenet_compile_task_assumes_imagenet_1k():
  from experiments import imagenet

  config = imagenet.get_config('conv')
  assert config.num_train is None and config.model.num_classes is None
  compiled = imagenet.compile_task(config).config
  # 110 epochs of 1,281,167 images in steps of 1024 (App. A).
  assert compiled.num_train == 1_281_167
  assert compiled.model.num_classes == 1000
  assert compiled.total_steps == 110 * 1_281_167 // 1024 == 137_625
  assert config.num_train is None  # the caller's config is not changed


def test_run_timer_goodput_by_hand():
  now = [0.0]
  t = metrics_lib.RunTimer(clock=lambda: now[0])
  now[0] = 10.0  # set-up
  t.start_steps()
  with t.timing('compile'):
    now[0] = 25.0
  t.add('data_wait', 5.0)
  now[0] = 65.0  # 40 s after the compile: 5 waiting, 35 stepping
  with t.timing('checkpoint'):
    now[0] = 70.0
  t.end_steps()
  now[0] = 100.0  # final evaluation
  t.add('eval', 30.0)
  got = t.read()
  assert got['time/steps_s'] == pytest.approx(35.0)
  assert got['time/wall_s'] == pytest.approx(100.0)
  assert got['perf/goodput'] == pytest.approx(0.35)
  assert got['time/compile_s'] == 15.0 and got['time/checkpoint_s'] == 5.0
  with pytest.raises(ValueError, match='name'):
    t.add('lunch', 1.0)


def test_progress_line_shows_utilisation():
  bar = progress_lib.ProgressBar(100)
  bar.line(10, 2.0, now=1000.0)
  bar.perf(41.25, 0.209)
  assert bar.line(30, 0.5, now=1010.0).endswith(' 41.2 TFLOP/s MFU 21%')
  bar.perf(0.5, None)  # a chip of unknown peak: no MFU
  assert bar.line(30, 0.5, now=1010.0).endswith(' 0.5 TFLOP/s')


def test_training_records_carry_flops_and_goodput(tmp_path):
  """A toy run on the CPU: FLOPs per step from the compiled step, TFLOP/s
  from them and the throughput, no MFU (the CPU's peak is not in the
  table), and the time totals."""
  config = common.toy_config(total_steps=4, log_every=2, checkpoint_every=2)
  loop.train(config, common.build_toy_task, str(tmp_path))
  records = metrics_lib.read_metrics(str(tmp_path / 'metrics.jsonl'))
  train = [r for r in records if 'loss' in r]
  assert [r['step'] for r in train] == [2, 4]
  task = common.build_toy_task(config, 0, 1)
  mesh = mesh_lib.make_mesh(1)
  steps = loop.jit_steps(config, task, mesh)
  batch = mesh_lib.global_batch(next(task.train_data), mesh)
  want = aot.compile_costs(steps.train_step, steps.abstract, batch)
  for r in train:
    assert r['perf/step_flops'] == want['step_flops'] > 0
    assert r['perf/tflops_per_device'] == pytest.approx(
      want['step_flops'] * r['examples_per_s'] / config.batch_size / 1e12
    )
    assert 'perf/mfu' not in r
    assert 0 < r['perf/goodput'] < 1
    assert r['time/compile_s'] > 0
  assert train[-1]['time/checkpoint_s'] > 0
  final = records[-1]
  assert 'eval/accuracy' in final and final['time/eval_s'] > 0
  with open(tmp_path / 'result.json') as f:
    assert 0 < json.load(f)['perf/goodput'] < 1
  assert os.path.exists(tmp_path / 'result.json')


def test_chip_table_covers_the_device_kinds():
  assert aot.chip_of_device_kind('TPU v5 lite') == 'v5e'
  assert aot.chip_of_device_kind('TPU v4') == 'v4'
  assert aot.chip_of_device_kind('cpu') is None
  for chip in aot.CHIPS.values():
    assert chip.source.startswith('https://cloud.google.com/tpu/docs/')
  assert aot.per_device(aot.CHIPS['v3'])['peak_flops'] == 61.5e12
