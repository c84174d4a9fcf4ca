"""perceiver/byte_transformer.py: the byte-level Transformer baseline.

Shapes and the paper's parameter count (by hand), the padding mask against
the same record without padding, the tied logits against a hand product,
independent layers, and the configuration checks.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver import byte_transformer as bt

TINY = dict(max_seq_len=6, d_model=16, num_layers=2, num_heads=2)


def _init(model, ids, mask, seed=0):
  params, state = model.init(
    jax.random.PRNGKey(seed), ids, mask, is_training=False
  )
  return params, state


def _ids(batch, length, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(6, 262, (batch, length)), jnp.int32)


def test_logits_shape_and_parameter_tree():
  model = bt.build(**TINY)
  ids = _ids(3, 6)
  params, state = _init(model, ids, jnp.ones_like(ids))
  logits, _ = model.apply(
    params, state, None, ids, jnp.ones_like(ids), is_training=False
  )
  assert logits.shape == (3, 6, 262) and logits.dtype == jnp.float32
  assert state == {}
  assert params['embed']['embeddings'].shape == (262, 16)
  assert params['trainable_position_encoding']['pos_embs'].shape == (6, 16)
  assert params['embedding_decoder']['bias'].shape == (262,)
  assert params['byte_transformer_encoder/layer_norm']['scale'].shape == (16,)
  mlp = params['byte_transformer_encoder/self_attention_1/mlp/linear']
  assert mlp['w'].shape == (16, 64)  # widening factor 4
  assert 'byte_transformer_encoder/self_attention_2/mlp/linear' not in params


def test_paper_size_has_the_20m_parameters_of_table_1():
  ids = jax.ShapeDtypeStruct((1, 2048), jnp.int32)
  params, _ = jax.eval_shape(
    lambda a: bt.build().init(jax.random.PRNGKey(0), a, a, is_training=False),
    ids,
  )
  # By hand: per layer 2 LayerNorms, q/k/v/out projections with biases and
  # the 4x MLP; the final LayerNorm, byte table, positions, output bias.
  c, layers, vocab, length = 512, 6, 262, 2048
  layer = 2 * 2 * c + 4 * (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c)
  want = layers * layer + 2 * c + vocab * c + length * c + vocab
  assert sum(x.size for x in jax.tree.leaves(params)) == want
  assert round(want / 1e6) == 20


def test_padding_does_not_reach_the_real_bytes():
  # A record of 4 bytes padded to 6 (padding filled with arbitrary ids)
  # against the same 4 bytes in a model of length 4 with the same weights.
  padded = bt.build(**TINY)
  short = bt.build(**dict(TINY, max_seq_len=4))
  ids = _ids(2, 6, seed=1)
  mask = jnp.asarray([[1, 1, 1, 1, 0, 0]] * 2, jnp.int32)
  params, state = _init(padded, ids, mask)
  got, _ = padded.apply(params, state, None, ids, mask, is_training=False)
  short_params = dict(params)
  short_params['trainable_position_encoding'] = {
    'pos_embs': params['trainable_position_encoding']['pos_embs'][:4]
  }
  want, _ = short.apply(
    short_params, state, None, ids[:, :4], mask[:, :4], is_training=False
  )
  np.testing.assert_allclose(got[:, :4], want, rtol=1e-5, atol=1e-5)
  # Without the mask the padding does reach them.
  unmasked, _ = padded.apply(
    params, state, None, ids, jnp.ones_like(mask), is_training=False
  )
  assert np.abs(np.asarray(unmasked[:, :4] - want)).max() > 1e-3


def test_logits_are_the_final_states_times_the_byte_table_plus_bias():
  # With the final LayerNorm's scale 0, every final state is its offset v,
  # so each position's logits must be table @ v + bias.
  model = bt.build(**TINY)
  ids = _ids(2, 6, seed=2)
  params, state = _init(model, ids, jnp.ones_like(ids))
  rng = np.random.default_rng(3)
  v = rng.standard_normal(16).astype(np.float32)
  bias = rng.standard_normal(262).astype(np.float32)
  params = dict(params)
  params['byte_transformer_encoder/layer_norm'] = {
    'scale': jnp.zeros(16),
    'offset': jnp.asarray(v),
  }
  params['embedding_decoder'] = {'bias': jnp.asarray(bias)}
  logits, _ = model.apply(
    params, state, None, ids, jnp.ones_like(ids), is_training=False
  )
  table = np.asarray(params['embed']['embeddings'], np.float64)
  want = table @ v.astype(np.float64) + bias
  np.testing.assert_allclose(
    np.asarray(logits), np.broadcast_to(want, (2, 6, 262)), rtol=1e-5, atol=1e-5
  )


def test_each_layer_is_initialised_from_its_own_key():
  model = bt.build(**dict(TINY, num_layers=3))
  ids = _ids(1, 6)
  params, _ = _init(model, ids, jnp.ones_like(ids))
  names = ['self_attention', 'self_attention_1', 'self_attention_2']
  for part in ('attention/linear', 'attention/linear_3', 'mlp/linear_1'):
    weights = [
      np.asarray(params[f'byte_transformer_encoder/{n}/{part}']['w'])
      for n in names
    ]
    for i in range(3):
      for j in range(i + 1, 3):
        assert not np.allclose(weights[i], weights[j]), (part, i, j)
  # And the byte table follows embed_init_scale, as in the language preset.
  small = bt.build(**dict(TINY, embed_init_scale=0.02))
  table = _init(small, ids, jnp.ones_like(ids))[0]['embed']['embeddings']
  assert 0.015 < float(jnp.std(table)) < 0.025


def test_encoder_alone_keeps_the_shape():
  enc = hk.transform(
    lambda x, m: bt.ByteTransformerEncoder(num_layers=1, num_heads=2)(
      x, is_training=False, input_mask=m
    )
  )
  x = jnp.ones((2, 5, 8))
  mask = jnp.ones((2, 5))
  params = enc.init(jax.random.PRNGKey(0), x, mask)
  assert enc.apply(params, None, x, mask).shape == (2, 5, 8)
  with pytest.raises(ValueError, match='input_mask: expected shape'):
    enc.apply(params, None, x, jnp.ones((2, 4)))


@pytest.mark.parametrize(
  'overrides, match',
  [
    (dict(depth=3), 'unknown'),
    (dict(d_model=10, num_heads=4), 'd_model=10 must be divisible'),
    (dict(num_layers=0), 'num_layers: expected a positive integer'),
    (dict(embed_init_scale=0.0), 'embed_init_scale: expected a positive'),
    (dict(attention_impl='flash'), 'attention_impl: expected one of'),
  ],
)
def test_config_rejects_bad_fields(overrides, match):
  with pytest.raises(ValueError, match=match):
    bt.build(**overrides)
