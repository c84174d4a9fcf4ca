"""Streamed encoding: inputs larger than memory (Perceiver IO, Appendix I).

The paper's limitations (App. I) note that Perceiver IO "requires all points
are encoded simultaneously". Only the read (the cross-attention of the N
latents to the M inputs) touches the inputs, and it is a softmax over M: an
online softmax (Milakov & Gimelshein 2018; the 'chunked' attention of
perceiver/attention.py) reads the inputs one key block at a time and keeps,
per head and latent, only a running maximum, a running sum of exponentials
and a running exponential-weighted sum of values. `StreamingEncoder` does
exactly that with the blocks coming from the host (a NumPy array, a
`np.memmap` of a file on disk, or an iterator of blocks): the device holds
one block and the [H, N] softmax state, never the M inputs; the rest of the
cross-attention block (output projection, query residual, MLP) and the
self-attention layers run once at the end. The parameters are those of
`PerceiverEncoder` (same names), so any trained encoder can stream.

Gradients of the encoder's parameters take a second streamed pass (the
flash-attention backward, Dao et al. 2022): from the cotangent dO of the
attended values O, each block is re-run against the final softmax
statistics (max m, sum l), whose probabilities P = exp(S - m) / l are then
exact, and the block's share of the gradient is the vjp of
sum_j P_j (v_j - O) with O held fixed: dS = P * (dP - rowsum(dO * O)),
dv = P^T dO. Parameter gradients are summed block by block.

Shapes: M inputs, b block size, C raw input channels, F preprocessed input
channels, N latents, D latent channels, H cross-attention heads, K / V
per-head q/k / value width.

Streamed encoding is deterministic (is_training=False: no dropout), for one
example (no batch axis), in float32, with M < 2^31 (int32 point indices).
"""

import collections
import mmap
from typing import Any, Callable, Iterable, Mapping, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import attention as attn
from perceiver import encoder as encoder_lib
from perceiver import position_encoding
from perceiver import validation

# 8192: fastest of 4096..65536 for 64 latents on the 2-core CPU (the block's
# [H, N, b] logits stay in cache); memory per block is O(N b).
DEFAULT_BLOCK_SIZE = 8192
_MAX_POINTS = 2**31 - 1
_LN_EPS = 1e-5  # hk.LayerNorm's default, used by attention.LayerNorm.
# Blocks dispatched ahead of the one being computed (async dispatch overlaps
# reading the next block on the host with computing this one).
_IN_FLIGHT = 2

# (max [H, N], sum [H, N], weighted value sum [H, N, V]), float32.
SoftmaxState = Any


def fourier_preprocess(
  index_dims,
  num_bands: int,
  *,
  value_scale=1.0,
  value_offset=0.0,
  concat_pos: bool = True,
  sine_only: bool = False,
) -> Callable:
  """A per-block preprocessing: values, then Fourier features of positions.

  Point i of the stream is the i-th point of the grid `index_dims` in flat
  (row-major) order; its position is `grid_positions(index_dims, [i])`, the
  grid the decoders use, and its features `generate_fourier_features` with
  `max_resolution=index_dims` (Perceiver, Sec. 3.2).

  Args:
    index_dims: the grid, e.g. (T, H, W); M must not exceed its size.
    num_bands: frequency bands per dimension.
    value_scale, value_offset: values become value * scale + offset (e.g.
      2 / 255 and -1 for uint8 in [-1, 1]).
    concat_pos, sine_only: as `generate_fourier_features`.

  Returns:
    fn(block [b, C] any numeric dtype, indices [b] int32) -> [b, C + P]
    float32, P = D + 2 D num_bands (D = len(index_dims)).
  """
  dims = position_encoding.as_index_dims(index_dims)
  validation.check_positive('num_bands', num_bands)
  for i, d in enumerate(dims):
    validation.check_positive(f'index_dims[{i}]', d)

  def preprocess(block_bC, indices_b):
    values = block_bC.astype(jnp.float32) * value_scale + value_offset
    pos_bD = position_encoding.grid_positions(dims, indices_b)
    features = position_encoding.generate_fourier_features(
      pos_bD,
      num_bands,
      max_resolution=dims,
      concat_pos=concat_pos,
      sine_only=sine_only,
    )
    return jnp.concatenate([values, features], axis=-1)

  return preprocess


