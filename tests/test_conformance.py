"""Drop-in conformance with DeepMind's released Perceiver IO code.

Five kinds of check, each against an independent reference:

* Parameter paths: every public module, built with the released keyword
  arguments, has the released Haiku module paths, parameter names and
  shapes; the expected trees are test data (tests/data/
  released_module_trees.json), written from the released code's naming
  (the released perceiver.py, position_encoding.py and io_processors.py),
  not from this library.
* The colabs' calls: the four colabs' model functions and loops, in their
  released argument forms (`from perceiver import perceiver`, config dicts
  passed at apply time, `'label': None` in the chunk dicts, tuples from
  `.shape`), run and equal the presets on the same parameters.
* Released defaults: every public module builds and runs with the released
  defaults (only the arguments the release requires).
* Dtypes: every public entry point given bfloat16 or float16 inputs (and
  parameters) computes positions, angles, softmax and normalisation
  statistics in float32 and matches the float32 result, computed from the
  same rounded inputs and parameters, within the output dtype's rounding.
* Subsampling: any `subsampled_output_points` (any length, all outputs, any
  order, repeats) gives [B, S, C] rows equal to the full decode's rows at
  those points, for every decoder that accepts points.

Shapes: B batch, M inputs, N latents, D latent channels, O outputs,
S subsampled outputs, C channels, K frequency bands.
"""

import functools
import itertools
import json
import os

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.test_encoder_decoders import (
  DECODER_SPECS,
  make_decoder,
  make_inputs,
  random_params,
  tiny_encoder,
)
from tests.test_presets import SMALL

import perceiver as P
from perceiver import decoders as dec
from perceiver import io_processors as io
from perceiver import presets, tasks

TREES = os.path.join(
  os.path.dirname(__file__), 'data', 'released_module_trees.json'
)
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def _rand(shape, seed=0, scale=1.0, offset=0.0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=shape) * scale + offset).astype(np.float32)


def _shape_tree(tree):
  return {
    m: {n: list(v.shape) for n, v in sorted(d.items())}
    for m, d in sorted(tree.items())
  }


# ---------------------------------------------------------------------------
# Parameter paths of every public module (released keyword arguments).
# ---------------------------------------------------------------------------

FOURIER = dict(
  num_bands=2, max_resolution=(4,), concat_pos=True, sine_only=False
)


def _decode(decoder, x, z, points=None):
  query = decoder.decoder_query(x, subsampled_points=points)
  return decoder(query, z, is_training=False)


def _perceiver(decoder_ctor, x):
  return P.Perceiver(encoder=tiny_encoder(), decoder=decoder_ctor())(
    x, is_training=False
  )


