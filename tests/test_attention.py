"""Tests of perceiver/attention.py against slow, obvious NumPy references.

Shapes: B batch, N queries, M keys/values, H heads, K per-head q/k width,
V per-head value width, C channels.

Every reference below is float64 NumPy written from the paper's equations
(Vaswani et al. 2017; Perceiver IO, Sec. 2 and Appendix E), not from the code
under test: `np_attend` (masked softmax attention whose fully masked rows are
zero) and its hand-derived gradient `np_attend_grads`, LayerNorm, the
tanh-approximate GELU, and the Attention / MLP / SelfAttention /
CrossAttention blocks computed from the modules' own parameters.
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver import attention as attn

IMPLS_CPU = ('reference', 'chunked', 'xla')

# ----------------------------------------------------------------------------
# NumPy references (float64).
# ----------------------------------------------------------------------------


def np_attend(q_BNHK, k_BMHK, v_BMHV, mask_BNM=None):
  """Masked softmax attention; rows with no allowed key output zeros."""
  q, k, v = (np.asarray(a, np.float64) for a in (q_BNHK, k_BMHK, v_BMHV))
  B, N, H, K = q.shape
  M, V = k.shape[1], v.shape[-1]
  mask = (
    np.ones((B, N, M), bool) if mask_BNM is None else np.asarray(mask_BNM, bool)
  )
  out = np.zeros((B, N, H, V))
  for b in range(B):
    for h in range(H):
      for n in range(N):
        allowed = mask[b, n]
        if not allowed.any():
          continue  # fully masked query row -> zeros
        logits = (k[b, :, h] @ q[b, n, h]) / math.sqrt(K)  # [M]
        logits = np.where(allowed, logits, -np.inf)
        w = np.exp(logits - logits[allowed].max())
        w = w / w.sum()
        out[b, n, h] = w @ v[b, :, h]
  return out.reshape(B, N, H * V)


def np_attend_grads(q_BNHK, k_BMHK, v_BMHV, mask_BNM, dout_BNC):
  """Hand-derived gradients of sum(np_attend(q, k, v, mask) * dout)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q_BNHK, k_BMHK, v_BMHV))
  B, N, H, K = q.shape
  M, V = k.shape[1], v.shape[-1]
  mask = (
    np.ones((B, N, M), bool) if mask_BNM is None else np.asarray(mask_BNM, bool)
  )
  dout = np.asarray(dout_BNC, np.float64).reshape(B, N, H, V)
  dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
  scale = 1 / math.sqrt(K)
  for b in range(B):
    for h in range(H):
      s = q[b, :, h] @ k[b, :, h].T * scale  # [N, M]
      s = np.where(mask[b], s, -np.inf)
      live = mask[b].any(-1)  # rows with at least one key
      s[~live] = 0.0
      p = np.exp(s - s.max(-1, keepdims=True))
      p = np.where(mask[b], p, 0.0)
      p = p / np.maximum(p.sum(-1, keepdims=True), 1e-300)
      p[~live] = 0.0  # zeroed rows pass no gradient
      do = dout[b, :, h]  # [N, V]
      dv[b, :, h] = p.T @ do
      dp = do @ v[b, :, h].T  # [N, M]
      ds = p * (dp - (dp * p).sum(-1, keepdims=True))
      dq[b, :, h] = ds @ k[b, :, h] * scale
      dk[b, :, h] = ds.T @ q[b, :, h] * scale
  return dq, dk, dv


def np_layer_norm(x, scale, offset, eps=1e-5):
  x = np.asarray(x, np.float64)
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + offset


def np_gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_gelu_erf(x):
  from math import erf  # pylint: disable=g-import-not-at-top

  return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def np_linear(x, p):
  y = np.asarray(x, np.float64) @ np.asarray(p['w'], np.float64)
  if 'b' in p:
    y = y + np.asarray(p['b'], np.float64)
  return y


def np_attention_module(params, prefix, x_q, x_kv, num_heads, mask=None):
  """Attention from its `linear` (q), `linear_1` (k), `linear_2` (v) and
  `linear_3` (output) parameters."""
  q = np_linear(x_q, params[f'{prefix}/linear'])
  k = np_linear(x_kv, params[f'{prefix}/linear_1'])
  v = np_linear(x_kv, params[f'{prefix}/linear_2'])
  B, N, M, H = q.shape[0], q.shape[1], k.shape[1], num_heads
  out = np_attend(
    q.reshape(B, N, H, -1), k.reshape(B, M, H, -1), v.reshape(B, M, H, -1), mask
  )
  return np_linear(out, params[f'{prefix}/linear_3'])


def np_mlp(params, prefix, x):
  h = np_gelu_tanh(np_linear(x, params[f'{prefix}/linear']))
  return np_linear(h, params[f'{prefix}/linear_1'])


