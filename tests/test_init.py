"""Initialisation: every layer is its own draw, at the released scales.

The expected initialisers are written out here from the released code
(../shared/reference/MODELS.md, Sec. 1.1-1.3), not read from ours:

* `conv_1d` (every projection inside `Attention` and `MLP`): `hk.Linear` with
  `VarianceScaling(1.0)`, i.e. fan-in scaling with a truncated normal whose
  *sample* std is sqrt(1 / fan_in) (Haiku divides the stddev by the std of a
  normal truncated at two sigmas, 0.8796, to undo the truncation);
* other `hk.Linear` and `hk.Conv*` weights: Haiku's default, a truncated
  normal of stddev 1 / sqrt(fan_in) (sample std 0.8796 / sqrt(fan_in)); the
  flow decoder's output layer: zeros (`output_w_init=jnp.zeros`);
* `TrainablePositionEncoding` (latents, queries, padding, mask tokens):
  truncated normal of stddev 0.02 (sample std 0.02 x 0.8796);
* `hk.Embed`: truncated normal of stddev `embed_init_scale` (1.0 released);
* biases and LayerNorm/BatchNorm offsets 0, LayerNorm/BatchNorm scales 1.
"""

import itertools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver import encoder as encoder_lib
from perceiver import presets
from tests.test_presets import SMALL

# Std of a standard normal truncated to [-2, 2].
TRUNCATED_STD = 0.8796256610342398

# The presets' reduced sizes (tests/test_presets.py), widened to 64 channels so
# that each weight matrix holds thousands of draws, with three distinct
# self-attention layers per block.
SIZES = {
  name: {**small, 'num_z_channels': 64, 'num_self_attends_per_block': 3}
  for name, small in SMALL.items()
}
SIZES['language_mlm'].update(d_model=64, qk_channels=64)

LAYER_PATHS = {
  'unrolled': dict(scan_layers=False, scan_blocks=False),
  'scanned': dict(scan_layers=True, scan_blocks=True),
}


def expected_init(module, name, shape, *, embed_scale=1.0):
  """('const', value) or ('std', sample std) of a released parameter."""
  leaf = module.split('/')[-1]
  if leaf.startswith(('layer_norm', 'batchnorm')):
    return 'const', 1.0 if name == 'scale' else 0.0
  if name in ('b', 'bias'):
    return 'const', 0.0
  if name == 'pos_embs':
    return 'std', 0.02 * TRUNCATED_STD
  if name == 'embeddings':
    return 'std', embed_scale * TRUNCATED_STD
  assert name == 'w', (module, name)
  if '/attention/' in module or '/mlp/' in module:
    return 'std', np.sqrt(1.0 / shape[0])  # conv_1d: VarianceScaling(1.0)
  if module.startswith('flow_decoder') and leaf == 'output':
    return 'const', 0.0
  if '_transpose' in leaf:
    fan_in = np.prod(shape[:-2]) * shape[-1]
  else:
    fan_in = np.prod(shape[:-1])
  return 'std', TRUNCATED_STD / np.sqrt(fan_in)


def check_released_init(params, *, embed_scale=1.0):
  """Asserts every leaf's constant or spread; returns how many were checked."""
  checked = 0
  for module, leaves in params.items():
    for name, value in leaves.items():
      value = np.asarray(value, np.float64)
      kind, target = expected_init(
        module, name, value.shape, embed_scale=embed_scale
      )
      where = f'{module}/{name} {value.shape}'
      if kind == 'const':
        np.testing.assert_array_equal(value, target, err_msg=where)
        continue
      n = value.size
      if n < 32:
        continue  # a spread from fewer draws says little
      # The sample std of n draws of a two-sigma truncated normal has a
      # relative standard error of ~0.6 / sqrt(n) (kurtosis 2.36); allow 5x.
      assert abs(value.std() / target - 1) < 3.0 / np.sqrt(n), (
        where,
        value.std(),
        target,
      )
      assert abs(value.mean()) < 5 * target / np.sqrt(n), (where, value.mean())
      # Truncated at two sigmas of the underlying normal.
      assert np.abs(value).max() <= 2 * target / TRUNCATED_STD + 1e-6, where
      checked += 1
  return checked


def assert_no_two_equal(params):
  """No two random leaves of the same shape hold the same values."""
  random = [
    (f'{m}/{n}', np.asarray(v))
    for m, d in params.items()
    for n, v in d.items()
    if np.asarray(v).std() > 0
  ]
  for (a, x), (b, y) in itertools.combinations(random, 2):
    if x.shape == y.shape:
      assert not np.allclose(x, y), f'{a} equals {b} at init'


def init_preset(name, seed=0, **options):
  args = jax.tree.map(
    lambda s: jnp.zeros(s.shape, s.dtype),
    presets.example_inputs(name, 1, **SIZES[name]),
  )
  model = presets.build(name, **SIZES[name], **options)
  params, _ = jax.jit(lambda rng, *a: model.init(rng, *a, is_training=True))(
    jax.random.PRNGKey(seed), *args
  )
  return params


def init_encoder(seed=0, **options):
  def forward(x):
    enc = encoder_lib.PerceiverEncoder(
      num_self_attends_per_block=4,
      num_blocks=2,
      z_index_dim=16,
      num_z_channels=128,
      num_self_attend_heads=4,
      **options,
    )
    return enc(x, enc.latents(x), is_training=False)

  x = jnp.zeros((1, 10, 96))
  return hk.transform(forward).init(jax.random.PRNGKey(seed), x)


@pytest.mark.parametrize('path', LAYER_PATHS)
def test_encoder_layers_are_independent_draws_at_the_released_scales(path):
  params = init_encoder(**LAYER_PATHS[path])
  layers = sorted({m.split('/')[2] for m in params if 'self_attention' in m})
  assert layers == ['self_attention'] + [
    f'self_attention_{i}' for i in (1, 2, 3)
  ]
  assert_no_two_equal(params)
  assert check_released_init(params) >= 4 * 6 + 5


def test_encoder_init_is_the_same_on_both_layer_paths():
  # The switches change compilation, never the parameters (same draws too).
  a = init_encoder(**LAYER_PATHS['unrolled'])
  b = init_encoder(**LAYER_PATHS['scanned'])
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_encoder_init_depends_on_the_seed():
  a, b = init_encoder(seed=0), init_encoder(seed=1)
  w = 'perceiver_encoder/~/self_attention_2/mlp/linear'
  assert not np.allclose(a[w]['w'], b[w]['w'])


@pytest.mark.parametrize('path', LAYER_PATHS)
@pytest.mark.parametrize('name', presets.PRESETS)
def test_preset_init_is_independent_and_at_the_released_scales(name, path):
  params = init_preset(name, **LAYER_PATHS[path])
  assert_no_two_equal(params)
  checked = check_released_init(params)
  # Three self-attention layers of six weights each at least.
  assert checked >= 3 * 6


def test_embed_init_scale_sets_the_byte_table_spread():
  params = init_preset('language_mlm', embed_init_scale=0.02)
  check_released_init(params, embed_scale=0.02)
