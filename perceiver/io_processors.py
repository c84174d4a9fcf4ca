"""Input preprocessors and output postprocessors (Perceiver IO, Sec. 4, App. B-F).

Shapes: B batch, T time (frames), H height, W width, C channels,
M tokens (flattened index dims of an input), N tokens of a decoder output,
P position-encoding channels, V vocabulary, D model width,
dt / dh / dw block (patch) sizes in time / height / width.

A preprocessor turns a raw modality into the flat array the encoder attends to
and is called as `pre(x, *, is_training, pos=None, network_input_is_1d=True)`;
it returns `(inputs_with_pos [B, M, C'], modality_sizes or None,
inputs_without_pos)`. A postprocessor turns decoder outputs [B, N, C] into the
task's output and is called as `post(x, *, is_training, pos=None,
modality_sizes=None)`.

Released-code names, keyword arguments and Haiku module paths are kept, so the
released configs build unchanged and their parameters load without conversion
(e.g. `image_preprocessor/~/conv2_d_downsample/~/conv`,
`image_preprocessor/~_build_network_inputs/trainable_position_encoding`,
`multimodal_preprocessor/image_padding`).

Deviations from the released code (all raise where it silently did something):
  * `restructure` and `MultimodalPostprocessor` raise if the modality sizes do
    not add up to the flat length (the released code silently dropped or
    mis-sliced the rest).
  * `space_to_depth` / `reverse_space_to_depth` raise on a rank-4 input with
    `temporal_block_size != 1` (the released code ignored it).
  * `ImagePreprocessor(prep_type='conv')` needs `spatial_downsample >= 4`
    (1 would build a conv stack with no layers, i.e. no preprocessing).
  * `ImagePostprocessor` rejects `postproc_type='raft'` (accepted by the released
    code, which then never built a network for it).
  * `MultimodalPreprocessor` only draws a random key for modalities whose mask
    probability is strictly between 0 and 1: a probability of 1 masks every
    token (as the released Bernoulli draw did), so inference with
    `mask_probs={'label': 1.0}` runs with `rng=None`.
"""

import functools
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import attention
from perceiver import position_encoding
from perceiver import validation

ModalitySizeT = Mapping[str, int]
PreprocessorOutputT = Tuple[Any, Optional[ModalitySizeT], Any]
PreprocessorT = Callable[..., PreprocessorOutputT]
PostprocessorT = Callable[..., Any]

IMAGE_PREP_TYPES = ('conv', 'conv1x1', 'patches', 'pixels')
IMAGE_POSTPROC_TYPES = ('pixels', 'conv1x1', 'conv', 'patches')
AUDIO_PREP_TYPES = ('patches',)
AUDIO_POSTPROC_TYPES = ('patches',)
CONCAT_OR_ADD_POS = ('concat', 'add')
_POSITION_ENCODING_KWARGS = (
  'project_pos_dim',
  'trainable_position_encoding_kwargs',
  'fourier_position_encoding_kwargs',
)


def _check_power(name: str, value: int, base: int, minimum: int = 1) -> int:
  """Returns log_base(value); raises unless value is base**k >= minimum."""
  validation.check_positive(name, value)
  exponent = 0
  power = 1
  while power < value:
    power *= base
    exponent += 1
  if power != value or value < minimum:
    powers = ', '.join(str(base**k) for k in range(4) if base**k >= minimum)
    raise ValueError(
      f'{name}: expected a power of {base} ({powers}, ...), got {value!r}.'
    )
  return exponent


def _check_position_encoding_kwargs(kwargs: Mapping[str, Any]) -> None:
  unknown = sorted(set(kwargs) - set(_POSITION_ENCODING_KWARGS))
  if unknown:
    raise ValueError(
      f'position_encoding_kwargs: expected keys among '
      f'{list(_POSITION_ENCODING_KWARGS)}, got unknown {unknown}.'
    )


def _check_dims_divisible(
  name: str,
  shape: Sequence[int],
  axes_and_blocks: Sequence[Tuple[int, str, int]],
):
  for axis, block_name, block in axes_and_blocks:
    if shape[axis] % block:
      raise ValueError(
        f'{name}: dimension {axis} of shape {tuple(shape)} ({shape[axis]}) '
        f'must be divisible by {block_name}={block}.'
      )


# ---------------------------------------------------------------------------
# Space-to-depth and patch extraction
# ---------------------------------------------------------------------------


