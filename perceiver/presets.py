"""The six released Perceiver IO models (the four released colabs' configs),
one function each.

`build(name, **overrides)` returns an `hk.TransformedWithState` whose
parameter tree equals the released checkpoint's (module names, parameter
names and shapes; tests/data/released_checkpoints.json, checked by
tests/test_presets.py), so a released checkpoint loads with no conversion
(`perceiver.checkpoints`).

Calls (`init` takes the same arguments without params and state):

* imagenet_fourier / imagenet_conv / imagenet_learned:
  `apply(params, state, rng, images, *, is_training)`, images float32
  [B, 224, 224, 3] normalised with the ImageNet mean/std (x255)
  -> (logits [B, 1000], state).
* language_mlm: `apply(params, state, rng, inputs, input_mask, *,
  is_training)`, int32 byte ids [B, 2048] and mask [B, 2048]
  -> (logits [B, 2048, 262], state).
* optical_flow: `apply(params, state, rng, images, *, is_training)`, two
  frames [B, 2, 368, 496, 3] in [-1, 1] -> (flow in pixels [B, 368, 496, 2],
  state); the colab's x20 scale is included.
* video_autoencoding: `apply(params, state, rng, inputs, *, is_training,
  subsampled_output_points=None, decode_chunk_size=None,
  label_mask_prob=1.0)`, inputs
  {'image': [B, 16, 224, 224, 3], 'audio': [B, 30720, 1], 'label': [B, 700]}
  -> ({'image': [B, 16, 224, 224, 3], 'audio': [B, 30720, 1],
  'label': [B, 700]}, state) for a full or chunked decode; with
  `subsampled_output_points` the image and audio outputs are the flat
  [B, S, 3] and [B, 16 S] rows of those points. `label_mask_prob` is the
  probability that an example's label is replaced by the learned mask token:
  1 (the colab's inference setting, no rng needed), 0.5 for training
  (App. I; needs an rng); it does not change the parameter tree.

Overrides: any size field of a preset (see `defaults(name)`, e.g.
`num_blocks=1, image_size=32` for tests), plus for every preset
`attention_impl`, `cross_attention_impl` (the encoder's; None: as
`attention_impl`), `remat`, `scan_blocks`, `scan_layers` (core options) and
`compute_dtype`
(e.g. `jnp.bfloat16`: parameters stay float32, matmuls run in bfloat16,
LayerNorm and softmax in float32). None of them changes the parameter tree.

`language_mlm_modules(num_queries=..., **overrides)` gives the language_mlm
preset's modules (embedding, input positions, encoder, decoder) with its
parameter names, for models with another head on its encoder (GLUE).
"""

import contextlib
from typing import Any, Callable, Dict, Mapping, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import jmp

import perceiver as P
from perceiver import io_processors as io
from perceiver import validation

PRESETS = (
  'imagenet_fourier',
  'imagenet_conv',
  'imagenet_learned',
  'language_mlm',
  'optical_flow',
  'video_autoencoding',
)

# Defaults are the fastest correct settings measured on CPU
# (docs/bench/README.md): layers unrolled, as released (with the encoder's backward
# fusion cut, faster than scanning them: MLM train step 2.9 -> 2.5 s,
# ImageNet 9.4 -> 7.8 s; scans only save compile time); the encoder's
# cross-attention 'chunked' (per-block LayerNorm and projections: memory for
# one key block, ImageNet forward 2.2 -> 1.9 s); the latent self-attention
# 'reference'.
_COMMON = dict(
  attention_impl='reference',
  cross_attention_impl='chunked',
  remat=False,
  scan_blocks=False,
  scan_layers=False,
  compute_dtype=None,
)

