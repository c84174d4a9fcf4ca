"""Position encodings (Perceiver IO, Sec. 3 and Appendix D; Perceiver, Sec. 3.2).

Shapes: B batch, N positions (flattened index dims), D spatial dimensions,
K frequency bands, C channels.

Released-code names and keyword arguments are kept, so released configs work
unchanged and the parameter names (`trainable_position_encoding/pos_embs`,
`position_encoding_projector/linear`) match the released checkpoints.
"""

import abc
import functools
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import validation

IndexDims = Union[int, Sequence[int]]

POSITION_ENCODING_TYPES = ('trainable', 'fourier')


def as_index_dims(index_dims: IndexDims) -> Tuple[int, ...]:
  if isinstance(index_dims, (int, np.integer)):
    return (int(index_dims),)
  return tuple(int(d) for d in index_dims)


def generate_fourier_features(
  pos,
  num_bands: int,
  max_resolution: Sequence[int] = (224, 224),
  concat_pos: bool = True,
  sine_only: bool = False,
):
  """Fourier features of positions in [-1, 1] (Perceiver, Sec. 3.2, Eq. 2).

  For each spatial dimension d the K frequencies are linspace(1, R_d / 2, K),
  from 1 up to the Nyquist frequency of resolution R_d. The channel order is
  `[x_1..x_D, sin(dim 1 bands), ..., sin(dim D bands), cos(dim 1 bands), ...,
  cos(dim D bands)]`, i.e. width D + 2DK (D + DK with `sine_only`).

  Frequencies, angles (up to pi R_d / 2 rad, ~350 rad at R = 224) and their
  sines and cosines are computed in float32 whatever the dtype of `pos`, as
  in the released code: half precision would round the angles by up to a
  radian. Only the result is rounded to the dtype of `pos`.

  Args:
    pos: [N, D] positions, normally in [-1, 1]; float32, bfloat16, float16
      or integer.
    num_bands: K, frequency bands per dimension.
    max_resolution: R_d per dimension (length D).
    concat_pos: prepend the raw positions.
    sine_only: emit only the sine features.

  Returns:
    [N, C] features in the dtype of `pos` (float32 for integer positions).

  Raises:
    ValueError: if `pos` is not [N, D], `num_bands` is not positive or
      `max_resolution` does not have D positive entries.
  """
  validation.check_rank('pos', pos, (2,), '[N, D]')
  validation.check_positive('num_bands', num_bands)
  max_resolution = as_index_dims(max_resolution)
  if pos.shape[-1] != len(max_resolution):
    raise ValueError(
      f'max_resolution: expected {pos.shape[-1]} entries (one per position '
      f'dimension of pos, shape {tuple(pos.shape)}), got {max_resolution}.'
    )
  for i, res in enumerate(max_resolution):
    validation.check_positive(f'max_resolution[{i}]', res)
  out_dtype = (
    pos.dtype if jnp.issubdtype(pos.dtype, jnp.floating) else jnp.float32
  )
  pos_ND = pos.astype(jnp.float32)
  freqs_DK = jnp.stack(
    [
      jnp.linspace(
        1.0, res / 2, num=num_bands, endpoint=True, dtype=jnp.float32
      )
      for res in max_resolution
    ],
    axis=0,
  )
  angles_NDK = pos_ND[:, :, None] * freqs_DK[None, :, :]
  angles_NC = jnp.pi * jnp.reshape(angles_NDK, (pos.shape[0], -1))
  if sine_only:
    features = jnp.sin(angles_NC)
  else:
    features = jnp.concatenate([jnp.sin(angles_NC), jnp.cos(angles_NC)], -1)
  if concat_pos:
    features = jnp.concatenate([pos_ND, features], axis=-1)
  return features.astype(out_dtype)


def build_linear_positions(
  index_dims: IndexDims, output_range: Tuple[float, float] = (-1.0, 1.0)
):
  """Grid of positions: linspace(lo, hi, n) per dimension, 'ij' order.

  Returns:
    [*index_dims, D] positions.
  """
  dims = as_index_dims(index_dims)
  for i, d in enumerate(dims):
    validation.check_positive(f'index_dims[{i}]', d)
  axes = [
    jnp.linspace(
      output_range[0], output_range[1], num=n, endpoint=True, dtype=jnp.float32
    )
    for n in dims
  ]
  return jnp.stack(jnp.meshgrid(*axes, indexing='ij'), axis=-1)


