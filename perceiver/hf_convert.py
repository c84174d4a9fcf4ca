"""Weight conversion between our Haiku models and transformers' PyTorch Perceiver.

HuggingFace `transformers` ships an independent PyTorch implementation of the
six released Perceiver IO models:

  ==================== ================================================
  model_name           transformers class
  ==================== ================================================
  'language_mlm'       PerceiverForMaskedLM
  'imagenet_fourier'   PerceiverForImageClassificationFourier
  'imagenet_conv'      PerceiverForImageClassificationConvProcessing
  'imagenet_learned'   PerceiverForImageClassificationLearned
  'optical_flow'       PerceiverForOpticalFlow
  'video_autoencoding' PerceiverForMultimodalAutoencoding
  ==================== ================================================

`haiku_to_transformers` turns our (released-checkpoint-compatible) Haiku
`params` / `state` into a state_dict that the transformers model loads with
`load_state_dict(..., strict=True)`; `transformers_to_haiku` does the reverse.
Both are pure numpy (torch tensors are accepted as inputs; torch is imported
lazily and only for `as_torch=True`). Every parameter on either side must be
consumed by the mapping, otherwise a ValueError names the leftovers, so a
layout change on either side cannot go unnoticed.

Layout conventions:
  * Linear: Haiku `w` is [in, out], torch `weight` is [out, in].
  * Conv2D: Haiku `w` is HWIO, torch `weight` is OIHW.
  * LayerNorm: Haiku `scale`/`offset` <-> torch `weight`/`bias`.
  * BatchNorm: Haiku `scale`/`offset` are [1, 1, 1, C] <-> torch [C]; the
    state `mean_ema/average`, `var_ema/average` <-> `running_mean`,
    `running_var`, and the EMA `counter` <-> `num_batches_tracked`.
    Haiku's EMA is zero-debiased (`average = hidden / (1 - 0.9**counter)`),
    so `hidden` is rebuilt from `average` and `counter`; a torch model with
    `num_batches_tracked == 0` (e.g. one converted from a checkpoint without
    that counter) is treated as a long-run average (counter
    `_WARM_BN_COUNTER`), so continued Haiku training does not discard it.
  * Attention `linear`, `linear_1`, `linear_2`, `linear_3` <-> `query`, `key`,
    `value`, `output.dense`; the query / key-value / MLP LayerNorms of a
    cross-attention <-> `layernorm1` / `layernorm2` / `layernorm`, those of a
    self-attention <-> `layernorm1` / `layernorm`.

Semantic gaps between the two implementations (what transformers computes
differently from the released model, i.e. from ours), all verified by
tests/test_hf_crosscheck.py:
  1. GELU: the released MLP uses the tanh approximation (`jax.nn.gelu`
     default); transformers uses `config.hidden_act`, whose default 'gelu'
     is the exact erf GELU. Set `hidden_act='gelu_new'` (tanh) to match;
     `config_issues` reports it.
  2. Conv stem ('imagenet_conv'): transformers pads the 7x7/2 conv with
     3 pixels on every side (TF 'SAME' pads 2 before / 3 after on even
     sizes, so its windows are shifted by one pixel), and its 3x3/2 max pool
     uses no padding (PyTorch default) instead of 'SAME': a 224x224 image
     gives 55x55 tokens instead of 56x56, on a different Fourier grid. The
     two agree only where both paddings coincide (odd image sizes, first
     rows/columns of the pooled map).
  3. Decoder `query_mask` ('language_mlm'): transformers passes the text
     attention mask to its decoder but then drops it (a cross-attention uses
     `inputs_mask`, which the decoder sets to None), so padded output
     positions attend normally; the released code zeroes their attention
     output. Outputs agree on non-padded positions.
  4. Multimodal decoding ('video_autoencoding'): transformers builds Fourier
     queries of a full (non-subsampled) decode from the wrong index dims
     (`inputs.shape[2:]`), so it only works with `subsampled_output_points`
     (and its `PerceiverModel` hard-codes the 'audio'/'image'/'label' keys
     for them). Subsampled decodes use -1 + 2 i / n positions in both.
  5. `PerceiverConfig.layer_norm_eps` (default 1e-12) is unused by
     transformers' Perceiver: all its LayerNorms use PyTorch's 1e-5, the
     Haiku default, so they agree.
  6. Hard-coded widths in transformers: 'imagenet_fourier' always uses
     max_resolution (224, 224) and 64 bands, 'imagenet_conv' (56, 56),
     'imagenet_learned' 256 channels, 'language_mlm' a decoder with 8 heads
     and qk_channels 256, 'video_autoencoding' 192 / 32 bands. Reduced-size
     Haiku models must use the same values to be comparable.
  7. Input layouts: transformers takes images channels-first ([B, C, H, W],
     videos [B, T, C, H, W]); ours channels-last.
  8. BatchNorm training updates differ (zero-debiased EMA over the biased
     batch variance in Haiku, plain momentum-0.1 average over the unbiased
     variance in PyTorch); evaluation with the running statistics agrees.
  9. 'imagenet_learned' decoder: transformers hard-codes
     `use_query_residual=True`; the released model uses False (no
     parameters differ, the outputs do).
  Not reached by the released configs: transformers' 'pixels'
  preprocessing with spatial_downsample > 1 slices the batch and channel
  axes of its [B, C, H, W] images (`inputs[::s, ::s]`), and its conv stem
  always has one layer whatever `spatial_downsample` is.
"""