_DEFAULTS: Dict[str, Dict[str, Any]] = {
  'imagenet': dict(
    image_size=224,
    num_classes=1000,
    z_index_dim=512,
    num_z_channels=1024,
    num_blocks=8,
    num_self_attends_per_block=6,
    num_self_attend_heads=8,
    num_bands=64,
  ),
  'language_mlm': dict(
    vocab_size=262,
    max_seq_len=2048,
    d_model=768,
    z_index_dim=256,
    num_z_channels=1280,
    num_self_attends_per_block=26,
    num_heads=8,
    qk_channels=256,
    embed_init_scale=1.0,
  ),
  'optical_flow': dict(
    image_size=(368, 496),
    z_index_dim=2048,
    num_z_channels=512,
    num_self_attends_per_block=24,
    num_self_attend_heads=16,
    num_bands=64,
    flow_scale=20.0,
  ),
  'video_autoencoding': dict(
    num_frames=16,
    image_size=224,
    spatial_downsample=4,
    temporal_downsample=1,
    samples_per_patch=16,
    audio_samples=30720,
    num_classes=700,
    z_index_dim=784,
    num_z_channels=512,
    num_self_attends_per_block=8,
    num_self_attend_heads=8,
    image_bands=32,
    audio_bands=192,
    label_query_channels=1024,
  ),
}


# A test-sized model's latent array and latent attention, the one tiny size
# of the tests, the example scripts without a checkpoint and every
# experiment's `:debug`: N = 8 latents of D = 16 channels, one block of one
# self-attention layer with 2 heads. `tiny(name)` gives them as preset
# `name`'s fields; input sizes stay with each caller.
TINY = dict(
  z_index_dim=8,
  num_z_channels=16,
  num_blocks=1,
  num_self_attends_per_block=1,
  num_self_attend_heads=2,
)


def _family(name: str) -> str:
  return 'imagenet' if name.startswith('imagenet') else name


def defaults(name: str) -> Dict[str, Any]:
  """The configuration fields of preset `name` and their released values."""
  validation.check_choice('name', name, PRESETS)
  return {**_DEFAULTS[_family(name)], **_COMMON}


def _config(name: str, overrides) -> Dict[str, Any]:
  """`defaults(name)` updated with `overrides`, checked."""
  cfg = defaults(name)
  unknown = sorted(set(overrides) - set(cfg))
  if unknown:
    raise ValueError(
      f'overrides: expected fields among {sorted(cfg)} for '
      f'preset {name!r}, got unknown {unknown}.'
    )
  cfg.update(overrides)
  validation.check_choice(
    'attention_impl', cfg['attention_impl'], P.ATTENTION_IMPLEMENTATIONS
  )
  validation.check_choice(
    'cross_attention_impl',
    cfg['cross_attention_impl'],
    (None,) + P.ATTENTION_IMPLEMENTATIONS,
  )
  if 'embed_init_scale' in cfg:
    validation.check_positive_number(
      'embed_init_scale', cfg['embed_init_scale']
    )
  return cfg


def overrides_from(
  name: str, model: Mapping[str, Any], **sizes
) -> Dict[str, Any]:
  """The `build(name, **overrides)` of an experiment's `config.model`.

  Every experiment maps its config onto a preset this one way: the fields
  of `model` that are fields of preset `name` (the others, such as
  `model.arch` or `model.preset`, are the experiment's own), lists as
  tuples, updated with `sizes`, the fields the data decides (an
  `image_size`, a `max_seq_len`).

  Args:
    name: one of PRESETS.
    model: a mapping of fields (an `ml_collections.ConfigDict`).
    **sizes: fields of the preset that override `model`'s.

  Returns:
    {field: value}, every field one of `defaults(name)`.

  Raises:
    ValueError: an unknown `name`, a field of `sizes` the preset does not
      have, or an attention implementation it does not know.
  """
  fields = defaults(name)
  out = {
    k: tuple(v) if isinstance(v, list) else v
    for k, v in model.items()
    if k in fields
  }
  out.update(sizes)
  _config(name, out)  # raises on an unknown field or value
  return out


def tiny(name: str, **changes) -> Dict[str, Any]:
  """`TINY` as overrides of preset `name`, updated with `changes`.

  `build(name, **tiny(name, image_size=16))` is a test-sized model. The
  language_mlm preset calls the heads `num_heads` and has one block; the
  other non-ImageNet presets have one block too (no `num_blocks` field).

  Args:
    name: one of PRESETS.
    **changes: fields of the preset (e.g. input sizes, or a latent size a
      caller needs to differ from TINY).

  Returns:
    {field: value}, every field one of `defaults(name)`.

  Raises:
    ValueError: an unknown `name` or field.
  """
  validation.check_choice('name', name, PRESETS)
  out = {k: v for k, v in TINY.items() if k in _DEFAULTS[_family(name)]}
  if name == 'language_mlm':
    out['num_heads'] = TINY['num_self_attend_heads']
  out.update(changes)
  _config(name, out)  # raises on an unknown field
  return out


