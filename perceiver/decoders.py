"""The write stage: decoders that cross-attend output queries to the latents.

Perceiver IO, Sec. 2.2 and 3: an output query array [B, O, E] attends to the
latents [B, N, D] and yields [B, O, E'] outputs. Each decoder builds its own
queries (`decoder_query`) and applies the cross-attention (`__call__`).

Shapes: B batch, O outputs (queries), N latents, D latent channels,
E query channels, C output channels, S subsampled outputs.

Subsampled decoding (`subsampled_points`, flat indices into the output index
dims) returns exactly the rows a full decode returns at those indices, for
Fourier and trainable queries. Fourier query positions are -1 + 2 i / n along
each output dimension, for full and subsampled decodes alike: it is the grid
the released video autoencoder was trained and evaluated on (the released
code placed full decodes on linspace(-1, 1, n) instead, which is a different
grid, so decoding in chunks did not reproduce a full decode).
"""

import abc
from typing import Any, Callable, Mapping, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import attention as attn
from perceiver import io_processors
from perceiver import position_encoding
from perceiver import validation

DECODER_POSITION_ENCODING_TYPES = ('trainable', 'fourier', 'none')


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_subsampled_points(
  points, num_outputs: int, name: str = 'subsampled_points'
):
  """Validates flat output indices [S] against O = num_outputs."""
  if _is_concrete(points):
    points = np.asarray(points)
  validation.check_rank(name, points, (1,), '[S] of flat output indices')
  if not jnp.issubdtype(points.dtype, jnp.integer):
    raise ValueError(
      f'{name}: expected integer indices, got dtype {points.dtype}.'
    )
  if isinstance(points, np.ndarray) and points.size:
    lo, hi = int(points.min()), int(points.max())
    if lo < 0 or hi >= num_outputs:
      raise ValueError(
        f'{name}: expected indices in [0, {num_outputs}), got '
        f'values in [{lo}, {hi}].'
      )
  return points


class AbstractPerceiverDecoder(hk.Module, metaclass=abc.ABCMeta):
  """Interface of a decoder: queries, output sizes and the cross-attention."""

  @abc.abstractmethod
  def decoder_query(
    self,
    inputs,
    modality_sizes=None,
    inputs_without_pos=None,
    subsampled_points=None,
  ):
    """Returns the output queries [B, O, E] (or None if not query-based)."""

  @property
  @abc.abstractmethod
  def num_outputs(self) -> Optional[int]:
    """O for a full decode, if fixed by the configuration."""

  def output_shape(self, inputs):
    """(B, O, C) and per-modality output sizes (None if single-modality)."""
    return (inputs.shape[0], self.num_outputs, None), None

  def restore_output_shape(self, outputs):
    """Shapes a full decode's flat [B, O, C] outputs as `__call__` returns them."""
    return outputs

  def decode_points(self, query, z, *, is_training: bool, query_mask=None):
    """Decodes the queries of S points into rows [B, S, C].

    Row s is the output at the point whose query is `query[:, s]`, whatever S
    is (it may equal O), and whatever the order of the points or their
    repetitions: the rows are never reshaped into the full output's shape.
    `Perceiver` uses it for subsampled and chunked decodes; `__call__` is the
    full decode, in its output shape.

    Args:
      query: [B, S, E] queries (from `decoder_query`).
      z: [B, N, D] latents.
      is_training: enables dropout.
      query_mask: optional [B, S].

    Returns:
      [B, S, C] rows.
    """
    return self(query, z, is_training=is_training, query_mask=query_mask)

  @abc.abstractmethod
  def __call__(self, query, z, *, is_training: bool, query_mask=None):
    """Decodes `query` [B, O, E] from latents `z` [B, N, D]."""


def _check_full_decode(decoder_name: str, outputs, num_outputs: int):
  """Raises unless `outputs` [B, S, C] has the S = O rows of a full decode."""
  if outputs.shape[1] != num_outputs:
    raise ValueError(
      f'query: {decoder_name}.__call__ returns the full decode of its '
      f'{num_outputs} outputs, got {outputs.shape[1]} queries; decode the '
      'queries of subsampled points with decode_points (as Perceiver does '
      'for subsampled_output_points), which returns [B, S, C] rows.'
    )


