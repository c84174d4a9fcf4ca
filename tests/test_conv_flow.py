"""perceiver.conv_flow: the flow experiment's convolutional control."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver import conv_flow


def _init(**overrides):
  net = conv_flow.build(**overrides)
  frames = jnp.zeros((2, 2, 40, 50, 3))
  params, state = net.init(jax.random.PRNGKey(0), frames, is_training=True)
  return net, params, state


def test_starts_at_zero_flow_and_keeps_the_frame_size():
  net, params, state = _init(width=8, dilations=(1, 2))
  frames = jax.random.uniform(jax.random.PRNGKey(1), (2, 2, 40, 50, 3))
  flow, _ = net.apply(params, state, None, frames, is_training=False)
  assert flow.shape == (2, 40, 50, 2) and flow.dtype == jnp.float32
  assert (flow == 0).all()
  assert sorted(params) == [
    'conv_flow/conv_0',
    'conv_flow/conv_1',
    'conv_flow/flow_head',
  ]
  assert params['conv_flow/conv_0']['w'].shape == (3, 3, 6, 8)


def test_receptive_field_is_one_pixel_per_dilation_plus_the_head():
  # A 3 x 3 convolution of dilation d widens the field by d on each side:
  # the centre output depends on input pixels within 1 + 2 + 1 = 4 of it,
  # hand-counted, and on nothing farther.
  net, params, state = _init(width=8, dilations=(1, 2))
  params = jax.tree.map(lambda x: x + 0.1, params)  # a non-zero head

  def centre(frames):
    flow, _ = net.apply(params, state, None, frames, is_training=False)
    return flow[0, 20, 25, 0]

  frames = jax.random.uniform(jax.random.PRNGKey(1), (1, 2, 40, 50, 3))
  reach = np.abs(np.asarray(jax.grad(centre)(frames))).sum((0, 1, 4)) > 0
  ys, xs = np.nonzero(reach)
  assert (ys.min(), ys.max(), xs.min(), xs.max()) == (16, 24, 21, 29)


def test_output_scale_multiplies_the_head():
  net, params, state = _init(width=4, dilations=(1,), output_scale=3.0)
  params = hk.data_structures.to_mutable_dict(params)
  params['conv_flow/flow_head']['b'] = jnp.array([1.0, -2.0])
  flow, _ = net.apply(
    params, state, None, jnp.zeros((1, 2, 8, 8, 3)), is_training=False
  )
  np.testing.assert_allclose(flow[0, 3, 4], [3.0, -6.0])


@pytest.mark.parametrize(
  'overrides, match',
  [
    (dict(depth=3), r"unknown \['depth'\]"),
    (dict(width=0), 'width: expected a positive integer'),
    (dict(dilations=()), 'dilations: expected at least one'),
    (dict(dilations=(1, 0)), 'dilations: expected a positive integer'),
  ],
)
def test_bad_config_names_the_field(overrides, match):
  with pytest.raises(ValueError, match=match):
    conv_flow.build(**overrides)


def test_frames_of_the_wrong_shape_are_refused():
  net = conv_flow.build(width=4, dilations=(1,))
  with pytest.raises(ValueError, match=r'frames: expected \[B, 2, H, W, 3\]'):
    net.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 6)), is_training=True)