def example_inputs(name: str, batch: int = 1, **overrides):
  """Positional inputs of preset `name` as `jax.ShapeDtypeStruct`s.

  Useful with `jax.eval_shape(model.init, rng, *example_inputs(name))`.
  """
  cfg = {**defaults(name), **overrides}
  f32 = jnp.float32
  if name.startswith('imagenet'):
    s = cfg['image_size']
    return (jax.ShapeDtypeStruct((batch, s, s, 3), f32),)
  if name == 'language_mlm':
    n = cfg['max_seq_len']
    return (
      jax.ShapeDtypeStruct((batch, n), jnp.int32),
      jax.ShapeDtypeStruct((batch, n), jnp.int32),
    )
  if name == 'optical_flow':
    h, w = cfg['image_size']
    return (jax.ShapeDtypeStruct((batch, 2, h, w, 3), f32),)
  t, s = cfg['num_frames'], cfg['image_size']
  return (
    {
      'image': jax.ShapeDtypeStruct((batch, t, s, s, 3), f32),
      'audio': jax.ShapeDtypeStruct((batch, cfg['audio_samples'], 1), f32),
      'label': jax.ShapeDtypeStruct((batch, cfg['num_classes']), f32),
    },
  )


def _encoder_options(cfg):
  return dict(
    attention_impl=cfg['attention_impl'],
    cross_attention_impl=cfg['cross_attention_impl'],
    remat=cfg['remat'],
    scan_blocks=cfg['scan_blocks'],
    scan_layers=cfg['scan_layers'],
  )