def _in_dtype_of(x, inputs):
  """`x` cast to the dtype of floating `inputs` (the model's compute dtype)."""
  if jnp.issubdtype(inputs.dtype, jnp.floating):
    return x.astype(inputs.dtype)
  return x


class ProjectionDecoder(AbstractPerceiverDecoder):
  """Original-Perceiver head: mean over latents, then a zero-init Linear.

  The Linear is `projection_decoder/~/logits` (`w` [D, num_classes], `b`
  [num_classes]), the released parameter path. `final_avg_before_project`
  is accepted for the released interface and ignored, as released: the head
  is linear, so averaging before or after projecting gives the same result.
  `num_z_channels` is accepted and ignored (D is read from the latents).
  """

  def __init__(
    self,
    num_classes: int,
    final_avg_before_project: bool = False,
    num_z_channels: int = 1024,
    name: str = 'projection_decoder',
  ):
    super().__init__(name=name)
    validation.check_positive('num_classes', num_classes)
    del final_avg_before_project, num_z_channels
    self._num_classes = num_classes
    self.final_layer = attn.Linear(num_classes, w_init=jnp.zeros, name='logits')

  @property
  def num_outputs(self) -> int:
    return 1

  def decoder_query(
    self,
    inputs,
    modality_sizes=None,
    inputs_without_pos=None,
    subsampled_points=None,
  ):
    if subsampled_points is not None:
      raise ValueError(
        'subsampled_points: ProjectionDecoder has a single '
        f'output and cannot be subsampled, got '
        f'{subsampled_points!r}.'
      )
    return None

  def __call__(self, query, z, *, is_training: bool, query_mask=None):
    """[B, N, D] latents -> [B, num_classes] logits (mean in float32)."""
    del query, is_training, query_mask
    validation.check_rank('z', z, (3,), '[B, N, D]')
    mean_BD = jnp.mean(z.astype(jnp.float32), axis=1).astype(z.dtype)
    return self.final_layer(mean_BD)


