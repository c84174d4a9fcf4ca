"""Tests of PerceiverEncoder, the decoders and Perceiver (tiny sizes, CPU).

Shapes: B batch, M inputs, C input channels, N latents, D latent channels,
O outputs, S subsampled outputs, E query channels.

The references are slow and obvious: the float64 NumPy blocks of
test_attention.py applied layer by layer, and full (unchunked) decodes.
"""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.test_attention import (
  np_cross_attention,
  np_linear,
  np_self_attention,
  random_params,
  to_np,
)

from perceiver import decoders as dec
from perceiver.encoder import PerceiverEncoder
from perceiver.model import Perceiver

B, M, C = 2, 6, 3  # inputs
N, D = 4, 8  # latents
ENC = 'perceiver_encoder/~'


def make_inputs(seed=0, batch=B, m=M, c=C):
  return (
    np.random.default_rng(seed).normal(size=(batch, m, c)).astype(np.float32)
  )


def tiny_encoder(**kwargs):
  config = dict(
    num_self_attends_per_block=1,
    num_blocks=1,
    z_index_dim=N,
    num_z_channels=D,
    num_cross_attend_heads=1,
    num_self_attend_heads=2,
  )
  config.update(kwargs)
  return PerceiverEncoder(**config)


def encoder_fn(is_training=False, **kwargs):
  def fn(x, input_mask=None):
    enc = tiny_encoder(**kwargs)
    return enc(
      x, enc.latents(x), is_training=is_training, input_mask=input_mask
    )

  return hk.transform(fn)


def tree_shapes(params):
  return jax.tree_util.tree_map(lambda a: tuple(a.shape), params)


# ----------------------------------------------------------------------------
# Encoder: weight sharing across blocks, remat and scan.
# ----------------------------------------------------------------------------


def np_encoder(p, x, num_blocks, per_block, num_self_heads, input_mask=None):
  """The encoder by hand: cross-attend once, then the same `per_block`
  self-attentions `num_blocks` times (weights shared across blocks)."""
  z = np.broadcast_to(
    p[f'{ENC}/trainable_position_encoding']['pos_embs'], (x.shape[0], N, D)
  )
  mask = None
  if input_mask is not None:
    mask = np.broadcast_to(
      np.asarray(input_mask, bool)[:, None, :], (x.shape[0], N, x.shape[1])
    )
  z = np_cross_attention(p, f'{ENC}/cross_attention', z, x, 1, True, mask)
  names = ['self_attention'] + [
    f'self_attention_{i}' for i in range(1, per_block)
  ]
  for _ in range(num_blocks):
    for name in names:
      z = np_self_attention(p, f'{ENC}/{name}', z, num_self_heads)
  return z


def test_encoder_weights_shared_across_blocks():
  x = make_inputs()
  deep = encoder_fn(num_blocks=8, num_self_attends_per_block=6)
  shallow = encoder_fn(num_blocks=1, num_self_attends_per_block=6)
  params = random_params(deep, x)
  # Exactly the parameters of one block: 1 cross-attention, 6 self-attentions.
  shallow_shapes = jax.eval_shape(shallow.init, jax.random.PRNGKey(0), x)
  assert tree_shapes(params) == tree_shapes(shallow_shapes)
  assert sorted({k.split('/')[2] for k in params}) == sorted(
    ['cross_attention', 'trainable_position_encoding', 'self_attention']
    + [f'self_attention_{i}' for i in range(1, 6)]
  )
  out8 = jax.jit(deep.apply)(params, None, x)
  out1 = jax.jit(shallow.apply)(params, None, x)
  assert out8.shape == (B, N, D)
  # The blocks really repeat ...
  assert not np.allclose(out8, out1, atol=1e-3)
  # ... and are the 6 shared layers applied 8 times.
  p = to_np(params)
  np.testing.assert_allclose(
    out1, np_encoder(p, x, 1, 6, 2), rtol=1e-4, atol=1e-4
  )
  np.testing.assert_allclose(
    out8, np_encoder(p, x, 8, 6, 2), rtol=1e-3, atol=1e-3
  )