def _imagenet(name: str, cfg) -> Callable[..., Any]:
  size = cfg['image_size']
  fourier = dict(concat_pos=True, num_bands=cfg['num_bands'], sine_only=False)

  def forward(images, *, is_training: bool):
    validation.check_shape('images', images, (None, size, size, 3))
    if name == 'imagenet_fourier':
      preprocessor = io.ImagePreprocessor(
        prep_type='pixels',
        spatial_downsample=1,
        position_encoding_type='fourier',
        fourier_position_encoding_kwargs=dict(
          max_resolution=(size, size), **fourier
        ),
      )
    elif name == 'imagenet_conv':
      preprocessor = io.ImagePreprocessor(
        prep_type='conv',
        position_encoding_type='fourier',
        fourier_position_encoding_kwargs=dict(
          max_resolution=(size // 4, size // 4), **fourier
        ),
      )
    else:
      preprocessor = io.ImagePreprocessor(
        prep_type='conv1x1',
        spatial_downsample=1,
        num_channels=256,
        position_encoding_type='trainable',
        project_pos_dim=256,
        trainable_position_encoding_kwargs=dict(
          init_scale=0.02, num_channels=256
        ),
      )
    encoder = P.PerceiverEncoder(
      num_self_attends_per_block=cfg['num_self_attends_per_block'],
      num_blocks=cfg['num_blocks'],
      z_index_dim=cfg['z_index_dim'],
      num_z_channels=cfg['num_z_channels'],
      num_cross_attend_heads=1,
      num_self_attend_heads=cfg['num_self_attend_heads'],
      cross_attend_widening_factor=1,
      self_attend_widening_factor=1,
      dropout_prob=0.0,
      z_pos_enc_init_scale=0.02,
      cross_attention_shape_for_attn='kv',
      use_query_residual=True,
      **_encoder_options(cfg),
    )
    decoder = P.ClassificationDecoder(
      num_classes=cfg['num_classes'],
      num_z_channels=cfg['num_z_channels'],
      position_encoding_type='trainable',
      trainable_position_encoding_kwargs=dict(
        init_scale=0.02, num_channels=cfg['num_z_channels']
      ),
      use_query_residual=name != 'imagenet_learned',
      attention_impl=cfg['attention_impl'],
    )
    return P.Perceiver(
      encoder=encoder, decoder=decoder, input_preprocessor=preprocessor
    )(images, is_training=is_training)

  return forward


def _language_mlm_modules(cfg, num_queries: int):
  d_model = cfg['d_model']
  # Released: hk.Embed's default, a truncated normal of stddev 1. The table
  # is also the tied output layer, so at small scale 0.02 trains far better
  # (logits start near 0: experiments/mlm.py:local).
  embed = hk.Embed(
    cfg['vocab_size'],
    d_model,
    w_init=hk.initializers.TruncatedNormal(stddev=cfg['embed_init_scale']),
  )
  position_encoding = P.TrainablePositionEncoding(
    cfg['max_seq_len'], d_model, init_scale=0.02
  )
  encoder = P.PerceiverEncoder(
    num_self_attends_per_block=cfg['num_self_attends_per_block'],
    num_blocks=1,
    z_index_dim=cfg['z_index_dim'],
    num_z_channels=cfg['num_z_channels'],
    num_self_attend_heads=cfg['num_heads'],
    num_cross_attend_heads=cfg['num_heads'],
    qk_channels=cfg['qk_channels'],
    v_channels=cfg['num_z_channels'],
    use_query_residual=True,
    cross_attend_widening_factor=1,
    self_attend_widening_factor=1,
    **_encoder_options(cfg),
  )
  decoder = P.BasicDecoder(
    output_num_channels=cfg['num_z_channels'],
    position_encoding_type='trainable',
    output_index_dims=num_queries,
    num_z_channels=cfg['num_z_channels'],
    qk_channels=cfg['qk_channels'],
    v_channels=d_model,
    num_heads=cfg['num_heads'],
    final_project=False,
    use_query_residual=False,
    trainable_position_encoding_kwargs=dict(num_channels=d_model),
    attention_impl=cfg['attention_impl'],
  )
  return embed, position_encoding, encoder, decoder


def language_mlm_modules(*, num_queries: Optional[int] = None, **overrides):
  """The language_mlm preset's modules, for models built on its encoder.

  Call inside `hk.transform`, before creating other modules of the same
  kinds, so that the modules get the preset's parameter names ('embed',
  'trainable_position_encoding', 'perceiver_encoder', 'basic_decoder') and
  load from its checkpoints. Used by GLUE fine-tuning (App. F.4), whose
  decoder reads task outputs instead of every position.

  Args:
    num_queries: O, the decoder's learned output queries (default:
      `max_seq_len`, one per input position as in the preset).
    **overrides: as for `build('language_mlm', ...)`, except
      `compute_dtype` (a policy `build` applies around its whole forward).

  Returns:
    (embed, position_encoding, encoder, decoder): `hk.Embed` (vocab_size
    -> d_model), the learned [max_seq_len, d_model] input positions, the
    `PerceiverEncoder` and a `BasicDecoder` giving [B, O, d_model] (or
    [B, S, d_model] for S subsampled queries).

  Raises:
    ValueError: an unknown field, or a `compute_dtype`.
  """
  if overrides.get('compute_dtype') is not None:
    raise ValueError(
      'compute_dtype: expected None (only `build` applies '
      f'mixed precision), got {overrides["compute_dtype"]!r}.'
    )
  cfg = _config('language_mlm', overrides)
  if num_queries is None:
    num_queries = cfg['max_seq_len']
  validation.check_positive('num_queries', num_queries)
  return _language_mlm_modules(cfg, num_queries)


def _language_mlm(cfg) -> Callable[..., Any]:
  seq_len = cfg['max_seq_len']

  def forward(inputs, input_mask, *, is_training: bool):
    validation.check_shape('inputs', inputs, (None, seq_len))
    validation.check_shape('input_mask', input_mask, (inputs.shape[0], seq_len))
    embed, position_encoding, encoder, decoder = _language_mlm_modules(
      cfg, seq_len
    )
    embeddings = embed(inputs) + position_encoding(batch_size=inputs.shape[0])
    outputs = P.Perceiver(encoder=encoder, decoder=decoder)(
      embeddings,
      is_training=is_training,
      input_mask=input_mask,
      query_mask=input_mask,
    )
    return io.EmbeddingDecoder(embedding_matrix=embed.embeddings)(outputs)

  return forward


def _optical_flow(cfg) -> Callable[..., Any]:
  size = tuple(cfg['image_size'])
  fourier = dict(
    num_bands=cfg['num_bands'],
    max_resolution=size,
    sine_only=False,
    concat_pos=True,
  )

  def forward(images, *, is_training: bool):
    validation.check_shape('images', images, (None, 2) + size + (3,))
    preprocessor = io.ImagePreprocessor(
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=fourier,
      n_extra_pos_mlp=0,
      prep_type='patches',
      spatial_downsample=1,
      conv_after_patching=True,
      temporal_downsample=2,
    )
    encoder = P.PerceiverEncoder(
      num_self_attends_per_block=cfg['num_self_attends_per_block'],
      num_blocks=1,
      z_index_dim=cfg['z_index_dim'],
      num_cross_attend_heads=1,
      num_z_channels=cfg['num_z_channels'],
      num_self_attend_heads=cfg['num_self_attend_heads'],
      cross_attend_widening_factor=1,
      self_attend_widening_factor=1,
      dropout_prob=0.0,
      z_pos_enc_init_scale=0.02,
      cross_attention_shape_for_attn='kv',
      **_encoder_options(cfg),
    )
    decoder = P.FlowDecoder(
      size,
      rescale_factor=100.0,
      use_query_residual=False,
      output_num_channels=2,
      output_w_init=jnp.zeros,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=fourier,
      attention_impl=cfg['attention_impl'],
    )
    flow = P.Perceiver(
      encoder=encoder, decoder=decoder, input_preprocessor=preprocessor
    )(io.patches_for_flow(images), is_training=is_training)
    return flow * cfg['flow_scale']

  return forward


def _video_autoencoding(cfg) -> Callable[..., Any]:
  t, size, spp = cfg['num_frames'], cfg['image_size'], cfg['samples_per_patch']
  n_audio, n_classes = cfg['audio_samples'], cfg['num_classes']
  sd, td = cfg['spatial_downsample'], cfg['temporal_downsample']
  if t // td < 2:
    # ImagePreprocessor drops a time axis of 1 (released, for optical flow).
    raise ValueError(
      f'temporal_downsample: expected at most num_frames // 2 '
      f'= {t // 2}, got {td}.'
    )
  # The patch grid's resolution; the decoder's full-resolution queries use
  # it too, as released (for 1x4x4 patches: (t, size // 4, size // 4)).
  image_fourier = dict(
    num_bands=cfg['image_bands'],
    max_resolution=(t // td, size // sd, size // sd),
    sine_only=False,
    concat_pos=True,
  )
  audio_fourier = dict(
    num_bands=cfg['audio_bands'],
    max_resolution=(n_audio,),
    sine_only=False,
    concat_pos=True,
  )

  def forward(
    inputs,
    *,
    is_training: bool,
    subsampled_output_points=None,
    decode_chunk_size=None,
    label_mask_prob=1.0,
  ):
    if not isinstance(inputs, dict) or set(inputs) != {
      'image',
      'audio',
      'label',
    }:
      raise ValueError(
        "inputs: expected a dict with keys ['audio', 'image', "
        f"'label'], got {inputs!r:.200}."
      )
    if (
      isinstance(label_mask_prob, bool)
      or not isinstance(label_mask_prob, (int, float))
      or not 0.0 <= label_mask_prob <= 1.0
    ):
      raise ValueError(
        'label_mask_prob: expected a probability in [0, 1], '
        f'got {label_mask_prob!r}.'
      )
    batch = inputs['image'].shape[0]
    validation.check_shape(
      "inputs['image']", inputs['image'], (batch, t, size, size, 3)
    )
    validation.check_shape(
      "inputs['audio']", inputs['audio'], (batch, n_audio, 1)
    )
    validation.check_shape(
      "inputs['label']", inputs['label'], (batch, n_classes)
    )
    preprocessor = io.MultimodalPreprocessor(
      min_padding_size=4,
      modalities=dict(
        audio=io.AudioPreprocessor(
          position_encoding_type='fourier',
          fourier_position_encoding_kwargs=audio_fourier,
          prep_type='patches',
          samples_per_patch=spp,
        ),
        image=io.ImagePreprocessor(
          position_encoding_type='fourier',
          fourier_position_encoding_kwargs=image_fourier,
          prep_type='patches',
          spatial_downsample=sd,
          temporal_downsample=td,
        ),
        label=io.OneHotPreprocessor(),
      ),
      mask_probs=dict(image=0.0, audio=0.0, label=label_mask_prob),
    )
    encoder = P.PerceiverEncoder(
      num_self_attends_per_block=cfg['num_self_attends_per_block'],
      num_blocks=1,
      z_index_dim=cfg['z_index_dim'],
      num_z_channels=cfg['num_z_channels'],
      num_cross_attend_heads=1,
      num_self_attend_heads=cfg['num_self_attend_heads'],
      cross_attend_widening_factor=1,
      self_attend_widening_factor=1,
      dropout_prob=0.0,
      z_pos_enc_init_scale=0.02,
      cross_attention_shape_for_attn='kv',
      name='encoder',
      **_encoder_options(cfg),
    )
    decoder = P.MultimodalDecoder(
      num_outputs=None,
      output_num_channels=cfg['num_z_channels'],
      use_query_residual=False,
      attention_impl=cfg['attention_impl'],
      modalities=dict(
        audio=P.BasicDecoder(
          output_index_dims=(n_audio // spp,),
          output_num_channels=512,
          use_query_residual=False,
          position_encoding_type='fourier',
          fourier_position_encoding_kwargs=audio_fourier,
        ),
        image=P.BasicVideoAutoencodingDecoder(
          output_shape=(batch, t, size, size),
          output_num_channels=512,
          use_query_residual=False,
          position_encoding_type='fourier',
          fourier_position_encoding_kwargs=image_fourier,
        ),
        label=P.ClassificationDecoder(
          num_classes=n_classes,
          use_query_residual=False,
          position_encoding_type='trainable',
          trainable_position_encoding_kwargs=dict(
            num_channels=cfg['label_query_channels'], init_scale=0.02
          ),
        ),
      ),
    )
    postprocessor = io.MultimodalPostprocessor(
      modalities=dict(
        audio=io.AudioPostprocessor(samples_per_patch=spp),
        image=io.ProjectionPostprocessor(num_outputs=3),
        label=io.ClassificationPostprocessor(num_classes=n_classes),
      )
    )
    outputs = P.Perceiver(
      encoder=encoder,
      decoder=decoder,
      input_preprocessor=preprocessor,
      output_postprocessor=postprocessor,
    )(
      inputs,
      is_training=is_training,
      subsampled_output_points=subsampled_output_points,
      decode_chunk_size=decode_chunk_size,
    )
    if subsampled_output_points is None:
      outputs = dict(
        outputs,
        image=outputs['image'].reshape(batch, t, size, size, 3),
        audio=outputs['audio'].reshape(batch, n_audio, 1),
      )
    return outputs

  return forward


def _mixed_precision(compute_dtype):
  """Haiku jmp policies: float32 params, `compute_dtype` matmuls/attention."""
  if compute_dtype is None or jnp.dtype(compute_dtype) == jnp.float32:
    return contextlib.nullcontext()
  compute = jnp.dtype(compute_dtype).name
  stack = contextlib.ExitStack()
  full = jmp.get_policy(f'params=float32,compute={compute},output=float32')
  half = jmp.get_policy(f'params=float32,compute={compute},output={compute}')
  norm = jmp.get_policy(f'params=float32,compute=float32,output={compute}')
  stack.enter_context(hk.mixed_precision.push_policy(P.Perceiver, full))
  for cls in (
    hk.Linear,
    P.Linear,
    hk.Conv2D,
    hk.Conv2DTranspose,
    hk.Conv3DTranspose,
    hk.Embed,
  ):
    stack.enter_context(hk.mixed_precision.push_policy(cls, half))
  for cls in (P.LayerNorm, hk.BatchNorm):
    stack.enter_context(hk.mixed_precision.push_policy(cls, norm))
  return stack


def build(name: str, **overrides) -> hk.TransformedWithState:
  """Builds preset `name` (one of PRESETS), with optional field overrides."""
  cfg = _config(name, overrides)
  family = _family(name)
  if family == 'imagenet':
    forward = _imagenet(name, cfg)
  else:
    forward = {
      'language_mlm': _language_mlm,
      'optical_flow': _optical_flow,
      'video_autoencoding': _video_autoencoding,
    }[family](cfg)

  def wrapped(*args, **kwargs):
    with _mixed_precision(cfg['compute_dtype']):
      out = forward(*args, **kwargs)
    if cfg['compute_dtype'] is not None:
      out = (
        jnp.asarray(out, jnp.float32)
        if not isinstance(out, dict)
        else {k: v.astype(jnp.float32) for k, v in out.items()}
      )
    return out

  return hk.transform_with_state(wrapped)