class BasicDecoder(AbstractPerceiverDecoder):
  """Cross-attention decoder with trainable, Fourier or external queries."""

  def __init__(
    self,
    output_num_channels: int,
    position_encoding_type: str = 'trainable',
    output_index_dims: Optional[Any] = None,
    subsampled_index_dims: Optional[Any] = None,
    num_z_channels: int = 1024,
    qk_channels: Optional[int] = None,
    v_channels: Optional[int] = None,
    use_query_residual: bool = False,
    output_w_init: Optional[Callable[..., Any]] = None,
    concat_preprocessed_input: bool = False,
    num_heads: int = 1,
    name: str = 'basic_decoder',
    final_project: bool = True,
    *,
    attention_impl: str = 'reference',
    **position_encoding_kwargs,
  ):
    """Builds the decoder; arguments and defaults are the released ones.

    Args:
      output_num_channels: C, width of the final projection.
      position_encoding_type: 'trainable', 'fourier' or 'none' (queries are
        supplied by a wrapping decoder).
      output_index_dims: the output index dims (e.g. (2048,), (T, H, W)).
      subsampled_index_dims: accepted for the released interface (unused).
      num_z_channels: accepted for the released interface (unused).
      qk_channels: q/k width of the cross-attention.
      v_channels: value width of the cross-attention.
      use_query_residual: residual around the cross-attention.
      output_w_init: initializer of the final projection.
      concat_preprocessed_input: prepend the un-encoded inputs to the queries.
      num_heads: heads of the cross-attention.
      name: module name.
      final_project: apply the final Linear (else outputs have the query
        width).
      attention_impl: one of `attention.ATTENTION_IMPLEMENTATIONS`.
      **position_encoding_kwargs: `project_pos_dim`,
        `trainable_position_encoding_kwargs`, `fourier_position_encoding_kwargs`
        for `build_position_encoding`.
    """
    super().__init__(name=name)
    del subsampled_index_dims, num_z_channels
    validation.check_positive('output_num_channels', output_num_channels)
    validation.check_choice(
      'position_encoding_type',
      position_encoding_type,
      DECODER_POSITION_ENCODING_TYPES,
    )
    validation.check_positive('num_heads', num_heads)
    self._output_index_dims = (
      None
      if output_index_dims is None
      else position_encoding.as_index_dims(output_index_dims)
    )
    for i, d in enumerate(self._output_index_dims or ()):
      validation.check_positive(f'output_index_dims[{i}]', d)
    self._position_encoding_type = position_encoding_type
    self._output_num_channels = output_num_channels
    self._qk_channels = qk_channels
    self._v_channels = v_channels
    self._use_query_residual = use_query_residual
    self._output_w_init = output_w_init
    self._concat_preprocessed_input = concat_preprocessed_input
    self._num_heads = num_heads
    self._final_project = final_project
    self._attention_impl = attention_impl
    self._position_encoding = None
    if position_encoding_type != 'none' and self._output_index_dims is not None:
      self._position_encoding = position_encoding.build_position_encoding(
        position_encoding_type,
        index_dims=self._output_index_dims,
        **position_encoding_kwargs,
      )

  @property
  def num_outputs(self) -> Optional[int]:
    if self._output_index_dims is None:
      return None
    return int(np.prod(self._output_index_dims))

  def decoder_query(
    self,
    inputs,
    modality_sizes=None,
    inputs_without_pos=None,
    subsampled_points=None,
  ):
    """Output queries [B, O, E], or [B, S, E] for `subsampled_points` [S].

    Args:
      inputs: [B, M, C] preprocessed inputs: give the batch size, and the
        dtype of the queries when floating (queries are computed in float32
        and rounded to it).
      modality_sizes: unused.
      inputs_without_pos: [B, O, C'] un-encoded inputs, needed with
        `concat_preprocessed_input`.
      subsampled_points: optional [S] flat indices into the output index dims.
    """
    del modality_sizes
    if self._position_encoding is None:
      raise ValueError(
        'position_encoding_type: this decoder builds no queries '
        f'(position_encoding_type={self._position_encoding_type!r}, '
        f'output_index_dims={self._output_index_dims}); its queries must '
        'come from a wrapping decoder.'
      )
    batch_size = inputs.shape[0]
    if subsampled_points is not None:
      subsampled_points = check_subsampled_points(
        subsampled_points, self.num_outputs
      )
    if self._position_encoding_type == 'fourier':
      pos = position_encoding.grid_positions(
        self._output_index_dims, subsampled_points
      )
      query = self._position_encoding(batch_size, pos=pos)
    else:
      query = self._position_encoding(batch_size, indices=subsampled_points)
    # Positions and angles are computed in float32, then rounded once.
    query = _in_dtype_of(query, inputs)
    if self._concat_preprocessed_input:
      if inputs_without_pos is None:
        raise ValueError(
          'inputs_without_pos: expected the un-encoded inputs '
          'with concat_preprocessed_input=True, got None.'
        )
      validation.check_rank(
        'inputs_without_pos', inputs_without_pos, (3,), '[B, O, C]'
      )
      if subsampled_points is not None:
        inputs_without_pos = jnp.take(
          inputs_without_pos, subsampled_points, axis=1
        )
      if inputs_without_pos.shape[:2] != query.shape[:2]:
        raise ValueError(
          f'inputs_without_pos: expected shape {query.shape[:2]} + (C,) to '
          f'match the queries, got {tuple(inputs_without_pos.shape)}.'
        )
      query = jnp.concatenate([inputs_without_pos, query], axis=-1)
    return query

  def __call__(self, query, z, *, is_training: bool, query_mask=None):
    """Decodes queries [B, O, E] from latents [B, N, D].

    Args:
      query: [B, O, E].
      z: [B, N, D].
      is_training: enables dropout.
      query_mask: optional [B, O]; masked queries read nothing (their
        attention output is zero; the residual MLP and projection still
        apply).

    Returns:
      [B, O, C] (or [B, O, E] with final_project=False).
    """
    validation.check_rank('query', query, (3,), '[B, O, E]')
    validation.check_rank('z', z, (3,), '[B, N, D]')
    attention_mask = None
    if query_mask is not None:
      validation.check_shape('query_mask', query_mask, query.shape[:2])
      attention_mask = attn.make_cross_attention_mask(
        query_mask=query_mask, kv_mask=jnp.ones(z.shape[:2], dtype=bool)
      )
    outputs = attn.CrossAttention(
      dropout_prob=0.0,
      num_heads=self._num_heads,
      widening_factor=1,
      shape_for_attn='kv',
      qk_channels=self._qk_channels,
      v_channels=self._v_channels,
      use_query_residual=self._use_query_residual,
      attention_impl=self._attention_impl,
    )(query, z, attention_mask=attention_mask, is_training=is_training)
    if self._final_project:
      outputs = attn.Linear(
        self._output_num_channels, w_init=self._output_w_init, name='output'
      )(outputs)
    return outputs