# name -> (function building and calling the module, input shapes).
MODULE_CASES = {
  'Attention': (
    lambda q, kv: P.Attention(
      num_heads=2, qk_channels=8, v_channels=6, output_channels=5
    )(q, kv),
    [(2, 3, 4), (2, 5, 6)],
  ),
  'MLP': (
    lambda x: P.MLP(widening_factor=2)(x, is_training=False),
    [(2, 3, 4)],
  ),
  'SelfAttention': (
    lambda x: P.SelfAttention(widening_factor=2, num_heads=2)(
      x, is_training=False
    ),
    [(2, 3, 4)],
  ),
  'CrossAttention': (
    lambda q, kv: P.CrossAttention(
      num_heads=1, shape_for_attn='kv', use_query_residual=True
    )(q, kv, is_training=False),
    [(2, 3, 4), (2, 5, 6)],
  ),
  'PerceiverEncoder': (
    lambda x: (lambda e: e(x, e.latents(x), is_training=False))(
      P.PerceiverEncoder(
        num_self_attends_per_block=2,
        num_blocks=3,
        z_index_dim=4,
        num_z_channels=8,
        num_cross_attend_heads=1,
        num_self_attend_heads=2,
        cross_attend_widening_factor=1,
        self_attend_widening_factor=2,
      )
    ),
    [(2, 5, 3)],
  ),
  'Perceiver+ProjectionDecoder': (
    lambda x: _perceiver(lambda: P.ProjectionDecoder(num_classes=6), x),
    [(2, 5, 3)],
  ),
  'Perceiver+BasicDecoder(trainable, project_pos_dim)': (
    lambda x: _perceiver(
      lambda: P.BasicDecoder(
        output_num_channels=3,
        position_encoding_type='trainable',
        output_index_dims=(2, 3),
        num_heads=2,
        qk_channels=8,
        project_pos_dim=6,
        trainable_position_encoding_kwargs=dict(num_channels=4),
      ),
      x,
    ),
    [(2, 5, 3)],
  ),
  'Perceiver+BasicDecoder(fourier, final_project=False)': (
    lambda x: _perceiver(
      lambda: P.BasicDecoder(
        output_num_channels=3,
        position_encoding_type='fourier',
        output_index_dims=(4,),
        final_project=False,
        fourier_position_encoding_kwargs=FOURIER,
      ),
      x,
    ),
    [(2, 5, 3)],
  ),
  'Perceiver+ClassificationDecoder': (
    lambda x: _perceiver(
      lambda: P.ClassificationDecoder(
        num_classes=7,
        num_z_channels=8,
        use_query_residual=True,
        position_encoding_type='trainable',
        trainable_position_encoding_kwargs=dict(
          num_channels=8, init_scale=0.02
        ),
      ),
      x,
    ),
    [(2, 5, 3)],
  ),
  'Perceiver+FlowDecoder': (
    lambda x: _perceiver(
      lambda: P.FlowDecoder(
        (1, 5),
        rescale_factor=100.0,
        use_query_residual=False,
        output_num_channels=2,
        output_w_init=jnp.zeros,
        position_encoding_type='fourier',
        fourier_position_encoding_kwargs=dict(
          num_bands=2, max_resolution=(1, 5)
        ),
      ),
      x,
    ),
    [(2, 5, 3)],
  ),
  'BasicVideoAutoencodingDecoder': (
    lambda x, z: _decode(
      P.BasicVideoAutoencodingDecoder(
        output_shape=(2, 1, 2, 2),
        position_encoding_type='fourier',
        output_num_channels=3,
        use_query_residual=False,
        fourier_position_encoding_kwargs=dict(
          num_bands=2, max_resolution=(1, 2, 2)
        ),
      ),
      x,
      z,
    ),
    [(2, 5, 3), (2, 4, 8)],
  ),
  'MultimodalDecoder': (
    lambda x, z: (
      lambda d: d(d.decoder_query(x, {'a': 2, 'b': 3}), z, is_training=False)
    )(
      P.MultimodalDecoder(
        modalities={
          'b': P.BasicDecoder(
            output_num_channels=3,
            position_encoding_type='fourier',
            output_index_dims=(4,),
            fourier_position_encoding_kwargs=FOURIER,
          ),
          'a': P.ClassificationDecoder(
            num_classes=3,
            position_encoding_type='trainable',
            trainable_position_encoding_kwargs=dict(num_channels=6),
          ),
        },
        num_outputs=None,
        output_num_channels=5,
        min_padding_size=2,
        use_query_residual=False,
      )
    ),
    [(2, 5, 3), (2, 4, 8)],
  ),
  'TrainablePositionEncoding': (
    lambda: P.TrainablePositionEncoding(
      index_dim=4, num_channels=3, init_scale=0.02
    )(2),
    [],
  ),
  'FourierPositionEncoding': (
    lambda: P.FourierPositionEncoding(index_dims=(3, 4), num_bands=2)(2),
    [],
  ),
  'build_position_encoding(project_pos_dim)': (
    lambda: P.build_position_encoding(
      'fourier',
      index_dims=(3,),
      project_pos_dim=5,
      fourier_position_encoding_kwargs=dict(num_bands=2),
    )(2),
    [],
  ),
  'Conv2DDownsample': (
    lambda x: io.Conv2DDownsample(num_layers=2, num_channels=4)(
      x, is_training=True
    ),
    [(2, 16, 16, 3)],
  ),
  'Conv2DUpsample': (
    lambda x: io.Conv2DUpsample(n_outputs=3)(x, is_training=False),
    [(2, 2, 3, 4)],
  ),
  'Conv3DUpsample': (
    lambda x: io.Conv3DUpsample(
      n_outputs=3, n_time_upsamples=1, n_space_upsamples=2
    )(x, is_training=False),
    [(2, 1, 2, 2, 4)],
  ),
  'ImagePreprocessor(conv)': (
    lambda x: io.ImagePreprocessor(
      prep_type='conv',
      spatial_downsample=4,
      num_channels=4,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=dict(num_bands=2),
    )(x, is_training=True),
    [(2, 8, 8, 3)],
  ),
  'ImagePreprocessor(conv1x1, trainable, project_pos_dim, extra mlp)': (
    lambda x: io.ImagePreprocessor(
      prep_type='conv1x1',
      spatial_downsample=1,
      num_channels=4,
      position_encoding_type='trainable',
      project_pos_dim=5,
      n_extra_pos_mlp=2,
      trainable_position_encoding_kwargs=dict(num_channels=6, init_scale=0.02),
    )(x, is_training=False),
    [(2, 3, 4, 3)],
  ),
  'ImagePreprocessor(patches, conv_after_patching)': (
    lambda x: io.ImagePreprocessor(
      prep_type='patches',
      spatial_downsample=1,
      temporal_downsample=2,
      conv_after_patching=True,
      num_channels=4,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=dict(num_bands=2, max_resolution=(3, 4)),
    )(x, is_training=False),
    [(2, 2, 3, 4, 27)],
  ),
  'ImagePostprocessor(conv, 2D)': (
    lambda x: io.ImagePostprocessor(postproc_type='conv', n_outputs=3)(
      x, is_training=False
    ),
    [(2, 2, 3, 4)],
  ),
  'ImagePostprocessor(conv, 3D)': (
    lambda x: io.ImagePostprocessor(
      postproc_type='conv', n_outputs=3, spatial_upsample=2, temporal_upsample=2
    )(x, is_training=False),
    [(2, 1, 2, 2, 4)],
  ),
  'ImagePostprocessor(conv1x1)': (
    lambda x: io.ImagePostprocessor(postproc_type='conv1x1', n_outputs=3)(
      x, is_training=False
    ),
    [(2, 2, 3, 4)],
  ),
  'AudioPreprocessor': (
    lambda x: io.AudioPreprocessor(
      prep_type='patches',
      samples_per_patch=4,
      n_extra_pos_mlp=1,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=dict(num_bands=2, max_resolution=(16,)),
    )(x, is_training=False),
    [(2, 16, 1)],
  ),
  'AudioPostprocessor': (
    lambda x: io.AudioPostprocessor(samples_per_patch=4)(x, is_training=False),
    [(2, 3, 5)],
  ),
  'ClassificationPostprocessor': (
    lambda x: io.ClassificationPostprocessor(num_classes=4)(
      x, is_training=False
    ),
    [(2, 1, 5)],
  ),
  'ProjectionPostprocessor': (
    lambda x: io.ProjectionPostprocessor(num_outputs=3)(x, is_training=False),
    [(2, 3, 5)],
  ),
  'MultimodalPreprocessor+MultimodalPostprocessor': (
    lambda a, label: io.MultimodalPostprocessor(
      modalities={
        'audio': io.AudioPostprocessor(samples_per_patch=4),
        'label': io.ClassificationPostprocessor(num_classes=3),
      }
    )(
      io.MultimodalPreprocessor(
        min_padding_size=2,
        modalities={
          'audio': io.AudioPreprocessor(
            samples_per_patch=4,
            position_encoding_type='fourier',
            fourier_position_encoding_kwargs=dict(
              num_bands=2, max_resolution=(16,)
            ),
          ),
          'label': io.OneHotPreprocessor(),
        },
        mask_probs={'audio': 0.0, 'label': 1.0},
      )({'audio': a, 'label': label}, is_training=False)[0],
      is_training=False,
      modality_sizes={'audio': 4, 'label': 1},
    ),
    [(2, 16, 1), (2, 3)],
  ),
  'EmbeddingDecoder': (
    lambda ids: (
      lambda embed: io.EmbeddingDecoder(embedding_matrix=embed.embeddings)(
        embed(ids)
      )
    )(hk.Embed(vocab_size=7, embed_dim=4)),
    [(2, 3)],
  ),
}


def _module_trees(name):
  fn, shapes = MODULE_CASES[name]
  args = [
    jax.ShapeDtypeStruct(
      s, jnp.int32 if name == 'EmbeddingDecoder' else jnp.float32
    )
    for s in shapes
  ]
  params, state = jax.eval_shape(
    hk.transform_with_state(fn).init, jax.random.PRNGKey(0), *args
  )
  return {'params': _shape_tree(params), 'state': _shape_tree(state)}


@pytest.fixture(scope='module')
def released_trees():
  with open(TREES) as f:
    return json.load(f)


@pytest.mark.parametrize('name', sorted(MODULE_CASES))
def test_module_parameter_paths_are_the_released_ones(name, released_trees):
  assert _module_trees(name) == released_trees[name]


def test_released_tree_data_covers_every_case(released_trees):
  assert sorted(released_trees) == sorted(MODULE_CASES)


def test_projection_decoder_loads_a_released_format_dict():
  # Issue 9, item 1: the released head is projection_decoder/~/logits with
  # w [D, 6] and b [6]; a dict in that format loads and is used.
  x = make_inputs(20)
  f = hk.transform(
    functools.partial(_perceiver, lambda: P.ProjectionDecoder(num_classes=6))
  )
  encoder_only = hk.transform(
    lambda x: (lambda e: e(x, e.latents(x), is_training=False))(tiny_encoder())
  )
  encoder_params = random_params(encoder_only, x, seed=20)
  rng = np.random.default_rng(20)
  head = {
    'w': rng.normal(size=(8, 6)).astype(np.float32),
    'b': rng.normal(size=(6,)).astype(np.float32),
  }
  released = dict(encoder_params, **{'projection_decoder/~/logits': head})
  assert _shape_tree(jax.eval_shape(f.init, jax.random.PRNGKey(0), x)) == (
    _shape_tree(released)
  )
  z = np.asarray(encoder_only.apply(encoder_params, None, x), np.float64)
  expected = z.mean(axis=1) @ head['w'] + head['b']
  np.testing.assert_allclose(
    jax.jit(f.apply)(released, None, x), expected, rtol=1e-5, atol=1e-5
  )


# ---------------------------------------------------------------------------
# The four colabs' calls, in their released argument forms.
# ---------------------------------------------------------------------------


