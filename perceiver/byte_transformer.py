"""The byte-level Transformer baseline of the language experiments.

Perceiver IO, Sec. 4.1, Table 1 and App. F.3 ("BERT (matching FLOPs)"): a
Transformer encoder over the same 2,048 UTF-8 bytes as the byte Perceiver IO,
shrunk until its FLOPs match (width 512, MLP hidden 2,048, 6 layers, 8
heads; 20 M parameters, 130 B FLOPs per forward pass against the
Perceiver's 113 B). The paper reports it at 71.5 GLUE against 81.0.

Shapes: B batch, M bytes (inputs, = max_seq_len), C channels (d_model),
V vocabulary (262: `BytesTokenizer`).

The model is the language Perceiver's input and output ends with the
Perceiver in between replaced by self-attention over every byte:

  ids [B, M] -> hk.Embed [B, M, C] + learned positions [M, C]
  -> num_layers x pre-LayerNorm self-attention block (`SelfAttention`:
     x + Attn(LN(x)), then + MLP(LN(.)), MLP hidden widening_factor * C;
     padded bytes masked out as keys)
  -> final LayerNorm
  -> tied logits through `EmbeddingDecoder` (x @ table^T + bias) [B, M, V].

The paper gives only the sizes above. Its baseline is a BERT
reimplementation, which is post-LayerNorm: every layer ends in a LayerNorm,
so the states that reach the output layer are normalised. This model uses
the project's own pre-LayerNorm blocks (those of the Perceiver's latent
Transformer) and therefore ends with one LayerNorm over the final states,
the standard completion of a pre-LayerNorm stack (GPT-2; Xiong et al. 2020),
so the tied output layer also reads normalised states. BERT's extra MLM
transform before the output layer (dense, GELU, LayerNorm) is left out: the
byte Perceiver has none either (its decoder output goes straight to the tied
logits), and this baseline differs from it only in the encoder.

`build(**overrides)` takes the call of the `language_mlm` preset, so an
experiment swaps one for the other; `modules(**overrides)` gives the parts
for other heads (GLUE).
"""

from typing import Any, Dict

import haiku as hk
import jax.numpy as jnp

from perceiver import attention as attn
from perceiver import io_processors as io
from perceiver import position_encoding
from perceiver import validation

# The paper's configuration (App. F.3, Table 11) and the language preset's
# byte table and attention kernel.
DEFAULTS: Dict[str, Any] = dict(
  vocab_size=262,
  max_seq_len=2048,
  d_model=512,
  num_layers=6,
  num_heads=8,
  widening_factor=4,
  embed_init_scale=1.0,
  attention_impl='reference',
)


class ByteTransformerEncoder(hk.Module):
  """Pre-LayerNorm self-attention layers over every input, then a LayerNorm.

  Each of the `num_layers` layers is its own `SelfAttention` module
  (parameters `self_attention`, `self_attention_1`, ...), so each is
  initialised from its own key; the final LayerNorm is `layer_norm`.
  """

  def __init__(
    self,
    *,
    num_layers: int = DEFAULTS['num_layers'],
    num_heads: int = DEFAULTS['num_heads'],
    widening_factor: int = DEFAULTS['widening_factor'],
    dropout_prob: float = 0.0,
    attention_impl: str = DEFAULTS['attention_impl'],
    name: str = 'byte_transformer_encoder',
  ):
    """Builds the encoder (defaults: the paper's baseline, App. F.3).

    Args:
      num_layers: self-attention layers.
      num_heads: attention heads of each layer (per-head width C / heads).
      widening_factor: MLP hidden width / C.
      dropout_prob: dropout of the attention outputs and MLPs (training
        only; the paper gives none).
      attention_impl: one of `attention.ATTENTION_IMPLEMENTATIONS`.
      name: module name.

    Raises:
      ValueError: a non-positive size, a rate outside [0, 1) or an unknown
        `attention_impl`.
    """
    super().__init__(name=name)
    validation.check_positive('num_layers', num_layers)
    validation.check_positive('num_heads', num_heads)
    validation.check_positive('widening_factor', widening_factor)
    validation.check_probability('dropout_prob', dropout_prob)
    validation.check_choice(
      'attention_impl', attention_impl, attn.ATTENTION_IMPLEMENTATIONS
    )
    self._num_layers = num_layers
    self._num_heads = num_heads
    self._widening_factor = widening_factor
    self._dropout_prob = dropout_prob
    self._attention_impl = attention_impl

  def __call__(self, inputs, *, is_training: bool, input_mask=None):
    """Self-attends the inputs `num_layers` times.

    Args:
      inputs: [B, M, C] embedded inputs (C divisible by `num_heads`).
      is_training: enables dropout.
      input_mask: optional [B, M]; 0/False marks padding, which no position
        attends to (padded positions still get outputs, from the real
        inputs only).

    Returns:
      [B, M, C] final states, layer-normalised, in `inputs`' dtype.

    Raises:
      ValueError: `inputs` not of rank 3, C not divisible by `num_heads`, or
        `input_mask` not of shape [B, M].
    """
    validation.check_rank('inputs', inputs, (3,), '[B, M, C]')
    validation.check_divisible(
      'inputs channels', inputs.shape[-1], 'num_heads', self._num_heads
    )
    mask_BMM = None
    if input_mask is not None:
      validation.check_shape('input_mask', input_mask, inputs.shape[:2])
      mask_BMM = attn.make_cross_attention_mask(
        query_mask=jnp.ones(inputs.shape[:2], dtype=bool), kv_mask=input_mask
      )
    x_BMC = inputs
    for _ in range(self._num_layers):
      x_BMC = attn.SelfAttention(
        widening_factor=self._widening_factor,
        dropout_prob=self._dropout_prob,
        num_heads=self._num_heads,
        attention_impl=self._attention_impl,
      )(x_BMC, attention_mask=mask_BMM, is_training=is_training)
    return attn.layer_norm(x_BMC)