def test_encoder_input_mask_matches_numpy():
  x = make_inputs(1)
  mask = np.array([[1, 1, 0, 1, 0, 1], [0, 1, 1, 1, 1, 1]], bool)
  f = encoder_fn(num_blocks=2, num_self_attends_per_block=2)
  params = random_params(f, x, mask)
  out = jax.jit(f.apply)(params, None, x, mask)
  np.testing.assert_allclose(
    out, np_encoder(to_np(params), x, 2, 2, 2, mask), rtol=1e-4, atol=1e-4
  )
  # Masked inputs are not read: changing them changes nothing.
  x2 = x.copy()
  x2[~mask] = 100.0
  np.testing.assert_allclose(
    jax.jit(f.apply)(params, None, x2, mask), out, rtol=1e-6, atol=1e-6
  )


def test_encoder_called_twice_shares_weights():
  # Calling one module twice in a transform is ordinary Haiku weight sharing
  # (e.g. encoding two inputs with one encoder, or encode() then __call__).
  x, x2 = make_inputs(13), make_inputs(14)

  def fn(x, x2):
    enc = tiny_encoder(num_blocks=2)
    return (
      enc(x, enc.latents(x), is_training=False),
      enc(x2, enc.latents(x2), is_training=False),
    )

  f = hk.transform(fn)
  params = random_params(f, x, x2, seed=13)
  assert tree_shapes(params) == tree_shapes(
    jax.eval_shape(encoder_fn(num_blocks=2).init, jax.random.PRNGKey(0), x)
  )
  a, b = jax.jit(f.apply)(params, None, x, x2)
  p = to_np(params)
  np.testing.assert_allclose(a, np_encoder(p, x, 2, 1, 2), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
    b, np_encoder(p, x2, 2, 1, 2), rtol=1e-4, atol=1e-4
  )


REMAT_CONFIG = dict(num_blocks=2, num_self_attends_per_block=2)


@functools.lru_cache(maxsize=None)
def _plain_encoder_value_and_grads():
  x = make_inputs(2)
  f = encoder_fn(**REMAT_CONFIG)
  params = random_params(f, x, seed=2)
  loss = lambda p, x: jnp.sum(jnp.sin(f.apply(p, None, x)))
  out = jax.jit(f.apply)(params, None, x)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  return x, params, out, grads


@pytest.mark.parametrize(
  'remat,scan_blocks,scan_layers',
  [
    (True, False, False),
    (False, True, False),
    (False, False, True),
    (True, True, True),
  ],
)
def test_remat_and_scan_match_plain_encoder(remat, scan_blocks, scan_layers):
  x, params, out, grads = _plain_encoder_value_and_grads()
  f = encoder_fn(
    remat=remat,
    scan_blocks=scan_blocks,
    scan_layers=scan_layers,
    **REMAT_CONFIG,
  )
  shapes = jax.eval_shape(f.init, jax.random.PRNGKey(0), x)
  assert tree_shapes(shapes) == tree_shapes(params)
  loss = lambda p, x: jnp.sum(jnp.sin(f.apply(p, None, x)))
  np.testing.assert_allclose(
    jax.jit(f.apply)(params, None, x), out, rtol=1e-5, atol=1e-5
  )
  got = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  flat_got = jax.tree_util.tree_leaves_with_path(got)
  flat_ref = jax.tree_util.tree_leaves(grads)
  assert len(flat_got) == len(flat_ref)
  for (path, g), r in zip(flat_got, flat_ref):
    np.testing.assert_allclose(
      g, r, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path)
    )


def test_unrolled_backward_keeps_nan_gradients():
  # The CPU fusion cut on each unrolled layer's input gradient is an identity
  # that must not hide a NaN (the train step's non-finite guard needs it).
  x, params, _, grads = _plain_encoder_value_and_grads()
  f = encoder_fn(**REMAT_CONFIG)
  bad = jnp.asarray(x).at[0, 0, 0].set(jnp.nan)
  g = jax.jit(jax.grad(lambda x: jnp.sum(f.apply(params, None, x))))(bad)
  assert np.isnan(np.asarray(g)).any()


def test_unrolled_backward_cuts_fusion_between_layers():
  # One cut (a conditional) per unrolled layer in the compiled gradient on
  # CPU; without it XLA fused the residual gradient of all later layers into
  # each layer's backward (quadratic time in depth).
  x, params, _, _ = _plain_encoder_value_and_grads()
  f = encoder_fn(**REMAT_CONFIG)
  hlo = (
    jax.jit(jax.grad(lambda p: jnp.sum(f.apply(p, None, x))))
    .lower(params)
    .compile()
    .as_text()
  )
  layers = (
    REMAT_CONFIG['num_blocks'] * REMAT_CONFIG['num_self_attends_per_block']
  )
  assert hlo.count(' conditional(') == layers