def test_colab_masked_language_modelling():
  from perceiver import bytes_tokenizer, perceiver  # The colab's imports.

  cfg = SMALL['language_mlm']
  d_model, d_latents, max_seq_len = (
    cfg['d_model'],
    cfg['num_z_channels'],
    cfg['max_seq_len'],
  )
  encoder_config = dict(
    num_self_attends_per_block=cfg['num_self_attends_per_block'],
    num_blocks=1,
    z_index_dim=cfg['z_index_dim'],
    num_z_channels=d_latents,
    num_self_attend_heads=4,
    num_cross_attend_heads=4,
    qk_channels=4 * 8,
    v_channels=d_latents,
    use_query_residual=True,
    cross_attend_widening_factor=1,
    self_attend_widening_factor=1,
  )
  decoder_config = dict(
    output_num_channels=d_latents,
    position_encoding_type='trainable',
    output_index_dims=max_seq_len,
    num_z_channels=d_latents,
    qk_channels=4 * 8,
    v_channels=d_model,
    num_heads=4,
    final_project=False,
    use_query_residual=False,
    trainable_position_encoding_kwargs=dict(num_channels=d_model),
  )
  tokenizer = bytes_tokenizer.BytesTokenizer()

  def apply_perceiver(inputs, input_mask):
    assert inputs.shape[1] == max_seq_len
    embedding_layer = hk.Embed(
      vocab_size=tokenizer.vocab_size, embed_dim=d_model
    )
    embedded_inputs = embedding_layer(inputs)
    batch_size = embedded_inputs.shape[0]
    input_pos_encoding = perceiver.position_encoding.TrainablePositionEncoding(
      index_dim=max_seq_len, num_channels=d_model
    )
    embedded_inputs = embedded_inputs + input_pos_encoding(batch_size)
    perceiver_mod = perceiver.Perceiver(
      encoder=perceiver.PerceiverEncoder(**encoder_config),
      decoder=perceiver.BasicDecoder(**decoder_config),
    )
    output_embeddings = perceiver_mod(
      embedded_inputs,
      is_training=False,
      input_mask=input_mask,
      query_mask=input_mask,
    )
    return io.EmbeddingDecoder(embedding_matrix=embedding_layer.embeddings)(
      output_embeddings
    )

  input_tokens = tokenizer.to_int('An incomplete sentence.')
  input_tokens[13:22] = tokenizer.mask_token
  inputs = input_tokens[None]
  input_mask = np.ones_like(inputs)
  pad_len = max_seq_len - inputs.shape[1]
  inputs = np.pad(
    inputs, ((0, 0), (0, pad_len)), constant_values=tokenizer.pad_token
  )
  input_mask = np.pad(input_mask, ((0, 0), (0, pad_len)), constant_values=0)
  colab = hk.transform(apply_perceiver)
  params = colab.init(jax.random.PRNGKey(0), inputs, input_mask)
  out = colab.apply(
    params, rng=jax.random.PRNGKey(1), inputs=inputs, input_mask=input_mask
  )
  predicted = tokenizer.to_string(out[0, 13:22].argmax(axis=-1))
  assert out.shape == (1, max_seq_len, tokenizer.vocab_size)
  assert isinstance(predicted, str)
  preset = presets.build('language_mlm', **dict(cfg, num_heads=4))
  ref, _ = preset.apply(params, {}, None, inputs, input_mask, is_training=False)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


IMAGENET_CONFIGS = {
  'imagenet_fourier': dict(
    input_preprocessor=dict(
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=dict(
        concat_pos=True, max_resolution=(16, 16), num_bands=4, sine_only=False
      ),
      prep_type='pixels',
      spatial_downsample=1,
    )
  ),
  'imagenet_conv': dict(
    input_preprocessor=dict(
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=dict(
        concat_pos=True, max_resolution=(4, 4), num_bands=4, sine_only=False
      ),
      prep_type='conv',
    )
  ),
  'imagenet_learned': dict(
    input_preprocessor=dict(
      position_encoding_type='trainable',
      trainable_position_encoding_kwargs=dict(
        init_scale=0.02, num_channels=256
      ),
      prep_type='conv1x1',
      project_pos_dim=256,
      num_channels=256,
      spatial_downsample=1,
      concat_or_add_pos='concat',
    )
  ),
}


@pytest.mark.parametrize('name', sorted(IMAGENET_CONFIGS))
def test_colab_imagenet_configs_passed_at_apply_time(name):
  from perceiver import perceiver  # The colab's import.

  config = dict(
    IMAGENET_CONFIGS[name],
    encoder=dict(
      cross_attend_widening_factor=1,
      cross_attention_shape_for_attn='kv',
      dropout_prob=0,
      num_blocks=2,
      num_cross_attend_heads=1,
      num_self_attend_heads=8,
      num_self_attends_per_block=2,
      num_z_channels=32,
      self_attend_widening_factor=1,
      use_query_residual=True,
      z_index_dim=8,
      z_pos_enc_init_scale=0.02,
    ),
    decoder=dict(
      num_z_channels=32,
      position_encoding_type='trainable',
      trainable_position_encoding_kwargs=dict(init_scale=0.02, num_channels=32),
      use_query_residual=name != 'imagenet_learned',
    ),
  )

  def imagenet_classifier(config, images):
    input_preprocessor = io.ImagePreprocessor(**config['input_preprocessor'])
    encoder = perceiver.PerceiverEncoder(**config['encoder'])
    decoder = perceiver.ClassificationDecoder(10, **config['decoder'])
    model = perceiver.Perceiver(
      encoder=encoder, decoder=decoder, input_preprocessor=input_preprocessor
    )
    return model(images, is_training=False)

  colab = hk.transform_with_state(imagenet_classifier)
  images = jnp.asarray(_rand((1, 16, 16, 3), seed=3))
  # The colab loads a checkpoint (its is_training=False model cannot init
  # BatchNorm state, as released): the preset's parameters and state stand
  # in for it, and Haiku raises on any name the colab's model does not find.
  preset = presets.build(name, **SMALL[name])
  params, state = preset.init(jax.random.PRNGKey(0), images, is_training=True)
  logits, _ = colab.apply(params, state, jax.random.PRNGKey(42), config, images)
  probs = jax.nn.softmax(logits)
  assert probs.shape == (1, 10)
  if name != 'imagenet_conv':
    colab_params, _ = jax.eval_shape(
      lambda key, x: colab.init(key, config, x), jax.random.PRNGKey(0), images
    )
    assert _shape_tree(colab_params) == _shape_tree(params)
  ref, _ = preset.apply(params, state, None, images, is_training=False)
  np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


