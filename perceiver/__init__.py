"""Perceiver IO in JAX/Haiku (Jaegle et al., arXiv 2107.14795).

Every module of DeepMind's released code is importable from here, with the
released keyword arguments and parameter names.
"""

from perceiver.attention import (
  ATTENTION_IMPLEMENTATIONS,
  MLP,
  Attention,
  CrossAttention,
  LayerNorm,
  Linear,
  SelfAttention,
  attend,
  conv_1d,
  layer_norm,
  make_cross_attention_mask,
)
from perceiver.bytes_tokenizer import BytesTokenizer
from perceiver.decoders import (
  AbstractPerceiverDecoder,
  BasicDecoder,
  BasicVideoAutoencodingDecoder,
  ClassificationDecoder,
  FlowDecoder,
  MultimodalDecoder,
  ProjectionDecoder,
)
from perceiver.encoder import PerceiverEncoder
from perceiver.io_processors import (
  AudioPostprocessor,
  AudioPreprocessor,
  ClassificationPostprocessor,
  Conv2DDownsample,
  Conv2DUpsample,
  Conv3DUpsample,
  EmbeddingDecoder,
  IdentityPostprocessor,
  ImagePostprocessor,
  ImagePreprocessor,
  MultimodalPostprocessor,
  MultimodalPreprocessor,
  OneHotPreprocessor,
  ProjectionPostprocessor,
  extract_patches,
  patches_for_flow,
  restructure,
  reverse_space_to_depth,
  space_to_depth,
)
from perceiver.model import Perceiver
from perceiver.position_encoding import (
  AbstractPositionEncoding,
  FourierPositionEncoding,
  PositionEncodingProjector,
  TrainablePositionEncoding,
  build_linear_positions,
  build_position_encoding,
  generate_fourier_features,
  grid_positions,
)

__version__ = '0.1.0'