def np_ln(params, name, x):
  return np_layer_norm(x, params[name]['scale'], params[name]['offset'])


def np_self_attention(params, prefix, x, num_heads, mask=None):
  """x + Attn(LN(x), LN(x)); then + MLP(LN(.)) (pre-LN, one LN for q and kv)."""
  h = np_ln(params, f'{prefix}/layer_norm', x)
  x = x + np_attention_module(
    params, f'{prefix}/attention', h, h, num_heads, mask
  )
  return x + np_mlp(
    params, f'{prefix}/mlp', np_ln(params, f'{prefix}/layer_norm_1', x)
  )


def np_cross_attention(
  params, prefix, x_q, x_kv, num_heads, use_query_residual, mask=None
):
  """3 LayerNorms: q (`layer_norm`), kv (`layer_norm_1`), pre-MLP (`_2`)."""
  a = np_attention_module(
    params,
    f'{prefix}/attention',
    np_ln(params, f'{prefix}/layer_norm', x_q),
    np_ln(params, f'{prefix}/layer_norm_1', x_kv),
    num_heads,
    mask,
  )
  x = x_q + a if use_query_residual else a
  return x + np_mlp(
    params, f'{prefix}/mlp', np_ln(params, f'{prefix}/layer_norm_2', x)
  )


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def random_qkv(seed, B, N, M, H, K, V):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(B, N, H, K)).astype(np.float32)
  k = rng.normal(size=(B, M, H, K)).astype(np.float32)
  v = rng.normal(size=(B, M, H, V)).astype(np.float32)
  return q, k, v


def random_mask(seed, B, N, M, fully_masked_rows=True):
  """Random [B, N, M] mask; with some fully masked and fully open rows."""
  rng = np.random.default_rng(seed + 1000)
  mask = rng.random((B, N, M)) < 0.6
  if fully_masked_rows:
    mask[0, 0] = False
    mask[-1, N - 1] = False
  if N > 2:
    mask[0, 1] = True
  return mask


def random_params(transformed, *args, seed=0):
  """Random values for every parameter of `transformed` (a hk.Transformed).

  The parameter tree comes from `jax.eval_shape(init)` (tracing only, no
  compiled random initialisers, which are slow on CPU); the values are NumPy
  draws: weights ~ N(0, 1/fan_in), biases and LayerNorm offsets ~ N(0, 0.3),
  LayerNorm scales ~ 1 + N(0, 0.3), so every parameter matters.
  """
  shapes = jax.eval_shape(transformed.init, jax.random.PRNGKey(0), *args)
  rng = np.random.default_rng(seed)
  out = {}
  for module, leaves in shapes.items():
    out[module] = {}
    for name, sd in leaves.items():
      x = rng.normal(size=sd.shape)
      if name == 'w':
        x = x / math.sqrt(sd.shape[0])
      elif name == 'scale':
        x = 1 + 0.3 * x
      else:
        x = 0.3 * x
      out[module][name] = jnp.asarray(x, sd.dtype)
  return out


def to_np(params):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)


# ----------------------------------------------------------------------------
# The NumPy reference itself (so that the equivalence tests mean something).
# ----------------------------------------------------------------------------


def test_np_reference_matches_closed_form_single_key():
  # One allowed key per row -> output is exactly that key's value.
  q, k, v = random_qkv(0, 1, 3, 4, 1, 2, 3)
  mask = np.zeros((1, 3, 4), bool)
  mask[0, 0, 2] = mask[0, 1, 0] = True
  out = np_attend(q, k, v, mask).reshape(1, 3, 1, 3)
  np.testing.assert_allclose(out[0, 0, 0], v[0, 2, 0], rtol=1e-12)
  np.testing.assert_allclose(out[0, 1, 0], v[0, 0, 0], rtol=1e-12)
  np.testing.assert_array_equal(out[0, 2], 0.0)


