"""Tests of perceiver/io_processors.py.

Shapes: B batch, T time, H height, W width, C channels, M tokens, P position
channels.

Values are checked against slow, obvious numpy references written here (loops
over output positions), hand-computed values and round trips; the released
configs are built at full size under `jax.eval_shape` only and compared with
the parameter trees of the released checkpoints
(tests/data/released_checkpoints.json).
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver import io_processors as io


# ---------------------------------------------------------------------------
# Slow numpy references
# ---------------------------------------------------------------------------


def np_space_to_depth(x, dt, ds):
  """Loops: out[b, t, i, j, ((kt*ds + ki)*ds + kj)*C + c]."""
  squeeze = x.ndim == 4
  if squeeze:
    x = x[:, None]
  b, t, h, w, c = x.shape
  out = np.zeros((b, t // dt, h // ds, w // ds, dt * ds * ds * c), x.dtype)
  for ti in range(t // dt):
    for i in range(h // ds):
      for j in range(w // ds):
        for kt in range(dt):
          for ki in range(ds):
            for kj in range(ds):
              k = (kt * ds + ki) * ds + kj
              out[:, ti, i, j, k * c : (k + 1) * c] = x[
                :, ti * dt + kt, i * ds + ki, j * ds + kj, :
              ]
  return out[:, 0] if squeeze else out


def np_extract_patches(images, sizes, strides, rates, padding):
  """tf.image.extract_patches, one output position at a time."""
  b, h, w, c = images.shape
  _, kh, kw, _ = sizes
  _, sh, sw, _ = strides
  _, rh, rw, _ = rates
  eff_h, eff_w = (kh - 1) * rh + 1, (kw - 1) * rw + 1
  if padding == 'VALID':
    out_h = (h - eff_h) // sh + 1 if h >= eff_h else 0
    out_w = (w - eff_w) // sw + 1 if w >= eff_w else 0
    top = left = 0
  else:
    out_h, out_w = -(-h // sh), -(-w // sw)
    top = max((out_h - 1) * sh + eff_h - h, 0) // 2
    left = max((out_w - 1) * sw + eff_w - w, 0) // 2
  out = np.zeros((b, out_h, out_w, kh * kw * c), images.dtype)
  for i in range(out_h):
    for j in range(out_w):
      vals = []
      for u in range(kh):
        for v in range(kw):
          y = i * sh - top + u * rh
          x = j * sw - left + v * rw
          if 0 <= y < h and 0 <= x < w:
            vals.append(images[:, y, x, :])
          else:
            vals.append(np.zeros((b, c), images.dtype))
      out[:, i, j, :] = np.concatenate(vals, axis=-1)
  return out


def np_fourier(index_dims, num_bands, max_resolution):
  """[N, D + 2DK]: [pos, sin(pi f pos) per dim, cos(pi f pos) per dim]."""
  axes = [np.linspace(-1.0, 1.0, n) for n in index_dims]
  grid = np.stack(np.meshgrid(*axes, indexing='ij'), axis=-1)
  pos = grid.reshape(-1, len(index_dims))
  sins, coss = [], []
  for d, res in enumerate(max_resolution):
    freqs = np.linspace(1.0, res / 2.0, num_bands)
    sins.append(np.sin(np.pi * pos[:, d : d + 1] * freqs[None]))
    coss.append(np.cos(np.pi * pos[:, d : d + 1] * freqs[None]))
  return np.concatenate([pos] + sins + coss, axis=-1)


def np_conv_same(x, w, stride):
  """SAME 2-D conv (TF padding rule), no bias; x [B,H,W,I], w [k,k,I,O]."""
  b, h, wd, _ = x.shape
  k = w.shape[0]
  out_h, out_w = -(-h // stride), -(-wd // stride)
  top = max((out_h - 1) * stride + k - h, 0) // 2
  left = max((out_w - 1) * stride + k - wd, 0) // 2
  out = np.zeros((b, out_h, out_w, w.shape[-1]))
  for i in range(out_h):
    for j in range(out_w):
      for u in range(k):
        for v in range(k):
          y, xx = i * stride - top + u, j * stride - left + v
          if 0 <= y < h and 0 <= xx < wd:
            out[:, i, j] += x[:, y, xx] @ w[u, v]
  return out


def np_max_pool_same(x, k, stride):
  b, h, w, c = x.shape
  out_h, out_w = -(-h // stride), -(-w // stride)
  top = max((out_h - 1) * stride + k - h, 0) // 2
  left = max((out_w - 1) * stride + k - w, 0) // 2
  out = np.full((b, out_h, out_w, c), -np.inf)
  for i in range(out_h):
    for j in range(out_w):
      for u in range(k):
        for v in range(k):
          y, xx = i * stride - top + u, j * stride - left + v
          if 0 <= y < h and 0 <= xx < w:
            out[:, i, j] = np.maximum(out[:, i, j], x[:, y, xx])
  return out


def _rand(shape, seed=0):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def _fourier_kwargs(num_bands, max_resolution):
  return dict(
    fourier_position_encoding_kwargs=dict(
      num_bands=num_bands,
      max_resolution=max_resolution,
      concat_pos=True,
      sine_only=False,
    )
  )


def _fake_init(f, *args, seed=0, **static):
  """`f.init`'s parameter tree, filled with numpy normals; zero state.

  Shapes come from `jax.eval_shape(f.init)`, so no random-number kernels are
  compiled (that dominates test time on CPU), and biases / BatchNorm scales
  are non-trivial, which makes the value checks stricter. `static` holds
  Python arguments (e.g. is_training) that must not be traced.
  """
  params, state = jax.eval_shape(
    lambda key, *xs: f.init(key, *xs, **static), jax.random.PRNGKey(0), *args
  )
  rng = np.random.RandomState(seed)
  params = jax.tree.map(
    lambda s: (0.5 * rng.randn(*s.shape)).astype(s.dtype), params
  )
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)
  return params, state


def _eval_shapes(fn, *inputs):
  f = hk.transform_with_state(fn)
  specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs]
  params, state = jax.eval_shape(f.init, jax.random.PRNGKey(0), *specs)
  out = jax.eval_shape(
    lambda p, s, *xs: f.apply(p, s, None, *xs)[0], params, state, *specs
  )
  return params, state, out


def _init_apply(fn, *args, seed=0):
  """Fake init + apply of `fn(*args)`; returns (params, state, out)."""
  f = hk.transform_with_state(fn)
  params, state = _fake_init(f, *args, seed=seed)
  out, _ = f.apply(params, state, None, *args)
  return params, state, out


# ---------------------------------------------------------------------------
# space_to_depth / patches
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  'shape,dt,ds',
  [
    ((2, 4, 6, 3), 1, 2),
    ((1, 6, 6, 2), 1, 3),
    ((1, 4, 4, 2), 1, 1),
    ((2, 4, 4, 6, 2), 2, 2),
    ((1, 3, 2, 4, 3), 3, 1),
    ((1, 2, 4, 4, 1), 1, 4),
  ],
)
def test_space_to_depth_matches_loops_and_round_trips(shape, dt, ds):
  x = _rand(shape)
  y = io.space_to_depth(x, temporal_block_size=dt, spatial_block_size=ds)
  np.testing.assert_array_equal(np.asarray(y), np_space_to_depth(x, dt, ds))
  back = io.reverse_space_to_depth(
    y, temporal_block_size=dt, spatial_block_size=ds
  )
  np.testing.assert_array_equal(np.asarray(back), x)
  # And the other way round: space_to_depth(reverse(z)) == z.
  again = io.space_to_depth(back, temporal_block_size=dt, spatial_block_size=ds)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(y))


def test_space_to_depth_hand_computed():
  # One 2x2 block of a 1-channel image: channels in (dh, dw) order.
  x = np.arange(4.0).reshape(1, 2, 2, 1)
  y = io.space_to_depth(x, spatial_block_size=2)
  np.testing.assert_array_equal(np.asarray(y), [[[[0.0, 1.0, 2.0, 3.0]]]])


@pytest.mark.parametrize(
  'image_shape,sizes,strides,rates,padding',
  [
    ((2, 7, 6, 3), [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], 'SAME'),
    ((2, 7, 6, 3), [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], 'VALID'),
    ((1, 8, 9, 2), [1, 2, 4, 1], [1, 2, 3, 1], [1, 1, 1, 1], 'SAME'),
    ((1, 8, 9, 2), [1, 2, 4, 1], [1, 3, 2, 1], [1, 1, 1, 1], 'VALID'),
    ((1, 9, 10, 2), [1, 3, 2, 1], [1, 2, 1, 1], [1, 2, 3, 1], 'SAME'),
    ((1, 9, 10, 2), [1, 3, 2, 1], [1, 1, 2, 1], [1, 2, 3, 1], 'VALID'),
    ((1, 5, 5, 1), [1, 2, 2, 1], [1, 3, 3, 1], [1, 1, 1, 1], 'SAME'),
    ((1, 4, 5, 3), [1, 4, 4, 1], [1, 1, 1, 1], [1, 1, 1, 1], 'SAME'),
  ],
)
def test_extract_patches_matches_tf_reference(
  image_shape, sizes, strides, rates, padding
):
  images = _rand(image_shape, seed=1)
  got = io.extract_patches(
    images, sizes=sizes, strides=strides, rates=rates, padding=padding
  )
  want = np_extract_patches(images, sizes, strides, rates, padding)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6)


def test_extract_patches_integer_dtype_is_kept():
  images = np.arange(2 * 5 * 4 * 3, dtype=np.int32).reshape(2, 5, 4, 3)
  got = io.extract_patches(
    images, [1, 2, 3, 1], [1, 1, 2, 1], [1, 1, 1, 1], 'SAME'
  )
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(
    np.asarray(got),
    np_extract_patches(
      images, [1, 2, 3, 1], [1, 1, 2, 1], [1, 1, 1, 1], 'SAME'
    ),
  )


def test_patches_for_flow_matches_zero_padded_3x3_loops():
  frames = _rand((2, 2, 5, 4, 3), seed=2)
  got = np.asarray(io.patches_for_flow(frames))
  assert got.shape == (2, 2, 5, 4, 27)
  padded = np.pad(frames, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros_like(got)
  for i in range(5):
    for j in range(4):
      want[:, :, i, j] = padded[:, :, i : i + 3, j : j + 3, :].reshape(2, 2, 27)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------
# Conv stems
# ---------------------------------------------------------------------------


def test_conv2d_downsample_matches_numpy_and_updates_ema():
  x1 = _rand((2, 8, 8, 3), seed=3)
  x2 = _rand((2, 8, 8, 3), seed=4)
  f = hk.transform_with_state(
    lambda x, t: io.Conv2DDownsample(num_channels=4)(x, is_training=t)
  )
  # Zero state = Haiku's init; is_training is static for the shape trace.
  params, state = _fake_init(f, x1, t=True)
  assert set(params) == {
    'conv2_d_downsample/~/conv',
    'conv2_d_downsample/~/batchnorm',
  }
  out, state = f.apply(params, state, None, x1, True)
  w = np.asarray(params['conv2_d_downsample/~/conv']['w'])
  bn = params['conv2_d_downsample/~/batchnorm']
  scale = np.asarray(bn['scale']).reshape(-1)
  offset = np.asarray(bn['offset']).reshape(-1)
  conv1 = np_conv_same(x1, w, 2)
  mean1, var1 = conv1.mean(axis=(0, 1, 2)), conv1.var(axis=(0, 1, 2))
  normed = (conv1 - mean1) / np.sqrt(var1 + 1e-5) * scale + offset
  want = np_max_pool_same(np.maximum(normed, 0.0), 3, 2)
  assert out.shape == (2, 2, 2, 4)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-4)

  # Second step: debiased EMA with decay 0.9 = (0.09 m1 + 0.1 m2) / 0.19.
  _, state = f.apply(params, state, None, x2, True)
  mean2 = np_conv_same(x2, w, 2).mean(axis=(0, 1, 2))
  ema = state['conv2_d_downsample/~/batchnorm/~/mean_ema']['average']
  np.testing.assert_allclose(
    np.asarray(ema).reshape(-1),
    (0.09 * mean1 + 0.1 * mean2) / 0.19,
    rtol=1e-4,
    atol=1e-5,
  )
  # Inference uses the moving averages and keeps the shape.
  out_eval, _ = f.apply(params, state, None, x1, False)
  assert out_eval.shape == (2, 2, 2, 4)


def test_conv2d_downsample_two_layers_without_batchnorm():
  x = _rand((1, 32, 16, 3))
  params, state, out = _init_apply(
    lambda x: io.Conv2DDownsample(
      num_layers=2, num_channels=5, use_batchnorm=False
    )(x, is_training=True),
    x,
  )
  assert out.shape == (1, 2, 1, 5)
  assert sorted(params) == [
    'conv2_d_downsample/~/conv',
    'conv2_d_downsample/~/conv_1',
  ]
  assert not state


def test_conv2d_upsample_shapes():
  x = jnp.zeros((2, 3, 5, 4))
  params, _, out = _eval_shapes(
    lambda x: io.Conv2DUpsample(n_outputs=3)(x, is_training=False), x
  )
  assert out.shape == (2, 12, 20, 3)
  # Haiku stores transposed-conv kernels as [kh, kw, out, in]; the released
  # names.
  assert {m: p['w'].shape for m, p in params.items()} == {
    'conv2_d_upsample/~/transp_conv_1': (4, 4, 6, 4),
    'conv2_d_upsample/~/transp_conv_2': (4, 4, 3, 6),
  }


def test_conv3d_upsample_channels_and_strides():
  x = jnp.zeros((1, 2, 3, 3, 4))
  params, _, out = _eval_shapes(
    lambda x: io.Conv3DUpsample(
      n_outputs=3, n_time_upsamples=1, n_space_upsamples=3
    )(x, is_training=False),
    x,
  )
  # 3 layers, channels 12, 6, 3; time x2 (first layer only), space x8.
  assert out.shape == (1, 4, 24, 24, 3)
  # Haiku stores transposed-conv kernels as [kt, kh, kw, out, in]; the
  # released names, one per layer.
  assert {m: p['w'].shape[-2] for m, p in params.items()} == {
    'conv3_d_upsample/conv3d_transpose_0': 12,
    'conv3_d_upsample/conv3d_transpose_1': 6,
    'conv3_d_upsample/conv3d_transpose_2': 3,
  }


# ---------------------------------------------------------------------------
# ImagePreprocessor
# ---------------------------------------------------------------------------


def test_image_pixels_fourier_matches_numpy():
  x = _rand((2, 8, 6, 3))

  def fn(x):
    return io.ImagePreprocessor(
      prep_type='pixels', spatial_downsample=2, **_fourier_kwargs(3, (4, 3))
    )(x, is_training=False)

  params, _, (with_pos, sizes, without_pos) = _init_apply(fn, x)
  assert not params and sizes is None
  pixels = x[:, ::2, ::2].reshape(2, 12, 3)
  pos = np_fourier((4, 3), 3, (4, 3))
  assert pos.shape == (12, 2 + 2 * 2 * 3)
  want = np.concatenate([pixels, np.broadcast_to(pos, (2, 12, 14))], -1)
  np.testing.assert_allclose(np.asarray(with_pos), want, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(without_pos), pixels)


def test_image_pixels_video_subsamples_frames_and_pixels():
  x = _rand((1, 4, 4, 6, 2))

  def fn(x):
    return io.ImagePreprocessor(
      prep_type='pixels',
      spatial_downsample=2,
      temporal_downsample=2,
      **_fourier_kwargs(1, (2, 2, 3)),
    )(x, is_training=False)

  _, _, (with_pos, _, without_pos) = _init_apply(fn, x)
  want = x[:, 0::2, 0::2, 0::2].reshape(1, 12, 2)
  np.testing.assert_array_equal(np.asarray(without_pos), want)
  assert with_pos.shape == (1, 12, 2 + 3 + 6)


def test_image_patches_video_matches_numpy():
  x = _rand((1, 4, 4, 8, 2))

  def fn(x):
    return io.ImagePreprocessor(
      prep_type='patches',
      spatial_downsample=2,
      temporal_downsample=2,
      **_fourier_kwargs(2, (2, 2, 4)),
    )(x, is_training=False)

  _, _, (with_pos, _, without_pos) = _init_apply(fn, x)
  patches = np_space_to_depth(x, 2, 2).reshape(1, 16, 16)
  pos = np_fourier((2, 2, 4), 2, (2, 2, 4))
  np.testing.assert_allclose(np.asarray(without_pos), patches, atol=0)
  np.testing.assert_allclose(
    np.asarray(with_pos), np.concatenate([patches, pos[None]], -1), atol=1e-5
  )


def test_image_patches_flow_squeezes_time_and_projects():
  x = _rand((1, 2, 4, 6, 5))

  def fn(x):
    return io.ImagePreprocessor(
      prep_type='patches',
      spatial_downsample=1,
      temporal_downsample=2,
      conv_after_patching=True,
      num_channels=7,
      **_fourier_kwargs(2, (4, 6)),
    )(x, is_training=False)

  params, _, (with_pos, _, without_pos) = _init_apply(fn, x)
  lin = params['image_preprocessor/patches_linear']
  assert lin['w'].shape == (10, 7)
  stacked = np.concatenate([x[:, 0], x[:, 1]], axis=-1).reshape(1, 24, 10)
  want = stacked @ np.asarray(lin['w']) + np.asarray(lin['b'])
  np.testing.assert_allclose(np.asarray(without_pos), want, atol=1e-5)
  assert with_pos.shape == (1, 24, 7 + 2 + 8)


def test_image_conv1x1_strided_matches_einsum():
  x = _rand((2, 6, 4, 3))

  def fn(x):
    return io.ImagePreprocessor(
      prep_type='conv1x1',
      spatial_downsample=2,
      num_channels=5,
      **_fourier_kwargs(2, (3, 2)),
    )(x, is_training=False)

  params, _, (_, _, without_pos) = _init_apply(fn, x)
  conv = params['image_preprocessor/~/conv2_d']
  want = np.einsum(
    'bhwc,cd->bhwd', x[:, ::2, ::2], np.asarray(conv['w'])[0, 0]
  ) + np.asarray(conv['b'])
  np.testing.assert_allclose(
    np.asarray(without_pos), want.reshape(2, 6, 5), atol=1e-5
  )


def test_image_conv_on_video_equals_per_frame():
  video = _rand((2, 3, 8, 8, 3))

  def pre():
    return io.ImagePreprocessor(
      prep_type='conv',
      spatial_downsample=4,
      num_channels=4,
      **_fourier_kwargs(2, (3, 2, 2)),
    )

  f = hk.transform_with_state(
    lambda x, t: pre()(x, is_training=t, network_input_is_1d=False)
  )
  # BatchNorm creates its moving averages only when initialised in training.
  params, state = _fake_init(f, video, t=True)
  # Fill the moving statistics with something non-trivial.
  state = jax.tree.map(
    lambda a: a + 0.5 if a.dtype == jnp.float32 else a + 1, state
  )
  (with_pos, _, without_pos), _ = f.apply(params, state, None, video, False)
  assert with_pos.shape == (2, 3, 2, 2, 4 + 15)
  pos = np_fourier((3, 2, 2), 2, (3, 2, 2)).reshape(3, 2, 2, 15)
  np.testing.assert_allclose(
    np.asarray(with_pos[..., 4:]),
    np.broadcast_to(pos, (2, 3, 2, 2, 15)),
    atol=1e-5,
  )
  for t in range(3):
    (_, _, frame_out), _ = f.apply(
      params, state, None, video[:, t : t + 1], False
    )
    np.testing.assert_allclose(
      np.asarray(without_pos[:, t]), np.asarray(frame_out[:, 0]), atol=1e-5
    )


def test_image_add_trainable_projected_and_extra_pos_mlp():
  x = _rand((2, 2, 3, 4))

  def fn(x):
    return io.ImagePreprocessor(
      prep_type='pixels',
      spatial_downsample=1,
      position_encoding_type='trainable',
      concat_or_add_pos='add',
      n_extra_pos_mlp=2,
      project_pos_dim=4,
      trainable_position_encoding_kwargs=dict(num_channels=3),
    )(x, is_training=False)

  params, _, (with_pos, _, without_pos) = _init_apply(fn, x)
  prefix = 'image_preprocessor/~_build_network_inputs/'
  assert sorted(params) == sorted(
    [
      prefix + 'trainable_position_encoding',
      prefix + 'position_encoding_projector/linear',
      prefix + 'linear',
      prefix + 'linear_1',
    ]
  )
  table = np.asarray(params[prefix + 'trainable_position_encoding']['pos_embs'])
  assert table.shape == (6, 3)

  def lin(name, v):
    return v @ np.asarray(params[prefix + name]['w']) + np.asarray(
      params[prefix + name]['b']
    )

  pos = lin('position_encoding_projector/linear', table)
  pos = np.maximum(pos + lin('linear', pos), 0.0)  # ReLU between layers.
  pos = pos + lin('linear_1', pos)  # No ReLU after the last.
  np.testing.assert_allclose(
    np.asarray(with_pos), x.reshape(2, 6, 4) + pos[None], atol=1e-5
  )
  np.testing.assert_array_equal(np.asarray(without_pos), x.reshape(2, 6, 4))


# ---------------------------------------------------------------------------
# Audio, one-hot and multimodal preprocessors
# ---------------------------------------------------------------------------


def test_audio_preprocessor_patches_and_fourier():
  audio = _rand((2, 12, 1))

  def fn(x):
    return io.AudioPreprocessor(
      samples_per_patch=4, **_fourier_kwargs(3, (12,))
    )(x, is_training=False)

  _, _, (with_pos, sizes, without_pos) = _init_apply(fn, audio)
  assert sizes is None
  patches = audio.reshape(2, 3, 4)
  np.testing.assert_array_equal(np.asarray(without_pos), patches)
  pos = np_fourier((3,), 3, (12,))
  np.testing.assert_allclose(
    np.asarray(with_pos),
    np.concatenate([patches, np.broadcast_to(pos, (2, 3, 7))], -1),
    atol=1e-5,
  )


def test_one_hot_preprocessor():
  x = np.eye(3, dtype=np.float32)[[2, 0]]
  _, _, (out, sizes, without_pos) = _init_apply(
    lambda x: io.OneHotPreprocessor()(x, is_training=False), x
  )
  assert sizes is None
  np.testing.assert_array_equal(np.asarray(out), x[:, None, :])
  np.testing.assert_array_equal(np.asarray(without_pos), x[:, None, :])


def _small_multimodal(mask_probs):
  return io.MultimodalPreprocessor(
    modalities={
      'label': io.OneHotPreprocessor(),
      'audio': io.AudioPreprocessor(
        samples_per_patch=2, **_fourier_kwargs(1, (8,))
      ),
    },
    mask_probs=mask_probs,
    min_padding_size=3,
  )


def _small_multimodal_inputs():
  return {'audio': _rand((2, 8)), 'label': np.eye(4, dtype=np.float32)[[1, 3]]}


def test_multimodal_preprocessor_pads_and_concatenates_sorted():
  inputs = _small_multimodal_inputs()
  f = hk.transform_with_state(
    lambda x: _small_multimodal(None)(x, is_training=False)
  )
  params, _ = _fake_init(f, inputs)
  (out, sizes, without_pos), _ = f.apply(params, {}, None, inputs)  # No rng.
  # audio: 4 tokens x (2 + 3), label: 1 token x 4; common = 5 + 3 = 8.
  assert sizes == {'audio': 4, 'label': 1}
  assert out.shape == (2, 5, 8)
  assert {k: v['pos_embs'].shape for k, v in params.items()} == {
    'multimodal_preprocessor/audio_padding': (1, 3),
    'multimodal_preprocessor/label_padding': (1, 4),
  }
  audio_pad = np.asarray(
    params['multimodal_preprocessor/audio_padding']['pos_embs']
  )
  label_pad = np.asarray(
    params['multimodal_preprocessor/label_padding']['pos_embs']
  )
  patches = inputs['audio'].reshape(2, 4, 2)
  audio_pos = np_fourier((4,), 1, (8,))
  np.testing.assert_allclose(np.asarray(out[:, :4, :2]), patches, atol=0)
  np.testing.assert_allclose(
    np.asarray(out[:, :4, 2:5]),
    np.broadcast_to(audio_pos, (2, 4, 3)),
    atol=1e-5,
  )
  np.testing.assert_allclose(
    np.asarray(out[:, :4, 5:]), np.broadcast_to(audio_pad, (2, 4, 3)), atol=0
  )
  np.testing.assert_array_equal(np.asarray(out[:, 4, :4]), inputs['label'])
  np.testing.assert_array_equal(
    np.asarray(out[:, 4, 4:]), np.broadcast_to(label_pad, (2, 4))
  )
  np.testing.assert_array_equal(np.asarray(without_pos['audio']), patches)


def _multimodal_fn(mask_probs):
  return lambda x: _small_multimodal(mask_probs)(x, is_training=False)


def _unmasked(params, inputs):
  """The same preprocessor without masking, using the padding in `params`."""
  padding = {k: v for k, v in params.items() if k.endswith('_padding')}
  return hk.transform(_multimodal_fn(None)).apply(padding, None, inputs)[0]


def test_multimodal_masking_with_probability_0_and_1_needs_no_rng():
  inputs = _small_multimodal_inputs()
  fn = _multimodal_fn({'audio': 0.0, 'label': 1.0})
  params, _ = _fake_init(hk.transform_with_state(fn), inputs)
  # A mask token for every modality named in mask_probs, even at p = 0.
  assert sorted(params) == sorted(
    f'multimodal_preprocessor/{m}_{kind}'
    for m in ('audio', 'label')
    for kind in ('padding', 'mask_token')
  )
  out, _, _ = hk.transform(fn).apply(params, None, inputs)  # rng=None.
  unmasked = _unmasked(params, inputs)
  token = np.asarray(
    params['multimodal_preprocessor/label_mask_token']['pos_embs']
  )
  np.testing.assert_array_equal(
    np.asarray(out[:, :4]), np.asarray(unmasked[:, :4])
  )
  np.testing.assert_array_equal(
    np.asarray(out[:, 4]), np.broadcast_to(token, (2, 8))
  )


def test_multimodal_masking_with_probability_half_draws_a_key():
  inputs = _small_multimodal_inputs()
  fn = _multimodal_fn({'audio': 0.5})
  params, _ = _fake_init(hk.transform_with_state(fn), inputs)
  g = hk.transform(fn)
  with pytest.raises(ValueError):  # Haiku: no rng given.
    g.apply(params, None, inputs)
  unmasked = np.asarray(_unmasked(params, inputs))
  audio_token = np.asarray(
    params['multimodal_preprocessor/audio_mask_token']['pos_embs']
  )[0]
  apply = jax.jit(g.apply)
  masked_count = 0
  for seed in range(4):
    out = np.asarray(apply(params, jax.random.PRNGKey(seed), inputs)[0])
    np.testing.assert_array_equal(out[:, 4], unmasked[:, 4])  # The label.
    for b in range(2):
      for m in range(4):
        if np.array_equal(out[b, m], audio_token):
          masked_count += 1
        else:
          np.testing.assert_array_equal(out[b, m], unmasked[b, m])
  # 32 draws at p = 0.5: all-or-nothing has probability 2**-31.
  assert 0 < masked_count < 32


def test_restructure_slices_in_sorted_order():
  x = np.arange(2 * 6 * 1, dtype=np.float32).reshape(2, 6, 1)
  parts = io.restructure({'b': 1, 'a': 2, 'c': 3}, x)
  assert list(parts) == ['a', 'b', 'c']
  np.testing.assert_array_equal(parts['a'], x[:, 0:2])
  np.testing.assert_array_equal(parts['b'], x[:, 2:3])
  np.testing.assert_array_equal(parts['c'], x[:, 3:6])


# ---------------------------------------------------------------------------
# Postprocessors
# ---------------------------------------------------------------------------


def test_classification_projection_audio_postprocessors():
  x = _rand((2, 3, 4))

  def fn(x):
    return (
      io.ClassificationPostprocessor(5)(x, is_training=False),
      io.ProjectionPostprocessor(2)(x, is_training=False),
      io.AudioPostprocessor(samples_per_patch=6)(x, is_training=False),
    )

  params, _, (logits, proj, audio) = _init_apply(fn, x)

  def lin(name):
    p = params[name]
    return x @ np.asarray(p['w']) + np.asarray(p['b'])

  np.testing.assert_allclose(
    np.asarray(logits),
    lin('classification_postprocessor/linear')[:, 0],
    atol=1e-5,
  )
  np.testing.assert_allclose(
    np.asarray(proj), lin('projection_postprocessor/linear'), atol=1e-5
  )
  np.testing.assert_allclose(
    np.asarray(audio),
    lin('audio_postprocessor/linear').reshape(2, 18),
    atol=1e-5,
  )


def test_image_postprocessors():
  x = _rand((2, 12, 8))

  def fn(x):
    pixels = io.ImagePostprocessor('pixels', input_reshape_size=(3, 4))(
      x, is_training=False
    )
    patches = io.ImagePostprocessor(
      'patches', spatial_upsample=2, input_reshape_size=(3, 4)
    )(x, is_training=False)
    video = io.ImagePostprocessor(
      'patches',
      spatial_upsample=1,
      temporal_upsample=2,
      input_reshape_size=(1, 3, 4),
    )(x, is_training=False)
    return pixels, patches, video

  _, _, (pixels, patches, video) = _init_apply(fn, x)
  np.testing.assert_array_equal(np.asarray(pixels), x.reshape(2, 3, 4, 8))
  np.testing.assert_array_equal(
    np_space_to_depth(np.asarray(patches), 1, 2), x.reshape(2, 3, 4, 8)
  )
  assert video.shape == (2, 2, 3, 4, 4)
  np.testing.assert_array_equal(
    np.asarray(video[:, 0]), x.reshape(2, 3, 4, 8)[..., :4]
  )


def test_image_conv_postprocessor_shapes():
  x = jnp.zeros((2, 12, 8))

  def fn(x):
    conv = io.ImagePostprocessor(
      'conv', spatial_upsample=4, n_outputs=3, input_reshape_size=(3, 4)
    )(x, is_training=False)
    conv3d = io.ImagePostprocessor(
      'conv',
      spatial_upsample=2,
      temporal_upsample=2,
      n_outputs=3,
      input_reshape_size=(2, 2, 3),
    )(x, is_training=False)
    conv1x1 = io.ImagePostprocessor(
      'conv1x1', n_outputs=5, input_reshape_size=(3, 4)
    )(x, is_training=False)
    conv1x1_video = io.ImagePostprocessor(
      'conv1x1', n_outputs=5, input_reshape_size=(2, 2, 3)
    )(x, is_training=False)
    return conv, conv3d, conv1x1, conv1x1_video

  _, _, outs = _eval_shapes(fn, x)
  assert [o.shape for o in outs] == [
    (2, 12, 16, 3),
    (2, 4, 4, 6, 3),
    (2, 3, 4, 5),
    (2, 2, 2, 3, 5),
  ]


def test_multimodal_postprocessor_splits_and_applies():
  x = _rand((1, 6, 4))

  def fn(x, dict_input):
    post = io.MultimodalPostprocessor(
      {
        'label': io.ClassificationPostprocessor(3),
        'image': io.IdentityPostprocessor(),
      },
      input_is_dict=dict_input,
    )
    if dict_input:
      return post({'image': x[:, :5], 'label': x[:, 5:]}, is_training=False)
    return post(x, is_training=False, modality_sizes={'image': 5, 'label': 1})

  params, _, out = _init_apply(lambda x: fn(x, False), x)
  np.testing.assert_array_equal(np.asarray(out['image']), x[:, :5])
  p = params['classification_postprocessor/linear']
  np.testing.assert_allclose(
    np.asarray(out['label']),
    x[:, 5] @ np.asarray(p['w']) + np.asarray(p['b']),
    atol=1e-5,
  )
  out_dict = hk.transform(lambda x: fn(x, True)).apply(params, None, x)
  np.testing.assert_array_equal(
    np.asarray(out_dict['label']), np.asarray(out['label'])
  )


def test_embedding_decoder_tied_logits():
  tokens = np.array([[1, 5, 2], [0, 3, 3]])

  def fn(tokens):
    embed = hk.Embed(7, 4)
    x = embed(tokens) * 2.0
    return io.EmbeddingDecoder(embed.embeddings)(x, is_training=False), x

  f = hk.transform(fn)
  params = f.init(jax.random.PRNGKey(0), tokens)
  assert params['embedding_decoder']['bias'].shape == (7,)
  np.testing.assert_array_equal(
    params['embedding_decoder']['bias'], np.zeros(7)
  )
  params = jax.tree.map(lambda a: a + 0.25, params)
  logits, x = f.apply(params, None, tokens)
  emb = np.asarray(params['embed']['embeddings'])
  want = np.asarray(x) @ emb.T + 0.25
  assert logits.shape == (2, 3, 7)
  np.testing.assert_allclose(np.asarray(logits), want, atol=1e-5)


# ---------------------------------------------------------------------------
# Released configs at full size (eval_shape only) vs the released trees
# ---------------------------------------------------------------------------


def _shape_tree(tree):
  return {
    mod: {k: (tuple(v.shape), str(v.dtype)) for k, v in ps.items()}
    for mod, ps in tree.items()
  }


def _official_subtree(entry, prefixes):
  return {
    mod: {k: (tuple(v['shape']), v['dtype']) for k, v in ps.items()}
    for mod, ps in entry.items()
    if any(mod == p or mod.startswith(p + '/') for p in prefixes)
  }


IMAGENET_PREPROCESSORS = {
  'imagenet_fourier': (
    dict(
      prep_type='pixels',
      spatial_downsample=1,
      position_encoding_type='fourier',
      **_fourier_kwargs(64, (224, 224)),
    ),
    (50176, 261),
  ),
  'imagenet_conv': (
    dict(
      prep_type='conv',
      spatial_downsample=4,
      position_encoding_type='fourier',
      **_fourier_kwargs(64, (56, 56)),
    ),
    (3136, 322),
  ),
  'imagenet_learned': (
    dict(
      prep_type='conv1x1',
      spatial_downsample=1,
      num_channels=256,
      position_encoding_type='trainable',
      project_pos_dim=256,
      trainable_position_encoding_kwargs=dict(
        num_channels=256, init_scale=0.02
      ),
    ),
    (50176, 512),
  ),
}


@pytest.mark.parametrize('model', sorted(IMAGENET_PREPROCESSORS))
def test_released_imagenet_preprocessor(official, model):
  kwargs, out_shape = IMAGENET_PREPROCESSORS[model]
  images = jnp.zeros((1, 224, 224, 3))
  params, state, (out, sizes, _) = _eval_shapes(
    lambda x: io.ImagePreprocessor(**kwargs)(x, is_training=True), images
  )
  entry = official[model]
  assert _shape_tree(params) == _official_subtree(
    entry['params'], ['image_preprocessor']
  )
  assert _shape_tree(state) == _official_subtree(
    entry['state'], ['image_preprocessor']
  )
  assert out.shape == (1,) + out_shape
  assert sizes is None


def test_released_optical_flow_preprocessor(official):
  frames = jnp.zeros((1, 2, 368, 496, 3))

  def fn(frames):
    return io.ImagePreprocessor(
      prep_type='patches',
      spatial_downsample=1,
      temporal_downsample=2,
      conv_after_patching=True,
      position_encoding_type='fourier',
      **_fourier_kwargs(64, (368, 496)),
    )(io.patches_for_flow(frames), is_training=True)

  params, state, (out, _, without_pos) = _eval_shapes(fn, frames)
  entry = official['optical_flow']
  assert _shape_tree(params) == _official_subtree(
    entry['params'], ['image_preprocessor']
  )
  assert not state
  assert out.shape == (1, 182528, 322)
  assert without_pos.shape == (1, 182528, 64)


def test_released_video_preprocessor_and_postprocessor(official):
  audio = jnp.zeros((1, 30720, 1))
  video = jnp.zeros((1, 16, 224, 224, 3))
  label = jnp.zeros((1, 700))

  def pre_fn(audio, video, label):
    pre = io.MultimodalPreprocessor(
      modalities={
        'audio': io.AudioPreprocessor(
          samples_per_patch=16,
          position_encoding_type='fourier',
          **_fourier_kwargs(192, (30720,)),
        ),
        'image': io.ImagePreprocessor(
          prep_type='patches',
          spatial_downsample=4,
          temporal_downsample=1,
          position_encoding_type='fourier',
          **_fourier_kwargs(32, (16, 56, 56)),
        ),
        'label': io.OneHotPreprocessor(),
      },
      mask_probs={'image': 0.0, 'audio': 0.0, 'label': 1.0},
      min_padding_size=4,
    )
    return pre(
      {'audio': audio, 'image': video, 'label': label}, is_training=False
    )

  params, _, (out, _, without_pos) = _eval_shapes(pre_fn, audio, video, label)
  sizes = jax.tree.map(
    lambda s: s.shape,
    _eval_shapes(
      lambda *xs: {m: jnp.zeros((n,)) for m, n in pre_fn(*xs)[1].items()},
      audio,
      video,
      label,
    )[2],
  )
  sizes = {m: shape[0] for m, shape in sizes.items()}
  entry = official['video_autoencoding']
  assert _shape_tree(params) == _official_subtree(
    entry['params'], ['multimodal_preprocessor']
  )
  assert out.shape == (1, 52097, 704)
  assert sizes == {'audio': 1920, 'image': 50176, 'label': 1}
  assert without_pos['audio'].shape == (1, 1920, 16)
  assert without_pos['image'].shape == (1, 50176, 48)

  # The per-modality widths before padding: 401 / 243 / 700.
  _, _, (audio_out, _, _) = _eval_shapes(
    lambda a: io.AudioPreprocessor(
      samples_per_patch=16, **_fourier_kwargs(192, (30720,))
    )(a, is_training=False),
    audio,
  )
  _, _, (image_out, _, _) = _eval_shapes(
    lambda v: io.ImagePreprocessor(
      prep_type='patches',
      spatial_downsample=4,
      **_fourier_kwargs(32, (16, 56, 56)),
    )(v, is_training=False),
    video,
  )
  assert audio_out.shape == (1, 1920, 401)
  assert image_out.shape == (1, 50176, 243)

  # One decoding chunk of 128: 15 audio patches, 6272 pixels, the label.
  decoded = jnp.zeros((1, 15 + 6272 + 1, 512))

  def post_fn(x):
    post = io.MultimodalPostprocessor(
      {
        'audio': io.AudioPostprocessor(samples_per_patch=16),
        'image': io.ProjectionPostprocessor(3),
        'label': io.ClassificationPostprocessor(700),
      }
    )
    return post(
      x,
      is_training=False,
      modality_sizes={'audio': 15, 'image': 6272, 'label': 1},
    )

  params, _, outputs = _eval_shapes(post_fn, decoded)
  assert _shape_tree(params) == _official_subtree(
    entry['params'],
    [
      'audio_postprocessor',
      'projection_postprocessor',
      'classification_postprocessor',
    ],
  )
  assert {k: tuple(v.shape) for k, v in outputs.items()} == {
    k: tuple(v) for k, v in entry['outputs'].items()
  }


def test_released_language_embedding_decoder(official):
  tokens = jnp.zeros((1, 2048), jnp.int32)

  def fn(tokens):
    embed = hk.Embed(262, 768)
    return io.EmbeddingDecoder(embed.embeddings)(
      embed(tokens), is_training=False
    )

  params, _, logits = _eval_shapes(fn, tokens)
  entry = official['language_mlm']
  assert _shape_tree(params) == _official_subtree(
    entry['params'], ['embed', 'embedding_decoder']
  )
  assert logits.shape == tuple(entry['outputs']['logits'])


# ---------------------------------------------------------------------------
# Validation: ValueErrors that name the argument
# ---------------------------------------------------------------------------


def _build(ctor):
  """Constructs a module inside a transform (where Haiku allows it)."""
  hk.transform(ctor).init(None)


def _call(fn, *args):
  """Traces `fn(*args)` (shapes only) inside a transform."""
  jax.eval_shape(hk.transform_with_state(fn).init, jax.random.PRNGKey(0), *args)


FOURIER = _fourier_kwargs(2, (4, 4))

VALIDATION_CASES = [
  ('frames', lambda: io.space_to_depth(np.zeros((2, 4, 4)))),
  (
    'spatial_block_size',
    lambda: io.space_to_depth(np.zeros((1, 4, 6, 1)), spatial_block_size=4),
  ),
  (
    'temporal_block_size',
    lambda: io.space_to_depth(np.zeros((1, 3, 4, 4, 1)), temporal_block_size=2),
  ),
  (
    'frames',
    lambda: io.reverse_space_to_depth(
      np.zeros((1, 2, 2, 6)), spatial_block_size=2
    ),
  ),
  (
    'sizes',
    lambda: io.extract_patches(
      np.zeros((1, 4, 4, 1)), [3, 3], [1, 1, 1, 1], [1, 1, 1, 1]
    ),
  ),
  (
    'strides',
    lambda: io.extract_patches(
      np.zeros((1, 4, 4, 1)), [1, 3, 3, 1], [2, 1, 1, 1], [1, 1, 1, 1]
    ),
  ),
  (
    'rates',
    lambda: io.extract_patches(
      np.zeros((1, 4, 4, 1)), [1, 3, 3, 1], [1, 1, 1, 1], [1, 0, 1, 1]
    ),
  ),
  (
    'padding',
    lambda: io.extract_patches(
      np.zeros((1, 4, 4, 1)),
      [1, 3, 3, 1],
      [1, 1, 1, 1],
      [1, 1, 1, 1],
      padding='FULL',
    ),
  ),
  (
    'images',
    lambda: io.extract_patches(
      np.zeros((4, 4, 1)), [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1]
    ),
  ),
  ('inputs', lambda: io.patches_for_flow(np.zeros((1, 4, 4, 3)))),
  (
    'prep_type',
    lambda: _build(lambda: io.ImagePreprocessor(prep_type='pixel', **FOURIER)),
  ),
  (
    'concat_or_add_pos',
    lambda: _build(
      lambda: io.ImagePreprocessor(concat_or_add_pos='mul', **FOURIER)
    ),
  ),
  (
    'position_encoding_type',
    lambda: _build(
      lambda: io.ImagePreprocessor(
        position_encoding_type='sinusoidal', **FOURIER
      )
    ),
  ),
  (
    'spatial_downsample',
    lambda: _build(
      lambda: io.ImagePreprocessor(spatial_downsample=8, **FOURIER)
    ),
  ),
  (
    'spatial_downsample',
    lambda: _build(
      lambda: io.ImagePreprocessor(spatial_downsample=1, **FOURIER)
    ),
  ),
  (
    'temporal_downsample',
    lambda: _build(
      lambda: io.ImagePreprocessor(temporal_downsample=2, **FOURIER)
    ),
  ),
  (
    'fourier_position_encoding_kwargs',
    lambda: _build(lambda: io.ImagePreprocessor(prep_type='pixels')),
  ),
  (
    'position_encoding_kwargs',
    lambda: _build(lambda: io.ImagePreprocessor(num_band=3, **FOURIER)),
  ),
  (
    'fourier_position_encoding_kwargs',
    lambda: _call(
      lambda x: io.ImagePreprocessor(
        prep_type='pixels', spatial_downsample=1, **FOURIER
      )(x, is_training=True),
      np.zeros((1, 2, 4, 4, 3)),
    ),
  ),
  (
    'n_extra_pos_mlp',
    lambda: _build(lambda: io.ImagePreprocessor(n_extra_pos_mlp=-1, **FOURIER)),
  ),
  (
    'inputs',
    lambda: _call(
      lambda x: io.ImagePreprocessor(**FOURIER)(x, is_training=True),
      np.zeros((4, 4, 3)),
    ),
  ),
  (
    'temporal_downsample',
    lambda: _call(
      lambda x: io.ImagePreprocessor(
        prep_type='pixels', temporal_downsample=2, **FOURIER
      )(x, is_training=True),
      np.zeros((1, 4, 4, 3)),
    ),
  ),
  (
    'spatial_block_size',
    lambda: _call(
      lambda x: io.ImagePreprocessor(
        prep_type='patches', spatial_downsample=4, **FOURIER
      )(x, is_training=True),
      np.zeros((1, 6, 8, 3)),
    ),
  ),
  (
    'concat_or_add_pos',
    lambda: _call(
      lambda x: io.ImagePreprocessor(
        prep_type='pixels',
        spatial_downsample=1,
        concat_or_add_pos='add',
        **FOURIER,
      )(x, is_training=True),
      np.zeros((1, 4, 4, 3)),
    ),
  ),
  (
    'samples_per_patch',
    lambda: _call(
      lambda x: io.AudioPreprocessor(samples_per_patch=5, **FOURIER)(
        x, is_training=True
      ),
      np.zeros((1, 12)),
    ),
  ),
  (
    'prep_type',
    lambda: _build(lambda: io.AudioPreprocessor(prep_type='mel', **FOURIER)),
  ),
  (
    'inputs',
    lambda: _call(
      lambda x: io.OneHotPreprocessor()(x, is_training=True),
      np.zeros((1, 2, 3)),
    ),
  ),
  (
    'mask_probs',
    lambda: _build(
      lambda: io.MultimodalPreprocessor(
        {'label': io.OneHotPreprocessor()}, mask_probs={'image': 0.5}
      )
    ),
  ),
  (
    'mask_probs',
    lambda: _build(
      lambda: io.MultimodalPreprocessor(
        {'label': io.OneHotPreprocessor()}, mask_probs={'label': 1.5}
      )
    ),
  ),
  (
    'min_padding_size',
    lambda: _build(
      lambda: io.MultimodalPreprocessor(
        {'label': io.OneHotPreprocessor()}, min_padding_size=-1
      )
    ),
  ),
  ('modalities', lambda: _build(lambda: io.MultimodalPreprocessor({}))),
  (
    'inputs',
    lambda: _call(
      lambda x: io.MultimodalPreprocessor({'label': io.OneHotPreprocessor()})(
        x, is_training=True
      ),
      {'image': np.zeros((1, 3))},
    ),
  ),
  (
    'modality_sizes',
    lambda: io.restructure({'a': 2, 'b': 3}, np.zeros((1, 6, 2))),
  ),
  ('postproc_type', lambda: _build(lambda: io.ImagePostprocessor('raft'))),
  (
    'spatial_upsample',
    lambda: _build(lambda: io.ImagePostprocessor('pixels', spatial_upsample=2)),
  ),
  ('n_outputs', lambda: _build(lambda: io.ImagePostprocessor('conv'))),
  (
    'temporal_upsample',
    lambda: _build(
      lambda: io.ImagePostprocessor(
        'conv', spatial_upsample=4, temporal_upsample=3, n_outputs=3
      )
    ),
  ),
  (
    'input_reshape_size',
    lambda: _call(
      lambda x: io.ImagePostprocessor(input_reshape_size=(2, 2))(
        x, is_training=True
      ),
      np.zeros((1, 5, 3)),
    ),
  ),
  (
    'postproc_type',
    lambda: _build(lambda: io.AudioPostprocessor(postproc_type='pixels')),
  ),
  ('num_classes', lambda: _build(lambda: io.ClassificationPostprocessor(0))),
  (
    'modality_sizes',
    lambda: _call(
      lambda x: io.MultimodalPostprocessor({'a': io.IdentityPostprocessor()})(
        x, is_training=True
      ),
      np.zeros((1, 2, 3)),
    ),
  ),
  (
    'inputs',
    lambda: _call(
      lambda x: io.EmbeddingDecoder(jnp.zeros((5, 4)))(x, is_training=False),
      np.zeros((1, 2, 3)),
    ),
  ),
  (
    'inputs',
    lambda: _call(
      lambda x: io.Conv2DDownsample()(x, is_training=True),
      np.zeros((1, 2, 8, 8, 3)),
    ),
  ),
]


@pytest.mark.parametrize(
  'argument,fn',
  VALIDATION_CASES,
  ids=[f'{i}-{a}' for i, (a, _) in enumerate(VALIDATION_CASES)],
)
def test_validation_names_the_argument(argument, fn):
  with pytest.raises(ValueError, match=rf'\b{argument}\b'):
    fn()


def test_multimodal_postprocessor_refuses_to_drop_outputs():
  post = lambda x: io.MultimodalPostprocessor(  # noqa: E731
    {'a': io.IdentityPostprocessor(), 'b': io.IdentityPostprocessor()}
  )(x, is_training=False, modality_sizes={'a': 2, 'b': 2})
  with pytest.raises(ValueError, match='modality_sizes') as err:
    _call(post, np.zeros((1, 7, 3)))
  # Both the flat length and the sizes (and their sum) are named.
  assert '7' in str(err.value) and '4' in str(err.value)