def test_colab_optical_flow_with_tiling():
  from perceiver import perceiver  # The colab's import.

  train_size = SMALL['optical_flow']['image_size']
  flow_scale_factor = 20

  def optical_flow(images):
    fourier = dict(
      num_bands=4, max_resolution=train_size, sine_only=False, concat_pos=True
    )
    input_preprocessor = io.ImagePreprocessor(
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=fourier,
      n_extra_pos_mlp=0,
      prep_type='patches',
      spatial_downsample=1,
      conv_after_patching=True,
      temporal_downsample=2,
    )
    encoder = perceiver.PerceiverEncoder(
      num_self_attends_per_block=2,
      num_blocks=1,
      z_index_dim=8,
      num_cross_attend_heads=1,
      num_z_channels=32,
      num_self_attend_heads=4,
      cross_attend_widening_factor=1,
      self_attend_widening_factor=1,
      dropout_prob=0.0,
      z_pos_enc_init_scale=0.02,
      cross_attention_shape_for_attn='kv',
      name='perceiver_encoder',
    )
    decoder = perceiver.FlowDecoder(
      train_size,
      rescale_factor=100.0,
      use_query_residual=False,
      output_num_channels=2,
      output_w_init=jnp.zeros,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=fourier,
    )
    model = perceiver.Perceiver(
      input_preprocessor=input_preprocessor,
      encoder=encoder,
      decoder=decoder,
      output_postprocessor=None,
    )
    return (
      model(io.patches_for_flow(images), is_training=False) * flow_scale_factor
    )

  colab = hk.transform(optical_flow)
  rng = np.random.default_rng(4)
  img1, img2 = (
    rng.integers(0, 256, (10, 17, 3)).astype(np.uint8) for _ in range(2)
  )
  tile = jnp.zeros((1, 2) + train_size + (3,))
  # Zero output weights (the release's init) would make every flow 0.
  params = jax.tree.map(
    lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.3, p.dtype),
    colab.init(jax.random.PRNGKey(0), tile),
  )
  apply = jax.jit(colab.apply)
  # The colab's tiling: grid of tile corners, pyramid weights, stitching.
  min_overlap = 3
  height, width = img1.shape[:2]
  ys = list(range(0, height, train_size[0] - min_overlap))
  xs = list(range(0, width, train_size[1] - min_overlap))
  ys[-1], xs[-1] = height - train_size[0], width - train_size[1]
  imgs = jnp.stack([img1 / 255.0 * 2 - 1, img2 / 255.0 * 2 - 1])[None]
  flows = 0
  flow_count = 0
  for y, x in itertools.product(ys, xs):
    piece = imgs[..., y : y + train_size[0], x : x + train_size[1], :]
    flow_piece = apply(params, jax.random.PRNGKey(42), piece)
    wx, wy = jnp.meshgrid(jnp.arange(train_size[1]), jnp.arange(train_size[0]))
    wx = jnp.minimum(wx + 1, train_size[1] - wx)
    wy = jnp.minimum(wy + 1, train_size[0] - wy)
    weights = jnp.minimum(wx, wy)[None, :, :, None]
    padding = [
      (0, 0),
      (y, height - y - train_size[0]),
      (x, width - x - train_size[1]),
      (0, 0),
    ]
    flows = flows + jnp.pad(flow_piece * weights, padding)
    flow_count = flow_count + jnp.pad(weights, padding)
  flows = flows / flow_count
  ours = tasks.optical_flow(
    presets.build('optical_flow', **SMALL['optical_flow']),
    params,
    {},
    img1,
    img2,
    min_overlap=min_overlap,
    overrides=SMALL['optical_flow'],
  )
  assert float(jnp.abs(flows).max()) > 1e-3
  np.testing.assert_allclose(ours, flows[0], rtol=1e-4, atol=1e-4)


def _colab_video_autoencoder(cfg):
  """The colab's video_autoencoder, at the sizes of SMALL (video_autoencoding.ipynb)."""
  from perceiver import perceiver  # The colab's import.

  # The colab's 1x4x4 patches unless cfg says otherwise.
  sd = cfg.get('spatial_downsample', 4)
  td = cfg.get('temporal_downsample', 1)
  frames, img_sz, spp = cfg['num_frames'] // td, cfg['image_size'] // sd, 16
  num_classes = cfg['num_classes']

  def video_autoencoder(images, audio, subsampling):
    n_audio_samples = audio.shape[1]
    audio_pe = dict(
      num_bands=4,
      max_resolution=(n_audio_samples,),
      sine_only=False,
      concat_pos=True,
    )
    image_pe = dict(
      num_bands=4,
      max_resolution=(frames, img_sz, img_sz),
      sine_only=False,
      concat_pos=True,
    )
    input_preprocessor = io.MultimodalPreprocessor(
      min_padding_size=4,
      modalities={
        'audio': io.AudioPreprocessor(
          position_encoding_type='fourier',
          fourier_position_encoding_kwargs=audio_pe,
          n_extra_pos_mlp=0,
          prep_type='patches',
          samples_per_patch=spp,
        ),
        'image': io.ImagePreprocessor(
          position_encoding_type='fourier',
          fourier_position_encoding_kwargs=image_pe,
          n_extra_pos_mlp=0,
          prep_type='patches',
          spatial_downsample=sd,
          temporal_downsample=td,
        ),
        'label': io.OneHotPreprocessor(),
      },
      mask_probs={'image': 0.0, 'audio': 0.0, 'label': 1.0},
    )
    output_postprocessor = io.MultimodalPostprocessor(
      modalities={
        'audio': io.AudioPostprocessor(samples_per_patch=spp),
        'image': io.ProjectionPostprocessor(num_outputs=3),
        'label': io.ClassificationPostprocessor(num_classes=num_classes),
      }
    )
    encoder = perceiver.PerceiverEncoder(
      num_self_attends_per_block=2,
      num_blocks=1,
      z_index_dim=8,
      num_z_channels=32,
      num_cross_attend_heads=1,
      num_self_attend_heads=4,
      cross_attend_widening_factor=1,
      self_attend_widening_factor=1,
      dropout_prob=0.0,
      z_pos_enc_init_scale=0.02,
      cross_attention_shape_for_attn='kv',
      name='encoder',
    )
    subsampled_index_dims = {
      'audio': subsampling['audio'].shape[0],
      'image': subsampling['image'].shape[0],
      'label': 1,
    }
    image_decoder = perceiver.BasicVideoAutoencodingDecoder(
      concat_preprocessed_input=False,
      subsampled_index_dims=subsampling['image'],
      output_shape=images.shape[:4],
      num_z_channels=1024,
      output_num_channels=512,
      use_query_residual=False,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=image_pe,
    )
    decoder = perceiver.MultimodalDecoder(
      concat_preprocessed_input=False,
      subsampled_index_dims=subsampled_index_dims,
      modalities={
        'audio': perceiver.BasicDecoder(
          concat_preprocessed_input=False,
          subsampled_index_dims=subsampling['audio'],
          output_index_dims=(n_audio_samples // spp,),
          num_z_channels=1024,
          output_num_channels=512,
          use_query_residual=False,
          position_encoding_type='fourier',
          fourier_position_encoding_kwargs=audio_pe,
        ),
        'image': image_decoder,
        'label': perceiver.ClassificationDecoder(
          concat_preprocessed_input=False,
          num_classes=num_classes,
          num_z_channels=1024,
          use_query_residual=False,
          position_encoding_type='trainable',
          trainable_position_encoding_kwargs=dict(
            num_channels=1024, init_scale=0.02
          ),
        ),
      },
      num_outputs=None,
      output_num_channels=32,
      use_query_residual=False,
    )
    model = perceiver.Perceiver(
      input_preprocessor=input_preprocessor,
      encoder=encoder,
      decoder=decoder,
      output_postprocessor=output_postprocessor,
    )
    return model(
      {
        'image': images,
        'audio': audio,
        'label': np.zeros((images.shape[0], num_classes)),
      },
      is_training=False,
      subsampled_output_points=subsampling,
    )

  return hk.transform_with_state(video_autoencoder)


def _preset_video_decode(cfg, params, images, audio):
  """The video_autoencoding preset's full decode with the label masked."""
  preset = presets.build('video_autoencoding', **cfg)
  inputs = {
    'image': images,
    'audio': audio,
    'label': jnp.zeros((images.shape[0], cfg['num_classes'])),
  }
  return preset.apply(params, {}, None, inputs, is_training=False)[0]


def test_colab_video_autoencoding_in_chunks():
  # Issue 9, item 2: the colab's chunk dicts carry 'label': None.
  cfg = dict(SMALL['video_autoencoding'], num_z_channels=32)
  colab = _colab_video_autoencoder(cfg)
  rng = np.random.default_rng(5)
  images = jnp.asarray(rng.uniform(0, 1, (1, 2, 16, 16, 3)), jnp.float32)
  audio = jnp.asarray(rng.uniform(-1, 1, (1, 64, 1)), jnp.float32)
  nchunks = 4
  first = {
    'image': jnp.arange(0, 128),
    'audio': jnp.arange(0, 1),
    'label': None,
  }
  params, state = colab.init(jax.random.PRNGKey(0), images, audio, first)
  params = jax.tree.map(
    lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.2, p.dtype), params
  )
  reconstruction = {}
  for chunk_idx in range(nchunks):
    image_chunk_size = np.prod(images.shape[1:-1]) // nchunks
    audio_chunk_size = audio.shape[1] // 16 // nchunks
    subsampling = {
      'image': jnp.arange(
        image_chunk_size * chunk_idx, image_chunk_size * (chunk_idx + 1)
      ),
      'audio': jnp.arange(
        audio_chunk_size * chunk_idx, audio_chunk_size * (chunk_idx + 1)
      ),
      'label': None,
    }
    output, state = colab.apply(
      params, state, jax.random.PRNGKey(42), images, audio, subsampling
    )
    assert output['image'].shape == (1, image_chunk_size, 3)
    assert output['audio'].shape == (1, audio_chunk_size * 16)
    reconstruction['label'] = output['label']
    for m in ('image', 'audio'):
      reconstruction[m] = (
        output[m]
        if m not in reconstruction
        else jnp.concatenate([reconstruction[m], output[m]], axis=1)
      )
  reconstruction['image'] = jnp.reshape(reconstruction['image'], images.shape)
  reconstruction['audio'] = jnp.reshape(reconstruction['audio'], audio.shape)
  scores, _ = jax.lax.top_k(jax.nn.softmax(reconstruction['label']), 5)
  assert scores.shape == (1, 5)
  # The chunks equal a full decode of the same model (the preset).
  full = _preset_video_decode(cfg, params, images, audio)
  for m in ('image', 'audio', 'label'):
    np.testing.assert_allclose(
      reconstruction[m], full[m], rtol=1e-4, atol=1e-4, err_msg=m
    )