def test_np_grads_match_finite_differences():
  q, k, v = random_qkv(1, 1, 3, 4, 2, 2, 3)
  q, k, v = (a.astype(np.float64) for a in (q, k, v))
  mask = random_mask(1, 1, 3, 4)
  dout = np.random.default_rng(2).normal(size=(1, 3, 6))
  grads = np_attend_grads(q, k, v, mask, dout)
  eps = 1e-6
  for arr, grad in zip((q, k, v), grads):
    for idx in [(0, 0, 0, 0), (0, 1, 1, 1), (0, 2, 0, 1)]:
      if idx[1] >= arr.shape[1]:
        continue
      plus, minus = arr.copy(), arr.copy()
      plus[idx] += eps
      minus[idx] -= eps
      args_p = [plus if a is arr else a for a in (q, k, v)]
      args_m = [minus if a is arr else a for a in (q, k, v)]
      fd = (
        np.sum(np_attend(*args_p, mask) * dout)
        - np.sum(np_attend(*args_m, mask) * dout)
      ) / (2 * eps)
      np.testing.assert_allclose(grad[idx], fd, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------
# attend(): every implementation against the NumPy reference.
# ----------------------------------------------------------------------------

# (B, N, M, H, K, V): several head counts, K != V both ways, N > M and N < M.
SHAPES = [
  (2, 5, 7, 1, 4, 4),
  (2, 7, 11, 2, 3, 5),
  (1, 9, 6, 4, 6, 2),
  (3, 4, 13, 3, 2, 2),
]
# (q_chunk, kv_chunk): sizes that do not divide N or M, and size 1.
CHUNKS = [(2, 3), (3, 4), (1, 1), (1024, 4096)]


def _attend_fn(impl, chunks=(2, 3)):
  kwargs = {}
  if impl == 'chunked':
    kwargs = dict(q_chunk_size=chunks[0], kv_chunk_size=chunks[1])

  def f(q, k, v, mask):
    return attn.attend(
      q, k, v, attention_mask=mask, implementation=impl, **kwargs
    )

  return f


@pytest.mark.parametrize('impl', IMPLS_CPU)
@pytest.mark.parametrize(
  'shape,masked', [(s, True) for s in SHAPES] + [(SHAPES[1], False)]
)
def test_attend_forward_matches_numpy(impl, shape, masked):
  B, N, M, H, K, V = shape
  q, k, v = random_qkv(sum(shape), *shape)
  mask = random_mask(sum(shape), B, N, M) if masked else None
  out = jax.jit(_attend_fn(impl))(q, k, v, mask)
  assert out.shape == (B, N, H * V)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(
    out, np_attend(q, k, v, mask), rtol=1e-5, atol=1e-5
  )
  if masked:  # fully masked rows are exactly zero
    np.testing.assert_array_equal(out[0, 0], 0.0)
    np.testing.assert_array_equal(out[-1, N - 1], 0.0)


@pytest.mark.parametrize('chunks', CHUNKS)
@pytest.mark.parametrize('shape,masked', [(SHAPES[2], True)])
def test_chunked_any_chunk_size_matches_numpy(chunks, shape, masked):
  B, N, M, *_ = shape
  q, k, v = random_qkv(7, *shape)
  mask = random_mask(7, B, N, M) if masked else None
  out = jax.jit(_attend_fn('chunked', chunks))(q, k, v, mask)
  np.testing.assert_allclose(
    out, np_attend(q, k, v, mask), rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize(
  'impl,chunks,shape,masked',
  [
    ('reference', None, SHAPES[1], True),
    ('xla', None, SHAPES[1], True),
    ('chunked', (2, 3), SHAPES[1], True),
    ('chunked', (3, 4), SHAPES[2], True),
    ('chunked', (1, 5), SHAPES[1], False),
    ('xla', None, SHAPES[2], False),
  ],
)
def test_attend_gradients_match_numpy(impl, chunks, shape, masked):
  B, N, M, H, K, V = shape
  q, k, v = random_qkv(3, *shape)
  mask = random_mask(3, B, N, M) if masked else None
  dout = np.random.default_rng(4).normal(size=(B, N, H * V)).astype(np.float32)
  f = _attend_fn(impl, chunks or (2, 3))
  loss = lambda q, k, v: jnp.sum(f(q, k, v, mask) * dout)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  expected = np_attend_grads(q, k, v, mask, dout)
  for name, g, e in zip('qkv', grads, expected):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=name)


def test_fully_masked_rows_are_zero_not_uniform():
  # A uniform softmax over a fully masked row would give mean(v) != 0.
  q, k, v = random_qkv(5, 1, 3, 4, 2, 2, 2)
  v = v + 3.0
  mask = np.ones((1, 3, 4), bool)
  mask[0, 1] = False
  for impl in IMPLS_CPU:
    out = jax.jit(_attend_fn(impl))(q, k, v, mask)
    np.testing.assert_array_equal(out[0, 1], 0.0, err_msg=impl)
    assert np.all(np.abs(out[0, 0]) > 0), impl


@pytest.mark.parametrize('impl', IMPLS_CPU)
def test_mask_accepts_int_and_float(impl):
  q, k, v = random_qkv(6, 2, 4, 5, 2, 3, 3)
  mask = random_mask(6, 2, 4, 5)
  expected = np_attend(q, k, v, mask)
  for m in (mask.astype(np.int32), mask.astype(np.float32)):
    out = jax.jit(_attend_fn(impl))(q, k, v, m)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('impl', IMPLS_CPU)
def test_attend_bfloat16_close_to_float32(impl):
  q, k, v = random_qkv(8, 1, 6, 7, 2, 4, 4)
  mask = random_mask(8, 1, 6, 7)
  args = [jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)]
  out = jax.jit(_attend_fn(impl))(*args, mask)
  assert out.dtype == jnp.bfloat16
  expected = np_attend(*[np.asarray(a, np.float32) for a in args], mask)
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=3e-2)