from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

MODEL_NAMES = (
  'imagenet_fourier',
  'imagenet_conv',
  'imagenet_learned',
  'language_mlm',
  'optical_flow',
  'video_autoencoding',
)

TRANSFORMERS_CLASSES = {
  'language_mlm': 'PerceiverForMaskedLM',
  'imagenet_fourier': 'PerceiverForImageClassificationFourier',
  'imagenet_conv': 'PerceiverForImageClassificationConvProcessing',
  'imagenet_learned': 'PerceiverForImageClassificationLearned',
  'optical_flow': 'PerceiverForOpticalFlow',
  'video_autoencoding': 'PerceiverForMultimodalAutoencoding',
}

# `hidden_act` values of transformers that are the tanh-approximated GELU of
# `jax.nn.gelu(approximate=True)`.
TANH_GELU_ACTIVATIONS = ('gelu_new', 'gelu_pytorch_tanh', 'gelu_fast')

BATCHNORM_DECAY = 0.9
_WARM_BN_COUNTER = 10_000  # 0.9**10000 == 0 in float32: a fully warm EMA.

# Kinds of leaf mappings.
_LINEAR_W = 'linear_w'  # [in, out] <-> [out, in]
_CONV_W = 'conv_w'  # HWIO <-> OIHW
_BN_VEC = 'bn_vec'  # [1, 1, 1, C] <-> [C]
_COPY = 'copy'

# A rule: (haiku module path, haiku leaf name, torch key, kind).
_Rule = Tuple[str, str, str, str]

_MODALITIES = ('audio', 'image', 'label')


def _to_numpy(x) -> np.ndarray:
  if hasattr(x, 'detach'):  # torch.Tensor, without importing torch.
    x = x.detach().cpu().numpy()
  return np.asarray(x)


def _check_model_name(model_name: str) -> None:
  if model_name not in MODEL_NAMES:
    raise ValueError(
      f'model_name: expected one of {list(MODEL_NAMES)}, got {model_name!r}.'
    )


def _linear(hk_module: str, t_module: str) -> List[_Rule]:
  return [
    (hk_module, 'w', f'{t_module}.weight', _LINEAR_W),
    (hk_module, 'b', f'{t_module}.bias', _COPY),
  ]


def _layer_norm(hk_module: str, t_module: str) -> List[_Rule]:
  return [
    (hk_module, 'scale', f'{t_module}.weight', _COPY),
    (hk_module, 'offset', f'{t_module}.bias', _COPY),
  ]


def _attention_block(hk_block: str, t_layer: str, cross: bool) -> List[_Rule]:
  """A Haiku CrossAttention/SelfAttention <-> a transformers PerceiverLayer."""
  rules = []
  if cross:
    rules += _layer_norm(
      f'{hk_block}/layer_norm', f'{t_layer}.attention.self.layernorm1'
    )
    rules += _layer_norm(
      f'{hk_block}/layer_norm_1', f'{t_layer}.attention.self.layernorm2'
    )
    rules += _layer_norm(f'{hk_block}/layer_norm_2', f'{t_layer}.layernorm')
  else:
    rules += _layer_norm(
      f'{hk_block}/layer_norm', f'{t_layer}.attention.self.layernorm1'
    )
    rules += _layer_norm(f'{hk_block}/layer_norm_1', f'{t_layer}.layernorm')
  for hk_name, t_name in (
    ('linear', 'self.query'),
    ('linear_1', 'self.key'),
    ('linear_2', 'self.value'),
    ('linear_3', 'output.dense'),
  ):
    rules += _linear(
      f'{hk_block}/attention/{hk_name}', f'{t_layer}.attention.{t_name}'
    )
  rules += _linear(f'{hk_block}/mlp/linear', f'{t_layer}.mlp.dense1')
  rules += _linear(f'{hk_block}/mlp/linear_1', f'{t_layer}.mlp.dense2')
  return rules


