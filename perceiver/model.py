"""`Perceiver`: preprocess -> read + process (encoder) -> write (decoder) -> postprocess.

Perceiver IO, Sec. 2 and Fig. 2. Shapes: B batch, M inputs, N latents,
O outputs, S outputs per chunk, C channels, n number of chunks.
"""

from typing import Optional

import haiku as hk
import jax.numpy as jnp
import numpy as np

from perceiver import decoders as dec_lib
from perceiver import validation


def chunk_indices(num_outputs: int, num_chunks: int):
  """[n, ceil(O / n)] flat indices covering 0..O-1, padded with the last index."""
  per_chunk = -(-num_outputs // num_chunks)
  idx = np.arange(num_chunks * per_chunk)
  return jnp.asarray(
    np.minimum(idx, num_outputs - 1).reshape(num_chunks, per_chunk)
  )


def _unchunk(outputs_nBSC, num_outputs: int):
  """[n, B, S, ...] per-chunk outputs -> [B, O, ...] (padding dropped)."""
  n, b, s = outputs_nBSC.shape[:3]
  flat = jnp.moveaxis(outputs_nBSC, 0, 1).reshape(
    (b, n * s) + outputs_nBSC.shape[3:]
  )
  return flat[:, :num_outputs]


class Perceiver(hk.Module):
  """The Perceiver IO model (dependency-injected stages).

  `decode_chunk_size` (a call argument) decodes the outputs in chunks of that
  many queries under `hk.map` (a `lax.scan`), so the memory of the decoder's
  attention and MLP does not grow with the number of outputs. It gives the
  same outputs as a full decode. For a `MultimodalDecoder` the largest
  modality is cut into ceil(O_max / decode_chunk_size) chunks and every other
  modality into as many equal chunks (e.g. 6,272 for the video autoencoder
  gives the colab's 128 chunks of 6,272 pixels and 15 audio patches).
  """

  def __init__(
    self,
    encoder,
    decoder,
    input_preprocessor=None,
    output_postprocessor=None,
    name: str = 'perceiver',
  ):
    super().__init__(name=name)
    self._encoder = encoder
    self._decoder = decoder
    self._input_preprocessor = input_preprocessor
    self._output_postprocessor = output_postprocessor

  def encode(self, inputs, *, is_training: bool, pos=None, input_mask=None):
    """Preprocesses and encodes; returns (z, inputs, modality_sizes, inputs_without_pos)."""
    if self._input_preprocessor is not None:
      inputs, modality_sizes, inputs_without_pos = self._input_preprocessor(
        inputs, is_training=is_training, pos=pos, network_input_is_1d=True
      )
    else:
      modality_sizes, inputs_without_pos = None, inputs
    validation.check_rank(
      'inputs', inputs, (3,), '[B, M, C] after preprocessing'
    )
    z = self._encoder(
      inputs,
      self._encoder.latents(inputs),
      is_training=is_training,
      input_mask=input_mask,
    )
    return z, inputs, modality_sizes, inputs_without_pos

  def __call__(
    self,
    inputs,
    *,
    is_training: bool,
    subsampled_output_points=None,
    pos=None,
    input_mask=None,
    query_mask=None,
    decode_chunk_size: Optional[int] = None,
  ):
    """Runs the model.

    Args:
      inputs: raw inputs for the preprocessor, or [B, M, C] without one.
      is_training: enables dropout (and BatchNorm updates in preprocessors).
      subsampled_output_points: flat output indices [S] (for a multimodal
        decoder a dict {modality: [S_m] or None}, None decoding all of that
        modality) to decode only those outputs, in that order, repeats
        allowed. The decoder then returns [B, S, C] rows (multimodal:
        [B, sum S_m, C]), row s equal to the full decode's output at point s.
      pos: optional positions for the preprocessor.
      input_mask: optional [B, M] mask of the encoder inputs.
      query_mask: optional [B, O] mask of the decoder queries.
      decode_chunk_size: decode all outputs in chunks of this many queries.

    Returns:
      The decoder outputs, postprocessed if there is a postprocessor.
    """
    if decode_chunk_size is not None:
      validation.check_positive('decode_chunk_size', decode_chunk_size)
      if subsampled_output_points is not None:
        raise ValueError(
          'decode_chunk_size: decodes every output in chunks '
          'and cannot be combined with subsampled_output_points '
          f'(got {decode_chunk_size} and both).'
        )
    z, inputs, modality_sizes, inputs_without_pos = self.encode(
      inputs, is_training=is_training, pos=pos, input_mask=input_mask
    )
    if decode_chunk_size is None:
      query = self._decoder.decoder_query(
        inputs,
        modality_sizes,
        inputs_without_pos,
        subsampled_points=subsampled_output_points,
      )
      # A subsampled decode returns the [B, S, C] rows of its points even when
      # S equals the number of outputs (any order, repeats allowed).
      decode = (
        self._decoder
        if subsampled_output_points is None
        else self._decoder.decode_points
      )
      outputs = decode(query, z, is_training=is_training, query_mask=query_mask)
    else:
      outputs = self._decode_in_chunks(
        z,
        inputs,
        modality_sizes,
        inputs_without_pos,
        decode_chunk_size,
        is_training=is_training,
        query_mask=query_mask,
      )
    if self._output_postprocessor is None:
      return outputs
    output_sizes = dec_lib.output_modality_sizes(
      self._decoder, modality_sizes, subsampled_output_points
    )
    return self._output_postprocessor(
      outputs, is_training=is_training, pos=pos, modality_sizes=output_sizes
    )

  def _decode_in_chunks(
    self,
    z,
    inputs,
    modality_sizes,
    inputs_without_pos,
    chunk_size: int,
    *,
    is_training: bool,
    query_mask,
  ):
    decoder = self._decoder

    def decode(points, mask=None):
      query = decoder.decoder_query(
        inputs, modality_sizes, inputs_without_pos, subsampled_points=points
      )
      return decoder.decode_points(
        query, z, is_training=is_training, query_mask=mask
      )  # [B, S, C]

    if isinstance(decoder, dec_lib.MultimodalDecoder):
      if query_mask is not None:
        raise ValueError(
          'query_mask: not supported with decode_chunk_size '
          'for a MultimodalDecoder, got a mask.'
        )
      sizes = decoder.output_modality_sizes()
      num_chunks = -(-max(sizes.values()) // chunk_size)
      points = {m: chunk_indices(o, num_chunks) for m, o in sizes.items()}
      outputs_nBSC = hk.map(decode, points)
      pieces, start = [], 0
      for m in sorted(sizes):
        width = points[m].shape[1]
        pieces.append(
          _unchunk(outputs_nBSC[:, :, start : start + width], sizes[m])
        )
        start += width
      return jnp.concatenate(pieces, axis=1)

    num_outputs = decoder.num_outputs
    if num_outputs is None:
      raise ValueError(
        'decode_chunk_size: the decoder has no fixed number of '
        'outputs to cut into chunks (output_index_dims=None).'
      )
    num_chunks = -(-num_outputs // chunk_size)
    points = chunk_indices(num_outputs, num_chunks)
    if query_mask is None:
      outputs_nBSC = hk.map(decode, points)
    else:
      validation.check_shape(
        'query_mask', query_mask, (inputs.shape[0], num_outputs)
      )
      masks = jnp.moveaxis(jnp.take(query_mask, points, axis=1), 1, 0)
      outputs_nBSC = hk.map(lambda a: decode(*a), (points, masks))
    return decoder.restore_output_shape(_unchunk(outputs_nBSC, num_outputs))
