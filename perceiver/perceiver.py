"""The released `perceiver/perceiver.py` namespace, for the released colabs.

DeepMind's colabs import `from perceiver import perceiver, io_processors` and
then call `perceiver.Perceiver`, `perceiver.PerceiverEncoder`,
`perceiver.BasicDecoder`, ..., and `perceiver.position_encoding.
TrainablePositionEncoding`. This module gives those names, so the colabs' code
runs unchanged; the implementations live in `attention`, `encoder`,
`decoders` and `model`.
"""

from perceiver import io_processors, position_encoding
from perceiver.attention import (
  MLP,
  Attention,
  CrossAttention,
  SelfAttention,
  attend,
  conv_1d,
  layer_norm,
  make_cross_attention_mask,
)
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
from perceiver.model import Perceiver

__all__ = [
  'AbstractPerceiverDecoder',
  'Attention',
  'BasicDecoder',
  'BasicVideoAutoencodingDecoder',
  'ClassificationDecoder',
  'CrossAttention',
  'FlowDecoder',
  'MLP',
  'MultimodalDecoder',
  'Perceiver',
  'PerceiverEncoder',
  'ProjectionDecoder',
  'SelfAttention',
  'attend',
  'conv_1d',
  'io_processors',
  'layer_norm',
  'make_cross_attention_mask',
  'position_encoding',
]