def test_scanned_encoder_dropout_matches_unrolled():
  # In training, every layer of every block gets its own dropout key, in the
  # same order whether the blocks and layers are unrolled or scanned.
  x = make_inputs(15)
  config = dict(REMAT_CONFIG, dropout_prob=0.3, is_training=True)
  plain = encoder_fn(**config)
  scanned = encoder_fn(remat=True, scan_blocks=True, scan_layers=True, **config)
  params = random_params(plain, x, seed=15)
  key = jax.random.PRNGKey(3)
  a = jax.jit(plain.apply)(params, key, x)
  b = jax.jit(scanned.apply)(params, key, x)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  no_dropout = jax.jit(encoder_fn(**REMAT_CONFIG).apply)(params, None, x)
  assert not np.allclose(a, no_dropout, atol=1e-3)


# ----------------------------------------------------------------------------
# Decoders in a Perceiver: chunked and subsampled decoding.
# ----------------------------------------------------------------------------

TRAINABLE = dict(trainable_position_encoding_kwargs=dict(num_channels=6))
FOURIER = dict(fourier_position_encoding_kwargs=dict(num_bands=2))


# kind -> (O, shape of a full decode).
DECODER_SPECS = {
  'basic-trainable': (7, (B, 7, 5)),
  'basic-fourier': (7, (B, 7, 5)),
  'basic-fourier-2d': (12, (B, 12, 5)),
  'basic-concat': (M, (B, M, 4)),
  'video-trainable': (12, (B, 2, 3, 2, 4)),
  'video-fourier': (12, (B, 2, 3, 2, 4)),
  'flow': (M, (B, 2, 3, 2)),
}


def make_decoder(kind):
  """Builds a tiny decoder of each kind (inside a transform)."""
  if kind == 'basic-trainable':
    return dec.BasicDecoder(
      5,
      'trainable',
      output_index_dims=(7,),
      num_heads=2,
      qk_channels=8,
      **TRAINABLE,
    )
  if kind == 'basic-fourier':
    return dec.BasicDecoder(5, 'fourier', output_index_dims=(7,), **FOURIER)
  if kind == 'basic-fourier-2d':
    return dec.BasicDecoder(
      5, 'fourier', output_index_dims=(3, 4), use_query_residual=True, **FOURIER
    )
  if kind == 'basic-concat':
    return dec.BasicDecoder(
      4,
      'trainable',
      output_index_dims=(M,),
      concat_preprocessed_input=True,
      **TRAINABLE,
    )
  if kind == 'video-trainable':
    return dec.BasicVideoAutoencodingDecoder(
      (B, 2, 3, 2), 'trainable', output_num_channels=4, **TRAINABLE
    )
  if kind == 'video-fourier':
    return dec.BasicVideoAutoencodingDecoder(
      (B, 2, 3, 2), 'fourier', output_num_channels=4, **FOURIER
    )
  if kind == 'flow':
    return dec.FlowDecoder((2, 3), output_num_channels=2, rescale_factor=10.0)
  raise ValueError(kind)


DECODER_KINDS = list(DECODER_SPECS)


def perceiver_fn(kind, is_training=False, dropout_prob=0.0, **call_kwargs):
  def fn(x, **kwargs):
    decoder = make_decoder(kind)
    model = Perceiver(tiny_encoder(dropout_prob=dropout_prob), decoder)
    return model(x, is_training=is_training, **call_kwargs, **kwargs)

  return hk.transform(fn)


# Chunk sizes that do not divide O; for two kinds also 1 and more than O.
CHUNK_SIZES = {
  'basic-trainable': (3, 1, 10),
  'basic-fourier': (3,),
  'basic-fourier-2d': (5,),
  'basic-concat': (4,),
  'video-trainable': (5,),
  'video-fourier': (5, 1, 13),
  'flow': (4,),
}