def test_preset_video_with_larger_patches_matches_the_colab_wiring():
  # 2x8x8 patches: 2 x 2 x 2 video tokens of 384 values each; the Fourier
  # features of inputs and of the full-resolution queries on the patch grid.
  cfg = dict(
    SMALL['video_autoencoding'],
    num_z_channels=32,
    num_frames=4,
    spatial_downsample=8,
    temporal_downsample=2,
  )
  colab = _colab_video_autoencoder(cfg)
  rng = np.random.default_rng(6)
  images = jnp.asarray(rng.uniform(0, 1, (1, 4, 16, 16, 3)), jnp.float32)
  audio = jnp.asarray(rng.uniform(-1, 1, (1, 64, 1)), jnp.float32)
  everything = {
    'image': jnp.arange(1024),
    'audio': jnp.arange(4),
    'label': None,
  }
  params, state = colab.init(jax.random.PRNGKey(0), images, audio, everything)
  params = jax.tree.map(
    lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.2, p.dtype), params
  )
  expected, _ = colab.apply(
    params, state, jax.random.PRNGKey(1), images, audio, everything
  )
  full = _preset_video_decode(cfg, params, images, audio)
  np.testing.assert_allclose(
    full['image'].reshape(1, 1024, 3), expected['image'], rtol=1e-4, atol=1e-4
  )
  np.testing.assert_allclose(
    full['audio'].reshape(1, 64), expected['audio'], rtol=1e-4, atol=1e-4
  )
  # One patch in time would lose the time axis: refused by name.
  with pytest.raises(ValueError, match='temporal_downsample: expected at most'):
    presets.build('video_autoencoding', **dict(cfg, temporal_downsample=4))
  # 12 x 12 frames do not split into 8 x 8 patches: named, not cropped.
  bad = presets.build('video_autoencoding', **dict(cfg, image_size=12))
  with pytest.raises(ValueError, match='spatial_block_size=8'):
    bad.init(
      jax.random.PRNGKey(0),
      {
        'image': images[:, :, :12, :12],
        'audio': audio,
        'label': jnp.zeros((1, cfg['num_classes'])),
      },
      is_training=False,
    )


def test_preset_video_chunk_with_label_none():
  # Issue 9, item 2 with presets.build: None decodes the whole modality (one
  # label output); the chunk's rows equal the full decode's at its points.
  cfg = SMALL['video_autoencoding']
  model = presets.build('video_autoencoding', **cfg)
  rng = np.random.default_rng(6)
  inputs = {
    'image': jnp.asarray(rng.uniform(0, 1, (1, 2, 16, 16, 3)), jnp.float32),
    'audio': jnp.asarray(rng.uniform(-1, 1, (1, 64, 1)), jnp.float32),
    'label': jnp.zeros((1, 5)),
  }
  params, state = model.init(jax.random.PRNGKey(0), inputs, is_training=False)
  params = jax.tree.map(
    lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.2, p.dtype), params
  )
  points = {
    'image': jnp.arange(0, 100),
    'audio': jnp.arange(0, 3),
    'label': None,
  }
  chunk, _ = model.apply(
    params,
    state,
    None,
    inputs,
    is_training=False,
    subsampled_output_points=points,
  )
  full, _ = model.apply(params, state, None, inputs, is_training=False)
  assert chunk['label'].shape == (1, 5)
  np.testing.assert_allclose(
    chunk['label'], full['label'], rtol=1e-4, atol=1e-4
  )
  np.testing.assert_allclose(
    chunk['image'],
    full['image'].reshape(1, -1, 3)[:, :100],
    rtol=1e-4,
    atol=1e-4,
  )
  np.testing.assert_allclose(
    chunk['audio'], full['audio'][:, :48, 0], rtol=1e-4, atol=1e-4
  )


# ---------------------------------------------------------------------------
# Subsampling: any points give the full decode's rows.
# ---------------------------------------------------------------------------


def _flow_3x4():
  return dec.FlowDecoder((3, 4), output_num_channels=2, rescale_factor=10.0)


def _classification():
  return dec.ClassificationDecoder(
    5,
    position_encoding_type='trainable',
    trainable_position_encoding_kwargs=dict(num_channels=6),
  )


# kind -> (decoder builder, M inputs, O outputs).
SUBSAMPLING_KINDS = dict(
  {
    k: (functools.partial(make_decoder, k), 6, o)
    for k, (o, _) in DECODER_SPECS.items()
  },
  **{
    'flow-3x4': (_flow_3x4, 12, 12),
    'classification': (_classification, 6, 1),
  },
)