class _WrappedBasicDecoder(AbstractPerceiverDecoder):
  """A decoder whose queries are those of its inner `self.decoder`."""

  def decoder_query(
    self,
    inputs,
    modality_sizes=None,
    inputs_without_pos=None,
    subsampled_points=None,
  ):
    return self.decoder.decoder_query(
      inputs,
      modality_sizes,
      inputs_without_pos,
      subsampled_points=subsampled_points,
    )


class ClassificationDecoder(_WrappedBasicDecoder):
  """One query, [B, 1, C] -> [B, num_classes] logits."""

  def __init__(
    self,
    num_classes: int,
    name: str = 'classification_decoder',
    **decoder_kwargs,
  ):
    super().__init__(name=name)
    validation.check_positive('num_classes', num_classes)
    self._num_classes = num_classes
    self.decoder = BasicDecoder(
      output_index_dims=(1,), output_num_channels=num_classes, **decoder_kwargs
    )

  @property
  def num_outputs(self) -> int:
    return 1

  def decode_points(self, query, z, *, is_training: bool, query_mask=None):
    return self.decoder(
      query, z, is_training=is_training, query_mask=query_mask
    )

  def __call__(self, query, z, *, is_training: bool, query_mask=None):
    """Decodes the single query [B, 1, E] into logits [B, num_classes]."""
    return self.restore_output_shape(
      self.decode_points(
        query, z, is_training=is_training, query_mask=query_mask
      )
    )

  def restore_output_shape(self, outputs):
    _check_full_decode('ClassificationDecoder', outputs, 1)
    return outputs[:, 0, :]


class FlowDecoder(AbstractPerceiverDecoder):
  """Optical flow: the per-pixel preprocessed inputs are the queries.

  Outputs are divided by `rescale_factor`; `__call__` (a full decode)
  reshapes them to [B, H, W, C]. Subsampled decodes take the queries of
  those pixels and `decode_points` returns their [B, S, C] rows.
  """

  def __init__(
    self,
    output_image_shape: Sequence[int],
    output_num_channels: int = 2,
    rescale_factor: float = 100.0,
    name: str = 'flow_decoder',
    **decoder_kwargs,
  ):
    """Builds the decoder; arguments and defaults are the released ones.

    Args:
      output_image_shape: (H, W), a tuple or list.
      output_num_channels: C, flow channels.
      rescale_factor: divisor of the outputs (100 in the release).
      name: module name.
      **decoder_kwargs: for the inner `BasicDecoder`. Its queries are the
        per-pixel inputs, so `position_encoding_type` (default here 'none')
        and its kwargs are accepted and build no encoding, as released.
    """
    super().__init__(name=name)
    self._output_image_shape = tuple(output_image_shape)
    if len(self._output_image_shape) != 2:
      raise ValueError(
        f'output_image_shape: expected (H, W), got {output_image_shape!r}.'
      )
    if not rescale_factor:
      raise ValueError(
        f'rescale_factor: expected a non-zero divisor of the '
        f'outputs, got {rescale_factor!r}.'
      )
    self._output_num_channels = output_num_channels
    self._rescale_factor = rescale_factor
    decoder_kwargs.setdefault('position_encoding_type', 'none')
    self.decoder = BasicDecoder(
      output_num_channels=output_num_channels, **decoder_kwargs
    )

  @property
  def num_outputs(self) -> int:
    return int(np.prod(self._output_image_shape))

  def decoder_query(
    self,
    inputs,
    modality_sizes=None,
    inputs_without_pos=None,
    subsampled_points=None,
  ):
    validation.check_rank('inputs', inputs, (3,), '[B, M, C]')
    if inputs.shape[1] != self.num_outputs:
      raise ValueError(
        f'inputs: the flow queries are the per-pixel inputs, so M must be '
        f'H * W = {self.num_outputs} for output_image_shape='
        f'{self._output_image_shape}, got shape {tuple(inputs.shape)}.'
      )
    if subsampled_points is None:
      return inputs
    points = check_subsampled_points(subsampled_points, inputs.shape[1])
    return jnp.take(inputs, points, axis=1)

  def decode_points(self, query, z, *, is_training: bool, query_mask=None):
    return (
      self.decoder(query, z, is_training=is_training, query_mask=query_mask)
      / self._rescale_factor
    )

  def __call__(self, query, z, *, is_training: bool, query_mask=None):
    """Decodes all H * W pixel queries [B, H * W, E] into [B, H, W, C]."""
    return self.restore_output_shape(
      self.decode_points(
        query, z, is_training=is_training, query_mask=query_mask
      )
    )

  def restore_output_shape(self, outputs):
    _check_full_decode('FlowDecoder', outputs, self.num_outputs)
    return outputs.reshape(
      (outputs.shape[0],) + self._output_image_shape + (outputs.shape[-1],)
    )