def test_attend_dropout_changes_weights_and_needs_rng():
  q, k, v = random_qkv(9, 1, 4, 6, 2, 3, 3)

  def f(rate):
    return attn.attend(q, k, v, dropout_prob=rate)

  no_drop = hk.transform(lambda: f(0.0)).apply({}, None)  # no rng needed
  assert isinstance(no_drop, jax.Array)
  np.testing.assert_allclose(no_drop, np_attend(q, k, v), rtol=1e-5, atol=1e-5)
  dropped = hk.transform(lambda: f(0.5)).apply({}, jax.random.PRNGKey(0))
  assert not np.allclose(dropped, no_drop)
  with pytest.raises(ValueError, match='PRNGKey'):
    hk.transform(lambda: f(0.5)).apply({}, None)


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='cuDNN needs GPU')
@pytest.mark.parametrize('masked', [False, True])
def test_cudnn_matches_numpy(masked):
  B, N, M, H, K, V = 2, 16, 32, 2, 16, 16
  q, k, v = random_qkv(10, B, N, M, H, K, V)
  mask = random_mask(10, B, N, M) if masked else None
  args = [jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)]
  out = _attend_fn('cudnn')(*args, mask)
  expected = np_attend(*[np.asarray(a, np.float32) for a in args], mask)
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=3e-2)


# ----------------------------------------------------------------------------
# make_cross_attention_mask.
# ----------------------------------------------------------------------------


def test_make_cross_attention_mask_is_batched_outer_product():
  rng = np.random.default_rng(0)
  qm = rng.random((3, 4)) < 0.5
  kvm = rng.random((3, 5)) < 0.5
  out = attn.make_cross_attention_mask(qm.astype(np.int32), kvm)
  assert out.shape == (3, 4, 5)
  expected = np.stack([np.outer(a, b) for a, b in zip(qm, kvm)]).astype(bool)
  np.testing.assert_array_equal(out, expected)


# ----------------------------------------------------------------------------
# Modules against NumPy, using the modules' own parameters.
# ----------------------------------------------------------------------------

# (num_heads, Cq, Ckv, qk_channels, v_channels, output_channels)
ATTENTION_CONFIGS = [
  (1, 6, 6, None, None, None),
  (2, 4, 6, 8, 6, None),
  (3, 5, 7, 6, 9, 4),
  (4, 8, 3, 4, 12, 8),
]