def grid_positions(index_dims: IndexDims, flat_indices=None):
  """Positions -1 + 2 i / n of flat indices into `index_dims` (decoder queries).

  This is the grid on which the released decoders compute subsampled Fourier
  queries. This library uses it for full decodes as well, so that decoding in
  chunks and decoding all points at once give the same queries (the released
  code used linspace(-1, 1, n) for full decodes, which is a different grid).

  Args:
    index_dims: the output index dims, e.g. (T, H, W).
    flat_indices: optional [S] int indices into prod(index_dims); all by default.

  Returns:
    [S, D] float32 positions.
  """
  dims = as_index_dims(index_dims)
  if flat_indices is None:
    flat_indices = jnp.arange(int(np.prod(dims)))
  coords = jnp.unravel_index(flat_indices, dims)
  return jnp.stack(
    [-1.0 + 2.0 * c.astype(jnp.float32) / n for c, n in zip(coords, dims)],
    axis=-1,
  )


class AbstractPositionEncoding(hk.Module, metaclass=abc.ABCMeta):
  """A position encoding: `__call__(batch_size, pos=None) -> [B, N, C]`."""

  @abc.abstractmethod
  def __call__(self, batch_size: Optional[int], pos=None):
    """Returns the encoding, broadcast to `batch_size` unless it is None."""

  @property
  @abc.abstractmethod
  def num_positions(self) -> int:
    """N, the number of positions the full encoding has."""


class TrainablePositionEncoding(AbstractPositionEncoding):
  """A learned [N, C] table `pos_embs` (truncated normal, stddev init_scale).

  Used for the latent array, learned output queries, modality padding and
  mask tokens.
  """

  def __init__(
    self,
    index_dim: int,
    num_channels: int = 128,
    init_scale: float = 0.02,
    name: Optional[str] = None,
  ):
    super().__init__(name=name)
    validation.check_positive('index_dim', index_dim)
    validation.check_positive('num_channels', num_channels)
    self._index_dim = index_dim
    self._num_channels = num_channels
    self._init_scale = init_scale

  @property
  def num_positions(self) -> int:
    return self._index_dim

  def __call__(self, batch_size: Optional[int], pos=None, *, indices=None):
    """Returns the table, [N, C], or [B, N, C] if batch_size is given.

    Args:
      batch_size: B to broadcast to, or None for the bare table.
      pos: ignored (kept for the released interface).
      indices: optional [S] rows to take (subsampled decoding).
    """
    del pos
    table_NC = hk.get_parameter(
      'pos_embs',
      [self._index_dim, self._num_channels],
      init=hk.initializers.TruncatedNormal(stddev=self._init_scale),
    )
    if indices is not None:
      table_NC = jnp.take(table_NC, indices, axis=0)
    if batch_size is not None:
      table_NC = jnp.broadcast_to(
        table_NC[None], (batch_size,) + table_NC.shape
      )
    return table_NC