class BasicVideoAutoencodingDecoder(_WrappedBasicDecoder):
  """Per-pixel video decoder over (T, H, W); full decodes are [B, T, H, W, C]."""

  def __init__(
    self,
    output_shape: Sequence[int],
    position_encoding_type: str,
    name: str = 'basic_video_autoencoding_decoder',
    **decoder_kwargs,
  ):
    """Builds the decoder; arguments are the released ones.

    Args:
      output_shape: (B, T, H, W), a tuple or list (the colab passes
        `images.shape[:4]`); B is accepted and ignored (outputs take the
        batch size of the queries).
      position_encoding_type: 'trainable' or 'fourier' queries over
        (T, H, W).
      name: module name.
      **decoder_kwargs: for the inner `BasicDecoder` (`output_num_channels`,
        `fourier_position_encoding_kwargs`, ...).
    """
    super().__init__(name=name)
    if len(output_shape) != 4:
      raise ValueError(
        f'output_shape: expected (B, T, H, W), got {output_shape!r}.'
      )
    self._output_shape = tuple(output_shape)
    self.decoder = BasicDecoder(
      output_index_dims=self._output_shape[1:4],
      position_encoding_type=position_encoding_type,
      **decoder_kwargs,
    )

  @property
  def num_outputs(self) -> int:
    return int(np.prod(self._output_shape[1:4]))

  def decode_points(self, query, z, *, is_training: bool, query_mask=None):
    return self.decoder(
      query, z, is_training=is_training, query_mask=query_mask
    )

  def __call__(self, query, z, *, is_training: bool, query_mask=None):
    """Decodes all T * H * W queries into [B, T, H, W, C]."""
    return self.restore_output_shape(
      self.decode_points(
        query, z, is_training=is_training, query_mask=query_mask
      )
    )

  def restore_output_shape(self, outputs):
    _check_full_decode(
      'BasicVideoAutoencodingDecoder', outputs, self.num_outputs
    )
    return outputs.reshape(
      (outputs.shape[0],) + self._output_shape[1:4] + (outputs.shape[-1],)
    )