def config(**overrides) -> Dict[str, Any]:
  """`DEFAULTS` updated with `overrides`, checked.

  Raises:
    ValueError: an unknown field, or a field of the wrong kind (sizes are
      positive integers, `embed_init_scale` a positive number,
      `attention_impl` a known implementation).
  """
  unknown = sorted(set(overrides) - set(DEFAULTS))
  if unknown:
    raise ValueError(
      f'overrides: expected fields among {sorted(DEFAULTS)}, got unknown '
      f'{unknown}.'
    )
  cfg = {**DEFAULTS, **overrides}
  for name in (
    'vocab_size',
    'max_seq_len',
    'd_model',
    'num_layers',
    'num_heads',
    'widening_factor',
  ):
    validation.check_positive(name, cfg[name])
  validation.check_divisible(
    'd_model', cfg['d_model'], 'num_heads', cfg['num_heads']
  )
  validation.check_positive_number('embed_init_scale', cfg['embed_init_scale'])
  validation.check_choice(
    'attention_impl', cfg['attention_impl'], attn.ATTENTION_IMPLEMENTATIONS
  )
  return cfg


def modules(**overrides):
  """The baseline's modules, for models with another head (GLUE).

  Call inside `hk.transform`, before creating other modules of the same
  kinds, so that they get the names `build` gives them ('embed',
  'trainable_position_encoding', 'byte_transformer_encoder') and load from
  its checkpoints.

  Args:
    **overrides: fields of `DEFAULTS`.

  Returns:
    (embed, position_encoding, encoder): `hk.Embed` (vocab_size -> d_model,
    truncated normal of stddev `embed_init_scale`, as the `language_mlm`
    preset's), the learned [max_seq_len, d_model] positions (stddev 0.02)
    and the `ByteTransformerEncoder`.

  Raises:
    ValueError: as `config`.
  """
  cfg = config(**overrides)
  embed = hk.Embed(
    cfg['vocab_size'],
    cfg['d_model'],
    w_init=hk.initializers.TruncatedNormal(stddev=cfg['embed_init_scale']),
  )
  positions = position_encoding.TrainablePositionEncoding(
    cfg['max_seq_len'], cfg['d_model'], init_scale=0.02
  )
  encoder = ByteTransformerEncoder(
    num_layers=cfg['num_layers'],
    num_heads=cfg['num_heads'],
    widening_factor=cfg['widening_factor'],
    attention_impl=cfg['attention_impl'],
  )
  return embed, positions, encoder


def build(**overrides) -> hk.TransformedWithState:
  """The baseline as a masked language model, called as `language_mlm`.

  `apply(params, state, rng, inputs, input_mask, *, is_training)`: int32
  byte ids [B, M] and mask [B, M] (1 = real byte) -> (logits [B, M, V]
  float32 for float32 parameters, state {}). `init` takes the same
  arguments without params and state. Parameters: 'embed/embeddings'
  [V, C], 'trainable_position_encoding/pos_embs' [M, C],
  'byte_transformer_encoder/self_attention[_k]/...' (k = 1 ..
  num_layers - 1), the final 'byte_transformer_encoder/layer_norm' and
  'embedding_decoder/bias' [V].

  Args:
    **overrides: fields of `DEFAULTS` (M = max_seq_len).

  Raises:
    ValueError: as `config`; at call time, inputs or mask not [B, M].
  """
  cfg = config(**overrides)
  seq_len = cfg['max_seq_len']

  def forward(inputs, input_mask, *, is_training: bool):
    validation.check_shape('inputs', inputs, (None, seq_len))
    validation.check_shape('input_mask', input_mask, (inputs.shape[0], seq_len))
    embed, positions, encoder = modules(**cfg)
    x_BMC = embed(inputs) + positions(batch_size=inputs.shape[0])
    x_BMC = encoder(x_BMC, is_training=is_training, input_mask=input_mask)
    return io.EmbeddingDecoder(embedding_matrix=embed.embeddings)(x_BMC)

  return hk.transform_with_state(forward)
