"""A batch-sharded forward (8 CPU devices) equals the single-device forward.

XLA_FLAGS must be set before jax is imported, so the sharded run happens in a
subprocess with `--xla_force_host_platform_device_count=8`. The worker builds
a tiny Perceiver, runs it on one device and again with the batch sharded over
a 1-D `jax.sharding.Mesh` (params replicated, `NamedSharding`, `jax.jit`),
and prints the largest differences as JSON.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests import test_train_common as common

REPO = pathlib.Path(__file__).resolve().parents[1]

WORKER = r"""
import json
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from perceiver import decoders as dec
from perceiver.encoder import PerceiverEncoder
from perceiver.model import Perceiver

assert jax.device_count() == 8, jax.devices()
B, M, C = 8, 6, 3


def make(attention_impl, decode_chunk_size):
  def fn(x, input_mask):
    enc = PerceiverEncoder(num_self_attends_per_block=1, num_blocks=2,
                           z_index_dim=4, num_z_channels=8,
                           num_self_attend_heads=2,
                           attention_impl=attention_impl)
    d = dec.BasicDecoder(5, 'fourier', output_index_dims=(7,), num_heads=1,
                         attention_impl=attention_impl,
                         fourier_position_encoding_kwargs=dict(num_bands=2))
    return Perceiver(enc, d)(x, is_training=False, input_mask=input_mask,
                             decode_chunk_size=decode_chunk_size)
  return hk.transform(fn)


rng = np.random.default_rng(0)
x = rng.normal(size=(B, M, C)).astype(np.float32)
mask = rng.random((B, M)) < 0.8
mask[:, 0] = True
results = {}
for impl, chunk in [('reference', None), ('chunked', 3)]:
  f = make(impl, chunk)
  shapes = jax.eval_shape(f.init, jax.random.PRNGKey(0), x, mask)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype), shapes)
  loss = lambda p, x, m: jnp.sum(jnp.sin(f.apply(p, None, x, m)))

  # Single device.
  dev0 = jax.devices()[0]
  p0, x0, m0 = jax.device_put((params, x, mask), dev0)
  single = jax.jit(f.apply)(p0, None, x0, m0)

  # Batch sharded over 8 devices, params replicated.
  mesh = Mesh(np.array(jax.devices()), ('data',))
  data = NamedSharding(mesh, P('data'))
  replicated = NamedSharding(mesh, P())
  ps = jax.device_put(params, replicated)
  xs, ms = jax.device_put(x, data), jax.device_put(mask, data)
  sharded = jax.jit(f.apply, out_shardings=data)(ps, None, xs, ms)

  grad_diff = 0.0
  if impl == 'reference':  # gradients too (one implementation: compile time)
    single_grads = jax.jit(jax.grad(loss))(p0, x0, m0)
    sharded_grads = jax.jit(jax.grad(loss), out_shardings=replicated)(
        ps, xs, ms)
    grad_diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree_util.tree_leaves(single_grads),
                        jax.tree_util.tree_leaves(sharded_grads)))
  results[impl] = {
      'out_diff': float(np.max(np.abs(np.asarray(single)
                                      - np.asarray(sharded)))),
      'grad_diff': grad_diff,
      'out_scale': float(np.max(np.abs(np.asarray(single)))),
      'num_shards': len(sharded.addressable_shards),
      'shard_shape': list(sharded.addressable_shards[0].data.shape),
      'out_devices': len(sharded.sharding.device_set),
      'in_devices': len(xs.sharding.device_set),
      'single_devices': len(single.sharding.device_set),
  }
print('RESULT ' + json.dumps(results))
"""


@pytest.fixture(scope='module')
def sharded_results():
  env = common.cpu_env(8)
  env['PYTHONPATH'] = os.pathsep.join(
    [str(REPO)] + [p for p in [env.get('PYTHONPATH')] if p]
  )
  proc = subprocess.run(
    [sys.executable, '-c', WORKER],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [s for s in proc.stdout.splitlines() if s.startswith('RESULT ')]
  assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
  return json.loads(line[-1][len('RESULT ') :])


@pytest.mark.parametrize('impl', ['reference', 'chunked'])
def test_batch_sharded_forward_equals_single_device(sharded_results, impl):
  r = sharded_results[impl]
  # Really sharded: 8 shards of one example each, on 8 devices.
  assert r['in_devices'] == 8 and r['out_devices'] == 8
  assert r['num_shards'] == 8
  assert r['shard_shape'] == [1, 7, 5]
  assert r['single_devices'] == 1
  assert r['out_scale'] > 1e-2  # a non-trivial output
  assert r['out_diff'] <= 1e-5, r
  assert r['grad_diff'] <= 1e-4, r