def _point_sets(o):
  return {
    'all reversed': np.arange(o)[::-1],
    'all, repeats': np.concatenate([np.arange(o), [0, o - 1, 0]]),
    'one': np.array([o - 1]),
    'repeats only': np.array([o // 2] * 3),
  }


@pytest.mark.parametrize('kind', sorted(SUBSAMPLING_KINDS))
def test_any_subsampled_points_give_the_full_decode_rows(kind):
  build, m, o = SUBSAMPLING_KINDS[kind]
  x = make_inputs(21, m=m)

  def run(x, points=None):
    return P.Perceiver(tiny_encoder(), build())(
      x, is_training=False, subsampled_output_points=points
    )

  f = hk.transform(run)
  params = random_params(f, x, seed=21)
  full = np.asarray(jax.jit(f.apply)(params, None, x)).reshape(2, o, -1)
  for name, points in _point_sets(o).items():
    rows = jax.jit(functools.partial(f.apply, points=points))(params, None, x)
    assert rows.shape == (2, len(points), full.shape[-1]), name
    np.testing.assert_allclose(
      rows, full[:, points], rtol=1e-5, atol=1e-5, err_msg=name
    )


def test_flow_reversed_points_are_rows_not_an_image():
  # Issue 9, item 4: twelve points of a (3, 4) flow decoder, reversed.
  x = make_inputs(22, m=12)
  f = hk.transform(
    lambda x, points=None: P.Perceiver(tiny_encoder(), _flow_3x4())(
      x, is_training=False, subsampled_output_points=points
    )
  )
  params = random_params(f, x, seed=22)
  full = f.apply(params, None, x)
  assert full.shape == (2, 3, 4, 2)
  rows = f.apply(params, None, x, points=jnp.arange(12)[::-1])
  assert rows.shape == (2, 12, 2)
  np.testing.assert_allclose(
    rows, np.asarray(full).reshape(2, 12, 2)[:, ::-1], rtol=1e-5, atol=1e-5
  )


def test_direct_full_decode_call_rejects_subsampled_queries():
  x = make_inputs(23, m=12)

  def fn(x):
    d = _flow_3x4()
    return d(
      d.decoder_query(x, subsampled_points=jnp.arange(5)),
      jnp.ones((2, 4, 8)),
      is_training=False,
    )

  with pytest.raises(ValueError, match='decode_points'):
    hk.transform(fn).init(jax.random.PRNGKey(0), x)


def test_multimodal_points_any_order_repeats_and_none():
  cfg = SMALL['video_autoencoding']
  model = presets.build('video_autoencoding', **cfg)
  rng = np.random.default_rng(24)
  inputs = {
    'image': jnp.asarray(rng.uniform(0, 1, (1, 2, 16, 16, 3)), jnp.float32),
    'audio': jnp.asarray(rng.uniform(-1, 1, (1, 64, 1)), jnp.float32),
    'label': jnp.zeros((1, 5)),
  }
  params, state = model.init(jax.random.PRNGKey(0), inputs, is_training=False)
  params = jax.tree.map(
    lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.2, p.dtype), params
  )
  apply = jax.jit(model.apply, static_argnames='is_training')
  full, _ = apply(params, state, None, inputs, is_training=False)
  image_rows = np.asarray(full['image']).reshape(1, 512, 3)
  audio_rows = np.asarray(full['audio']).reshape(1, 4, 16)
  image_points = np.concatenate([np.arange(512)[::-1], [3, 3]])
  audio_points = np.array([3, 0, 3])
  out, _ = apply(
    params,
    state,
    None,
    inputs,
    is_training=False,
    subsampled_output_points={
      'image': image_points,
      'audio': audio_points,
      'label': None,
    },
  )
  np.testing.assert_allclose(
    out['image'], image_rows[:, image_points], rtol=1e-4, atol=1e-4
  )
  np.testing.assert_allclose(
    out['audio'],
    audio_rows[:, audio_points].reshape(1, -1),
    rtol=1e-4,
    atol=1e-4,
  )
  np.testing.assert_allclose(out['label'], full['label'], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# Released defaults are accepted.
# ---------------------------------------------------------------------------

# Only the arguments the release requires (and the position-encoding kwargs
# dict its build_position_encoding asserts); every other argument defaults.
DEFAULT_CASES = {
  'Attention': (lambda x: P.Attention()(x, x), [(1, 3, 8)]),
  'MLP': (lambda x: P.MLP()(x, is_training=False), [(1, 3, 8)]),
  'SelfAttention': (
    lambda x: P.SelfAttention()(x, is_training=False),
    [(1, 3, 8)],
  ),
  'CrossAttention': (
    lambda q, kv: P.CrossAttention()(q, kv, is_training=False),
    [(1, 3, 8), (1, 5, 16)],
  ),
  'PerceiverEncoder': (
    lambda x: (lambda e: e(x, e.latents(x), is_training=False))(
      P.PerceiverEncoder()
    ),
    [(1, 5, 16)],
  ),
  'ProjectionDecoder': (
    lambda x: _perceiver(lambda: P.ProjectionDecoder(3), x),
    [(1, 5, 3)],
  ),
  'BasicDecoder': (
    lambda x: _perceiver(
      lambda: P.BasicDecoder(
        3, output_index_dims=(4,), trainable_position_encoding_kwargs={}
      ),
      x,
    ),
    [(1, 5, 3)],
  ),
  'ClassificationDecoder': (
    lambda x: _perceiver(
      lambda: P.ClassificationDecoder(3, trainable_position_encoding_kwargs={}),
      x,
    ),
    [(1, 5, 3)],
  ),
  'FlowDecoder': (
    lambda x: _perceiver(lambda: P.FlowDecoder((1, 5)), x),
    [(1, 5, 3)],
  ),
  'TrainablePositionEncoding': (lambda: P.TrainablePositionEncoding(4)(1), []),
  'FourierPositionEncoding': (
    lambda: P.FourierPositionEncoding((4,), 2)(1),
    [],
  ),
  'Conv2DDownsample': (
    lambda x: io.Conv2DDownsample()(x, is_training=True),
    [(1, 8, 8, 3)],
  ),
  'Conv2DUpsample': (
    lambda x: io.Conv2DUpsample(3)(x, is_training=False),
    [(1, 2, 2, 4)],
  ),
  'Conv3DUpsample': (
    lambda x: io.Conv3DUpsample(3)(x, is_training=False),
    [(1, 1, 1, 1, 4)],
  ),
  'ImagePreprocessor': (
    lambda x: io.ImagePreprocessor(
      fourier_position_encoding_kwargs=dict(num_bands=2)
    )(x, is_training=True),
    [(1, 8, 8, 3)],
  ),
  'ImagePostprocessor': (
    lambda x: io.ImagePostprocessor()(x, is_training=False),
    [(1, 2, 2, 4)],
  ),
  'ImagePostprocessor(conv)': (
    lambda x: io.ImagePostprocessor('conv', n_outputs=3)(x, is_training=False),
    [(1, 2, 2, 4)],
  ),
  'ImagePostprocessor(conv1x1)': (
    lambda x: io.ImagePostprocessor('conv1x1', n_outputs=3)(
      x, is_training=False
    ),
    [(1, 2, 2, 4)],
  ),
  'ImagePostprocessor(patches)': (
    lambda x: io.ImagePostprocessor('patches')(x, is_training=False),
    [(1, 2, 2, 4)],
  ),
  'AudioPreprocessor': (
    lambda x: io.AudioPreprocessor(
      fourier_position_encoding_kwargs=dict(num_bands=2)
    )(x, is_training=False),
    [(1, 192)],
  ),
  'AudioPostprocessor': (
    lambda x: io.AudioPostprocessor()(x, is_training=False),
    [(1, 2, 4)],
  ),
  'OneHotPreprocessor': (
    lambda x: io.OneHotPreprocessor()(x, is_training=False),
    [(1, 4)],
  ),
  'IdentityPostprocessor': (
    lambda x: io.IdentityPostprocessor()(x, is_training=False),
    [(1, 2, 4)],
  ),
}


@pytest.mark.parametrize('name', sorted(DEFAULT_CASES))
def test_released_defaults_are_accepted(name):
  fn, shapes = DEFAULT_CASES[name]
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  f = hk.transform_with_state(fn)
  params, state = jax.eval_shape(f.init, jax.random.PRNGKey(0), *args)
  jax.eval_shape(f.apply, params, state, None, *args)


def test_conv_postprocessor_default_spatial_upsample_upsamples_4x():
  # The release ignores spatial_upsample for 'conv' (Conv2DUpsample is 4x).
  f = hk.transform(
    lambda x: io.ImagePostprocessor('conv', n_outputs=3)(x, is_training=False)
  )
  x = jnp.zeros((1, 2, 3, 4))
  params = jax.eval_shape(f.init, jax.random.PRNGKey(0), x)
  out = jax.eval_shape(f.apply, params, None, x)
  assert out.shape == (1, 8, 12, 3)


# ---------------------------------------------------------------------------
# Dtypes: float32 positions, angles, softmax and statistics.
# ---------------------------------------------------------------------------


def test_fourier_features_bfloat16_positions():
  # -0.8671875 is exact in bfloat16; the features are
  # those of float32 (hand-computed: frequencies 1 and 112, so sin(-0.867 pi),
  # sin(-97.125 pi), cos(-0.867 pi), cos(-97.125 pi)), rounded once.
  pos = jnp.asarray([[-0.8671875]], jnp.bfloat16)
  out = P.generate_fourier_features(pos, num_bands=2, max_resolution=(224,))
  right = np.array([-0.8671875, -0.4052, 0.3827, -0.9142, -0.9239])
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32)[0], right, atol=4e-3)
  x = -0.8671875 * np.pi
  exact = [-0.8671875, np.sin(x), np.sin(112 * x), np.cos(x), np.cos(112 * x)]
  np.testing.assert_array_equal(
    out, jnp.asarray(np.array([exact]), jnp.bfloat16)
  )