@pytest.mark.parametrize(
  'impl,config,masked,with_final_bias',
  [
    ('reference', ATTENTION_CONFIGS[0], True, True),
    ('reference', ATTENTION_CONFIGS[1], False, False),
    ('reference', ATTENTION_CONFIGS[2], True, False),
    ('reference', ATTENTION_CONFIGS[3], True, True),
    ('chunked', ATTENTION_CONFIGS[2], True, True),
    ('xla', ATTENTION_CONFIGS[3], True, True),
  ],
)
def test_attention_module_matches_numpy(impl, config, masked, with_final_bias):
  H, Cq, Ckv, qk, vc, oc = config
  B, N, M = 2, 5, 7
  rng = np.random.default_rng(0)
  x_q = rng.normal(size=(B, N, Cq)).astype(np.float32)
  x_kv = rng.normal(size=(B, M, Ckv)).astype(np.float32)
  mask = random_mask(0, B, N, M) if masked else None
  f = hk.transform(
    lambda a, b, m: attn.Attention(
      num_heads=H,
      qk_channels=qk,
      v_channels=vc,
      output_channels=oc,
      with_final_bias=with_final_bias,
      attention_impl=impl,
    )(a, b, m)
  )
  params = random_params(f, x_q, x_kv, mask)
  # Released parameter names and shapes.
  qk_c = qk or Cq
  v_c = vc or qk_c
  o_c = oc or v_c
  shapes = jax.tree_util.tree_map(np.shape, params)
  expected_shapes = {
    'attention/linear': {'w': (Cq, qk_c), 'b': (qk_c,)},
    'attention/linear_1': {'w': (Ckv, qk_c), 'b': (qk_c,)},
    'attention/linear_2': {'w': (Ckv, v_c), 'b': (v_c,)},
    'attention/linear_3': {'w': (v_c, o_c), 'b': (o_c,)},
  }
  if not with_final_bias:
    del expected_shapes['attention/linear_3']['b']
  assert shapes == expected_shapes
  out = jax.jit(f.apply)(params, None, x_q, x_kv, mask)
  expected = np_attention_module(to_np(params), 'attention', x_q, x_kv, H, mask)
  assert out.shape == (B, N, o_c)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_attention_scaling_uses_per_head_qk_width():
  # With 4 heads of width 2 the scale is 1/sqrt(2); 1/sqrt(8) (total width)
  # or no scaling must give a different answer.
  H, C = 4, 8
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 6, C)).astype(np.float32)
  f = hk.transform(lambda a: attn.Attention(num_heads=H)(a, a))
  params = random_params(f, x)
  out = f.apply(params, None, x)
  p = to_np(params)
  q = np_linear(x, p['attention/linear']).reshape(1, 6, H, 2)
  k = np_linear(x, p['attention/linear_1']).reshape(1, 6, H, 2)
  v = np_linear(x, p['attention/linear_2']).reshape(1, 6, H, 2)
  right = np_linear(np_attend(q, k, v), p['attention/linear_3'])
  wrong = np_linear(
    np_attend(q * math.sqrt(2) / math.sqrt(8), k, v), p['attention/linear_3']
  )
  np.testing.assert_allclose(out, right, rtol=1e-4, atol=1e-4)
  assert not np.allclose(out, wrong, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize('widening_factor', [1, 4])
def test_mlp_matches_numpy_tanh_gelu(widening_factor):
  rng = np.random.default_rng(2)
  x = 2 * rng.normal(size=(2, 5, 6)).astype(np.float32)
  f = hk.transform(
    lambda a: attn.MLP(widening_factor=widening_factor)(a, is_training=False)
  )
  params = random_params(f, x)
  assert params['mlp/linear']['w'].shape == (6, 6 * widening_factor)
  assert params['mlp/linear_1']['w'].shape == (6 * widening_factor, 6)
  out = f.apply(params, None, x)
  p = to_np(params)
  np.testing.assert_allclose(out, np_mlp(p, 'mlp', x), rtol=1e-5, atol=1e-5)
  # The exact (erf) GELU is measurably different: the test can tell them apart.
  h = np_linear(x, p['mlp/linear'])
  erf_out = np_linear(np_gelu_erf(h), p['mlp/linear_1'])
  assert np.max(np.abs(erf_out - np.asarray(out))) > 1e-4


def test_gelu_formula():
  x = np.linspace(-5, 5, 101)
  np.testing.assert_allclose(
    jax.nn.gelu(x.astype(np.float32), approximate=True),
    np_gelu_tanh(x),
    rtol=1e-5,
    atol=1e-6,
  )


@pytest.mark.parametrize(
  'impl,num_heads,qk_channels,masked',
  [
    ('reference', 1, None, False),
    ('reference', 2, None, True),
    ('reference', 4, 4, True),
    ('reference', 3, 9, True),
    ('chunked', 3, 9, True),
    ('xla', 4, 4, True),
  ],
)
def test_self_attention_matches_numpy(impl, num_heads, qk_channels, masked):
  B, N, C = 2, 5, 12
  rng = np.random.default_rng(3)
  x = rng.normal(size=(B, N, C)).astype(np.float32)
  mask = random_mask(3, B, N, N) if masked else None
  f = hk.transform(
    lambda a, m: attn.SelfAttention(
      num_heads=num_heads,
      qk_channels=qk_channels,
      v_channels=C,
      widening_factor=2,
      attention_impl=impl,
    )(a, attention_mask=m, is_training=False)
  )
  params = random_params(f, x, mask)
  assert set(params) == {
    'self_attention/layer_norm',
    'self_attention/layer_norm_1',
    'self_attention/attention/linear',
    'self_attention/attention/linear_1',
    'self_attention/attention/linear_2',
    'self_attention/attention/linear_3',
    'self_attention/mlp/linear',
    'self_attention/mlp/linear_1',
  }
  out = jax.jit(f.apply)(params, None, x, mask)
  expected = np_self_attention(
    to_np(params), 'self_attention', x, num_heads, mask
  )
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  'impl,use_query_residual,shape_for_attn,qk,vc,heads,masked',
  [
    ('reference', True, 'kv', None, None, 1, True),
    ('reference', False, 'kv', None, None, 1, False),
    ('reference', True, 'q', None, None, 2, True),
    ('reference', False, 'kv', 6, 4, 2, True),
    ('reference', True, 'kv', None, None, 3, True),
    ('chunked', False, 'kv', 6, 4, 2, True),
    ('xla', True, 'q', None, None, 2, True),
  ],
)
def test_cross_attention_matches_numpy(
  impl, use_query_residual, shape_for_attn, qk, vc, heads, masked
):
  B, N, M, Cq, Ckv = 2, 4, 7, 8, 6
  rng = np.random.default_rng(4)
  x_q = rng.normal(size=(B, N, Cq)).astype(np.float32)
  x_kv = rng.normal(size=(B, M, Ckv)).astype(np.float32)
  mask = random_mask(4, B, N, M) if masked else None
  f = hk.transform(
    lambda a, b, m: attn.CrossAttention(
      num_heads=heads,
      shape_for_attn=shape_for_attn,
      qk_channels=qk,
      v_channels=vc,
      use_query_residual=use_query_residual,
      attention_impl=impl,
    )(a, b, attention_mask=m, is_training=False)
  )
  params = random_params(f, x_q, x_kv, mask)
  p = to_np(params)
  # Three LayerNorms: q (width Cq), kv (width Ckv), pre-MLP (width Cq).
  assert p['cross_attention/layer_norm']['scale'].shape == (Cq,)
  assert p['cross_attention/layer_norm_1']['scale'].shape == (Ckv,)
  assert p['cross_attention/layer_norm_2']['scale'].shape == (Cq,)
  assert 'cross_attention/layer_norm_3' not in p
  expected_qk = qk or (Ckv if shape_for_attn == 'kv' else Cq)
  assert p['cross_attention/attention/linear']['w'].shape == (Cq, expected_qk)
  assert p['cross_attention/attention/linear_3']['w'].shape[-1] == Cq
  # CrossAttention's MLP widening defaults to 1.
  assert p['cross_attention/mlp/linear']['w'].shape == (Cq, Cq)
  out = jax.jit(f.apply)(params, None, x_q, x_kv, mask)
  expected = np_cross_attention(
    p, 'cross_attention', x_q, x_kv, heads, use_query_residual, mask
  )
  assert out.shape == (B, N, Cq)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_query_residual_changes_output():
  rng = np.random.default_rng(5)
  x_q = rng.normal(size=(1, 3, 4)).astype(np.float32)
  x_kv = rng.normal(size=(1, 5, 4)).astype(np.float32)

  def make(res):
    return hk.transform(
      lambda a, b: attn.CrossAttention(num_heads=1, use_query_residual=res)(
        a, b, is_training=False
      )
    )

  params = random_params(make(True), x_q, x_kv)
  with_res = jax.jit(make(True).apply)(params, None, x_q, x_kv)
  without = jax.jit(make(False).apply)(params, None, x_q, x_kv)
  assert not np.allclose(with_res, without)