class MultimodalDecoder(AbstractPerceiverDecoder):
  """Decodes several modalities with one cross-attention.

  Each modality's decoder only builds queries; they are padded with a learned
  per-modality vector to a common width, concatenated in sorted modality
  order, and decoded together. The per-modality output sizes are those of the
  queries (`output_modality_sizes`), never the input sizes.
  """

  def __init__(
    self,
    modalities: Mapping[str, AbstractPerceiverDecoder],
    num_outputs: Optional[int],
    output_num_channels: int,
    min_padding_size: int = 2,
    subsampled_index_dims: Optional[Mapping[str, int]] = None,
    name: str = 'multimodal_decoder',
    **decoder_kwargs,
  ):
    """Builds the decoder; arguments and defaults are the released ones.

    Args:
      modalities: {modality: decoder}; only their `decoder_query` is used.
      num_outputs: accepted for the released interface (the output count is
        that of the modalities' queries); None as released.
      output_num_channels: C, width of the shared decoder's projection.
      min_padding_size: learned padding channels added to the widest query.
      subsampled_index_dims: accepted and ignored, as released (the sizes
        come from the `subsampled_points` of each call).
      name: module name.
      **decoder_kwargs: for the shared `BasicDecoder` (e.g.
        `use_query_residual`, `concat_preprocessed_input`, `num_heads`).
    """
    super().__init__(name=name)
    if not modalities:
      raise ValueError(
        'modalities: expected a non-empty dict of decoders, '
        f'got {modalities!r}.'
      )
    if min_padding_size < 0:
      raise ValueError(
        'min_padding_size: expected a non-negative integer, '
        f'got {min_padding_size!r}.'
      )
    del subsampled_index_dims
    self._modalities = dict(modalities)
    self._num_outputs = num_outputs
    self._min_padding_size = min_padding_size
    self.decoder = BasicDecoder(
      output_index_dims=None if num_outputs is None else (num_outputs,),
      output_num_channels=output_num_channels,
      position_encoding_type='none',
      **decoder_kwargs,
    )

  @property
  def modalities(self) -> Mapping[str, AbstractPerceiverDecoder]:
    return self._modalities

  @property
  def num_outputs(self) -> int:
    return sum(self.output_modality_sizes().values())

  def output_modality_sizes(self, subsampled_points=None) -> Mapping[str, int]:
    """Outputs per modality for a full or subsampled decode.

    Args:
      subsampled_points: optional {modality: [S_m] flat indices or None}; a
        missing modality or None decodes all of that modality's outputs (the
        released video colab passes `'label': None`).

    Returns:
      {modality: S_m (or O_m)}, in sorted modality order.
    """
    subsampled_points = subsampled_points or {}
    sizes = {}
    for m in sorted(self._modalities):
      points = subsampled_points.get(m)
      if points is None:
        sizes[m] = self._modalities[m].num_outputs
      else:
        validation.check_rank(
          f'subsampled_points[{m!r}]',
          points,
          (1,),
          '[S] of flat output indices',
        )
        sizes[m] = int(points.shape[0])
    return sizes

  def output_shape(self, inputs):
    sizes = self.output_modality_sizes()
    return (inputs.shape[0], sum(sizes.values()), None), sizes

  def decoder_query(
    self,
    inputs,
    modality_sizes=None,
    inputs_without_pos=None,
    subsampled_points=None,
  ):
    """Padded, concatenated queries of all modalities: [B, sum S_m, E].

    Args:
      inputs: [B, M, C] preprocessed inputs of all modalities.
      modality_sizes: {modality: M_m} input sizes (from the preprocessor).
      inputs_without_pos: optional {modality: un-encoded inputs}.
      subsampled_points: optional {modality: [S_m] flat indices or None};
        None or a missing modality gives all of its queries.
    """
    if modality_sizes is None:
      raise ValueError(
        'modality_sizes: expected the per-modality input sizes '
        '(from a MultimodalPreprocessor), got None.'
      )
    subsampled_points = dict(subsampled_points or {})
    unknown = set(subsampled_points) - set(self._modalities)
    if unknown:
      raise ValueError(
        f'subsampled_points: expected keys among '
        f'{sorted(self._modalities)}, got unknown {sorted(unknown)}.'
      )
    missing = set(self._modalities) - set(modality_sizes)
    if missing:
      raise ValueError(
        f'modality_sizes: expected every decoded modality '
        f'{sorted(self._modalities)}, missing {sorted(missing)}.'
      )
    inputs_by_modality = io_processors.restructure(modality_sizes, inputs)
    inputs_without_pos = inputs_without_pos or {}
    queries = {}
    for m in sorted(self._modalities):
      query = self._modalities[m].decoder_query(
        inputs=inputs_by_modality[m],
        inputs_without_pos=inputs_without_pos.get(m),
        subsampled_points=subsampled_points.get(m),
      )
      queries[m] = query.reshape(query.shape[0], -1, query.shape[-1])
    width = max(q.shape[-1] for q in queries.values()) + self._min_padding_size
    padded = []
    for m, query in queries.items():
      padding = position_encoding.TrainablePositionEncoding(
        1,
        num_channels=width - query.shape[-1],
        init_scale=0.02,
        name=f'{m}_padding',
      )(query.shape[0])
      padding = jnp.broadcast_to(padding, query.shape[:2] + padding.shape[-1:])
      padding = padding.astype(query.dtype)
      padded.append(jnp.concatenate([query, padding], axis=-1))
    return jnp.concatenate(padded, axis=1)

  def __call__(self, query, z, *, is_training: bool, query_mask=None):
    return self.decoder(
      query, z, is_training=is_training, query_mask=query_mask
    )


def output_modality_sizes(decoder, modality_sizes, subsampled_points):
  """Per-modality output sizes for the postprocessor (None if unimodal)."""
  if isinstance(decoder, MultimodalDecoder):
    return decoder.output_modality_sizes(subsampled_points)
  return modality_sizes