@pytest.mark.parametrize('kind', DECODER_KINDS)
def test_chunked_and_subsampled_decoding_match_full(kind):
  x = make_inputs(3)
  num_outputs, shape = DECODER_SPECS[kind]
  full_f = perceiver_fn(kind)
  params = random_params(full_f, x, seed=3)
  chunk_sizes = CHUNK_SIZES[kind]
  # NumPy indices: a concrete jax.Array closed over by jit fails, see
  # test_subsampled_points_concrete_jax_array_under_jit.
  points = np.array([num_outputs - 1, 0, 2, 2, num_outputs // 2])

  @jax.jit
  def run(params, x):
    full = full_f.apply(params, None, x)
    chunked = [
      perceiver_fn(kind, decode_chunk_size=k).apply(params, None, x)
      for k in chunk_sizes
    ]
    sub = perceiver_fn(kind, subsampled_output_points=points).apply(
      params, None, x
    )
    return full, chunked, sub

  full, chunked, sub = run(params, x)
  assert full.shape == shape
  for k, out in zip(chunk_sizes, chunked):
    assert out.shape == shape
    np.testing.assert_allclose(
      out, full, rtol=1e-5, atol=1e-5, err_msg=f'decode_chunk_size={k}'
    )
  flat = np.asarray(full).reshape(B, num_outputs, -1)
  assert sub.shape == (B, len(points), shape[-1])
  np.testing.assert_allclose(sub, flat[:, points], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kind', ['basic-trainable', 'video-fourier'])
def test_subsampled_points_concrete_jax_array_under_jit(kind):
  # Subsampled points that are a concrete jax.Array (not a tracer) inside a
  # jitted function: the range check must not call int() on a traced min().
  x = make_inputs(3)
  f = perceiver_fn(kind, subsampled_output_points=jnp.array([1, 0]))
  params = random_params(f, x, seed=3)
  out = jax.jit(f.apply)(params, None, x)
  assert out.shape[:2] == (B, 2)


def test_fourier_queries_are_on_the_grid():
  # Full Fourier queries sit at -1 + 2 i / O (the subsampled grid), so a
  # subsampled decode equals the full decode's rows (see decoders.py).
  x = make_inputs()

  def fn(x, points=None):
    d = dec.BasicDecoder(5, 'fourier', output_index_dims=(4,), **FOURIER)
    return d.decoder_query(x, subsampled_points=points)

  q = hk.transform(fn).apply({}, None, x)
  pos = np.array([-1.0, -0.5, 0.0, 0.5])
  assert q.shape == (B, 4, 5)
  np.testing.assert_allclose(q[0, :, 0], pos, atol=1e-6)
  # Frequencies linspace(1, 2, 2): [x, sin(pi x), sin(2 pi x), cos.., cos..].
  np.testing.assert_allclose(q[0, :, 1], np.sin(np.pi * pos), atol=1e-6)
  np.testing.assert_allclose(q[0, :, 4], np.cos(2 * np.pi * pos), atol=1e-6)


@pytest.mark.parametrize('kind', ['basic-trainable', 'video-fourier'])
def test_query_mask(kind):
  x = make_inputs(4)
  num_outputs, shape = DECODER_SPECS[kind]
  mask = np.ones((B, num_outputs), bool)
  mask[0, [0, 3]] = False
  mask[1, num_outputs - 1] = False
  full_f = perceiver_fn(kind)
  params = random_params(full_f, x, seed=4)

  @jax.jit
  def run(params, x, x_other):
    full = full_f.apply(params, None, x, query_mask=mask)
    chunked = perceiver_fn(kind, decode_chunk_size=5).apply(
      params, None, x, query_mask=mask
    )
    other = full_f.apply(params, None, x_other, query_mask=mask)
    return full, chunked, other

  full, chunked, other = run(params, x, make_inputs(5))
  np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-5)
  flat = np.asarray(full).reshape(B, num_outputs, -1)
  flat_other = np.asarray(other).reshape(B, num_outputs, -1)
  # A masked query reads nothing: its row is the same whatever the inputs
  # (and the same for every masked query), unmasked rows change.
  np.testing.assert_allclose(flat[~mask], flat_other[~mask], atol=1e-6)
  np.testing.assert_allclose(
    flat[~mask], flat[~mask][:1].repeat(3, 0), atol=1e-6
  )
  assert not np.allclose(flat[mask], flat_other[mask], atol=1e-3)
  # By hand: attention output 0 -> linear_3 bias -> + MLP(LN(.)) -> output.
  p = to_np(params)
  prefix = (
    'basic_decoder'
    if kind.startswith('basic')
    else 'basic_video_autoencoding_decoder/~/basic_decoder'
  )
  ca = f'{prefix}/cross_attention'
  a = p[f'{ca}/attention/linear_3']['b']
  from tests.test_attention import np_ln, np_mlp  # pylint: disable=g-import-not-at-top

  row = a + np_mlp(p, f'{ca}/mlp', np_ln(p, f'{ca}/layer_norm_2', a))
  row = np_linear(row, p[f'{prefix}/output'])
  np.testing.assert_allclose(flat[0, 0], row, rtol=1e-4, atol=1e-4)


def test_query_mask_zeroes_rows_before_projection_at_init():
  # With zero biases (their initial value) a masked query's pre-projection
  # output is exactly zero. With nonzero biases it is the constant row checked
  # in test_query_mask: only the attention output itself is zeroed.
  x = make_inputs(6)
  mask = np.array([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]], bool)

  def fn(x):
    enc = tiny_encoder()
    z = enc(x, enc.latents(x), is_training=False)
    d = dec.BasicDecoder(
      3, 'trainable', output_index_dims=(5,), final_project=False, **TRAINABLE
    )
    return d(d.decoder_query(x), z, is_training=False, query_mask=mask)

  f = hk.transform(fn)
  # Random weights; biases and LayerNorm offsets zero, as at initialisation.
  params = {
    m: {
      n: jnp.zeros_like(v) if n in ('b', 'offset') else v
      for n, v in leaves.items()
    }
    for m, leaves in random_params(f, x, seed=6).items()
  }
  out = jax.jit(f.apply)(params, None, x)
  assert out.shape == (B, 5, 6)  # final_project=False: query width
  np.testing.assert_array_equal(out[0, 1], 0.0)
  np.testing.assert_array_equal(out[0, 4], 0.0)
  assert np.all(np.abs(np.asarray(out)[mask]).sum(-1) > 0)


# ----------------------------------------------------------------------------
# Decoder output shapes (traced only).
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('kind', DECODER_KINDS)
def test_decoder_output_shapes(kind):
  x = make_inputs()
  _, shape = DECODER_SPECS[kind]
  f = perceiver_fn(kind)
  params = jax.eval_shape(f.init, jax.random.PRNGKey(0), x)
  out = jax.eval_shape(f.apply, params, None, x)
  assert out.shape == shape


def test_classification_decoder_matches_numpy():
  x = make_inputs(7)

  def fn(x):
    model = Perceiver(
      tiny_encoder(), dec.ClassificationDecoder(10, num_heads=1, **TRAINABLE)
    )
    return model(x, is_training=False)

  f = hk.transform(fn)
  params = random_params(f, x, seed=7)
  logits = jax.jit(f.apply)(params, None, x)
  assert logits.shape == (B, 10)
  p = to_np(params)
  z = np_encoder(p, x, 1, 1, 2)
  pre = 'classification_decoder/~/basic_decoder'
  query = np.broadcast_to(
    p[f'{pre}/~/trainable_position_encoding']['pos_embs'], (B, 1, 6)
  )
  h = np_cross_attention(p, f'{pre}/cross_attention', query, z, 1, False)
  expected = np_linear(h, p[f'{pre}/output'])[:, 0]
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_projection_decoder():
  x = make_inputs(8)

  def fn(x):
    model = Perceiver(tiny_encoder(), dec.ProjectionDecoder(num_classes=7))
    return model(x, is_training=False)

  f = hk.transform(fn)
  # Zero-initialised projection (nothing random to compile: init the head).
  head = hk.transform(
    lambda z: dec.ProjectionDecoder(num_classes=7)(None, z, is_training=False)
  )
  init_params = head.init(None, jnp.ones((B, N, D)))
  np.testing.assert_array_equal(
    init_params['projection_decoder/~/logits']['w'], 0.0
  )
  params = random_params(f, x, seed=8)
  logits = jax.jit(f.apply)(params, None, x)
  assert logits.shape == (B, 7)
  p = to_np(params)
  z = np_encoder(p, x, 1, 1, 2)
  expected = np_linear(z.mean(1), p['projection_decoder/~/logits'])
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_multimodal_decoder_shapes_and_order():
  x = make_inputs(9, m=7)
  sizes = {'video': 4, 'audio': 3}
  traced = {}

  def fn(x, points=None):
    modalities = {
      'video': dec.BasicVideoAutoencodingDecoder(
        (B, 1, 2, 2), 'fourier', output_num_channels=1, **FOURIER
      ),
      'audio': dec.BasicDecoder(
        1, 'trainable', output_index_dims=(5,), **TRAINABLE
      ),
    }
    d = dec.MultimodalDecoder(
      modalities, num_outputs=9, output_num_channels=6, min_padding_size=2
    )
    q = d.decoder_query(x, sizes, subsampled_points=points)
    traced['output_shape'] = d.output_shape(x)
    return q, d(q, jnp.ones((B, N, D)), is_training=False)

  f = hk.transform(fn)
  params = jax.eval_shape(f.init, jax.random.PRNGKey(0), x)
  # Padding to max(15, 6) + 2 = 17 channels, one learned vector per modality
  # (the released parameter names).
  assert params['multimodal_decoder/~decoder_query/audio_padding'][
    'pos_embs'
  ].shape == (1, 11)
  assert params['multimodal_decoder/~decoder_query/video_padding'][
    'pos_embs'
  ].shape == (1, 2)
  q, out = jax.eval_shape(f.apply, params, None, x)
  shape, out_sizes = traced['output_shape']
  # Sorted modality order: audio (5) then video (4).
  assert q.shape == (B, 9, 17)
  assert out.shape == (B, 9, 6)
  assert shape == (B, 9, None)
  assert out_sizes == {'audio': 5, 'video': 4}
  q, out = jax.eval_shape(
    functools.partial(f.apply, points={'video': jnp.array([0, 3])}),
    params,
    None,
    x,
  )
  assert out.shape == (B, 7, 6)


# ----------------------------------------------------------------------------
# jit, grad, rng and dropout through a small Perceiver.
# ----------------------------------------------------------------------------


def test_jit_and_grad_through_perceiver():
  x = make_inputs(10)
  f = perceiver_fn('basic-fourier')
  params = random_params(f, x, seed=10)

  def loss(params, x):
    return jnp.mean(jnp.square(f.apply(params, None, x) - 1.0))

  value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  value, (g_params, g_x) = value_and_grad(params, x)
  assert np.isfinite(value)
  assert g_x.shape == x.shape and np.all(np.isfinite(g_x))
  for path, g in jax.tree_util.tree_leaves_with_path(g_params):
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
  # Every parameter reaches the loss.
  norms = {
    jax.tree_util.keystr(p): float(jnp.abs(g).sum())
    for p, g in jax.tree_util.tree_leaves_with_path(g_params)
  }
  assert all(v > 0 for v in norms.values()), norms
  # One SGD step decreases the loss.
  stepped = jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params, g_params)
  assert value_and_grad(stepped, x)[0] < value