@pytest.mark.parametrize('module', ['self', 'cross'])
def test_block_dropout(module):
  rng = np.random.default_rng(6)
  x = rng.normal(size=(2, 4, 8)).astype(np.float32)

  def make(is_training):
    def fn(a):
      if module == 'self':
        m = attn.SelfAttention(
          num_heads=2, dropout_prob=0.3, dropout_attn_prob=0.3
        )
        return m(a, is_training=is_training)
      m = attn.CrossAttention(
        num_heads=2, dropout_prob=0.3, dropout_attn_prob=0.3
      )
      return m(a, a, is_training=is_training)

    return hk.transform(fn)

  params = random_params(make(False), x)
  # Evaluation: deterministic and no rng needed.
  evaluate = jax.jit(make(False).apply)
  ev = evaluate(params, None, x)
  np.testing.assert_array_equal(ev, evaluate(params, None, x))
  # Training: needs an rng, changes outputs, depends on the rng.
  train = jax.jit(make(True).apply)
  with pytest.raises(ValueError, match='PRNGKey'):
    train(params, None, x)
  t1 = train(params, jax.random.PRNGKey(1), x)
  t2 = train(params, jax.random.PRNGKey(2), x)
  assert not np.allclose(t1, ev)
  assert not np.allclose(t1, t2)


# ----------------------------------------------------------------------------
# Chunked cross-attention computes LayerNorm and keys/values per key block.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  'M,kv_chunk,expected',
  [
    (50176, 4096, 3584),
    (10000, 4096, 2500),
    (4097, 4096, 4096),
    (300, 4096, 300),
    (7, 3, 3),
  ],
)
def test_kv_block_size_prefers_divisors(M, kv_chunk, expected):
  # A divisor of M in (kv_chunk / 2, kv_chunk] tiles the inputs with no
  # padded copy; 4097 = 17 * 241 has none, so it is padded to 2 x 4096.
  assert attn._kv_block_size(M, kv_chunk) == expected


