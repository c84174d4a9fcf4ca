"""Drop-in conformance with DeepMind's released Perceiver IO code (issue 9).

Five kinds of check, each against an independent reference:

* Parameter paths: every public module, built with the released keyword
  arguments, has the released Haiku module paths, parameter names and
  shapes; the expected trees are test data (tests/data/
  released_module_trees.json), written from the released code's naming
  (MODELS.md Sec. 1), not from this library.
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
  perceiver_fn,
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

FOURIER = dict(num_bands=2, max_resolution=(4,), concat_pos=True,
               sine_only=False)


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
    lambda q, kv: P.Attention(num_heads=2, qk_channels=8, v_channels=6,
                              output_channels=5)(q, kv),
    [(2, 3, 4), (2, 5, 6)],
  ),
  'MLP': (
    lambda x: P.MLP(widening_factor=2)(x, is_training=False),
    [(2, 3, 4)],
  ),
  'SelfAttention': (
    lambda x: P.SelfAttention(widening_factor=2, num_heads=2)(
      x, is_training=False),
    [(2, 3, 4)],
  ),
  'CrossAttention': (
    lambda q, kv: P.CrossAttention(num_heads=1, shape_for_attn='kv',
                                   use_query_residual=True)(
      q, kv, is_training=False),
    [(2, 3, 4), (2, 5, 6)],
  ),
  'PerceiverEncoder': (
    lambda x: (lambda e: e(x, e.latents(x), is_training=False))(
      P.PerceiverEncoder(num_self_attends_per_block=2, num_blocks=3,
                         z_index_dim=4, num_z_channels=8,
                         num_cross_attend_heads=1, num_self_attend_heads=2,
                         cross_attend_widening_factor=1,
                         self_attend_widening_factor=2)),
    [(2, 5, 3)],
  ),
  'Perceiver+ProjectionDecoder': (
    lambda x: _perceiver(lambda: P.ProjectionDecoder(num_classes=6), x),
    [(2, 5, 3)],
  ),
  'Perceiver+BasicDecoder(trainable, project_pos_dim)': (
    lambda x: _perceiver(lambda: P.BasicDecoder(
      output_num_channels=3, position_encoding_type='trainable',
      output_index_dims=(2, 3), num_heads=2, qk_channels=8,
      project_pos_dim=6,
      trainable_position_encoding_kwargs=dict(num_channels=4)), x),
    [(2, 5, 3)],
  ),
  'Perceiver+BasicDecoder(fourier, final_project=False)': (
    lambda x: _perceiver(lambda: P.BasicDecoder(
      output_num_channels=3, position_encoding_type='fourier',
      output_index_dims=(4,), final_project=False,
      fourier_position_encoding_kwargs=FOURIER), x),
    [(2, 5, 3)],
  ),
  'Perceiver+ClassificationDecoder': (
    lambda x: _perceiver(lambda: P.ClassificationDecoder(
      num_classes=7, num_z_channels=8, use_query_residual=True,
      position_encoding_type='trainable',
      trainable_position_encoding_kwargs=dict(num_channels=8,
                                              init_scale=0.02)), x),
    [(2, 5, 3)],
  ),
  'Perceiver+FlowDecoder': (
    lambda x: _perceiver(lambda: P.FlowDecoder(
      (1, 5), rescale_factor=100.0, use_query_residual=False,
      output_num_channels=2, output_w_init=jnp.zeros,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=dict(num_bands=2,
                                            max_resolution=(1, 5))), x),
    [(2, 5, 3)],
  ),
  'BasicVideoAutoencodingDecoder': (
    lambda x, z: _decode(P.BasicVideoAutoencodingDecoder(
      output_shape=(2, 1, 2, 2), position_encoding_type='fourier',
      output_num_channels=3, use_query_residual=False,
      fourier_position_encoding_kwargs=dict(num_bands=2,
                                            max_resolution=(1, 2, 2))),
      x, z),
    [(2, 5, 3), (2, 4, 8)],
  ),
  'MultimodalDecoder': (
    lambda x, z: (lambda d: d(
      d.decoder_query(x, {'a': 2, 'b': 3}), z, is_training=False))(
        P.MultimodalDecoder(
          modalities={
            'b': P.BasicDecoder(output_num_channels=3,
                                position_encoding_type='fourier',
                                output_index_dims=(4,),
                                fourier_position_encoding_kwargs=FOURIER),
            'a': P.ClassificationDecoder(
              num_classes=3, position_encoding_type='trainable',
              trainable_position_encoding_kwargs=dict(num_channels=6)),
          },
          num_outputs=None, output_num_channels=5, min_padding_size=2,
          use_query_residual=False)),
    [(2, 5, 3), (2, 4, 8)],
  ),
  'TrainablePositionEncoding': (
    lambda: P.TrainablePositionEncoding(index_dim=4, num_channels=3,
                                        init_scale=0.02)(2),
    [],
  ),
  'FourierPositionEncoding': (
    lambda: P.FourierPositionEncoding(index_dims=(3, 4), num_bands=2)(2),
    [],
  ),
  'build_position_encoding(project_pos_dim)': (
    lambda: P.build_position_encoding(
      'fourier', index_dims=(3,), project_pos_dim=5,
      fourier_position_encoding_kwargs=dict(num_bands=2))(2),
    [],
  ),
  'Conv2DDownsample': (
    lambda x: io.Conv2DDownsample(num_layers=2, num_channels=4)(
      x, is_training=True),
    [(2, 16, 16, 3)],
  ),
  'Conv2DUpsample': (
    lambda x: io.Conv2DUpsample(n_outputs=3)(x, is_training=False),
    [(2, 2, 3, 4)],
  ),
  'Conv3DUpsample': (
    lambda x: io.Conv3DUpsample(n_outputs=3, n_time_upsamples=1,
                                n_space_upsamples=2)(x, is_training=False),
    [(2, 1, 2, 2, 4)],
  ),
  'ImagePreprocessor(conv)': (
    lambda x: io.ImagePreprocessor(
      prep_type='conv', spatial_downsample=4, num_channels=4,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=dict(num_bands=2))(
      x, is_training=True),
    [(2, 8, 8, 3)],
  ),
  'ImagePreprocessor(conv1x1, trainable, project_pos_dim, extra mlp)': (
    lambda x: io.ImagePreprocessor(
      prep_type='conv1x1', spatial_downsample=1, num_channels=4,
      position_encoding_type='trainable', project_pos_dim=5,
      n_extra_pos_mlp=2,
      trainable_position_encoding_kwargs=dict(num_channels=6,
                                              init_scale=0.02))(
      x, is_training=False),
    [(2, 3, 4, 3)],
  ),
  'ImagePreprocessor(patches, conv_after_patching)': (
    lambda x: io.ImagePreprocessor(
      prep_type='patches', spatial_downsample=1, temporal_downsample=2,
      conv_after_patching=True, num_channels=4,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=dict(num_bands=2,
                                            max_resolution=(3, 4)))(
      x, is_training=False),
    [(2, 2, 3, 4, 27)],
  ),
  'ImagePostprocessor(conv, 2D)': (
    lambda x: io.ImagePostprocessor(postproc_type='conv', n_outputs=3)(
      x, is_training=False),
    [(2, 2, 3, 4)],
  ),
  'ImagePostprocessor(conv, 3D)': (
    lambda x: io.ImagePostprocessor(postproc_type='conv', n_outputs=3,
                                    spatial_upsample=2, temporal_upsample=2)(
      x, is_training=False),
    [(2, 1, 2, 2, 4)],
  ),
  'ImagePostprocessor(conv1x1)': (
    lambda x: io.ImagePostprocessor(postproc_type='conv1x1', n_outputs=3)(
      x, is_training=False),
    [(2, 2, 3, 4)],
  ),
  'AudioPreprocessor': (
    lambda x: io.AudioPreprocessor(
      prep_type='patches', samples_per_patch=4, n_extra_pos_mlp=1,
      position_encoding_type='fourier',
      fourier_position_encoding_kwargs=dict(num_bands=2,
                                            max_resolution=(16,)))(
      x, is_training=False),
    [(2, 16, 1)],
  ),
  'AudioPostprocessor': (
    lambda x: io.AudioPostprocessor(samples_per_patch=4)(
      x, is_training=False),
    [(2, 3, 5)],
  ),
  'ClassificationPostprocessor': (
    lambda x: io.ClassificationPostprocessor(num_classes=4)(
      x, is_training=False),
    [(2, 1, 5)],
  ),
  'ProjectionPostprocessor': (
    lambda x: io.ProjectionPostprocessor(num_outputs=3)(
      x, is_training=False),
    [(2, 3, 5)],
  ),
  'MultimodalPreprocessor+MultimodalPostprocessor': (
    lambda a, l: io.MultimodalPostprocessor(modalities={
      'audio': io.AudioPostprocessor(samples_per_patch=4),
      'label': io.ClassificationPostprocessor(num_classes=3)})(
        io.MultimodalPreprocessor(
          min_padding_size=2,
          modalities={
            'audio': io.AudioPreprocessor(
              samples_per_patch=4, position_encoding_type='fourier',
              fourier_position_encoding_kwargs=dict(
                num_bands=2, max_resolution=(16,))),
            'label': io.OneHotPreprocessor()},
          mask_probs={'audio': 0.0, 'label': 1.0})(
            {'audio': a, 'label': l}, is_training=False)[0],
        is_training=False, modality_sizes={'audio': 4, 'label': 1}),
    [(2, 16, 1), (2, 3)],
  ),
  'EmbeddingDecoder': (
    lambda ids: (lambda embed: io.EmbeddingDecoder(
      embedding_matrix=embed.embeddings)(embed(ids)))(
        hk.Embed(vocab_size=7, embed_dim=4)),
    [(2, 3)],
  ),
}


def _module_trees(name):
  fn, shapes = MODULE_CASES[name]
  args = [
    jax.ShapeDtypeStruct(s, jnp.int32 if name == 'EmbeddingDecoder'
                         else jnp.float32) for s in shapes
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
  f = hk.transform(functools.partial(
    _perceiver, lambda: P.ProjectionDecoder(num_classes=6)))
  encoder_only = hk.transform(
    lambda x: (lambda e: e(x, e.latents(x), is_training=False))(
      tiny_encoder()))
  encoder_params = random_params(encoder_only, x, seed=20)
  rng = np.random.default_rng(20)
  head = {'w': rng.normal(size=(8, 6)).astype(np.float32),
          'b': rng.normal(size=(6,)).astype(np.float32)}
  released = dict(encoder_params, **{'projection_decoder/~/logits': head})
  assert _shape_tree(jax.eval_shape(f.init, jax.random.PRNGKey(0), x)) == (
    _shape_tree(released))
  z = np.asarray(encoder_only.apply(encoder_params, None, x), np.float64)
  expected = z.mean(axis=1) @ head['w'] + head['b']
  np.testing.assert_allclose(jax.jit(f.apply)(released, None, x), expected,
                             rtol=1e-5, atol=1e-5)