@pytest.mark.parametrize(
  'is_training,dropout_prob', [(False, 0.0), (False, 0.3), (True, 0.0)]
)
def test_inference_without_rng(is_training, dropout_prob):
  x = make_inputs(11)
  f = perceiver_fn(
    'basic-trainable', is_training=is_training, dropout_prob=dropout_prob
  )
  params = random_params(f, x, seed=11)
  out = jax.jit(f.apply)(params, None, x)  # rng=None
  assert out.shape == (B, 7, 5)
  np.testing.assert_array_equal(out, jax.jit(f.apply)(params, None, x))


def test_dropout_in_training_needs_rng_and_changes_outputs():
  x = make_inputs(12)
  train = perceiver_fn('basic-trainable', is_training=True, dropout_prob=0.3)
  evaluate = perceiver_fn(
    'basic-trainable', is_training=False, dropout_prob=0.3
  )
  params = random_params(train, x, seed=12)
  with pytest.raises(ValueError, match='PRNGKey'):
    jax.jit(train.apply)(params, None, x)
  run = jax.jit(train.apply)
  a = run(params, jax.random.PRNGKey(0), x)
  b = run(params, jax.random.PRNGKey(1), x)
  ev = jax.jit(evaluate.apply)(params, None, x)
  assert not np.allclose(a, ev, atol=1e-4)
  assert not np.allclose(a, b, atol=1e-4)
  np.testing.assert_array_equal(a, run(params, jax.random.PRNGKey(0), x))