class FourierPositionEncoding(AbstractPositionEncoding):
  """Fixed Fourier features of a linear grid over `index_dims` (or of `pos`)."""

  def __init__(
    self,
    index_dims: IndexDims,
    num_bands: int,
    concat_pos: bool = True,
    max_resolution: Optional[Sequence[int]] = None,
    sine_only: bool = False,
    name: Optional[str] = None,
  ):
    super().__init__(name=name)
    validation.check_positive('num_bands', num_bands)
    self._index_dims = (
      as_index_dims(index_dims) if index_dims is not None else None
    )
    self._num_bands = num_bands
    self._concat_pos = concat_pos
    self._sine_only = sine_only
    self._max_resolution = (
      as_index_dims(max_resolution) if max_resolution else self._index_dims
    )
    if self._max_resolution is None:
      raise ValueError(
        'max_resolution: expected a resolution per dimension '
        'when index_dims is None, got None.'
      )
    if self._index_dims is not None and len(self._max_resolution) != len(
      self._index_dims
    ):
      raise ValueError(
        f'max_resolution: expected {len(self._index_dims)} entries (one per '
        f'index dim of {self._index_dims}), got {self._max_resolution}.'
      )

  @property
  def num_positions(self) -> int:
    return int(np.prod(self._index_dims))

  def num_channels(self) -> int:
    """Width of the encoding."""
    d = len(self._max_resolution)
    per_dim = 1 if self._sine_only else 2
    return d * per_dim * self._num_bands + (d if self._concat_pos else 0)

  def __call__(self, batch_size: Optional[int], pos=None):
    """Fourier features, [B, N, C] (or [N, C] if batch_size is None).

    Args:
      batch_size: B, or None.
      pos: optional positions [N, D] or [B, N, D]; default: the linear grid
        over index_dims (linspace(-1, 1, n) per dimension).
    """
    d = len(self._max_resolution)
    if pos is None:
      if self._index_dims is None:
        raise ValueError(
          'pos: expected positions when the encoding has no '
          'index_dims, got None.'
        )
      pos = jnp.reshape(build_linear_positions(self._index_dims), (-1, d))
    if pos.shape[-1] != d:
      raise ValueError(
        f'pos: expected last dimension {d} (one per dimension of '
        f'max_resolution={self._max_resolution}), got shape '
        f'{tuple(pos.shape)}.'
      )
    features = functools.partial(
      generate_fourier_features,
      num_bands=self._num_bands,
      max_resolution=self._max_resolution,
      concat_pos=self._concat_pos,
      sine_only=self._sine_only,
    )
    if pos.ndim == 3:
      if batch_size is not None and pos.shape[0] != batch_size:
        raise ValueError(
          f'pos: expected batch size {batch_size}, got shape '
          f'{tuple(pos.shape)}.'
        )
      return jax.vmap(features)(pos)
    validation.check_rank('pos', pos, (2, 3), '[N, D] or [B, N, D]')
    out_NC = features(pos)
    if batch_size is None:
      return out_NC
    return jnp.broadcast_to(out_NC[None], (batch_size,) + out_NC.shape)


class PositionEncodingProjector(AbstractPositionEncoding):
  """A Linear layer of width `output_size` on top of another encoding."""

  def __init__(
    self,
    output_size: int,
    base_position_encoding: AbstractPositionEncoding,
    name: Optional[str] = None,
  ):
    super().__init__(name=name)
    validation.check_positive('output_size', output_size)
    self._output_size = output_size
    self._base = base_position_encoding

  @property
  def num_positions(self) -> int:
    return self._base.num_positions

  def __call__(self, batch_size: Optional[int], pos=None, **kwargs):
    """Projects the base encoding; `kwargs` (e.g. `indices`) go to the base."""
    return hk.Linear(self._output_size)(self._base(batch_size, pos, **kwargs))


def build_position_encoding(
  position_encoding_type: str,
  index_dims: IndexDims,
  project_pos_dim: int = -1,
  trainable_position_encoding_kwargs: Optional[Mapping[str, Any]] = None,
  fourier_position_encoding_kwargs: Optional[Mapping[str, Any]] = None,
  name: Optional[str] = None,
) -> AbstractPositionEncoding:
  """Builds a 'trainable' or 'fourier' encoding over `index_dims`.

  A trainable encoding is one flat table of prod(index_dims) rows. With
  `project_pos_dim > 0` the encoding is followed by a Linear projection.
  """
  validation.check_choice(
    'position_encoding_type', position_encoding_type, POSITION_ENCODING_TYPES
  )
  dims = as_index_dims(index_dims) if index_dims is not None else None
  if position_encoding_type == 'trainable':
    if trainable_position_encoding_kwargs is None:
      raise ValueError(
        'trainable_position_encoding_kwargs: expected a dict '
        "for position_encoding_type='trainable', got None."
      )
    if dims is None:
      raise ValueError(
        'index_dims: expected the index dims for '
        "position_encoding_type='trainable', got None."
      )
    encoding = TrainablePositionEncoding(
      index_dim=int(np.prod(dims)),
      **trainable_position_encoding_kwargs,
      name=name,
    )
  else:
    if fourier_position_encoding_kwargs is None:
      raise ValueError(
        'fourier_position_encoding_kwargs: expected a dict '
        "for position_encoding_type='fourier', got None."
      )
    encoding = FourierPositionEncoding(
      index_dims=dims, **fourier_position_encoding_kwargs, name=name
    )
  if project_pos_dim > 0:
    encoding = PositionEncodingProjector(
      output_size=project_pos_dim, base_position_encoding=encoding
    )
  return encoding