@pytest.mark.parametrize(
  'dtype,worst', [(jnp.bfloat16, 1.76), (jnp.float16, 0.37)]
)
def test_fourier_features_64_bands_224_grid_error_is_rounding(dtype, worst):
  # At 64 bands the angles reach 112 pi ~ 350 rad: the reported errors came
  # from rounding them in half precision; now the only error is the output's
  # rounding (half an ulp of values in [-1, 1]).
  pos = P.build_linear_positions((224,)).reshape(-1, 1)
  ref = P.generate_fourier_features(
    pos.astype(dtype).astype(jnp.float32), num_bands=64, max_resolution=(224,)
  )
  out = P.generate_fourier_features(
    pos.astype(dtype), num_bands=64, max_resolution=(224,)
  )
  err = float(jnp.abs(out.astype(jnp.float32) - ref).max())
  assert err <= jnp.finfo(dtype).eps / 2 < worst


def _cast(tree, dtype):
  return jax.tree.map(
    lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
    tree,
  )


def _pos(shape, seed):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


# name -> (fn, input makers (seed -> float32 array), tolerance in ulps of the
# output dtype relative to max |float32 result| (matmul stacks round every
# layer's output), or 'elementwise': one rounding of each element.
DTYPE_CASES = {
  'generate_fourier_features': (
    lambda p: P.generate_fourier_features(
      p, num_bands=64, max_resolution=(224, 224)
    ),
    [lambda s: _pos((16, 2), s)],
    'elementwise',
  ),
  'FourierPositionEncoding(pos)': (
    lambda p: P.FourierPositionEncoding(
      (4, 4), num_bands=16, max_resolution=(224, 224)
    )(2, pos=p),
    [lambda s: _pos((2, 16, 2), s)],
    'elementwise',
  ),
  'TrainablePositionEncoding': (
    lambda x: P.TrainablePositionEncoding(4, 3)(2).astype(x.dtype) + x,
    [lambda s: _rand((2, 4, 3), s)],
    'elementwise',
  ),
  'attend': (
    lambda q, k, v: P.attend(
      q, k, v, attention_mask=np.tri(5, 7, 2, bool)[None]
    ),
    [
      lambda s: _rand((1, 5, 2, 4), s, 3.0),
      lambda s: _rand((1, 7, 2, 4), s + 1, 3.0),
      lambda s: _rand((1, 7, 2, 3), s + 2),
    ],
    2,
  ),
  'LayerNorm': (
    lambda x: P.layer_norm(x),
    [lambda s: _rand((2, 3, 16), s, 1.0, 300.0)],
    'elementwise',
  ),
  'Linear': (lambda x: P.Linear(5)(x), [lambda s: _rand((2, 3, 8), s)], 2),
  'MLP': (
    lambda x: P.MLP()(x, is_training=False),
    [lambda s: _rand((2, 3, 8), s)],
    4,
  ),
  'Attention': (
    lambda q, kv: P.Attention(num_heads=2)(q, kv),
    [
      lambda s: _rand((2, 3, 8), s, 3.0),
      lambda s: _rand((2, 5, 8), s + 1, 3.0),
    ],
    4,
  ),
  'SelfAttention': (
    lambda x: P.SelfAttention(num_heads=2)(x, is_training=False),
    [lambda s: _rand((2, 3, 8), s, 1.0, 50.0)],
    8,
  ),
  'CrossAttention': (
    lambda q, kv: P.CrossAttention(num_heads=2)(q, kv, is_training=False),
    [
      lambda s: _rand((2, 3, 8), s, 1.0, 50.0),
      lambda s: _rand((2, 5, 6), s + 1),
    ],
    8,
  ),
  'PerceiverEncoder': (
    lambda x: (lambda e: e(x, e.latents(x), is_training=False))(
      tiny_encoder(num_blocks=2)
    ),
    [lambda s: _rand((2, 5, 3), s, 1.0, 20.0)],
    16,
  ),
}
for _kind in (
  'basic-trainable',
  'basic-fourier',
  'basic-concat',
  'video-fourier',
  'flow',
):
  DTYPE_CASES[f'Perceiver+{_kind}'] = (
    functools.partial(
      lambda k, x: P.Perceiver(tiny_encoder(), make_decoder(k))(
        x, is_training=False
      ),
      _kind,
    ),
    [lambda s: _rand((2, 6, 3), s)],
    16,
  )
