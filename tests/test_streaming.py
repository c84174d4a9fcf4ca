"""Streamed encoding (perceiver/streaming.py) against the in-memory encode.

The in-memory encode is `PerceiverEncoder` on all M preprocessed points at
once; the streamed one reads them in blocks of 128 (the last one padded) from
a uint8 memmap on disk. Forward values and the gradients of every encoder
parameter (jax.grad of the in-memory encode against the streamed pullback)
agree to float32 rounding.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver import encoder
from perceiver import streaming

M = 1000
BLOCK = 128
GRID = (10, 10, 10)
KWARGS = dict(
  num_self_attends_per_block=2,
  num_blocks=2,
  z_index_dim=8,
  num_z_channels=16,
  num_cross_attend_heads=2,
  qk_channels=16,
  v_channels=16,
  num_self_attend_heads=2,
)


def in_memory(kwargs):
  def forward(x_BMF):
    enc = encoder.PerceiverEncoder(**kwargs)
    return enc(x_BMF, enc.latents(x_BMF), is_training=False)[0]

  return hk.transform(forward)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  data = np.random.default_rng(0).integers(0, 256, (M, 3)).astype(np.uint8)
  path = tmp_path_factory.mktemp('stream') / 'points.u8'
  data.tofile(path)
  source = np.memmap(path, np.uint8, 'r', shape=(M, 3))
  preprocess = streaming.fourier_preprocess(
    GRID, 2, value_scale=2 / 255, value_offset=-1.0
  )
  x_BMF = preprocess(jnp.asarray(data), jnp.arange(M))[None]
  model = in_memory(KWARGS)
  params = model.init(jax.random.PRNGKey(0), x_BMF)
  stream = streaming.StreamingEncoder(
    KWARGS, preprocess=preprocess, block_size=BLOCK
  )
  return dict(
    data=data, source=source, x=x_BMF, model=model, params=params, stream=stream
  )


def test_forward_equals_in_memory(setup):
  ref = setup['model'].apply(setup['params'], None, setup['x'])
  z = setup['stream'].encode(setup['params'], setup['source'])
  assert z.shape == (8, 16) and z.dtype == jnp.float32
  np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-5)


def test_block_iterators_of_any_sizes(setup):
  ref = setup['model'].apply(setup['params'], None, setup['x'])
  cuts = [0, 1, 100, 228, 300, 428, 500, 600, 700, 800, 900, 999, M]
  blocks = lambda: (setup['data'][a:b] for a, b in zip(cuts, cuts[1:]))
  stream = setup['stream']
  np.testing.assert_allclose(
    stream.encode(setup['params'], blocks), ref, rtol=1e-4, atol=1e-5
  )
  np.testing.assert_allclose(
    stream.encode(setup['params'], blocks()), ref, rtol=1e-4, atol=1e-5
  )


def test_gradients_equal_in_memory(setup):
  model, params, x = setup['model'], setup['params'], setup['x']
  w = jax.random.normal(jax.random.PRNGKey(1), (8, 16))
  loss = lambda p: jnp.sum(jnp.sin(model.apply(p, None, x)) * w)
  expected = jax.grad(loss)(params)
  z, pullback = setup['stream'].encode_vjp(params, setup['source'])
  grads = pullback(jnp.cos(z) * w)
  assert jax.tree.structure(grads) == jax.tree.structure(expected)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(expected))
  for name in expected:
    for leaf in expected[name]:
      np.testing.assert_allclose(
        grads[name][leaf],
        expected[name][leaf],
        rtol=1e-4,
        atol=1e-6 * scale,
        err_msg=f'{name}/{leaf}',
      )


def test_one_head_no_residual_float_inputs():
  kwargs = dict(
    num_self_attends_per_block=1,
    num_blocks=1,
    z_index_dim=4,
    num_z_channels=8,
    num_self_attend_heads=2,
    use_query_residual=False,
  )
  x_MC = np.random.default_rng(2).normal(size=(300, 5)).astype(np.float32)
  model = in_memory(kwargs)
  params = model.init(jax.random.PRNGKey(3), x_MC[None])
  stream = streaming.StreamingEncoder(kwargs, block_size=64)
  np.testing.assert_allclose(
    stream.encode(params, x_MC),
    model.apply(params, None, x_MC[None]),
    rtol=1e-4,
    atol=1e-5,
  )


def test_memmap_pages_are_released_only_when_read_only(setup):
  assert streaming._page_releaser(setup['source']) is not None
  copy_on_write = np.memmap(
    setup['source'].filename, np.uint8, 'c', shape=(M, 3)
  )
  assert streaming._page_releaser(copy_on_write) is None
  assert streaming._page_releaser(setup['data']) is None
  streaming._page_releaser(setup['source'])(M)  # Harmless: still readable.
  np.testing.assert_array_equal(setup['source'], setup['data'])


@pytest.mark.parametrize(
  'source, match',
  [
    (np.zeros((4,), np.uint8), r'source: expected an array of rank 2'),
    (np.zeros((0, 3), np.uint8), r'source: expected 1 to'),
    (lambda: iter([np.zeros((BLOCK + 1, 3))]), r'1 <= b <= block_size=128'),
    (
      lambda: iter([np.zeros((2, 3)), np.zeros((2, 4))]),
      r'expected blocks of 3 channels',
    ),
    (lambda: iter([]), r'at least one point, got none'),
    (42, r'source: expected a \[M, C\] array'),
  ],
)
def test_bad_sources(setup, source, match):
  with pytest.raises(ValueError, match=match):
    setup['stream'].encode(setup['params'], source)


def test_bad_arguments(setup):
  with pytest.raises(ValueError, match=r'gradient pass reads the source'):
    setup['stream'].encode_vjp(setup['params'], iter([setup['data']]))
  with pytest.raises(ValueError, match='block_size: expected a positive'):
    streaming.StreamingEncoder(KWARGS, block_size=0)
  with pytest.raises(ValueError, match='preprocess: expected a function'):
    streaming.StreamingEncoder(KWARGS, preprocess=3)
  with pytest.raises(ValueError, match='num_z_channels'):
    streaming.StreamingEncoder(dict(KWARGS, num_z_channels=0))
  with pytest.raises(ValueError, match=r'params: expected the Perceiver'):
    setup['stream'].encode({}, setup['source'])
  _, pullback = setup['stream'].encode_vjp(setup['params'], setup['source'])
  with pytest.raises(ValueError, match=r'dz: expected shape \(8, 16\)'):
    pullback(jnp.zeros((8, 15)))
  bad = streaming.StreamingEncoder(
    KWARGS,
    preprocess=lambda b, i: b.astype(jnp.float32)[None],
    block_size=BLOCK,
  )
  with pytest.raises(ValueError, match=r'preprocess: expected \[128, F\]'):
    bad.encode(setup['params'], setup['source'])
