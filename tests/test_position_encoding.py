"""Tests of perceiver/position_encoding.py against hand-computed values.

Shapes: B batch, N positions, D spatial dimensions, K bands, C channels.
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver import position_encoding as pe

S2 = math.sqrt(0.5)


def np_fourier(
  pos_ND, num_bands, max_resolution, concat_pos=True, sine_only=False
):
  """Independent float64 version: freqs linspace(1, R/2, K) per dimension."""
  pos = np.asarray(pos_ND, np.float64)
  sins, coss = [], []
  for d, res in enumerate(max_resolution):
    freqs = np.linspace(1.0, res / 2, num_bands)
    for f in freqs:
      sins.append(np.sin(np.pi * f * pos[:, d]))
      coss.append(np.cos(np.pi * f * pos[:, d]))
  cols = [pos[:, d] for d in range(pos.shape[1])] if concat_pos else []
  cols += sins + ([] if sine_only else coss)
  return np.stack(cols, axis=-1)


# ----------------------------------------------------------------------------
# generate_fourier_features.
# ----------------------------------------------------------------------------


def test_fourier_1d_by_hand():
  # max_resolution 4 -> freqs linspace(1, 2, 2) = [1, 2].
  # Channels: [x, sin(pi x), sin(2 pi x), cos(pi x), cos(2 pi x)].
  pos = jnp.array([[-1.0], [0.0], [0.5]])
  out = pe.generate_fourier_features(pos, num_bands=2, max_resolution=(4,))
  expected = np.array(
    [
      [-1.0, 0.0, 0.0, -1.0, 1.0],
      [0.0, 0.0, 0.0, 1.0, 1.0],
      [0.5, 1.0, 0.0, 0.0, -1.0],
    ]
  )
  assert out.shape == (3, 5)
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_fourier_1d_three_bands_by_hand():
  # max_resolution 8 -> freqs linspace(1, 4, 3) = [1, 2.5, 4].
  pos = jnp.array([[0.5]])
  out = pe.generate_fourier_features(pos, num_bands=3, max_resolution=(8,))
  expected = [
    0.5,
    1.0,
    math.sin(1.25 * math.pi),
    0.0,  # sin(pi f/2)
    0.0,
    math.cos(1.25 * math.pi),
    1.0,
  ]  # cos(pi f/2)
  np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_fourier_2d_channel_order_by_hand():
  # Dim 0: R=4 -> freqs [1, 2]; dim 1: R=8 -> freqs [1, 4].
  # Order: [x0, x1, sin(d0 bands), sin(d1 bands), cos(d0 bands), cos(d1 bands)].
  pos = jnp.array([[0.5, -0.25]])
  out = pe.generate_fourier_features(pos, num_bands=2, max_resolution=(4, 8))
  expected = [
    0.5,
    -0.25,
    1.0,
    0.0,  # sin(pi/2), sin(pi)
    -S2,
    0.0,  # sin(-pi/4), sin(-pi)
    0.0,
    -1.0,  # cos(pi/2), cos(pi)
    S2,
    -1.0,  # cos(-pi/4), cos(-pi)
  ]
  assert out.shape == (1, 10)
  np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_fourier_2d_sine_only_and_no_pos_by_hand():
  pos = jnp.array([[0.5, -0.25]])
  out = pe.generate_fourier_features(
    pos, num_bands=2, max_resolution=(4, 8), concat_pos=False, sine_only=True
  )
  np.testing.assert_allclose(out[0], [1.0, 0.0, -S2, 0.0], atol=1e-6)
  out = pe.generate_fourier_features(
    pos, num_bands=2, max_resolution=(4, 8), concat_pos=False
  )
  np.testing.assert_allclose(
    out[0], [1.0, 0.0, -S2, 0.0, 0.0, -1.0, S2, -1.0], atol=1e-6
  )


@pytest.mark.parametrize(
  'max_resolution,num_bands', [((16,), 5), ((6, 10), 3), ((4, 7, 9), 4)]
)
@pytest.mark.parametrize(
  'concat_pos,sine_only',
  [(True, False), (False, False), (True, True), (False, True)],
)
def test_fourier_matches_numpy(
  max_resolution, num_bands, concat_pos, sine_only
):
  d = len(max_resolution)
  pos = np.random.default_rng(d).uniform(-1, 1, size=(11, d)).astype(np.float32)
  out = pe.generate_fourier_features(
    jnp.asarray(pos), num_bands, max_resolution, concat_pos, sine_only
  )
  expected = np_fourier(pos, num_bands, max_resolution, concat_pos, sine_only)
  width = d * num_bands * (1 if sine_only else 2) + (d if concat_pos else 0)
  assert out.shape == (11, width)
  np.testing.assert_allclose(out, expected, atol=2e-5)


@pytest.mark.parametrize(
  'index_dims,num_bands,max_resolution,width',
  [
    ((3, 4), 64, (224, 224), 258),  # ImageNet (2-D Fourier)
    ((2, 3, 4), 32, (16, 224, 224), 195),  # 3-D, K=32 (video)
    ((5,), 192, (2048,), 385),  # 1-D, K=192
  ],
)
def test_released_config_widths(index_dims, num_bands, max_resolution, width):
  def fn():
    enc = pe.FourierPositionEncoding(
      index_dims, num_bands, max_resolution=max_resolution
    )
    return enc(batch_size=2), enc.num_channels()

  f = hk.transform(fn)
  out, num_channels = f.apply({}, None)
  assert num_channels == width
  assert out.shape == (2, int(np.prod(index_dims)), width)


# ----------------------------------------------------------------------------
# Position grids.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('index_dims', [(5,), 7, (2, 5), (2, 3, 4), (1, 3)])
@pytest.mark.parametrize('output_range', [(-1.0, 1.0), (0.0, 2.0)])
def test_build_linear_positions(index_dims, output_range):
  dims = (index_dims,) if isinstance(index_dims, int) else index_dims
  out = pe.build_linear_positions(index_dims, output_range)
  axes = [np.linspace(output_range[0], output_range[1], n) for n in dims]
  expected = np.stack(np.meshgrid(*axes, indexing='ij'), axis=-1)
  assert out.shape == tuple(dims) + (len(dims),)
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_build_linear_positions_is_ij_ordered():
  out = pe.build_linear_positions((2, 3))
  # Dimension 0 changes along axis 0, dimension 1 along axis 1.
  np.testing.assert_allclose(out[:, 0, 0], [-1, 1])
  np.testing.assert_allclose(out[0, :, 1], [-1, 0, 1])
  np.testing.assert_allclose(out[1, :, 0], [1, 1, 1])


@pytest.mark.parametrize('index_dims', [(8,), (3, 4), (2, 3, 5)])
def test_grid_positions_full(index_dims):
  out = pe.grid_positions(index_dims)
  n = int(np.prod(index_dims))
  coords = np.stack(np.unravel_index(np.arange(n), index_dims), axis=-1)
  expected = -1 + 2 * coords / np.array(index_dims)
  assert out.shape == (n, len(index_dims))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_grid_positions_by_hand():
  np.testing.assert_allclose(pe.grid_positions(4), [[-1], [-0.5], [0], [0.5]])
  out = pe.grid_positions((2, 4), jnp.array([0, 5, 7]))
  np.testing.assert_allclose(out, [[-1, -1], [0, -0.5], [0, 0.5]])


def test_grid_positions_subset_equals_rows_of_full():
  dims = (3, 4, 5)
  idx = jnp.array([0, 59, 17, 33, 17])
  np.testing.assert_allclose(
    pe.grid_positions(dims, idx), np.asarray(pe.grid_positions(dims))[idx]
  )


# ----------------------------------------------------------------------------
# Encoding modules.
# ----------------------------------------------------------------------------


def test_trainable_position_encoding():
  f = hk.transform(
    lambda b, idx: pe.TrainablePositionEncoding(
      index_dim=400, num_channels=50, init_scale=0.02
    )(b, indices=idx)
  )
  params = f.init(jax.random.PRNGKey(0), 3, None)
  table = params['trainable_position_encoding']['pos_embs']
  assert table.shape == (400, 50)
  # Truncated normal with stddev 0.02 (truncated at 2 sigma).
  assert 0.015 < float(jnp.std(table)) < 0.021
  assert float(jnp.max(jnp.abs(table))) <= 0.04 + 1e-6
  out = f.apply(params, None, 3, None)
  assert out.shape == (3, 400, 50)
  np.testing.assert_array_equal(out[2], table)
  np.testing.assert_array_equal(f.apply(params, None, None, None), table)
  idx = jnp.array([5, 0, 399])
  np.testing.assert_array_equal(
    f.apply(params, None, 2, idx),
    np.broadcast_to(np.asarray(table)[idx], (2, 3, 50)),
  )


def test_trainable_position_encoding_ignores_pos():
  f = hk.transform(lambda pos: pe.TrainablePositionEncoding(4, 3)(2, pos))
  params = {
    'trainable_position_encoding': {'pos_embs': jnp.arange(12.0).reshape(4, 3)}
  }
  a = f.apply(params, None, None)
  b = f.apply(params, None, jnp.ones((4, 1)))
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
  'index_dims,num_bands', [((6,), 3), ((3, 4), 2), ((2, 2, 3), 2)]
)
def test_fourier_position_encoding_default_grid(index_dims, num_bands):
  d = len(index_dims)
  f = hk.transform(
    lambda: pe.FourierPositionEncoding(index_dims, num_bands)(batch_size=2)
  )
  out = f.apply({}, None)
  grid = np.stack(
    np.meshgrid(*[np.linspace(-1, 1, n) for n in index_dims], indexing='ij'), -1
  ).reshape(-1, d)
  # max_resolution defaults to index_dims.
  expected = np_fourier(grid, num_bands, index_dims)
  assert out.shape == (2,) + expected.shape
  np.testing.assert_allclose(out[0], expected, atol=1e-5)
  np.testing.assert_array_equal(out[0], out[1])


def test_fourier_position_encoding_explicit_pos():
  pos_N2 = np.random.default_rng(0).uniform(-1, 1, (5, 2)).astype(np.float32)
  pos_B52 = np.stack([pos_N2, -pos_N2])

  def fn(pos, b):
    return pe.FourierPositionEncoding((3, 4), 2, max_resolution=(8, 6))(b, pos)

  f = hk.transform(fn)
  unbatched = f.apply({}, None, jnp.asarray(pos_N2), None)
  np.testing.assert_allclose(
    unbatched, np_fourier(pos_N2, 2, (8, 6)), atol=1e-5
  )
  broadcast = f.apply({}, None, jnp.asarray(pos_N2), 3)
  assert broadcast.shape == (3, 5, 10)
  batched = f.apply({}, None, jnp.asarray(pos_B52), 2)
  np.testing.assert_allclose(
    batched[1], np_fourier(-pos_N2, 2, (8, 6)), atol=1e-5
  )


@pytest.mark.parametrize('kind', ['trainable', 'fourier'])
@pytest.mark.parametrize('project_pos_dim', [-1, 7])
def test_build_position_encoding(kind, project_pos_dim):
  index_dims = (3, 4)

  def fn():
    enc = pe.build_position_encoding(
      kind,
      index_dims,
      project_pos_dim=project_pos_dim,
      trainable_position_encoding_kwargs=dict(num_channels=5),
      fourier_position_encoding_kwargs=dict(num_bands=2),
    )
    return enc(batch_size=2), enc.num_positions

  f = hk.transform(fn)
  params = jax.eval_shape(f.init, jax.random.PRNGKey(0))
  shapes = {k: {n: v.shape for n, v in d.items()} for k, d in params.items()}
  base_width = 5 if kind == 'trainable' else 2 + 2 * 2 * 2
  expected = {}
  if kind == 'trainable':
    # One flat table over prod(index_dims).
    expected['trainable_position_encoding'] = {'pos_embs': (12, 5)}
  if project_pos_dim > 0:
    expected['position_encoding_projector/linear'] = {
      'w': (base_width, project_pos_dim),
      'b': (project_pos_dim,),
    }
  assert shapes == expected
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
    lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), params
  )
  out, num_positions = f.apply(params, None)
  assert num_positions == 12
  assert out.shape == (
    2,
    12,
    project_pos_dim if project_pos_dim > 0 else base_width,
  )
  if project_pos_dim > 0:
    if kind == 'fourier':
      grid = np.stack(
        np.meshgrid(
          np.linspace(-1, 1, 3), np.linspace(-1, 1, 4), indexing='ij'
        ),
        -1,
      ).reshape(-1, 2)
      base = np_fourier(grid, 2, (3, 4))
    else:
      base = np.asarray(params['trainable_position_encoding']['pos_embs'])
    lin = params['position_encoding_projector/linear']
    np.testing.assert_allclose(
      out[0],
      base @ np.asarray(lin['w']) + np.asarray(lin['b']),
      rtol=1e-4,
      atol=1e-4,
    )