def _encoder(hk_encoder: str, num_self_attends: int) -> List[_Rule]:
  rules = [
    (
      f'{hk_encoder}/~/trainable_position_encoding',
      'pos_embs',
      'perceiver.embeddings.latents',
      _COPY,
    )
  ]
  rules += _attention_block(
    f'{hk_encoder}/~/cross_attention',
    'perceiver.encoder.cross_attention',
    cross=True,
  )
  for k in range(num_self_attends):
    suffix = '' if k == 0 else f'_{k}'
    rules += _attention_block(
      f'{hk_encoder}/~/self_attention{suffix}',
      f'perceiver.encoder.self_attends.{k}',
      cross=False,
    )
  return rules


def _classification_decoder() -> List[_Rule]:
  hk_dec = 'classification_decoder/~/basic_decoder'
  t_dec = 'perceiver.decoder.decoder'
  rules = [
    (
      f'{hk_dec}/~/trainable_position_encoding',
      'pos_embs',
      f'{t_dec}.output_position_encodings.position_embeddings',
      _COPY,
    )
  ]
  rules += _attention_block(
    f'{hk_dec}/cross_attention', f'{t_dec}.decoding_cross_attention', cross=True
  )
  rules += _linear(f'{hk_dec}/output', f'{t_dec}.final_layer')
  return rules


def _rules(
  model_name: str, num_self_attends: int
) -> Tuple[List[_Rule], List[Tuple[str, str]]]:
  """(parameter rules, (Haiku, torch) BatchNorm module paths) of a model."""
  encoder = (
    'encoder' if model_name == 'video_autoencoding' else ('perceiver_encoder')
  )
  rules = _encoder(encoder, num_self_attends)
  batchnorms = []
  if model_name == 'language_mlm':
    rules += [
      (
        'embed',
        'embeddings',
        'perceiver.input_preprocessor.embeddings.weight',
        _COPY,
      ),
      (
        'trainable_position_encoding',
        'pos_embs',
        'perceiver.input_preprocessor.position_embeddings.weight',
        _COPY,
      ),
      (
        'basic_decoder/~/trainable_position_encoding',
        'pos_embs',
        'perceiver.decoder.output_position_encodings.position_embeddings',
        _COPY,
      ),
      ('embedding_decoder', 'bias', 'embedding_decoder.bias', _COPY),
    ]
    rules += _attention_block(
      'basic_decoder/cross_attention',
      'perceiver.decoder.decoding_cross_attention',
      cross=True,
    )
  elif model_name.startswith('imagenet_'):
    rules += _classification_decoder()
    pre = 'perceiver.input_preprocessor'
    if model_name == 'imagenet_conv':
      stem = 'image_preprocessor/~/conv2_d_downsample/~'
      rules += [
        (f'{stem}/conv', 'w', f'{pre}.convnet.conv.weight', _CONV_W),
        (
          f'{stem}/batchnorm',
          'scale',
          f'{pre}.convnet.batchnorm.weight',
          _BN_VEC,
        ),
        (
          f'{stem}/batchnorm',
          'offset',
          f'{pre}.convnet.batchnorm.bias',
          _BN_VEC,
        ),
      ]
      batchnorms.append((f'{stem}/batchnorm', f'{pre}.convnet.batchnorm'))
    elif model_name == 'imagenet_learned':
      net = 'image_preprocessor/~_build_network_inputs'
      rules += [
        (
          'image_preprocessor/~/conv2_d',
          'w',
          f'{pre}.convnet_1x1.weight',
          _CONV_W,
        ),
        ('image_preprocessor/~/conv2_d', 'b', f'{pre}.convnet_1x1.bias', _COPY),
        (
          f'{net}/trainable_position_encoding',
          'pos_embs',
          f'{pre}.position_embeddings.position_embeddings',
          _COPY,
        ),
      ]
      rules += _linear(
        f'{net}/position_encoding_projector/linear',
        f'{pre}.positions_projection',
      )
  elif model_name == 'optical_flow':
    rules += _linear(
      'image_preprocessor/patches_linear',
      'perceiver.input_preprocessor.conv_after_patches',
    )
    rules += _attention_block(
      'flow_decoder/~/basic_decoder/cross_attention',
      'perceiver.decoder.decoder.decoding_cross_attention',
      cross=True,
    )
    rules += _linear(
      'flow_decoder/~/basic_decoder/output',
      'perceiver.decoder.decoder.final_layer',
    )
  elif model_name == 'video_autoencoding':
    pre = 'perceiver.input_preprocessor'
    for m in _MODALITIES:
      rules += [
        (
          f'multimodal_preprocessor/{m}_padding',
          'pos_embs',
          f'{pre}.padding.{m}',
          _COPY,
        ),
        (
          f'multimodal_preprocessor/{m}_mask_token',
          'pos_embs',
          f'{pre}.mask.{m}',
          _COPY,
        ),
        (
          f'multimodal_decoder/~decoder_query/{m}_padding',
          'pos_embs',
          f'perceiver.decoder.padding.{m}',
          _COPY,
        ),
      ]
    rules += [
      (
        'classification_decoder/~/basic_decoder/~/trainable_position_encoding',
        'pos_embs',
        'perceiver.decoder.modalities.label.decoder.'
        'output_position_encodings.position_embeddings',
        _COPY,
      )
    ]
    rules += _attention_block(
      'multimodal_decoder/~/basic_decoder/cross_attention',
      'perceiver.decoder.decoder.decoding_cross_attention',
      cross=True,
    )
    rules += _linear(
      'multimodal_decoder/~/basic_decoder/output',
      'perceiver.decoder.decoder.final_layer',
    )
    post = 'perceiver.output_postprocessor.modalities'
    rules += _linear('audio_postprocessor/linear', f'{post}.audio.classifier')
    rules += _linear(
      'projection_postprocessor/linear', f'{post}.image.classifier'
    )
    rules += _linear(
      'classification_postprocessor/linear', f'{post}.label.classifier'
    )
  return rules, batchnorms