DTYPE_CASES.update(
  {
    'Perceiver+ProjectionDecoder': (
      lambda x: _perceiver(lambda: P.ProjectionDecoder(4), x),
      [lambda s: _rand((2, 5, 3), s)],
      16,
    ),
    'Perceiver+ClassificationDecoder': (
      lambda x: _perceiver(_classification, x),
      [lambda s: _rand((2, 5, 3), s)],
      16,
    ),
    'Conv2DDownsample': (
      lambda x: io.Conv2DDownsample(num_channels=4)(x, is_training=True),
      [lambda s: _rand((2, 8, 8, 3), s, 1.0, 30.0)],
      8,
    ),
    'Conv2DUpsample': (
      lambda x: io.Conv2DUpsample(3)(x, is_training=False),
      [lambda s: _rand((1, 2, 2, 4), s)],
      4,
    ),
    'Conv3DUpsample': (
      lambda x: io.Conv3DUpsample(3, 1, 1)(x, is_training=False),
      [lambda s: _rand((1, 1, 2, 2, 4), s)],
      4,
    ),
    'ImagePreprocessor(pixels, fourier)': (
      lambda x: io.ImagePreprocessor(
        'pixels',
        spatial_downsample=1,
        fourier_position_encoding_kwargs=dict(
          num_bands=16, max_resolution=(224, 224)
        ),
      )(x, is_training=False),
      [lambda s: _rand((1, 4, 4, 3), s)],
      'elementwise',
    ),
    'ImagePreprocessor(conv1x1, trainable)': (
      lambda x: io.ImagePreprocessor(
        'conv1x1',
        spatial_downsample=1,
        num_channels=4,
        position_encoding_type='trainable',
        project_pos_dim=4,
        trainable_position_encoding_kwargs=dict(num_channels=4),
      )(x, is_training=False),
      [lambda s: _rand((1, 2, 3, 3), s)],
      4,
    ),
    'AudioPreprocessor': (
      lambda x: io.AudioPreprocessor(
        samples_per_patch=4,
        fourier_position_encoding_kwargs=dict(
          num_bands=16, max_resolution=(30720,)
        ),
      )(x, is_training=False),
      [lambda s: _rand((1, 16, 1), s)],
      'elementwise',
    ),
    'MultimodalPreprocessor': (
      lambda a, label: io.MultimodalPreprocessor(
        modalities={
          'audio': io.AudioPreprocessor(
            samples_per_patch=4,
            fourier_position_encoding_kwargs=dict(
              num_bands=2, max_resolution=(16,)
            ),
          ),
          'label': io.OneHotPreprocessor(),
        },
        mask_probs={'audio': 0.0, 'label': 1.0},
      )({'audio': a, 'label': label}, is_training=False),
      [lambda s: _rand((1, 16, 1), s), lambda s: _rand((1, 3), s)],
      'elementwise',
    ),
    'postprocessors': (
      lambda x: io.MultimodalPostprocessor(
        modalities={
          'a': io.AudioPostprocessor(samples_per_patch=2),
          'b': io.ClassificationPostprocessor(3),
          'c': io.ProjectionPostprocessor(2),
          'd': io.IdentityPostprocessor(),
          'e': io.ImagePostprocessor(
            'conv1x1', n_outputs=2, input_reshape_size=(1, 2)
          ),
        }
      )(x, is_training=False, modality_sizes=dict(a=2, b=1, c=2, d=1, e=2)),
      [lambda s: _rand((1, 8, 4), s)],
      4,
    ),
    'EmbeddingDecoder': (
      lambda x: io.EmbeddingDecoder(
        hk.get_parameter('table', [7, 4], init=hk.initializers.RandomNormal())
      )(x),
      [lambda s: _rand((1, 3, 4), s)],
      4,
    ),
    'space_to_depth+extract_patches': (
      lambda x: (
        io.space_to_depth(x, spatial_block_size=2),
        io.patches_for_flow(x[:, None]),
        io.reverse_space_to_depth(
          io.space_to_depth(x, spatial_block_size=2), spatial_block_size=2
        ),
      ),
      [lambda s: _rand((1, 4, 4, 3), s)],
      'elementwise',
    ),
  }
)


@pytest.mark.parametrize('name', sorted(DTYPE_CASES))
def test_low_precision_matches_float32_within_rounding(name):
  fn, makers, ulps = DTYPE_CASES[name]
  f = hk.transform_with_state(fn)
  inputs = [m(31) for m in makers]
  params, state = f.init(jax.random.PRNGKey(0), *inputs)
  params = jax.tree.map(
    lambda p: jnp.asarray(
      np.random.default_rng(32).normal(size=p.shape) * 0.3, jnp.float32
    ),
    params,
  )
  # One jitted apply: the float32 reference compiles once for both dtypes.
  apply = jax.jit(f.apply)
  for dtype in DTYPES[1:]:
    # The same rounded inputs and parameters, computed in `dtype` and float32.
    low = _cast((params, state, inputs), dtype)
    ref_args = _cast(low, jnp.float32)
    out = apply(low[0], low[1], None, *low[2])[0]
    ref = apply(ref_args[0], ref_args[1], None, *ref_args[2])[0]
    eps = float(jnp.finfo(dtype).eps)
    for o, r in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
      if not jnp.issubdtype(r.dtype, jnp.floating):
        continue
      assert (o.dtype, r.dtype) == (dtype, jnp.float32)
      o, r = np.asarray(o, np.float64), np.asarray(r, np.float64)
      assert np.all(np.isfinite(o)), dtype
      if ulps == 'elementwise':  # One rounding of each element.
        np.testing.assert_allclose(
          o,
          r,
          rtol=eps / 2,
          atol=float(jnp.finfo(dtype).smallest_subnormal),
          err_msg=jnp.dtype(dtype).name,
        )
      else:
        error = np.abs(o - r).max()
        assert error <= ulps * eps * np.abs(r).max(), (dtype, error)


@pytest.mark.parametrize('name', presets.PRESETS)
def test_presets_run_in_the_inputs_dtype(name):
  # Without compute_dtype, low-precision inputs and parameters run the whole
  # model in that dtype (float32 statistics inside) close to float32.
  model = presets.build(name, **SMALL[name])
  rng = np.random.default_rng(33)

  def make(s):
    if s.dtype == jnp.int32:
      return jnp.asarray(rng.integers(0, 262, s.shape), jnp.int32)
    return jnp.asarray(rng.uniform(-1, 1, s.shape), jnp.float32)

  args = jax.tree.map(make, presets.example_inputs(name, 1, **SMALL[name]))
  if name == 'language_mlm':
    args = (args[0], jnp.ones_like(args[1]))
  params, state = model.init(jax.random.PRNGKey(0), *args, is_training=True)
  # One jitted apply: the float32 reference compiles once for both dtypes.
  apply = jax.jit(functools.partial(model.apply, is_training=False))
  for dtype in DTYPES[1:]:
    low = _cast((params, state, args), dtype)
    ref_args = _cast(low, jnp.float32)
    out = apply(low[0], low[1], None, *low[2])[0]
    ref = apply(ref_args[0], ref_args[1], None, *ref_args[2])[0]
    for o, r in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
      assert (o.dtype, r.dtype) == (dtype, jnp.float32)
      scale = float(jnp.abs(r).max())
      error = float(jnp.abs(o.astype(jnp.float32) - r).max())
      assert error <= 0.05 * scale, (dtype, error, scale)