def _as_float(block_bC, indices_b):
  del indices_b
  return block_bC.astype(jnp.float32)


def _linear(p, x):
  out = x @ p['w']
  return out + p['b'] if 'b' in p else out


def _layer_norm(p, x):
  # pylint: disable-next=protected-access
  return attn._layer_norm(x, p['scale'], p['offset'], _LN_EPS)


class StreamingEncoder:
  """`PerceiverEncoder` whose inputs stream block by block from the host.

  `encode(params, source)` equals the in-memory encode

    enc = PerceiverEncoder(**encoder_kwargs)
    enc(x[None], enc.latents(x[None]), is_training=False)[0],
    x = preprocess(source_as_one_array, jnp.arange(M))

  within float32 rounding, with memory for one block of b points instead of
  M (Perceiver IO, App. I: the encoder need not see all points at once).
  `encode_vjp` also returns the pullback to the parameter gradients, which
  streams the inputs a second time.

  A source is a 2-D array [M, C] (a `np.memmap` included: its pages are
  handed back to the OS once read, for mode 'r', so the resident memory
  stays one block), a zero-argument callable returning a fresh iterable of
  [b_i, C] blocks (1 <= b_i <= block_size), or (for `encode` only) such an
  iterable itself. Every block is padded to `block_size` rows, the padding
  masked out, so one compiled step serves all blocks.
  """

  def __init__(
    self,
    encoder_kwargs: Optional[Mapping[str, Any]] = None,
    *,
    preprocess: Optional[Callable] = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
  ):
    """Builds the streamed encoder.

    Args:
      encoder_kwargs: the `PerceiverEncoder` keyword arguments of the model
        whose parameters will be passed (default: its defaults). Dropout is
        not applied (is_training=False).
      preprocess: fn(block [b, C], indices [b] int32 flat point indices) ->
        [b, F] inputs of the encoder, jit-traceable, applied per point (e.g.
        `fourier_preprocess`); default: cast to float32.
      block_size: b, points per block.

    Raises:
      ValueError: if `block_size` is not a positive integer, `preprocess` is
        not callable or `encoder_kwargs` has a bad value (the encoder's own
        checks); TypeError, as `PerceiverEncoder`, for an unknown keyword.
    """
    validation.check_positive('block_size', block_size)
    if preprocess is not None and not callable(preprocess):
      raise ValueError(
        f'preprocess: expected a function (block, indices) -> '
        f'inputs, got {preprocess!r}.'
      )
    self._kwargs = dict(encoder_kwargs or {})
    self._preprocess = preprocess or _as_float
    self._block_size = block_size
    self._heads = self._kwargs.get('num_cross_attend_heads', 1)
    validation.check_positive('num_cross_attend_heads', self._heads)
    self._residual = self._kwargs.get('use_query_residual', True)
    prefix = self._kwargs.get('name', 'perceiver_encoder') + '/~/'
    cross = prefix + 'cross_attention/'
    self._latents_name = prefix + 'trainable_position_encoding'
    self._q_names = dict(
      ln_q=cross + 'layer_norm', q=cross + 'attention/linear'
    )
    self._kv_names = dict(
      ln_kv=cross + 'layer_norm_1',
      k=cross + 'attention/linear_1',
      v=cross + 'attention/linear_2',
    )
    self._out_names = dict(
      o=cross + 'attention/linear_3',
      ln=cross + 'layer_norm_2',
      mlp_1=cross + 'mlp/linear',
      mlp_2=cross + 'mlp/linear_1',
    )
    self._process = hk.transform(self._process_fn)
    self._step = jax.jit(self._step_fn)
    self._grad_step = jax.jit(self._grad_step_fn)
    self._front = jax.jit(self._front_fn)
    self._front_vjp = jax.jit(
      lambda p, dq: jax.vjp(self._front_fn, p)[1](dq)[0]
    )
    self._finish = jax.jit(self._finish_fn)
    self._finish_vjp = jax.jit(
      lambda p, o, dz: jax.vjp(self._finish_fn, p, o)[1](dz)
    )
    # The encoder's own argument checks, now rather than at the first call.
    hk.transform(lambda: encoder_lib.PerceiverEncoder(**self._kwargs)).init(
      None
    )

  # -- The pieces, pure functions of the parameters. ------------------------

  def _sub(self, params, names):
    missing = [n for n in names.values() if n not in params]
    if missing:
      raise ValueError(
        f'params: expected the PerceiverEncoder parameters '
        f'(e.g. {missing[0]!r}), got modules '
        f'{sorted(params)[:4]}...'
      )
    return {k: params[n] for k, n in names.items()}

  def _front_fn(self, params):
    """Queries of the cross-attention: [N, H, K]."""
    p = self._sub(params, self._q_names)
    z0_ND = params[self._latents_name]['pos_embs']
    q_NC = _linear(p['q'], _layer_norm(p['ln_q'], z0_ND))
    return q_NC.reshape(q_NC.shape[0], self._heads, -1)

  def _project(self, kv, block_bC, start, num_valid):
    """Preprocessed, normalised, projected block: k [b,H,K], v [b,H,V]."""
    b = block_bC.shape[0]
    valid_b = jnp.arange(b) < num_valid
    indices_b = jnp.where(
      valid_b, start + jnp.arange(b, dtype=jnp.int32), start
    )
    x_bF = self._preprocess(block_bC, indices_b)
    if x_bF.ndim != 2 or x_bF.shape[0] != b:
      raise ValueError(
        f'preprocess: expected [{b}, F] inputs for a block of '
        f'{b} points, got shape {tuple(x_bF.shape)}.'
      )
    x_bF = _layer_norm(kv['ln_kv'], x_bF.astype(jnp.float32))
    k_bHK = _linear(kv['k'], x_bF).reshape(b, self._heads, -1)
    v_bHV = _linear(kv['v'], x_bF).reshape(b, self._heads, -1)
    # Padding never reaches the sums, whatever preprocess made of it.
    v_bHV = jnp.where(valid_b[:, None, None], v_bHV, 0.0)
    return k_bHK, v_bHV, valid_b

  def _logits(self, q_NHK, k_bHK, valid_b):
    scale = 1.0 / np.sqrt(q_NHK.shape[-1])
    s_HNb = jnp.einsum('nhk,bhk->hnb', q_NHK, k_bHK) * scale
    # pylint: disable-next=protected-access
    return jnp.where(valid_b, s_HNb, attn._MASKED_LOGIT)

  def _step_fn(self, state, q_NHK, kv, block_bC, start, num_valid):
    """One block of the online softmax."""
    max_HN, sum_HN, acc_HNV = state
    k_bHK, v_bHV, valid_b = self._project(kv, block_bC, start, num_valid)
    s_HNb = self._logits(q_NHK, k_bHK, valid_b)
    new_max_HN = jnp.maximum(max_HN, jnp.max(s_HNb, axis=-1))
    p_HNb = jnp.exp(s_HNb - new_max_HN[..., None])
    correction_HN = jnp.exp(max_HN - new_max_HN)
    sum_HN = sum_HN * correction_HN + jnp.sum(p_HNb, axis=-1)
    acc_HNV = acc_HNV * correction_HN[..., None] + jnp.einsum(
      'hnb,bhv->hnv', p_HNb, v_bHV
    )
    return new_max_HN, sum_HN, acc_HNV

  def _grad_step_fn(
    self,
    grads,
    q_NHK,
    kv,
    block_bC,
    start,
    num_valid,
    max_HN,
    sum_HN,
    o_NHV,
    do_NHV,
  ):
    """Adds one block's share of (d kv params, d q) to `grads`."""

    def share(q_NHK, kv):
      k_bHK, v_bHV, valid_b = self._project(kv, block_bC, start, num_valid)
      s_HNb = self._logits(q_NHK, k_bHK, valid_b)
      # The final softmax: exact probabilities of this block's points.
      p_HNb = jnp.exp(s_HNb - max_HN[..., None]) / sum_HN[..., None]
      # sum_j P_j (v_j - O), O fixed: its vjp is dS = P * (dP - dO . O).
      g_NHV = (
        jnp.einsum('hnb,bhv->nhv', p_HNb, v_bHV)
        - o_NHV * jnp.sum(p_HNb, axis=-1).T[..., None]
      )
      return jnp.vdot(do_NHV, g_NHV)

    d_q, d_kv = jax.grad(share, argnums=(0, 1))(q_NHK, kv)
    return jax.tree.map(jnp.add, grads, (d_kv, d_q))

  def _process_fn(self, x_BND, num_features: int):
    """The encoder's self-attention layers on x (its cross-attend skipped)."""
    enc = encoder_lib.PerceiverEncoder(**self._kwargs)

    def skip_cross_attend(method, args, kwargs, context):
      if context.module is enc.cross_attend:
        return args[0]  # The latents given: x, the streamed read's output.
      return method(*args, **kwargs)

    with hk.intercept_methods(skip_cross_attend):
      return enc(
        jnp.zeros((1, 1, num_features), x_BND.dtype), x_BND, is_training=False
      )

  def _finish_fn(self, params, o_NC):
    """The rest of the cross-attend block, then the self-attentions: [N, D]."""
    p = self._sub(params, self._out_names)
    z0_ND = params[self._latents_name]['pos_embs']
    x_ND = _linear(p['o'], o_NC)
    if self._residual:
      x_ND = z0_ND + x_ND
    hidden = jax.nn.gelu(
      _linear(p['mlp_1'], _layer_norm(p['ln'], x_ND)), approximate=True
    )
    x_ND = x_ND + _linear(p['mlp_2'], hidden)
    num_features = params[self._kv_names['ln_kv']]['scale'].shape[0]
    return self._process.apply(
      params, None, x_ND[None], num_features=num_features
    )[0]

  # -- Streaming. ------------------------------------------------------------

  def _blocks(self, source, allow_iterator: bool):
    """Yields (block [block_size, C] padded, start, num_valid)."""
    b = self._block_size
    if hasattr(source, 'ndim') and hasattr(source, 'shape'):
      validation.check_rank('source', source, (2,), '[M, C]')
      num = source.shape[0]
      if not 0 < num <= _MAX_POINTS:
        raise ValueError(
          f'source: expected 1 to {_MAX_POINTS} points, got '
          f'shape {tuple(source.shape)}.'
        )
      release = _page_releaser(source)
      for start in range(0, num, b):
        block = np.array(source[start : start + b])
        if release is not None:
          release(start + block.shape[0])
        yield _pad(block, b), start, block.shape[0]
      return
    if callable(source):
      blocks = source()
    elif allow_iterator and isinstance(source, Iterable):
      blocks = source
    else:
      expected = (
        'a [M, C] array, a function returning an iterable of '
        '[b, C] blocks'
        + (
          ' or such an iterable'
          if allow_iterator
          else ' (the gradient pass reads the source twice)'
        )
      )
      raise ValueError(f'source: expected {expected}, got {type(source)}.')
    start, channels = 0, None
    for block in blocks:
      block = np.asarray(block)
      if block.ndim != 2 or not 1 <= block.shape[0] <= b:
        raise ValueError(
          f'source: expected blocks [b, C] with 1 <= b <= '
          f'block_size={b}, got shape {tuple(block.shape)} '
          f'at point {start}.'
        )
      if channels is not None and block.shape[1] != channels:
        raise ValueError(
          f'source: expected blocks of {channels} channels '
          f'(that of the first), got shape '
          f'{tuple(block.shape)} at point {start}.'
        )
      channels = block.shape[1]
      if start + block.shape[0] > _MAX_POINTS:
        raise ValueError(
          f'source: expected at most {_MAX_POINTS} points, got more.'
        )
      yield _pad(block, b), start, block.shape[0]
      start += block.shape[0]
    if start == 0:
      raise ValueError('source: expected at least one point, got none.')

  def _stream(self, fn, carry, source, allow_iterator):
    """carry = fn(carry, block, start, num_valid) over the source's blocks."""
    in_flight = collections.deque()
    for block, start, num_valid in self._blocks(source, allow_iterator):
      carry = fn(carry, block, np.int32(start), np.int32(num_valid))
      in_flight.append(carry)
      if len(in_flight) > _IN_FLIGHT:  # Bounds the blocks queued on device.
        jax.block_until_ready(in_flight.popleft())
    return carry

  def _read(self, params, source, allow_iterator: bool):
    q_NHK = self._front(params)
    kv = self._sub(params, self._kv_names)
    H, N = q_NHK.shape[1], q_NHK.shape[0]
    v_width = kv['v']['w'].shape[1] // self._heads
    init = (
      jnp.full((H, N), -jnp.inf, jnp.float32),
      jnp.zeros((H, N), jnp.float32),
      jnp.zeros((H, N, v_width), jnp.float32),
    )
    state = self._stream(
      lambda s, *block: self._step(s, q_NHK, kv, *block),
      init,
      source,
      allow_iterator,
    )
    max_HN, sum_HN, acc_HNV = state
    o_NHV = jnp.transpose(acc_HNV / sum_HN[..., None], (1, 0, 2))
    return q_NHK, kv, (max_HN, sum_HN), o_NHV

  def encode(self, params, source):
    """Encodes the streamed inputs: the latents [N, D], float32.

    Args:
      params: the `PerceiverEncoder` parameters (haiku params dict; other
        modules' entries may be present).
      source: a [M, C] array or memmap, a function returning an iterable of
        [b_i, C] blocks, or such an iterable (see the class docstring).

    Raises:
      ValueError: if `source` is not one of those, is empty, has more than
        2^31 - 1 points or yields a block of the wrong shape; if `params`
        lacks an encoder parameter; if `preprocess` returns other than
        [b, F].
    """
    _, _, _, o_NHV = self._read(params, source, allow_iterator=True)
    return self._finish(params, o_NHV.reshape(o_NHV.shape[0], -1))

  def encode_vjp(self, params, source):
    """The encode and its pullback to the parameters.

    Args:
      params: as `encode`.
      source: as `encode`, but not a one-shot iterable: the pullback reads
        the source again.

    Returns:
      (z [N, D], pullback): pullback(dz [N, D]) streams the source a second
      time and returns d<dz, z>/d params, a dict shaped like `params` (zeros
      for entries the encoder does not use).

    Raises:
      ValueError: as `encode`; pullback: if dz is not [N, D].
    """
    if not (callable(source) or hasattr(source, 'ndim')):
      raise ValueError(
        f'source: expected a [M, C] array or a function '
        f'returning an iterable of blocks (the gradient pass '
        f'reads the source twice), got {type(source)}.'
      )
    q_NHK, kv, (max_HN, sum_HN), o_NHV = self._read(params, source, False)
    o_NC = o_NHV.reshape(o_NHV.shape[0], -1)
    z_ND = self._finish(params, o_NC)

    def pullback(dz_ND):
      validation.check_shape('dz', dz_ND, z_ND.shape)
      d_params, do_NC = self._finish_vjp(
        params, o_NC, jnp.asarray(dz_ND, z_ND.dtype)
      )
      do_NHV = do_NC.reshape(o_NHV.shape)
      zeros = jax.tree.map(jnp.zeros_like, (kv, q_NHK))

      def step(grads, *block):
        return self._grad_step(
          grads, q_NHK, kv, *block, max_HN, sum_HN, o_NHV, do_NHV
        )

      d_kv, d_q = self._stream(step, zeros, source, False)
      d_front = self._front_vjp(params, d_q)
      d_params = jax.tree.map(jnp.add, d_params, d_front)
      d_params = {k: dict(v) for k, v in d_params.items()}
      for key, name in self._kv_names.items():
        d_params[name] = jax.tree.map(jnp.add, d_params[name], d_kv[key])
      return d_params

    return z_ND, pullback