def _count_self_attends(keys, pattern_prefix: str, separator: str) -> int:
  """Number of distinct self-attention layers among `keys`."""
  indices = set()
  for key in keys:
    if not key.startswith(pattern_prefix):
      continue
    rest = key[len(pattern_prefix) :]
    head = rest.split(separator, 1)[0]
    indices.add(head)
  return len(indices)


def _check_num_self_attends(found: int, config, source: str) -> int:
  expected = getattr(config, 'num_self_attends_per_block', None)
  if expected is not None and expected != found:
    raise ValueError(
      f'config: num_self_attends_per_block={expected}, but the {source} '
      f'hold {found} self-attention layers.'
    )
  if found == 0:
    raise ValueError(f'{source}: found no self-attention layers.')
  return found


def _haiku_to_torch_leaf(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == _LINEAR_W:
    return np.ascontiguousarray(x.T)
  if kind == _CONV_W:
    return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)))
  if kind == _BN_VEC:
    return np.ascontiguousarray(x.reshape(-1))
  return np.array(x)


def _torch_to_haiku_leaf(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == _LINEAR_W:
    return np.ascontiguousarray(x.T)
  if kind == _CONV_W:
    return np.ascontiguousarray(np.transpose(x, (2, 3, 1, 0)))
  if kind == _BN_VEC:
    return np.ascontiguousarray(x.reshape(1, 1, 1, -1))
  return np.array(x)


def haiku_to_transformers(
  params: Mapping[str, Mapping[str, Any]],
  state: Optional[Mapping[str, Mapping[str, Any]]],
  model_name: str,
  config=None,
  *,
  as_torch: bool = False,
) -> Dict[str, Any]:
  """Our Haiku params/state -> a transformers state_dict.

  Args:
    params: Haiku params (module path -> name -> array) of `model_name`.
    state: Haiku state (BatchNorm statistics for 'imagenet_conv'; empty or
      None otherwise).
    model_name: one of MODEL_NAMES.
    config: optional `transformers.PerceiverConfig`; if given, its
      `num_self_attends_per_block` is checked against the params.
    as_torch: return torch tensors (imports torch) instead of numpy arrays.

  Returns:
    Dict torch key -> array, loadable with `load_state_dict(strict=True)`
    into `TRANSFORMERS_CLASSES[model_name]`.

  Raises:
    ValueError: unknown model, a missing parameter, or a parameter that the
      mapping does not consume.
  """
  _check_model_name(model_name)
  state = state or {}
  encoder = (
    'encoder' if model_name == 'video_autoencoding' else ('perceiver_encoder')
  )
  num = _check_num_self_attends(
    _count_self_attends(params.keys(), f'{encoder}/~/self_attention', '/'),
    config,
    'params',
  )
  rules, batchnorms = _rules(model_name, num)
  out = {}
  used = set()
  for module, leaf, key, kind in rules:
    if module not in params or leaf not in params[module]:
      raise ValueError(
        f'params: missing {module}/{leaf} for {model_name!r} (torch key {key}).'
      )
    out[key] = _haiku_to_torch_leaf(_to_numpy(params[module][leaf]), kind)
    used.add((module, leaf))
  leftover = sorted(
    f'{m}/{n}' for m in params for n in params[m] if (m, n) not in used
  )
  if leftover:
    raise ValueError(
      f'params: not mapped to transformers for {model_name!r}: {leftover}.'
    )
  used_state = set()
  for hk_bn, t_bn in batchnorms:
    for ema, t_name in (
      ('mean_ema', 'running_mean'),
      ('var_ema', 'running_var'),
    ):
      module = f'{hk_bn}/~/{ema}'
      if module not in state:
        raise ValueError(f'state: missing {module} for {model_name!r}.')
      out[f'{t_bn}.{t_name}'] = np.ascontiguousarray(
        _to_numpy(state[module]['average']).reshape(-1)
      )
      used_state.add(module)
    counter = int(_to_numpy(state[f'{hk_bn}/~/mean_ema']['counter']))
    out[f'{t_bn}.num_batches_tracked'] = np.array(counter, dtype=np.int64)
  leftover = sorted(m for m in state if m not in used_state)
  if leftover:
    raise ValueError(
      f'state: not mapped to transformers for {model_name!r}: {leftover}.'
    )
  if as_torch:
    import torch  # pylint: disable=g-import-not-at-top

    out = {k: torch.from_numpy(np.array(v)) for k, v in out.items()}
  return out


def transformers_to_haiku(
  state_dict: Mapping[str, Any], model_name: str, config=None
) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Dict[str, Any]]]:
  """A transformers state_dict -> our Haiku (params, state).

  Args:
    state_dict: `model.state_dict()` of `TRANSFORMERS_CLASSES[model_name]`
      (torch tensors or numpy arrays).
    model_name: one of MODEL_NAMES.
    config: optional `transformers.PerceiverConfig`, checked as in
      `haiku_to_transformers`.

  Returns:
    (params, state) as nested dicts of numpy arrays, with the module paths of
    the released checkpoints.

  Raises:
    ValueError: unknown model, a missing key, or a key that the mapping does
      not consume.
  """
  _check_model_name(model_name)
  num = _check_num_self_attends(
    _count_self_attends(
      state_dict.keys(), 'perceiver.encoder.self_attends.', '.'
    ),
    config,
    'state_dict',
  )
  rules, batchnorms = _rules(model_name, num)
  params: Dict[str, Dict[str, Any]] = {}
  used = set()
  for module, leaf, key, kind in rules:
    if key not in state_dict:
      raise ValueError(
        f'state_dict: missing {key} for {model_name!r} (Haiku {module}/{leaf}).'
      )
    value = _torch_to_haiku_leaf(_to_numpy(state_dict[key]), kind)
    params.setdefault(module, {})[leaf] = value
    used.add(key)
  state: Dict[str, Dict[str, Any]] = {}
  for hk_bn, t_bn in batchnorms:
    tracked = int(_to_numpy(state_dict[f'{t_bn}.num_batches_tracked']))
    counter = tracked if tracked > 0 else _WARM_BN_COUNTER
    debias = 1.0 - BATCHNORM_DECAY**counter
    for ema, t_name in (
      ('mean_ema', 'running_mean'),
      ('var_ema', 'running_var'),
    ):
      average = _to_numpy(state_dict[f'{t_bn}.{t_name}']).reshape(1, 1, 1, -1)
      average = average.astype(np.float32)
      state[f'{hk_bn}/~/{ema}'] = {
        'average': average,
        'hidden': (average * np.float32(debias)).astype(np.float32),
        'counter': np.array(counter, dtype=np.int32),
      }
      used.add(f'{t_bn}.{t_name}')
    used.add(f'{t_bn}.num_batches_tracked')
  leftover = sorted(k for k in state_dict if k not in used)
  if leftover:
    raise ValueError(
      f'state_dict: not mapped to Haiku for {model_name!r}: {leftover}.'
    )
  return params, state


def config_issues(config) -> List[str]:
  """Settings of a `PerceiverConfig` that make transformers compute something
  other than the released model (see the module docstring); [] if none."""
  issues = []
  act = getattr(config, 'hidden_act', None)
  if act not in TANH_GELU_ACTIVATIONS:
    issues.append(
      f'hidden_act={act!r}: the released MLPs use the tanh-approximated '
      f'GELU; use one of {list(TANH_GELU_ACTIVATIONS)}.'
    )
  if getattr(config, 'attention_probs_dropout_prob', 0.0):
    issues.append(
      'attention_probs_dropout_prob='
      f'{config.attention_probs_dropout_prob}: the released models have no '
      'attention dropout (harmless in eval mode).'
    )
  return issues