@pytest.mark.parametrize('M,kv_chunk,masked', [(11, 3, True), (12, 4, False)])
def test_attend_projected_matches_numpy(M, kv_chunk, masked):
  # Keys and values computed inside the block loop from raw inputs equal
  # attention on the projected arrays, values and gradients.
  B, N, H, K, V, C = 2, 5, 2, 3, 4, 6
  rng = np.random.default_rng(21)
  q = rng.normal(size=(B, N, H, K)).astype(np.float32)
  x = rng.normal(size=(B, M, C)).astype(np.float32)
  wk = rng.normal(size=(C, H * K)).astype(np.float32)
  wv = rng.normal(size=(C, H * V)).astype(np.float32)
  mask = random_mask(21, B, N, M) if masked else None

  def project(x_BmC):
    b, m = x_BmC.shape[:2]
    return ((x_BmC @ wk).reshape(b, m, H, K), (x_BmC @ wv).reshape(b, m, H, V))

  def f(q, x):
    return attn.attend_projected(
      q, x, project, V, mask, q_chunk_size=2, kv_chunk_size=kv_chunk
    )

  k_np, v_np = (np.asarray(a) for a in project(x))
  np.testing.assert_allclose(
    jax.jit(f)(q, x), np_attend(q, k_np, v_np, mask), rtol=1e-4, atol=1e-4
  )
  dout = rng.normal(size=(B, N, H * V))
  dq, dx = jax.jit(
    jax.grad(lambda q, x: jnp.sum(f(q, x) * dout), argnums=(0, 1))
  )(q, x)
  gq, gk, gv = np_attend_grads(q, k_np, v_np, mask, dout)
  np.testing.assert_allclose(dq, gq, rtol=1e-3, atol=1e-4)
  expected_dx = np.einsum('BMHK,CHK->BMC', gk, wk.reshape(C, H, K)) + np.einsum(
    'BMHV,CHV->BMC', gv, wv.reshape(C, H, V)
  )
  np.testing.assert_allclose(dx, expected_dx, rtol=1e-3, atol=1e-3)


