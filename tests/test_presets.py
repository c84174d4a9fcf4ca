"""Presets: parameter trees equal the released checkpoints', calls work."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from perceiver import presets


def example_inputs(name, batch=1, **overrides):
  return presets.example_inputs(name, batch, **overrides), {}


def shape_tree(tree):
  return {
    m: {n: [list(v.shape), str(v.dtype)] for n, v in d.items()}
    for m, d in tree.items()
  }


def official_tree(entry):
  return {
    m: {n: [s['shape'], s['dtype']] for n, s in d.items()}
    for m, d in entry.items()
  }


@pytest.mark.parametrize('name', presets.PRESETS)
def test_full_size_parameter_tree_equals_release(name, official):
  model = presets.build(name)
  args, _ = example_inputs(name)
  params, state = jax.eval_shape(
    lambda *a: model.init(jax.random.PRNGKey(0), *a, is_training=True), *args
  )
  assert shape_tree(params) == official_tree(official[name]['params'])
  assert shape_tree(state) == official_tree(official[name]['state'])
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert count == official[name]['num_params']


# `presets.TINY` with repeated blocks and layers, since the options under
# test (scan, remat) act on them; test_conformance.py builds its colab
# references at these sizes (32 channels, 4 heads; ImageNet's 8 heads and
# MLM's 64 channels as released-shaped ratios), so they stay as written.
_REPEATED = dict(num_z_channels=32, num_self_attends_per_block=2)
_IMAGENET = dict(
  image_size=16, num_classes=10, num_blocks=2, num_self_attend_heads=8
)
SMALL = {
  'imagenet_fourier': presets.tiny(
    'imagenet_fourier', num_bands=4, **_IMAGENET, **_REPEATED
  ),
  'imagenet_conv': presets.tiny(
    'imagenet_conv', num_bands=4, **_IMAGENET, **_REPEATED
  ),
  'imagenet_learned': presets.tiny(
    'imagenet_learned', **_IMAGENET, **_REPEATED
  ),
  'language_mlm': presets.tiny(
    'language_mlm',
    max_seq_len=32,
    d_model=32,
    num_heads=4,
    qk_channels=32,
    **dict(_REPEATED, num_z_channels=64),
  ),
  'optical_flow': presets.tiny(
    'optical_flow',
    image_size=(8, 12),
    num_self_attend_heads=4,
    num_bands=4,
    **_REPEATED,
  ),
  'video_autoencoding': presets.tiny(
    'video_autoencoding',
    num_frames=2,
    image_size=16,
    audio_samples=64,
    num_classes=5,
    num_self_attend_heads=4,
    image_bands=4,
    audio_bands=4,
    **_REPEATED,
  ),
}


@pytest.mark.parametrize('name', presets.PRESETS)
@pytest.mark.parametrize(
  'options',
  [
    dict(attention_impl='chunked'),
    dict(remat=True, scan_blocks=False, scan_layers=False),
    dict(compute_dtype=jnp.bfloat16),
  ],
)
def test_options_keep_the_parameter_tree(name, options):
  args, _ = example_inputs(name, **SMALL[name])
  init = lambda m: jax.eval_shape(
    lambda *a: m.init(jax.random.PRNGKey(0), *a, is_training=True), *args
  )
  assert shape_tree(init(presets.build(name, **options, **SMALL[name]))[0]) == (
    shape_tree(init(presets.build(name, **SMALL[name]))[0])
  )


def concrete(args, seed=0):
  rng = np.random.default_rng(seed)

  def make(s):
    if s.dtype == jnp.int32:
      return jnp.asarray(rng.integers(0, 262, s.shape), jnp.int32)
    return jnp.asarray(rng.uniform(-1, 1, s.shape), s.dtype)

  return jax.tree.map(make, args)


@pytest.mark.parametrize('name', presets.PRESETS)
def test_small_preset_runs_and_bf16_is_close(name):
  args, _ = example_inputs(name, batch=2, **SMALL[name])
  args = concrete(args)
  if name == 'language_mlm':
    args = (args[0], jnp.ones_like(args[1]))
  model = presets.build(name, **SMALL[name])
  params, state = jax.jit(functools.partial(model.init, is_training=True))(
    jax.random.PRNGKey(0), *args
  )
  out, _ = jax.jit(functools.partial(model.apply, is_training=False))(
    params, state, None, *args
  )
  bf16 = presets.build(name, compute_dtype=jnp.bfloat16, **SMALL[name])
  out16, _ = jax.jit(functools.partial(bf16.apply, is_training=False))(
    params, state, None, *args
  )
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(out16)):
    assert b.dtype == jnp.float32
    assert np.all(np.isfinite(a))
    scale = float(jnp.abs(a).max()) + 1e-6
    assert float(jnp.abs(a - b).max()) <= 0.05 * scale


def test_video_chunked_decode_equals_full_decode():
  name = 'video_autoencoding'
  args, _ = example_inputs(name, batch=1, **SMALL[name])
  args = concrete(args)
  model = presets.build(name, **SMALL[name])
  params, state = jax.jit(functools.partial(model.init, is_training=False))(
    jax.random.PRNGKey(0), *args
  )
  apply = jax.jit(
    model.apply, static_argnames=('is_training', 'decode_chunk_size')
  )
  full, _ = apply(
    params, state, jax.random.PRNGKey(1), *args, is_training=False
  )
  chunked, _ = apply(
    params,
    state,
    jax.random.PRNGKey(1),
    *args,
    is_training=False,
    decode_chunk_size=100,
  )
  chex.assert_trees_all_close(full, chunked, atol=1e-5, rtol=1e-5)
  assert full['image'].shape == (1, 2, 16, 16, 3)
  assert full['audio'].shape == (1, 64, 1)
  assert full['label'].shape == (1, 5)


def test_unknown_override_is_rejected():
  with pytest.raises(ValueError, match='overrides'):
    presets.build('imagenet_fourier', num_latents=3)
  with pytest.raises(ValueError, match='name'):
    presets.build('imagenet_resnet')


@pytest.mark.parametrize('scale', [0, -0.02, True, '0.02'])
def test_mlm_embed_init_scale_is_checked(scale):
  # Haiku would make a zero table from stddev 0 without a word.
  with pytest.raises(
    ValueError, match=r'embed_init_scale: expected a positive number'
  ):
    presets.build('language_mlm', embed_init_scale=scale)


def test_video_label_mask_prob_keeps_the_tree_and_masks():
  name = 'video_autoencoding'
  (inputs,), _ = example_inputs(name, batch=4, **SMALL[name])
  inputs = concrete(inputs)
  model = presets.build(name, **SMALL[name])
  init = functools.partial(model.init, is_training=True)
  params, state = jax.jit(init)(jax.random.PRNGKey(0), inputs)
  other = dict(inputs, label=inputs['label'][::-1])
  for prob in (0.0, 0.5, 1.0):
    # Values may differ at 0.5 (the mask's draw takes a key from the init
    # rng); the tree may not.
    masked = jax.eval_shape(
      functools.partial(init, label_mask_prob=prob),
      jax.random.PRNGKey(0),
      inputs,
    )
    assert shape_tree(masked[0]) == shape_tree(params), prob
    apply = jax.jit(
      functools.partial(
        model.apply,
        params,
        state,
        jax.random.PRNGKey(1),
        is_training=True,
        subsampled_output_points={
          'image': jnp.arange(3),
          'audio': jnp.arange(2),
          'label': None,
        },
        label_mask_prob=prob,
      )
    )
    seen = ~np.isclose(
      apply(inputs)[0]['label'], apply(other)[0]['label'], atol=1e-6
    ).all(axis=1)
    # The same key masks the same examples of both batches; 0: none, 1: all.
    if prob == 0.0:
      assert seen.all()
    elif prob == 1.0:
      assert not seen.any()


@pytest.mark.parametrize('prob', [-0.1, 1.5, True])
def test_video_label_mask_prob_is_checked(prob):
  name = 'video_autoencoding'
  (inputs,), _ = example_inputs(name, **SMALL[name])
  model = presets.build(name, **SMALL[name])
  with pytest.raises(ValueError, match=r'label_mask_prob: expected a prob'):
    jax.eval_shape(
      functools.partial(model.init, is_training=True, label_mask_prob=prob),
      jax.random.PRNGKey(0),
      inputs,
    )


def test_video_label_query_channels_is_a_size_field():
  # The widest query (the label's, + 2 padding) sets the decoder's width.
  name = 'video_autoencoding'
  (inputs,), _ = example_inputs(name, **SMALL[name])
  init = lambda **o: jax.eval_shape(
    functools.partial(
      presets.build(name, **SMALL[name], **o).init, is_training=False
    ),
    jax.random.PRNGKey(0),
    inputs,
  )[0]
  shapes = lambda p: {
    m: {n: v.shape for n, v in d.items()} for m, d in p.items()
  }
  default, small = shapes(init()), shapes(init(label_query_channels=40))
  query = 'classification_decoder/~/basic_decoder/~/trainable_position_encoding'
  assert (default[query]['pos_embs'], small[query]['pos_embs']) == (
    (1, 1024),
    (1, 40),
  )
  mlp = 'multimodal_decoder/~/basic_decoder/cross_attention/mlp/linear'
  assert (default[mlp]['w'], small[mlp]['w']) == ((1026, 1026), (42, 42))
  assert default.keys() == small.keys()


def test_mlm_embed_init_scale_sets_the_table_and_keeps_the_tree():
  # The released table is hk.Embed's default: a truncated normal of stddev 1
  # (cut at 2 stddev, so the sample's stddev is ~0.88 of it); the table is
  # also the tied output layer, so its scale sets the initial logits' scale.
  args, _ = example_inputs('language_mlm', batch=2, **SMALL['language_mlm'])
  args = concrete(args)
  trees = {}
  for scale in (1.0, 0.02):
    model = presets.build(
      'language_mlm', embed_init_scale=scale, **SMALL['language_mlm']
    )
    params, state = model.init(jax.random.PRNGKey(0), *args, is_training=True)
    table = np.asarray(params['embed']['embeddings'])
    assert 0.8 * scale < table.std() < 0.95 * scale
    assert np.abs(table).max() <= 2 * scale
    logits, _ = model.apply(params, state, None, *args, is_training=False)
    trees[scale] = (shape_tree(params), float(np.std(logits)))
  assert trees[1.0][0] == trees[0.02][0]
  # Logits are the decoder's output times the table: 50x smaller table,
  # much smaller logits (the decoder's output also depends on the table).
  assert trees[0.02][1] < trees[1.0][1] / 10
  assert presets.defaults('language_mlm')['embed_init_scale'] == 1.0


@pytest.mark.parametrize('name', presets.PRESETS)
def test_tiny_names_the_tiny_sizes_as_the_presets_fields(name):
  out = presets.tiny(name)
  assert out['z_index_dim'] == 8 and out['num_z_channels'] == 16
  assert out['num_self_attends_per_block'] == 1
  heads = 'num_heads' if name == 'language_mlm' else 'num_self_attend_heads'
  assert out[heads] == 2
  assert ('num_blocks' in out) == name.startswith('imagenet')
  assert set(out) <= set(presets.defaults(name))
  assert presets.tiny(name, z_index_dim=4)['z_index_dim'] == 4


def test_tiny_rejects_an_unknown_field():
  with pytest.raises(ValueError, match='unknown'):
    presets.tiny('optical_flow', num_blocks=2)


def test_overrides_from_takes_the_presets_fields_of_a_config_block():
  model = ml_collections.ConfigDict(
    dict(
      arch='perceiver',  # the experiment's own: left out
      conv=dict(width=8),  # likewise
      image_size=[24, 32],  # a list (as a command line gives) -> a tuple
      z_index_dim=8,
    )
  )
  out = presets.overrides_from('optical_flow', model, num_z_channels=16)
  assert out == dict(image_size=(24, 32), z_index_dim=8, num_z_channels=16)
  # The sizes the data decides win over the block's.
  out = presets.overrides_from('optical_flow', model, z_index_dim=4)
  assert out['z_index_dim'] == 4
  with pytest.raises(ValueError, match=r"unknown \['max_seq_len'\]"):
    presets.overrides_from('optical_flow', model, max_seq_len=8)
  with pytest.raises(ValueError, match='attention_impl'):
    presets.overrides_from('optical_flow', dict(attention_impl='fast'))
