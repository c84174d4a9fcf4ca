"""A plain convolutional optical-flow network: the control of the flow experiment.

Not from the paper. Perceiver IO's flow results (Sec. 4.2, Table 4) are
compared with PWCNet and RAFT, both far larger than anything trained on this
machine; this small fully convolutional network tells, at CPU scale, a data
or training problem (neither model learns) from one of the Perceiver (only
the convolutions learn). It takes the flow preset's input (two frames
normalised to [-1, 1]) and returns flow in its units (pixels), so the flow
experiment trains and evaluates either one the same way.

Shapes: B batch, H x W frame size, C channels (`width`).

  frames [B, 2, H, W, 3] -> frame 1 and frame 2 side by side [B, H, W, 6]
  -> len(dilations) x (3 x 3 conv, dilation d, C channels, ReLU)
  -> 3 x 3 conv to 2 channels, zero-initialised (so a run starts at zero
     flow, like the released flow decoder), times `output_scale`.

With the default dilations (1, 1, 2, 4, 8, 16, 1) each output pixel sees
+-33 pixels of both frames, beyond the motions of the experiment's
`:local` scenes.
"""

from typing import Any, Dict, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from perceiver import validation

DEFAULTS: Dict[str, Any] = dict(
  image_size=(368, 496),
  width=64,
  dilations=(1, 1, 2, 4, 8, 16, 1),
  output_scale=20.0,
)


class ConvFlow(hk.Module):
  """Frames [B, 2, H, W, 3] (float, [-1, 1]) -> flow [B, H, W, 2] (pixels).

  Args:
    width: channels of every hidden convolution.
    dilations: one 3 x 3 ReLU convolution per entry, with that dilation.
    output_scale: multiplies the last convolution's output (the flow
      preset's decoder scales by 100 / 20 = 5 more; pixels either way).
  """

  def __init__(
    self,
    width: int,
    dilations: Sequence[int],
    output_scale: float,
    name: str = 'conv_flow',
  ):
    super().__init__(name=name)
    self._width = width
    self._dilations = tuple(dilations)
    self._output_scale = output_scale

  def __call__(self, frames: jax.Array, *, is_training: bool) -> jax.Array:
    del is_training  # no dropout or normalisation statistics
    if frames.ndim != 5 or frames.shape[1] != 2 or frames.shape[-1] != 3:
      raise ValueError(
        f'frames: expected [B, 2, H, W, 3], got shape {frames.shape}.'
      )
    x = jnp.concatenate([frames[:, 0], frames[:, 1]], axis=-1)
    for i, d in enumerate(self._dilations):
      x = hk.Conv2D(self._width, 3, rate=d, name=f'conv_{i}')(x)
      x = jax.nn.relu(x)
    flow = hk.Conv2D(
      2, 3, w_init=jnp.zeros, b_init=jnp.zeros, name='flow_head'
    )(x)
    return flow * self._output_scale


def config(**overrides) -> Dict[str, Any]:
  """DEFAULTS with `overrides`, checked.

  Raises:
    ValueError: an unknown field, or a size that is not a positive integer.
  """
  unknown = sorted(set(overrides) - set(DEFAULTS))
  if unknown:
    raise ValueError(
      f'overrides: expected fields among {sorted(DEFAULTS)}, got unknown '
      f'{unknown}.'
    )
  cfg = dict(DEFAULTS, **overrides)
  validation.check_positive('width', cfg['width'])
  if not cfg['dilations']:
    raise ValueError('dilations: expected at least one entry, got none.')
  for d in cfg['dilations']:
    validation.check_positive('dilations', d)
  cfg['image_size'] = tuple(cfg['image_size'])
  cfg['dilations'] = tuple(cfg['dilations'])
  return cfg


def build(**overrides) -> hk.TransformedWithState:
  """The network as `hk.TransformedWithState`, called like the flow preset:
  `apply(params, state, rng, frames [B, 2, H, W, 3], is_training=...)`.

  `image_size` is the training / tile size of the experiment (the network
  itself takes any size).
  """
  cfg = config(**overrides)

  def forward(frames, *, is_training):
    net = ConvFlow(cfg['width'], cfg['dilations'], cfg['output_scale'])
    return net(frames, is_training=is_training)

  return hk.transform_with_state(forward)