def _pad(block, size: int):
  if block.shape[0] == size:
    return block
  out = np.zeros((size,) + block.shape[1:], block.dtype)
  out[: block.shape[0]] = block
  return out


def _page_releaser(array) -> Optional[Callable[[int], None]]:
  """fn(stop_row) dropping a read-only memmap's pages before `stop_row`.

  Reading a memmap maps its file pages into this process (they count in
  its resident set size until the OS reclaims them). MADV_DONTNEED on a
  read-only shared mapping only unmaps them (they stay in the page cache,
  the file is untouched), so the resident memory of a stream stays one
  block. None where this does not apply (not a C-contiguous memmap of mode
  'r', or no madvise).
  """
  mm = getattr(array, '_mmap', None)
  if (
    not isinstance(array, np.memmap)
    or getattr(array, 'mode', None) != 'r'
    or not isinstance(mm, mmap.mmap)
    or not hasattr(mm, 'madvise')
    or not hasattr(mmap, 'MADV_DONTNEED')
    or not array.flags.c_contiguous
  ):
    return None
  base = np.frombuffer(mm, np.uint8).ctypes.data
  first = array.ctypes.data - base
  row_bytes = array.strides[0]

  def release(stop_row: int):
    end = first + stop_row * row_bytes
    length = end - end % mmap.PAGESIZE
    if length > 0:
      mm.madvise(mmap.MADV_DONTNEED, 0, length)

  return release