def test_chunked_cross_attention_multi_block_matches_reference():
  # M = 5000 > the default key block: two blocks of 2500, each normalised
  # and projected inside the loop; values and gradients equal 'reference'.
  B, N, M, Cq, Ckv = 1, 3, 5000, 8, 5
  rng = np.random.default_rng(22)
  x_q = rng.normal(size=(B, N, Cq)).astype(np.float32)
  x_kv = rng.normal(size=(B, M, Ckv)).astype(np.float32)
  mask = random_mask(22, B, N, M)

  def make(impl):
    return hk.transform(
      lambda a, b, m: attn.CrossAttention(num_heads=1, attention_impl=impl)(
        a, b, attention_mask=m, is_training=False
      )
    )

  params = random_params(make('reference'), x_q, x_kv, mask)
  for impl in ('reference', 'chunked'):
    assert jax.tree.map(
      jnp.shape, make(impl).init(jax.random.PRNGKey(0), x_q, x_kv, mask)
    ) == jax.tree.map(jnp.shape, params)

  def value_and_grad(impl):
    loss = lambda p, b: jnp.sum(
      jnp.sin(make(impl).apply(p, None, x_q, b, mask))
    )
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x_kv)

  (ref, ref_grads), (got, got_grads) = map(
    value_and_grad, ('reference', 'chunked')
  )
  np.testing.assert_allclose(got, ref, rtol=1e-4)
  for g, r in zip(jax.tree.leaves(got_grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4)


def test_chunked_cross_attention_memory_does_not_grow_with_inputs():
  # XLA's temporary buffers for cross-attending 64 latents to M inputs:
  # with per-block LayerNorm and projections they stay those of one key
  # block, while M grows 8x (the inputs and the old [M, C] normalised copy,
  # keys and values would be 8x larger).
  def temp_bytes(M, impl):
    f = hk.transform(
      lambda a, b: attn.CrossAttention(num_heads=1, attention_impl=impl)(
        a, b, is_training=False
      )
    )
    q = jax.ShapeDtypeStruct((1, 64, 32), jnp.float32)
    x = jax.ShapeDtypeStruct((1, M, 32), jnp.float32)
    params = jax.eval_shape(f.init, jax.random.PRNGKey(0), q, x)
    compiled = jax.jit(f.apply).lower(params, None, q, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  small, large = temp_bytes(2**15, 'chunked'), temp_bytes(2**18, 'chunked')
  assert large < 1.2 * small, (small, large)
  inputs_bytes = 2**18 * 32 * 4
  assert large < inputs_bytes / 4, (large, inputs_bytes)
  # The check can fail: 'reference' materialises [M, C]-sized temporaries.
  assert temp_bytes(2**18, 'reference') > inputs_bytes


# ----------------------------------------------------------------------------
# Mixed-precision einsum: float32 accumulation, forward and gradients.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  'spec,shape_a,shape_b',
  [
    ('nc,cd->nd', (6, 5), (5, 4)),
    ('BNHK,BMHK->BHNM', (2, 3, 2, 4), (2, 5, 2, 4)),
    ('BHNM,BMHV->BNHV', (2, 2, 3, 5), (2, 5, 2, 4)),
    ('TD,VD->TV', (6, 4), (5, 4)),
  ],
)
def test_low_precision_einsum_matches_float64_with_bf16_backward(
  spec, shape_a, shape_b
):
  # Operands rounded to bf16 once; the reference is float64 NumPy on those
  # rounded values, forward and the two gradients for a given cotangent.
  rng = np.random.default_rng(30)
  a = jnp.asarray(rng.normal(size=shape_a), jnp.bfloat16)
  b = jnp.asarray(rng.normal(size=shape_b), jnp.bfloat16)
  out, vjp = jax.vjp(lambda a, b: attn.einsum(spec, a, b), a, b)
  a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(
    out, np.einsum(spec, a64, b64), rtol=1e-5, atol=1e-5
  )
  ct = jnp.asarray(rng.normal(size=out.shape), jnp.bfloat16)
  da, db = vjp(ct.astype(jnp.float32))
  assert (da.dtype, db.dtype) == (jnp.bfloat16, jnp.bfloat16)
  inputs, o = spec.split('->')
  sa, sb = inputs.split(',')
  ct64 = np.asarray(ct, np.float64)
  # Gradients accumulate in float32 and are rounded to bf16 once (2^-8).
  np.testing.assert_allclose(
    np.asarray(da, np.float64),
    np.einsum(f'{o},{sb}->{sa}', ct64, b64),
    rtol=1e-2,
    atol=1e-2,
  )
  np.testing.assert_allclose(
    np.asarray(db, np.float64),
    np.einsum(f'{sa},{o}->{sb}', a64, ct64),
    rtol=1e-2,
    atol=1e-2,
  )


def test_low_precision_einsum_backward_uses_bf16_matmuls():
  # The gradient's matmuls take bf16 operands (the fast CPU kernels); JAX's
  # default transpose would mix a float32 cotangent with a bf16 operand.
  a = jnp.ones((8, 16), jnp.bfloat16)
  b = jnp.ones((16, 4), jnp.bfloat16)
  text = (
    jax.jit(
      jax.grad(
        lambda a, b: jnp.sum(attn.einsum('nc,cd->nd', a, b)), argnums=(0, 1)
      )
    )
    .lower(a, b)
    .as_text()
  )
  dots = [line for line in text.splitlines() if 'dot_general' in line]
  assert len(dots) == 2, text  # the two gradients (the forward is unused)
  for line in dots:
    operands = line.split(': (')[1].split(') ->')[0]
    assert operands.count('bf16>') == 2, line


@pytest.mark.parametrize(
  'spec,shape_b', [('nc,cd->nd', (64, 32)), ('TD,VD->TV', (32, 64))]
)
def test_low_precision_weight_gradient_avoids_first_axis_contraction(
  spec, shape_b
):
  # On CPU a bf16 dot contracting both operands' first axes takes XLA's slow
  # path; the gradient of a 2-D operand contracted over its first axis is
  # taken from a transposed copy instead, so no such dot is compiled.
  a = jnp.ones((128, 64), jnp.bfloat16)
  b = jnp.ones(shape_b, jnp.bfloat16)
  hlo = (
    jax.jit(jax.grad(lambda b: jnp.sum(attn.einsum(spec, a, b))))
    .lower(b)
    .compile()
    .as_text()
  )
  assert 'lhs_contracting_dims={0}, rhs_contracting_dims={0}' not in hlo
  # The check can fail: JAX's plain transpose compiles exactly that dot.
  plain = (
    jax.jit(
      jax.grad(
        lambda b: jnp.sum(
          jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
        )
      )
    )
    .lower(b)
    .compile()
    .as_text()
  )
  assert 'lhs_contracting_dims={0}, rhs_contracting_dims={0}' in plain


def test_einsum_rejects_mixed_dtypes_and_one_sided_indices():
  a = jnp.ones((2, 3), jnp.bfloat16)
  with pytest.raises(ValueError, match='b: expected dtype'):
    attn.einsum('nc,cd->nd', a, jnp.ones((3, 4), jnp.float32))
  with pytest.raises(ValueError, match='spec'):
    jax.grad(lambda a: jnp.sum(attn.einsum('nc,dk->nd', a, a)))(a)


def test_layer_norm_matches_haiku_values_and_gradients():
  # perceiver.LayerNorm's written-out gradient against autodiff of
  # hk.LayerNorm: same parameter tree, values and gradients.
  rng = np.random.default_rng(40)
  x = jnp.asarray(rng.normal(size=(2, 5, 16)) * 3 + 1, jnp.float32)
  ct = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  ours = hk.without_apply_rng(hk.transform(lambda x: attn.LayerNorm()(x)))
  theirs = hk.without_apply_rng(
    hk.transform(
      lambda x: hk.LayerNorm(axis=-1, create_scale=True, create_offset=True)(x)
    )
  )
  params = jax.tree.map(
    lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32),
    theirs.init(jax.random.PRNGKey(0), x),
  )
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == (
    jax.tree.map(jnp.shape, params)
  )

  def value_and_grads(model):
    loss = lambda p, x: jnp.sum(model.apply(p, x) * ct)
    return model.apply(params, x), jax.grad(loss, argnums=(0, 1))(params, x)

  (out, grads), (ref, ref_grads) = map(value_and_grads, (ours, theirs))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
