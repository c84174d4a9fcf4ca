"""The read and process stages: `PerceiverEncoder` (Perceiver IO, Sec. 2).

Shapes: B batch, M inputs, N latents (z_index_dim), C input channels,
D latent channels (num_z_channels).
"""

import functools
from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp

from perceiver import attention as attn
from perceiver import position_encoding
from perceiver import validation


class PerceiverEncoder(hk.Module):
  """Cross-attends inputs into a latent array, then self-attends the latents.

  One cross-attention (read) writes the [B, M, C] inputs into N trainable
  latents; then `num_blocks` x `num_self_attends_per_block` self-attention
  layers (process) refine them. The `num_self_attends_per_block` layers have
  their own weights, which are shared across the `num_blocks` repetitions
  (Perceiver, Sec. 2: "weight sharing across blocks").

  Two switches change how the computation is compiled, never the parameters:
  `remat` rematerialises each self-attention layer in the backward pass
  (`jax.checkpoint`), `scan_blocks` runs the repeated shared-weight blocks
  under `lax.scan`, so compile time does not grow with `num_blocks`, and
  `scan_layers` runs the distinct layers of a block under `lax.scan` over
  their stacked weights. The scans cut compile time; unrolled (the default,
  as released) is faster on CPU: a scan stacks the layers' weights on every
  call (680 MB per MLM call) and copies every saved activation in and out of
  its loop.

  On CPU, XLA fuses the backward pass of an unrolled stack of LayerNorm
  residual layers into fusions that each recompute the residual gradient of
  all later layers, so its time grew quadratically with depth (26 MLM layers:
  16 s per training step). Unrolled layers therefore pass their input through
  `_cut_backward_fusion`, which makes each layer's input gradient a buffer
  (docs/bench/README.md).
  """

  def __init__(
    self,
    num_self_attends_per_block: int = 6,
    num_blocks: int = 8,
    z_index_dim: int = 512,
    num_z_channels: int = 1024,
    qk_channels: Optional[int] = None,
    v_channels: Optional[int] = None,
    num_cross_attend_heads: int = 1,
    num_self_attend_heads: int = 8,
    cross_attend_widening_factor: int = 1,
    self_attend_widening_factor: int = 1,
    dropout_prob: float = 0.0,
    z_pos_enc_init_scale: float = 0.02,
    cross_attention_shape_for_attn: str = 'kv',
    use_query_residual: bool = True,
    name: str = 'perceiver_encoder',
    *,
    attention_impl: str = 'reference',
    cross_attention_impl: Optional[str] = None,
    remat: bool = False,
    scan_blocks: bool = False,
    scan_layers: bool = False,
  ):
    """Builds the encoder; arguments and defaults are the released ones.

    Args:
      num_self_attends_per_block: distinct self-attention layers per block.
      num_blocks: repetitions of the block (weights shared).
      z_index_dim: N, number of latents.
      num_z_channels: D, latent width.
      qk_channels: q/k width of every attention (default: see CrossAttention).
      v_channels: value width of every attention.
      num_cross_attend_heads: heads of the cross-attention.
      num_self_attend_heads: heads of the self-attentions.
      cross_attend_widening_factor: MLP widening of the cross-attention.
      self_attend_widening_factor: MLP widening of the self-attentions.
      dropout_prob: dropout of the attention outputs and MLPs (training only).
      z_pos_enc_init_scale: init stddev of the latent array.
      cross_attention_shape_for_attn: 'kv' or 'q', the default qk width source.
      use_query_residual: residual around the cross-attention.
      name: module name.
      attention_impl: one of `attention.ATTENTION_IMPLEMENTATIONS`, for the
        self-attention layers (and the cross-attention unless given below).
      cross_attention_impl: implementation of the cross-attention (default:
        `attention_impl`). 'chunked' normalises and projects the inputs one
        key block at a time: memory for one block whatever M, and on CPU
        2x faster than 'reference' for ImageNet's 50,176 inputs
        (docs/bench/README.md).
      remat: rematerialise the self-attention layers in the backward pass.
      scan_blocks: run the `num_blocks` repetitions under `lax.scan`.
      scan_layers: run the layers of a block under `lax.scan` over their
        stacked weights (compile time then does not grow with depth).
    """
    super().__init__(name=name)
    validation.check_positive(
      'num_self_attends_per_block', num_self_attends_per_block
    )
    validation.check_positive('num_blocks', num_blocks)
    validation.check_positive('z_index_dim', z_index_dim)
    validation.check_positive('num_z_channels', num_z_channels)
    validation.check_positive('num_self_attend_heads', num_self_attend_heads)
    validation.check_positive('num_cross_attend_heads', num_cross_attend_heads)
    validation.check_divisible(
      'num_z_channels',
      num_z_channels,
      'num_self_attend_heads',
      num_self_attend_heads,
    )
    validation.check_divisible(
      'num_z_channels',
      num_z_channels,
      'num_cross_attend_heads',
      num_cross_attend_heads,
    )
    validation.check_choice(
      'attention_impl', attention_impl, attn.ATTENTION_IMPLEMENTATIONS
    )
    validation.check_choice(
      'cross_attention_impl',
      cross_attention_impl,
      (None,) + attn.ATTENTION_IMPLEMENTATIONS,
    )
    self._num_blocks = num_blocks
    self._remat = remat
    self._scan_blocks = scan_blocks
    self._num_z_channels = num_z_channels
    self.z_pos_enc = position_encoding.TrainablePositionEncoding(
      index_dim=z_index_dim,
      num_channels=num_z_channels,
      init_scale=z_pos_enc_init_scale,
    )
    self.cross_attend = attn.CrossAttention(
      dropout_prob=dropout_prob,
      num_heads=num_cross_attend_heads,
      widening_factor=cross_attend_widening_factor,
      shape_for_attn=cross_attention_shape_for_attn,
      qk_channels=qk_channels,
      v_channels=v_channels,
      use_query_residual=use_query_residual,
      attention_impl=cross_attention_impl or attention_impl,
    )
    self._dropout_prob = dropout_prob
    self._scan_layers = scan_layers
    # The self-attention layers are pure functions of their parameters, so the
    # same code runs them unrolled or under `lax.scan` over stacked weights.
    # `hk.lift` keeps the released names: perceiver_encoder/~/self_attention_k.
    self._layer = hk.transform(
      functools.partial(
        attn.self_attention_block,
        num_heads=num_self_attend_heads,
        dropout_prob=dropout_prob,
        qk_channels=qk_channels,
        v_channels=v_channels,
        widening_factor=self_attend_widening_factor,
        attention_impl=attention_impl,
      )
    )
    self._layer_params = [
      hk.lift(self._layer.init, allow_reuse=True, name='self_attention')
      for _ in range(num_self_attends_per_block)
    ]

  def latents(self, inputs):
    """The trainable latent array broadcast to the batch: [B, N, D].

    It is cast to the dtype of floating `inputs` [B, M, C] (the compute
    dtype: bfloat16 inputs give bfloat16 latents), else left as stored.
    """
    z_BND = self.z_pos_enc(batch_size=inputs.shape[0])
    if jnp.issubdtype(inputs.dtype, jnp.floating):
      z_BND = z_BND.astype(inputs.dtype)
    return z_BND

  def _run_layers(self, z, layer_params, *, is_training: bool):
    """Applies num_blocks x the per-block layers to z (pure JAX from here)."""
    use_rng = is_training and self._dropout_prob > 0
    num_layers = len(layer_params)
    total = self._num_blocks * num_layers
    keys = (
      jax.random.split(hk.next_rng_key(), total).reshape(
        self._num_blocks, num_layers, -1
      )
      if use_rng
      else None
    )

    def layer(z, params, key):
      return self._layer.apply(params, key, z, is_training=is_training)

    if self._remat:
      layer = jax.checkpoint(layer)

    # Stacked once, outside the loop over blocks.
    stacked = (
      jax.tree.map(lambda *a: jnp.stack(a), *layer_params)
      if self._scan_layers
      else None
    )
    cut = jax.default_backend() == 'cpu'

    def block(z, block_keys):
      if self._scan_layers:
        return jax.lax.scan(
          lambda c, xs: (layer(c, *xs), None), z, (stacked, block_keys)
        )[0]
      for i, params in enumerate(layer_params):
        if cut:
          z = _cut_backward_fusion(z)
        z = layer(z, params, None if block_keys is None else block_keys[i])
      return z

    if self._scan_blocks and self._num_blocks > 1:
      return jax.lax.scan(
        lambda c, k: (block(c, k), None), z, keys, length=self._num_blocks
      )[0]
    for b in range(self._num_blocks):
      z = block(z, None if keys is None else keys[b])
    return z

  def __call__(self, inputs, z, *, is_training: bool, input_mask=None):
    """Reads `inputs` into the latents `z` and processes them.

    Args:
      inputs: [B, M, C] preprocessed inputs.
      z: [B, N, D] initial latents (normally `self.latents(inputs)`).
      is_training: enables dropout.
      input_mask: optional [B, M]; 0/False marks padding that is not read.

    Returns:
      [B, N, D] latents.
    """
    validation.check_rank('inputs', inputs, (3,), '[B, M, C]')
    validation.check_rank('z', z, (3,), '[B, N, D]')
    if z.shape[0] != inputs.shape[0] or z.shape[2] != self._num_z_channels:
      raise ValueError(
        f'z: expected shape ({inputs.shape[0]}, N, {self._num_z_channels}), '
        f'got {tuple(z.shape)}.'
      )
    attention_mask = None
    if input_mask is not None:
      validation.check_shape('input_mask', input_mask, inputs.shape[:2])
      attention_mask = attn.make_cross_attention_mask(
        query_mask=jnp.ones(z.shape[:2], dtype=bool), kv_mask=input_mask
      )
    z = self.cross_attend(
      z, inputs, attention_mask=attention_mask, is_training=is_training
    )
    # Each layer is its own draw at init, as the released code's separate
    # `SelfAttention` modules are; at apply the lifted params are read back.
    init = hk.running_init()
    layer_params = [
      lift(hk.next_rng_key() if init else None, z, is_training=False)
      for lift in self._layer_params
    ]
    return self._run_layers(z, layer_params, is_training=is_training)


@jax.custom_vjp
def _cut_backward_fusion(x):
  """Identity whose gradient is materialised: XLA cannot fuse through it.

  The backward pass routes the cotangent through a `lax.cond` on a runtime
  predicate (its first element equals itself). A conditional is a fusion
  boundary, so XLA's CPU fusion cannot pull the residual gradient of later
  layers into the fusions of earlier ones. Both branches return the
  cotangent: the second, taken only when that first element is NaN, adds
  0 * NaN, so a NaN gradient stays NaN. The forward pass is untouched.
  """
  return x


def _cut_fwd(x):
  return x, None


def _cut_bwd(_, g):
  first = g.reshape(-1)[0]
  return (
    jax.lax.cond(
      first == first, lambda t: t, lambda t: t + 0 * t.reshape(-1)[0], g
    ),
  )


_cut_backward_fusion.defvjp(_cut_fwd, _cut_bwd)