def space_to_depth(
  frames, temporal_block_size: int = 1, spatial_block_size: int = 1
):
  """Folds non-overlapping blocks of pixels (and frames) into channels.

  Rank 4: `[B, H*dh, W*dw, C] -> [B, H, W, dh*dw*C]`, channels in (dh, dw, c)
  order. Rank 5: `[B, T*dt, H*dh, W*dw, C] -> [B, T, H, W, dt*dh*dw*C]`, in
  (dt, dh, dw, c) order. `dh = dw = spatial_block_size`, `dt =
  temporal_block_size` (Perceiver IO, App. E/F "patches" preprocessing).

  Args:
    frames: [B, H, W, C] images or [B, T, H, W, C] videos.
    temporal_block_size: dt, frames per block (must be 1 for images).
    spatial_block_size: dh = dw, pixels per block side.

  Returns:
    The blocked array, [B, H/dh, W/dw, dh*dw*C] or
    [B, T/dt, H/dh, W/dw, dt*dh*dw*C].

  Raises:
    ValueError: on a rank other than 4 or 5, a non-positive block size, or a
      size not divisible by its block size.
  """
  validation.check_rank(
    'frames', frames, (4, 5), '[B, H, W, C] or [B, T, H, W, C]'
  )
  validation.check_positive('temporal_block_size', temporal_block_size)
  validation.check_positive('spatial_block_size', spatial_block_size)
  s = spatial_block_size
  if frames.ndim == 4:
    if temporal_block_size != 1:
      raise ValueError(
        f'temporal_block_size: expected 1 for rank-4 images, got '
        f'{temporal_block_size!r}.'
      )
    _check_dims_divisible(
      'frames',
      frames.shape,
      [(1, 'spatial_block_size', s), (2, 'spatial_block_size', s)],
    )
    b, h, w, c = frames.shape
    x = jnp.reshape(frames, (b, h // s, s, w // s, s, c))
    # [B, H, dh, W, dw, C] -> [B, H, W, dh, dw, C]
    x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
    return jnp.reshape(x, (b, h // s, w // s, s * s * c))
  t_blk = temporal_block_size
  _check_dims_divisible(
    'frames',
    frames.shape,
    [
      (1, 'temporal_block_size', t_blk),
      (2, 'spatial_block_size', s),
      (3, 'spatial_block_size', s),
    ],
  )
  b, t, h, w, c = frames.shape
  x = jnp.reshape(frames, (b, t // t_blk, t_blk, h // s, s, w // s, s, c))
  # [B, T, dt, H, dh, W, dw, C] -> [B, T, H, W, dt, dh, dw, C]
  x = jnp.transpose(x, (0, 1, 3, 5, 2, 4, 6, 7))
  return jnp.reshape(x, (b, t // t_blk, h // s, w // s, t_blk * s * s * c))


def reverse_space_to_depth(
  frames, temporal_block_size: int = 1, spatial_block_size: int = 1
):
  """The inverse of `space_to_depth`: unfolds channels back into blocks.

  Rank 4: `[B, H, W, dh*dw*C] -> [B, H*dh, W*dw, C]`. Rank 5:
  `[B, T, H, W, dt*dh*dw*C] -> [B, T*dt, H*dh, W*dw, C]`.

  Args:
    frames: [B, H, W, C'] or [B, T, H, W, C'] blocked array.
    temporal_block_size: dt (must be 1 for rank 4).
    spatial_block_size: dh = dw.

  Returns:
    The unblocked array.

  Raises:
    ValueError: on a rank other than 4 or 5, a non-positive block size, or a
      channel count not divisible by the block volume.
  """
  validation.check_rank(
    'frames', frames, (4, 5), '[B, H, W, C] or [B, T, H, W, C]'
  )
  validation.check_positive('temporal_block_size', temporal_block_size)
  validation.check_positive('spatial_block_size', spatial_block_size)
  s = spatial_block_size
  if frames.ndim == 4:
    if temporal_block_size != 1:
      raise ValueError(
        f'temporal_block_size: expected 1 for rank-4 images, got '
        f'{temporal_block_size!r}.'
      )
    b, h, w, cc = frames.shape
    if cc % (s * s):
      raise ValueError(
        f'frames: channels ({cc}) of shape {tuple(frames.shape)} must be '
        f'divisible by spatial_block_size**2={s * s}.'
      )
    c = cc // (s * s)
    x = jnp.reshape(frames, (b, h, w, s, s, c))
    # [B, H, W, dh, dw, C] -> [B, H, dh, W, dw, C]
    x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
    return jnp.reshape(x, (b, h * s, w * s, c))
  t_blk = temporal_block_size
  b, t, h, w, cc = frames.shape
  volume = t_blk * s * s
  if cc % volume:
    raise ValueError(
      f'frames: channels ({cc}) of shape {tuple(frames.shape)} must be '
      f'divisible by temporal_block_size*spatial_block_size**2={volume}.'
    )
  c = cc // volume
  x = jnp.reshape(frames, (b, t, h, w, t_blk, s, s, c))
  # [B, T, H, W, dt, dh, dw, C] -> [B, T, dt, H, dh, W, dw, C]
  x = jnp.transpose(x, (0, 1, 4, 2, 5, 3, 6, 7))
  return jnp.reshape(x, (b, t * t_blk, h * s, w * s, c))


def _check_window(name: str, value: Sequence[int]) -> Tuple[int, int]:
  """Checks the TF `[1, r, c, 1]` form and returns (r, c)."""
  try:
    items = [int(v) for v in value]
    ok = (
      len(items) == 4
      and items[0] == 1
      and items[3] == 1
      and items[1] > 0
      and items[2] > 0
      and all(float(v) == int(v) for v in value)
    )
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(
      f'{name}: expected the form [1, r, c, 1] with positive integers r and '
      f'c, got {value!r}.'
    )
  return items[1], items[2]


def extract_patches(
  images,
  sizes: Sequence[int],
  strides: Sequence[int],
  rates: Sequence[int],
  padding: str = 'VALID',
):
  """Image patches with the values of TensorFlow's `tf.image.extract_patches`.

  Output position (i, j) holds the ph x pw patch whose top-left input pixel is
  (i*sh - pad_top, j*sw - pad_left), sampled every (rh, rw) pixels; pixels
  outside the image are 0. 'SAME' padding follows TF: out = ceil(in / stride),
  pad_total = max((out-1)*stride + (k-1)*rate + 1 - in, 0),
  pad_before = pad_total // 2.

  Args:
    images: [B, H, W, C].
    sizes: [1, ph, pw, 1], the patch size.
    strides: [1, sh, sw, 1], the distance between patch centres.
    rates: [1, rh, rw, 1], the dilation of the patch.
    padding: 'VALID' or 'SAME'.

  Returns:
    [B, out_h, out_w, ph*pw*C], each patch flattened in (ph, pw, c) order.
    Integer inputs are computed in float32 and cast back (exact below 2**24).

  Raises:
    ValueError: on a rank other than 4, sizes/strides/rates not of the form
      [1, r, c, 1], or an unknown padding.
  """
  validation.check_rank('images', images, (4,), '[B, H, W, C]')
  ph, pw = _check_window('sizes', sizes)
  stride_hw = _check_window('strides', strides)
  rate_hw = _check_window('rates', rates)
  validation.check_choice('padding', padding, ('VALID', 'SAME'))
  images = jnp.asarray(images)
  dtype = images.dtype
  if not jnp.issubdtype(dtype, jnp.floating):
    images = images.astype(jnp.float32)
  c = images.shape[-1]
  patches = jax.lax.conv_general_dilated_patches(
    images,
    filter_shape=(ph, pw),
    window_strides=stride_hw,
    padding=padding,
    rhs_dilation=rate_hw,
    dimension_numbers=('NHWC', 'OIHW', 'NHWC'),
    precision=jax.lax.Precision.HIGHEST,
  )
  # [B, out_h, out_w, C*ph*pw], channel-major (c, ph, pw) order.
  b, out_h, out_w, _ = patches.shape
  patches = jnp.reshape(patches, (b, out_h, out_w, c, ph * pw))
  # -> (ph, pw, c) order, as TF.
  patches = jnp.swapaxes(patches, -1, -2)
  patches = jnp.reshape(patches, (b, out_h, out_w, ph * pw * c))
  return patches.astype(dtype)


def patches_for_flow(inputs):
  """3x3 patches around every pixel of every frame (optical flow input, App. E).

  Each frame is zero-padded by one pixel, so the output keeps the frame size.

  Args:
    inputs: [B, T, H, W, C] frames.

  Returns:
    [B, T, H, W, 9*C], patch channels in (3, 3, c) order.
  """
  validation.check_rank('inputs', inputs, (5,), '[B, T, H, W, C]')
  b, t, h, w, c = inputs.shape
  frames = jnp.reshape(inputs, (b * t, h, w, c))
  patches = extract_patches(
    frames,
    sizes=[1, 3, 3, 1],
    strides=[1, 1, 1, 1],
    rates=[1, 1, 1, 1],
    padding='SAME',
  )
  return jnp.reshape(patches, (b, t, h, w, 9 * c))


def _merge_time(x):
  """[B, T, ...] -> [B*T, ...]."""
  return jnp.reshape(x, (x.shape[0] * x.shape[1],) + x.shape[2:])


def _split_time(x, batch_size: int):
  """[B*T, ...] -> [B, T, ...]."""
  return jnp.reshape(x, (batch_size, x.shape[0] // batch_size) + x.shape[1:])


# ---------------------------------------------------------------------------
# Convolutional stems
# ---------------------------------------------------------------------------


class Conv2DDownsample(hk.Module):
  """ResNet-style stem: `num_layers` x (7x7/2 conv, BatchNorm, ReLU, 3x3/2 max).

  Each layer downsamples by 4 (Perceiver IO, App. B "conv" preprocessing).
  Parameters: `conv2_d_downsample/~/conv{,_1,...}/w` and
  `conv2_d_downsample/~/batchnorm{,_1,...}` (scale/offset, plus mean_ema and
  var_ema state, so use `hk.transform_with_state` and init with
  `is_training=True`).
  """

  def __init__(
    self,
    num_layers: int = 1,
    num_channels: int = 64,
    use_batchnorm: bool = True,
    bn_config: Optional[Mapping[str, Any]] = None,
    name: Optional[str] = None,
  ):
    """Builds the stem.

    Args:
      num_layers: number of 4x downsampling layers.
      num_channels: output channels of every conv.
      use_batchnorm: apply BatchNorm after each conv.
      bn_config: overrides of the `hk.BatchNorm` arguments (defaults:
        create_scale=True, create_offset=True, decay_rate=0.9, eps=1e-5).
      name: module name.
    """
    super().__init__(name=name)
    validation.check_positive('num_layers', num_layers)
    validation.check_positive('num_channels', num_channels)
    bn_kwargs = dict(
      create_scale=True, create_offset=True, decay_rate=0.9, eps=1e-5
    )
    bn_kwargs.update(bn_config or {})
    self._use_batchnorm = use_batchnorm
    self._convs = []
    self._norms = []
    for _ in range(num_layers):
      self._convs.append(
        hk.Conv2D(
          output_channels=num_channels,
          kernel_shape=7,
          stride=2,
          with_bias=False,
          padding='SAME',
          name='conv',
        )
      )
      if use_batchnorm:
        self._norms.append(hk.BatchNorm(name='batchnorm', **bn_kwargs))

  def __call__(
    self, inputs, *, is_training: bool, test_local_stats: bool = False
  ):
    """Applies the stem.

    Args:
      inputs: [B, H, W, C] images.
      is_training: BatchNorm uses (and updates) batch statistics when True.
      test_local_stats: BatchNorm uses batch statistics at test time.

    Returns:
      [B, H / 4**num_layers, W / 4**num_layers, num_channels] (rounded up).
    """
    validation.check_rank('inputs', inputs, (4,), '[B, H, W, C]')
    x = inputs
    for i, conv in enumerate(self._convs):
      x = conv(x)  # [B, H/2, W/2, C]
      if self._use_batchnorm:
        # Batch statistics (and the moving averages) in float32.
        x = self._norms[i](
          x.astype(jnp.float32),
          is_training=is_training,
          test_local_stats=test_local_stats,
        ).astype(x.dtype)
      x = jax.nn.relu(x)
      x = hk.max_pool(
        x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding='SAME'
      )  # [B, H/4, W/4, C]
    return x


class Conv2DUpsample(hk.Module):
  """Two 4x4 stride-2 transposed convs with a ReLU between: a 4x upsample.

  Parameters: `conv2_d_upsample/~/transp_conv_1` and `.../~/transp_conv_2`
  (`w`, `b`), the released names.
  """

  def __init__(self, n_outputs: int, name: Optional[str] = None):
    """Builds the upsampler.

    Args:
      n_outputs: output channels (the hidden layer has 2 * n_outputs).
      name: module name.
    """
    super().__init__(name=name)
    validation.check_positive('n_outputs', n_outputs)
    self._transp_conv1 = hk.Conv2DTranspose(
      output_channels=n_outputs * 2,
      kernel_shape=4,
      stride=2,
      with_bias=True,
      padding='SAME',
      name='transp_conv_1',
    )
    self._transp_conv2 = hk.Conv2DTranspose(
      output_channels=n_outputs,
      kernel_shape=4,
      stride=2,
      with_bias=True,
      padding='SAME',
      name='transp_conv_2',
    )

  def __call__(
    self, inputs, *, is_training: bool = False, test_local_stats: bool = False
  ):
    """Upsamples [B, H, W, C] to [B, 4H, 4W, n_outputs].

    Args:
      inputs: [B, H, W, C].
      is_training: unused (no dropout or BatchNorm).
      test_local_stats: unused.

    Returns:
      [B, 4H, 4W, n_outputs].
    """
    del is_training, test_local_stats
    validation.check_rank('inputs', inputs, (4,), '[B, H, W, C]')
    x = self._transp_conv1(inputs)  # [B, 2H, 2W, 2n]
    x = jax.nn.relu(x)
    return self._transp_conv2(x)  # [B, 4H, 4W, n]


class Conv3DUpsample(hk.Module):
  """Stack of 4x4x4 transposed 3D convs doubling time and/or space per layer.

  There are L = max(n_time_upsamples, n_space_upsamples) layers; layer i has
  n_outputs * 2**(L-1-i) channels and stride 2 in time if i < n_time_upsamples
  and 2 in space if i < n_space_upsamples (1 otherwise), with ReLUs between.
  Layer i is `conv3_d_upsample/conv3d_transpose_{i}` (`w`, `b`), the released
  name (built on call, as released).
  """

  def __init__(
    self,
    n_outputs: int,
    n_time_upsamples: int = 2,
    n_space_upsamples: int = 4,
    name: Optional[str] = None,
  ):
    """Builds the upsampler.

    Args:
      n_outputs: output channels.
      n_time_upsamples: number of 2x upsamplings in time.
      n_space_upsamples: number of 2x upsamplings in height and width.
      name: module name.
    """
    super().__init__(name=name)
    validation.check_positive('n_outputs', n_outputs)
    for arg_name, value in (
      ('n_time_upsamples', n_time_upsamples),
      ('n_space_upsamples', n_space_upsamples),
    ):
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
          f'{arg_name}: expected a non-negative integer, got {value!r}.'
        )
    num_layers = max(n_time_upsamples, n_space_upsamples)
    if num_layers == 0:
      raise ValueError(
        'n_time_upsamples, n_space_upsamples: expected at least '
        'one of them positive, got 0 and 0.'
      )
    self._n_outputs = n_outputs
    self._n_time_upsamples = n_time_upsamples
    self._n_space_upsamples = n_space_upsamples

  def __call__(
    self, inputs, *, is_training: bool = False, test_local_stats: bool = False
  ):
    """Upsamples [B, T, H, W, C].

    Args:
      inputs: [B, T, H, W, C].
      is_training: unused.
      test_local_stats: unused.

    Returns:
      [B, T * 2**n_time_upsamples, H * 2**n_space_upsamples,
       W * 2**n_space_upsamples, n_outputs].
    """
    del is_training, test_local_stats
    validation.check_rank('inputs', inputs, (5,), '[B, T, H, W, C]')
    num_layers = max(self._n_time_upsamples, self._n_space_upsamples)
    x = inputs
    for i in range(num_layers):
      t_stride = 2 if i < self._n_time_upsamples else 1
      s_stride = 2 if i < self._n_space_upsamples else 1
      x = hk.Conv3DTranspose(
        output_channels=self._n_outputs * 2 ** (num_layers - 1 - i),
        kernel_shape=4,
        stride=(t_stride, s_stride, s_stride),
        padding='SAME',
        name=f'conv3d_transpose_{i}',
      )(x)
      if i != num_layers - 1:
        x = jax.nn.relu(x)
    return x


# ---------------------------------------------------------------------------
# Preprocessors
# ---------------------------------------------------------------------------


class _PositionEncodedPreprocessor(hk.Module):
  """Shared tail of the image and audio preprocessors.

  `_build_network_inputs` builds the position encoding inside itself, so its
  parameters live under `<name>/~_build_network_inputs/...`, as in the released
  checkpoints.
  """

  def __init__(
    self,
    *,
    position_encoding_type: str,
    n_extra_pos_mlp: int,
    concat_or_add_pos: str,
    position_encoding_kwargs,
    name: Optional[str],
  ):
    super().__init__(name=name)
    validation.check_choice(
      'position_encoding_type',
      position_encoding_type,
      position_encoding.POSITION_ENCODING_TYPES,
    )
    validation.check_choice(
      'concat_or_add_pos', concat_or_add_pos, CONCAT_OR_ADD_POS
    )
    if (
      isinstance(n_extra_pos_mlp, bool)
      or not isinstance(n_extra_pos_mlp, int)
      or n_extra_pos_mlp < 0
    ):
      raise ValueError(
        f'n_extra_pos_mlp: expected a non-negative integer, '
        f'got {n_extra_pos_mlp!r}.'
      )
    _check_position_encoding_kwargs(position_encoding_kwargs)
    kwargs_name = f'{position_encoding_type}_position_encoding_kwargs'
    if position_encoding_kwargs.get(kwargs_name) is None:
      raise ValueError(
        f'{kwargs_name}: expected a dict for position_encoding_type='
        f'{position_encoding_type!r}, got None.'
      )
    self._n_extra_pos_mlp = n_extra_pos_mlp
    self._concat_or_add_pos = concat_or_add_pos
    self._fourier_max_resolution = None
    if position_encoding_type == 'fourier':
      self._fourier_max_resolution = position_encoding_kwargs[kwargs_name].get(
        'max_resolution'
      )
    self._position_encoding_ctor = functools.partial(
      position_encoding.build_position_encoding,
      position_encoding_type=position_encoding_type,
      **position_encoding_kwargs,
    )

  def _build_network_inputs(self, inputs, pos, network_input_is_1d: bool):
    """Flattens the index dims and attaches the position encoding.

    Args:
      inputs: [B, *index_dims, C].
      pos: optional positions for the encoding (see `build_position_encoding`).
      network_input_is_1d: flatten to [B, M, C] (M = prod(index_dims)).

    Returns:
      (inputs_with_pos, inputs_without_pos): [B, M, C + P] (or C for 'add')
      and [B, M, C]; unflattened [B, *index_dims, .] if not
      network_input_is_1d. Both are in the dtype of floating `inputs`.
    """
    batch_size = inputs.shape[0]
    index_dims = tuple(inputs.shape[1:-1])
    if inputs.ndim > 3 and network_input_is_1d:
      inputs = jnp.reshape(
        inputs, (batch_size, int(np.prod(index_dims)), inputs.shape[-1])
      )

    max_res = self._fourier_max_resolution
    if max_res is not None and len(tuple(max_res)) != len(index_dims):
      raise ValueError(
        f'fourier_position_encoding_kwargs: expected max_resolution with '
        f'{len(index_dims)} entries, one per index dim {index_dims} of the '
        f'preprocessed input, got {tuple(max_res)}.'
      )
    encoding = self._position_encoding_ctor(index_dims=index_dims)
    pos_enc_BMP = encoding(batch_size=batch_size, pos=pos)
    for i in range(self._n_extra_pos_mlp):
      pos_enc_BMP = pos_enc_BMP + hk.Linear(pos_enc_BMP.shape[-1])(pos_enc_BMP)
      if i < self._n_extra_pos_mlp - 1:
        pos_enc_BMP = jax.nn.relu(pos_enc_BMP)
    if not network_input_is_1d:
      pos_enc_BMP = jnp.reshape(
        pos_enc_BMP, (batch_size,) + index_dims + (pos_enc_BMP.shape[-1],)
      )
    if jnp.issubdtype(inputs.dtype, jnp.floating):
      # Computed in float32 (positions, angles), rounded once to the inputs'
      # dtype, so bfloat16 inputs stay bfloat16.
      pos_enc_BMP = pos_enc_BMP.astype(inputs.dtype)

    if self._concat_or_add_pos == 'concat':
      inputs_with_pos = jnp.concatenate([inputs, pos_enc_BMP], axis=-1)
    else:
      if inputs.shape[-1] != pos_enc_BMP.shape[-1]:
        raise ValueError(
          f"concat_or_add_pos='add': expected the position encoding width "
          f'to equal the input width {inputs.shape[-1]}, got '
          f'{pos_enc_BMP.shape[-1]}; use concat or set project_pos_dim.'
        )
      inputs_with_pos = inputs + pos_enc_BMP
    return inputs_with_pos, inputs


class ImagePreprocessor(_PositionEncodedPreprocessor):
  """Image / video preprocessing (Perceiver IO, App. B, E, F).

  prep_type:
    'conv': `Conv2DDownsample` with log4(spatial_downsample) layers.
    'conv1x1': a 1x1 `hk.Conv2D(num_channels)` with stride spatial_downsample.
    'patches': `space_to_depth`, optionally followed by
      `Linear(num_channels, name='patches_linear')` (conv_after_patching);
      a video with one frame left is squeezed to an image (optical flow).
    'pixels': strided subsampling of pixels (and frames).
  Then the index dims are flattened and a position encoding over them is
  concatenated (or added).
  """

  def __init__(
    self,
    prep_type: str = 'conv',
    spatial_downsample: int = 4,
    temporal_downsample: int = 1,
    position_encoding_type: str = 'fourier',
    n_extra_pos_mlp: int = 0,
    num_channels: int = 64,
    conv_after_patching: bool = False,
    conv2d_use_batchnorm: bool = True,
    concat_or_add_pos: str = 'concat',
    name: Optional[str] = 'image_preprocessor',
    **position_encoding_kwargs,
  ):
    """Configures the preprocessor.

    Args:
      prep_type: one of 'conv', 'conv1x1', 'patches', 'pixels'.
      spatial_downsample: downsampling factor of H and W.
      temporal_downsample: downsampling factor of T (videos).
      position_encoding_type: 'fourier' or 'trainable'.
      n_extra_pos_mlp: residual Linear layers applied to the encoding.
      num_channels: output channels of 'conv', 'conv1x1' and of the
        patches_linear layer.
      conv_after_patching: apply `patches_linear` after 'patches'.
      conv2d_use_batchnorm: BatchNorm in the 'conv' stem.
      concat_or_add_pos: 'concat' or 'add' the position encoding.
      name: module name.
      **position_encoding_kwargs: `project_pos_dim`,
        `trainable_position_encoding_kwargs`,
        `fourier_position_encoding_kwargs` for `build_position_encoding`.

    Raises:
      ValueError: on an unknown choice or an inconsistent setting.
    """
    super().__init__(
      position_encoding_type=position_encoding_type,
      n_extra_pos_mlp=n_extra_pos_mlp,
      concat_or_add_pos=concat_or_add_pos,
      position_encoding_kwargs=position_encoding_kwargs,
      name=name,
    )
    validation.check_choice('prep_type', prep_type, IMAGE_PREP_TYPES)
    validation.check_positive('spatial_downsample', spatial_downsample)
    validation.check_positive('temporal_downsample', temporal_downsample)
    validation.check_positive('num_channels', num_channels)
    self._prep_type = prep_type
    self._spatial_downsample = spatial_downsample
    self._temporal_downsample = temporal_downsample
    self._num_channels = num_channels
    self._conv_after_patching = conv_after_patching
    self._convnet = None
    self._conv1x1 = None
    if prep_type in ('conv', 'conv1x1') and temporal_downsample != 1:
      raise ValueError(
        f'temporal_downsample: expected 1 for prep_type={prep_type!r}, got '
        f'{temporal_downsample!r}.'
      )
    if prep_type == 'conv':
      num_layers = _check_power(
        'spatial_downsample', spatial_downsample, 4, minimum=4
      )
      self._convnet = Conv2DDownsample(
        num_layers=num_layers,
        num_channels=num_channels,
        use_batchnorm=conv2d_use_batchnorm,
      )
    elif prep_type == 'conv1x1':
      self._conv1x1 = hk.Conv2D(
        output_channels=num_channels, kernel_shape=1, stride=spatial_downsample
      )

  def __call__(
    self,
    inputs,
    *,
    is_training: bool,
    pos=None,
    network_input_is_1d: bool = True,
  ) -> PreprocessorOutputT:
    """Preprocesses images or videos.

    Args:
      inputs: [B, H, W, C] images or [B, T, H, W, C] videos.
      is_training: BatchNorm mode of the 'conv' stem.
      pos: optional positions for the position encoding.
      network_input_is_1d: flatten the index dims (always True for the
        Perceiver encoder).

    Returns:
      (inputs_with_pos [B, M, C + P], None, inputs_without_pos [B, M, C]).
    """
    validation.check_rank(
      'inputs', inputs, (4, 5), '[B, H, W, C] or [B, T, H, W, C]'
    )
    if inputs.ndim == 4 and self._temporal_downsample != 1:
      raise ValueError(
        f'temporal_downsample: expected 1 for rank-4 images, got '
        f'{self._temporal_downsample!r}.'
      )
    s = self._spatial_downsample
    t = self._temporal_downsample
    if self._prep_type == 'conv':
      if inputs.ndim == 5:
        b = inputs.shape[0]
        x = _split_time(
          self._convnet(_merge_time(inputs), is_training=is_training), b
        )
      else:
        x = self._convnet(inputs, is_training=is_training)
    elif self._prep_type == 'conv1x1':
      if inputs.ndim == 5:
        x = _split_time(self._conv1x1(_merge_time(inputs)), inputs.shape[0])
      else:
        x = self._conv1x1(inputs)
    elif self._prep_type == 'patches':
      x = space_to_depth(inputs, temporal_block_size=t, spatial_block_size=s)
      if x.ndim == 5 and x.shape[1] == 1:
        x = x[:, 0]  # [B, 1, H, W, C] -> [B, H, W, C] (optical flow).
      if self._conv_after_patching:
        x = hk.Linear(self._num_channels, name='patches_linear')(x)
    else:  # pixels
      if inputs.ndim == 4:
        x = inputs[:, ::s, ::s]
      else:
        x = inputs[:, ::t, ::s, ::s]

    inputs_with_pos, inputs_without_pos = self._build_network_inputs(
      x, pos, network_input_is_1d
    )
    return inputs_with_pos, None, inputs_without_pos


class AudioPreprocessor(_PositionEncodedPreprocessor):
  """Raw audio to patches of `samples_per_patch` samples (Perceiver IO, App. F)."""

  def __init__(
    self,
    prep_type: str = 'patches',
    samples_per_patch: int = 96,
    position_encoding_type: str = 'fourier',
    n_extra_pos_mlp: int = 0,
    concat_or_add_pos: str = 'concat',
    name: Optional[str] = 'audio_preprocessor',
    **position_encoding_kwargs,
  ):
    """Configures the preprocessor.

    Args:
      prep_type: 'patches'.
      samples_per_patch: audio samples per token.
      position_encoding_type: 'fourier' or 'trainable' (1-D, over patches).
      n_extra_pos_mlp: residual Linear layers applied to the encoding.
      concat_or_add_pos: 'concat' or 'add'.
      name: module name.
      **position_encoding_kwargs: see `ImagePreprocessor`.
    """
    super().__init__(
      position_encoding_type=position_encoding_type,
      n_extra_pos_mlp=n_extra_pos_mlp,
      concat_or_add_pos=concat_or_add_pos,
      position_encoding_kwargs=position_encoding_kwargs,
      name=name,
    )
    validation.check_choice('prep_type', prep_type, AUDIO_PREP_TYPES)
    validation.check_positive('samples_per_patch', samples_per_patch)
    self._samples_per_patch = samples_per_patch

  def __call__(
    self,
    inputs,
    *,
    is_training: bool,
    pos=None,
    network_input_is_1d: bool = True,
  ) -> PreprocessorOutputT:
    """Cuts audio into patches and attaches a 1-D position encoding.

    Args:
      inputs: [B, T, ...] audio; all samples of an example are patched in
        order.
      is_training: unused.
      pos: optional positions for the position encoding.
      network_input_is_1d: unused (the output is always [B, M, C]).

    Returns:
      (inputs_with_pos [B, M, spp + P], None, inputs_without_pos [B, M, spp]),
      M = samples / samples_per_patch.
    """
    del is_training, network_input_is_1d
    if inputs.ndim < 2:
      validation.check_rank('inputs', inputs, (2, 3), '[B, T] or [B, T, C]')
    b = inputs.shape[0]
    samples = int(np.prod(inputs.shape[1:]))
    spp = self._samples_per_patch
    if samples % spp:
      raise ValueError(
        f'inputs: samples per example ({samples}, shape '
        f'{tuple(inputs.shape)}) must be divisible by '
        f'samples_per_patch={spp}.'
      )
    x_BMS = jnp.reshape(inputs, (b, samples // spp, spp))
    inputs_with_pos, inputs_without_pos = self._build_network_inputs(
      x_BMS, pos, network_input_is_1d=True
    )
    return inputs_with_pos, None, inputs_without_pos


class OneHotPreprocessor(hk.Module):
  """A [B, C] vector (e.g. a one-hot label) as one token; no position encoding."""

  def __init__(self, name: Optional[str] = None):
    """Has no hyper-parameters or parameters.

    Args:
      name: module name.
    """
    super().__init__(name=name)

  def __call__(
    self,
    inputs,
    *,
    is_training: bool,
    pos=None,
    network_input_is_1d: bool = True,
  ) -> PreprocessorOutputT:
    """Returns (inputs [B, 1, C], None, inputs [B, 1, C]).

    Args:
      inputs: [B, C].
      is_training: unused.
      pos: unused.
      network_input_is_1d: unused.
    """
    del is_training, pos, network_input_is_1d
    validation.check_rank('inputs', inputs, (2,), '[B, C]')
    x_B1C = jnp.asarray(inputs)[:, None, :]
    return x_B1C, None, x_B1C


def _check_modality_keys(name: str, keys, modalities) -> None:
  if set(keys) != set(modalities):
    raise ValueError(
      f'{name}: expected the modalities {sorted(modalities)}, got '
      f'{sorted(keys)}.'
    )


class MultimodalPreprocessor(hk.Module):
  """Runs one preprocessor per modality and concatenates them (Sec. 4.3, App. F).

  Each modality is padded on the channel axis to a common width
  `max_m C_m + min_padding_size` with a learned per-modality vector
  (`{m}_padding`), optionally has tokens replaced by a learned mask token
  (`{m}_mask_token`) with probability `mask_probs[m]`, and the modalities are
  concatenated along M in sorted name order.
  """

  def __init__(
    self,
    modalities: Mapping[str, PreprocessorT],
    mask_probs: Optional[Mapping[str, float]] = None,
    min_padding_size: int = 2,
    name: Optional[str] = 'multimodal_preprocessor',
  ):
    """Configures the preprocessor.

    Args:
      modalities: modality name -> preprocessor.
      mask_probs: optional modality name -> probability in [0, 1] that a token
        is replaced by the mask token. Masking is applied whatever
        `is_training` is (the video model masks the label at inference).
      min_padding_size: padding channels added to the widest modality.
      name: module name.
    """
    super().__init__(name=name)
    if not isinstance(modalities, Mapping) or not modalities:
      raise ValueError(
        f'modalities: expected a non-empty mapping of name to '
        f'preprocessor, got {modalities!r}.'
      )
    if mask_probs is not None:
      unknown = sorted(set(mask_probs) - set(modalities))
      if unknown:
        raise ValueError(
          f'mask_probs: expected keys among the modalities '
          f'{sorted(modalities)}, got unknown {unknown}.'
        )
      for m, p in mask_probs.items():
        if (
          isinstance(p, bool)
          or not isinstance(p, (int, float))
          or not 0.0 <= p <= 1.0
        ):
          raise ValueError(
            f'mask_probs[{m!r}]: expected a probability in [0, 1], got {p!r}.'
          )
    if (
      isinstance(min_padding_size, bool)
      or not isinstance(min_padding_size, int)
      or min_padding_size < 0
    ):
      raise ValueError(
        f'min_padding_size: expected a non-negative integer, '
        f'got {min_padding_size!r}.'
      )
    self._modalities = dict(modalities)
    self._mask_probs = dict(mask_probs) if mask_probs is not None else None
    self._min_padding_size = min_padding_size

  def __call__(
    self,
    inputs: Mapping[str, Any],
    *,
    is_training: bool,
    pos=None,
    network_input_is_1d: bool = True,
  ) -> PreprocessorOutputT:
    """Preprocesses, pads, masks and concatenates every modality.

    Args:
      inputs: modality name -> raw input.
      is_training: passed to each preprocessor.
      pos: None, or modality name -> positions for that preprocessor.
      network_input_is_1d: must be True (modalities are joined along M).

    Returns:
      (inputs [B, sum_m M_m, C_common], modality_sizes {m: M_m},
       inputs_without_pos {m: [B, M_m, C_m]}).
    """
    _check_modality_keys('inputs', inputs.keys(), self._modalities)
    if not network_input_is_1d:
      raise ValueError(
        'network_input_is_1d: expected True for multimodal '
        'inputs (they are joined along one token axis), got '
        'False.'
      )
    if pos is not None and not isinstance(pos, Mapping):
      raise ValueError(
        f'pos: expected None or a mapping of modality to '
        f'positions, got {type(pos).__name__}.'
      )
    names = sorted(self._modalities)
    outputs = {}
    inputs_without_pos = {}
    for m in names:
      out, _, without_pos = self._modalities[m](
        inputs[m],
        is_training=is_training,
        pos=None if pos is None else pos.get(m),
        network_input_is_1d=network_input_is_1d,
      )
      if out.ndim != 3:
        raise ValueError(
          f'modalities[{m!r}]: expected the preprocessor to return '
          f'[B, M, C], got shape {tuple(out.shape)}.'
        )
      outputs[m] = out
      inputs_without_pos[m] = without_pos

    batch_sizes = {outputs[m].shape[0] for m in names}
    if len(batch_sizes) != 1:
      raise ValueError(
        'inputs: expected one batch size for all modalities, got '
        f'{ {m: outputs[m].shape[0] for m in names} }.'
      )
    common = max(outputs[m].shape[-1] for m in names) + self._min_padding_size

    padded = {}
    for m in names:
      x_BMC = outputs[m]
      b, length, channels = x_BMC.shape
      if common > channels:
        pad_1P = position_encoding.TrainablePositionEncoding(
          1,
          num_channels=common - channels,
          init_scale=0.02,
          name=f'{m}_padding',
        )(batch_size=None)
        pad_BMP = jnp.broadcast_to(pad_1P[None], (b, length, common - channels))
        x_BMC = jnp.concatenate([x_BMC, pad_BMP.astype(x_BMC.dtype)], axis=-1)
      if self._mask_probs is not None and m in self._mask_probs:
        token_1C = position_encoding.TrainablePositionEncoding(
          1, num_channels=common, init_scale=0.02, name=f'{m}_mask_token'
        )(batch_size=None).astype(x_BMC.dtype)
        p = self._mask_probs[m]
        if p >= 1.0:
          x_BMC = jnp.broadcast_to(token_1C[None], x_BMC.shape).astype(
            x_BMC.dtype
          )
        elif p > 0.0:
          mask_BM = jax.random.bernoulli(hk.next_rng_key(), p, (b, length))
          x_BMC = jnp.where(mask_BM[:, :, None], token_1C[None], x_BMC)
      padded[m] = x_BMC

    modality_sizes = {m: padded[m].shape[1] for m in names}
    final_inputs = jnp.concatenate([padded[m] for m in names], axis=1)
    return final_inputs, modality_sizes, inputs_without_pos


def restructure(modality_sizes: ModalitySizeT, inputs) -> Dict[str, Any]:
  """Splits [B, N, C] along N into {modality: [B, N_m, C]}, in sorted order.

  Args:
    modality_sizes: modality name -> N_m; sum_m N_m must equal N.
    inputs: [B, N, C].

  Returns:
    Dict modality name -> [B, N_m, C].

  Raises:
    ValueError: if the sizes do not add up to N (nothing is silently dropped).
  """
  if inputs.ndim < 2:
    validation.check_rank('inputs', inputs, (3,), '[B, N, C]')
  total = sum(int(modality_sizes[m]) for m in modality_sizes)
  if total != inputs.shape[1]:
    raise ValueError(
      f'modality_sizes: expected sizes adding up to the {inputs.shape[1]} '
      f'outputs of inputs (shape {tuple(inputs.shape)}), got '
      f'{dict(modality_sizes)} (sum {total}).'
    )
  outputs = {}
  index = 0
  for m in sorted(modality_sizes):
    size = int(modality_sizes[m])
    outputs[m] = inputs[:, index : index + size]
    index += size
  return outputs


# ---------------------------------------------------------------------------
# Postprocessors
# ---------------------------------------------------------------------------


class ImagePostprocessor(hk.Module):
  """Decoder outputs back to images / videos (Perceiver IO, App. E, F).

  postproc_type:
    'pixels': no change (no upsampling allowed).
    'conv1x1': a 1x1 `hk.Conv2D(n_outputs)` with stride spatial_upsample.
    'conv': `Conv3DUpsample` if temporal_upsample != 1, else `Conv2DUpsample`
      (a fixed 4x upsample whatever spatial_upsample is: the release ignores
      spatial_upsample there, so its default 1 is accepted).
    'patches': `reverse_space_to_depth`.
  """

  def __init__(
    self,
    postproc_type: str = 'pixels',
    spatial_upsample: int = 1,
    temporal_upsample: int = 1,
    n_outputs: int = -1,
    input_reshape_size: Optional[Sequence[int]] = None,
    name: Optional[str] = 'image_postprocessor',
  ):
    """Configures the postprocessor.

    Args:
      postproc_type: one of 'pixels', 'conv1x1', 'conv', 'patches'.
      spatial_upsample: upsampling factor of H and W (ignored, as released,
        by 'conv' with temporal_upsample=1, which always upsamples 4x).
      temporal_upsample: upsampling factor of T.
      n_outputs: output channels ('conv', 'conv1x1').
      input_reshape_size: optional index dims to reshape [B, N, C] to first.
      name: module name.
    """
    super().__init__(name=name)
    validation.check_choice(
      'postproc_type', postproc_type, IMAGE_POSTPROC_TYPES
    )
    validation.check_positive('spatial_upsample', spatial_upsample)
    validation.check_positive('temporal_upsample', temporal_upsample)
    self._postproc_type = postproc_type
    self._spatial_upsample = spatial_upsample
    self._temporal_upsample = temporal_upsample
    self._input_reshape_size = (
      tuple(int(d) for d in input_reshape_size)
      if input_reshape_size is not None
      else None
    )
    self._module = None
    if postproc_type == 'pixels' and (
      spatial_upsample != 1 or temporal_upsample != 1
    ):
      raise ValueError(
        f'spatial_upsample, temporal_upsample: expected 1 and 1 for '
        f"postproc_type='pixels', got {spatial_upsample} and "
        f'{temporal_upsample}.'
      )
    if postproc_type in ('conv', 'conv1x1'):
      if (
        isinstance(n_outputs, bool)
        or not isinstance(n_outputs, int)
        or n_outputs <= 0
      ):
        raise ValueError(
          f'n_outputs: expected a positive integer for postproc_type='
          f'{postproc_type!r}, got {n_outputs!r}.'
        )
    if postproc_type == 'conv1x1':
      if temporal_upsample != 1:
        raise ValueError(
          f"temporal_upsample: expected 1 for postproc_type='conv1x1', got "
          f'{temporal_upsample!r}.'
        )
      self._module = hk.Conv2D(
        output_channels=n_outputs, kernel_shape=1, stride=spatial_upsample
      )
    elif postproc_type == 'conv':
      if temporal_upsample != 1:
        self._module = Conv3DUpsample(
          n_outputs=n_outputs,
          n_time_upsamples=_check_power(
            'temporal_upsample', temporal_upsample, 2
          ),
          n_space_upsamples=_check_power(
            'spatial_upsample', spatial_upsample, 2
          ),
        )
      else:
        self._module = Conv2DUpsample(n_outputs=n_outputs)

  def __call__(
    self,
    inputs,
    *,
    is_training: bool,
    pos=None,
    modality_sizes: Optional[ModalitySizeT] = None,
  ):
    """Postprocesses decoder outputs.

    Args:
      inputs: [B, ..., C] (reshaped to [B, *input_reshape_size, C] first if
        set); 'conv'/'conv1x1' need [B, H, W, C] or [B, T, H, W, C].
      is_training: passed to the conv stacks.
      pos: unused.
      modality_sizes: unused.

    Returns:
      The image or video.
    """
    del pos, modality_sizes
    x = inputs
    if self._input_reshape_size is not None:
      target = int(np.prod(self._input_reshape_size))
      have = int(np.prod(x.shape[1:-1]))
      if target != have:
        raise ValueError(
          f'input_reshape_size: expected index dims with {have} elements '
          f'(inputs shape {tuple(x.shape)}), got {self._input_reshape_size}.'
        )
      x = jnp.reshape(
        x, (x.shape[0],) + self._input_reshape_size + (x.shape[-1],)
      )
    if self._postproc_type == 'pixels':
      return x
    if self._postproc_type == 'patches':
      return reverse_space_to_depth(
        x,
        temporal_block_size=self._temporal_upsample,
        spatial_block_size=self._spatial_upsample,
      )
    if self._postproc_type == 'conv' and self._temporal_upsample != 1:
      validation.check_rank('inputs', x, (5,), '[B, T, H, W, C]')
      return self._module(x, is_training=is_training)
    validation.check_rank(
      'inputs', x, (4, 5), '[B, H, W, C] or [B, T, H, W, C]'
    )
    if self._postproc_type == 'conv':
      apply = functools.partial(self._module, is_training=is_training)
    else:
      apply = self._module
    if x.ndim == 5:
      return _split_time(apply(_merge_time(x)), x.shape[0])
    return apply(x)


class _LinearPostprocessor(hk.Module):
  """A Linear(width) on every decoder output, then `_finish` ([B, N, width])."""

  _ANY_RANK = False  # True: any [..., C] of rank >= 2 is accepted.

  def __init__(self, width_name: str, width: int, name: Optional[str]):
    super().__init__(name=name)
    validation.check_positive(width_name, width)
    self._width = width

  def _finish(self, x):
    return x

  def __call__(
    self,
    inputs,
    *,
    is_training: bool,
    pos=None,
    modality_sizes: Optional[ModalitySizeT] = None,
  ):
    """Applies the Linear and the subclass's reshaping.

    Args:
      inputs: [B, N, C].
      is_training: unused.
      pos: unused.
      modality_sizes: unused.
    """
    del is_training, pos, modality_sizes
    bad_rank = inputs.ndim < 2 if self._ANY_RANK else inputs.ndim != 3
    if bad_rank:
      validation.check_rank('inputs', inputs, (3,), '[B, N, C]')
    return self._finish(hk.Linear(self._width)(inputs))


class AudioPostprocessor(_LinearPostprocessor):
  """Decoder outputs to raw audio: Linear(samples_per_patch), then flatten.

  [B, N, C] -> [B, N * samples_per_patch].
  """

  def __init__(
    self,
    postproc_type: str = 'patches',
    samples_per_patch: int = 96,
    name: Optional[str] = 'audio_postprocessor',
  ):
    validation.check_choice(
      'postproc_type', postproc_type, AUDIO_POSTPROC_TYPES
    )
    super().__init__('samples_per_patch', samples_per_patch, name)

  def _finish(self, x):
    return jnp.reshape(x, (x.shape[0], -1))


class ClassificationPostprocessor(_LinearPostprocessor):
  """Logits of the first decoder output: [B, N, C] -> [B, num_classes]."""

  def __init__(
    self, num_classes: int, name: Optional[str] = 'classification_postprocessor'
  ):
    super().__init__('num_classes', num_classes, name)

  def _finish(self, x):
    return x[:, 0, :]


class ProjectionPostprocessor(_LinearPostprocessor):
  """A Linear(num_outputs) on every decoder output (any rank >= 2)."""

  _ANY_RANK = True

  def __init__(
    self, num_outputs: int, name: Optional[str] = 'projection_postprocessor'
  ):
    super().__init__('num_outputs', num_outputs, name)


class IdentityPostprocessor(hk.Module):
  """Returns the decoder outputs unchanged."""

  def __init__(self, name: Optional[str] = None):
    """Has no hyper-parameters or parameters.

    Args:
      name: module name.
    """
    super().__init__(name=name)

  def __call__(
    self,
    inputs,
    *,
    is_training: bool,
    pos=None,
    modality_sizes: Optional[ModalitySizeT] = None,
  ):
    """Returns `inputs`.

    Args:
      inputs: any array.
      is_training: unused.
      pos: unused.
      modality_sizes: unused.
    """
    del is_training, pos, modality_sizes
    return inputs


class MultimodalPostprocessor(hk.Module):
  """Splits a flat decoder output by modality and postprocesses each."""

  def __init__(
    self,
    modalities: Mapping[str, PostprocessorT],
    input_is_dict: bool = False,
    name: Optional[str] = 'multimodal_postprocessor',
  ):
    """Configures the postprocessor.

    Args:
      modalities: modality name -> postprocessor.
      input_is_dict: the input is already {modality: [B, N_m, C]}.
      name: module name.
    """
    super().__init__(name=name)
    if not isinstance(modalities, Mapping) or not modalities:
      raise ValueError(
        f'modalities: expected a non-empty mapping of name to '
        f'postprocessor, got {modalities!r}.'
      )
    self._modalities = dict(modalities)
    self._input_is_dict = input_is_dict

  def __call__(
    self,
    inputs,
    *,
    is_training: bool,
    pos=None,
    modality_sizes: Optional[ModalitySizeT] = None,
  ) -> Dict[str, Any]:
    """Postprocesses every modality.

    Args:
      inputs: [B, N, C] (sorted-modality order) or, with input_is_dict,
        {modality: [B, N_m, C]}.
      is_training: passed to each postprocessor.
      pos: passed to each postprocessor.
      modality_sizes: modality -> N_m; required unless input_is_dict, and
        sum_m N_m must equal N.

    Returns:
      Dict modality -> postprocessed output.
    """
    if not self._input_is_dict:
      if modality_sizes is None:
        raise ValueError(
          'modality_sizes: expected a mapping of modality to '
          'output count for a flat input, got None.'
        )
      _check_modality_keys(
        'modality_sizes', modality_sizes.keys(), self._modalities
      )
      inputs = restructure(modality_sizes, inputs)
    else:
      if not isinstance(inputs, Mapping):
        raise ValueError(
          f'inputs: expected a mapping of modality to outputs '
          f'with input_is_dict=True, got '
          f'{type(inputs).__name__}.'
        )
      _check_modality_keys('inputs', inputs.keys(), self._modalities)
    return {
      m: self._modalities[m](
        inputs[m], is_training=is_training, pos=pos, modality_sizes=None
      )
      for m in sorted(self._modalities)
    }


class EmbeddingDecoder(hk.Module):
  """Tied output embedding: logits = x @ E^T + bias (language model, Sec. 4.1).

  The single parameter is `embedding_decoder/bias` [V], zero-initialised.
  """

  def __init__(self, embedding_matrix, name: str = 'embedding_decoder'):
    """Configures the decoder.

    Args:
      embedding_matrix: [V, D], the input `hk.Embed` table (`.embeddings`).
      name: module name.
    """
    super().__init__(name=name)
    validation.check_rank('embedding_matrix', embedding_matrix, (2,), '[V, D]')
    self._embedding_matrix = embedding_matrix

  def __call__(
    self,
    inputs,
    *,
    is_training: bool = False,
    pos=None,
    modality_sizes: Optional[ModalitySizeT] = None,
  ):
    """Maps [B, T, D] embeddings to [B, T, V] logits.

    Args:
      inputs: [B, T, D] (any leading dims).
      is_training: unused; defaults to False so `decoder(x)` works as in the
        released colab.
      pos: unused.
      modality_sizes: unused.

    Returns:
      [B, T, V] logits.
    """
    del is_training, pos, modality_sizes
    vocab_size, d_model = self._embedding_matrix.shape
    if inputs.shape[-1] != d_model:
      raise ValueError(
        f'inputs: expected last dimension {d_model} (the embedding width), '
        f'got shape {tuple(inputs.shape)}.'
      )
    bias_V = hk.get_parameter(
      'bias', [vocab_size], dtype=inputs.dtype, init=jnp.zeros
    )
    logits_BTV = attention.einsum(
      'TD,VD->TV',
      inputs.reshape(-1, d_model),
      self._embedding_matrix.astype(inputs.dtype),
    ).astype(inputs.dtype)
    return logits_BTV.reshape(inputs.shape[:-1] + (vocab_size,)) + bias_V
