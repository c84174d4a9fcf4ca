"""Augmentation of a whole batch, in JAX, inside the jitted training step.

Unlike the per-record ops (`image_ops`, `randaugment`, numpy on the host,
one record at a time), these act on the global batch as the step sees it,
with keys split from the step's rng: MixUp and CutMix pair examples of the
batch (the released ImageNet recipe mixes in the forward pass, Perceiver IO
App. A), and the audio augmentation of video autoencoding scales whole
examples. They stay out of the engine (`perceiver.train`), which knows
nothing of images or audio, and out of the experiments, which only choose
their settings (as in DeepMind's `train/dataset.py`, where CutMix and MixUp
live with the data).

- `mix_batch`: MixUp (Zhang et al. 2018) on the first half of the batch
  and CutMix (Yun et al. 2019) on the second, as the released
  `my_mixup_cutmix`; `cutmix_masks` draws its boxes.
- `augment_audio`: a random polarity and gain per example.

Shapes: B batch, S image size (H x W in general), C channels, K classes,
A audio samples.
"""

from typing import Tuple

import jax
import jax.numpy as jnp

from perceiver import validation


def cutmix_masks(rng: jax.Array, n: int, height: int, width: int) -> jax.Array:
  """n CutMix boxes as the released `cutmix_padding`: float32 [n, H, W].

  Per example: a centre (cy, cx) uniform over the pixels, an area
  proportion p ~ U(0, 1) (Beta(1, 1)), sides r = int(sqrt(1 - p) * size);
  the box is rows [cy - rh // 2, cy + rh // 2) x cols [cx - rw // 2,
  cx + rw // 2), clipped to the image; 1 inside, 0 outside.

  Args:
    rng: a PRNG key.
    n: how many masks.
    height, width: the image size H, W (pixels).

  Returns:
    float32 [n, H, W], 1 inside each box.

  Raises:
    ValueError: n, height or width is not a positive integer.
  """
  for name, value in (('n', n), ('height', height), ('width', width)):
    validation.check_positive(name, value)
  k_y, k_x, k_p = jax.random.split(rng, 3)
  cy = jax.random.randint(k_y, (n,), 0, height)
  cx = jax.random.randint(k_x, (n,), 0, width)
  side = jnp.sqrt(1.0 - jax.random.uniform(k_p, (n,)))
  rh = (side * height).astype(jnp.int32) // 2
  rw = (side * width).astype(jnp.int32) // 2
  rows = jnp.arange(height)[None, :, None]  # [1, H, 1]
  cols = jnp.arange(width)[None, None, :]  # [1, 1, W]
  inside = (
    (rows >= jnp.clip(cy - rh, 0, height)[:, None, None])
    & (rows < jnp.clip(cy + rh, 0, height)[:, None, None])
    & (cols >= jnp.clip(cx - rw, 0, width)[:, None, None])
    & (cols < jnp.clip(cx + rw, 0, width)[:, None, None])
  )
  return inside.astype(jnp.float32)


def mix_batch(
  images_BSSC: jax.Array,
  targets_BK: jax.Array,
  rng: jax.Array,
  *,
  mixup_alpha: float,
  cutmix: bool,
) -> Tuple[jax.Array, jax.Array]:
  """MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019), as released.

  With both on, the first B // 2 examples get MixUp and the rest CutMix
  (the released `my_mixup_cutmix`); with one on, the whole batch gets it.
  Each example is mixed with its mirror in its half (example i of n with
  n - 1 - i; the released code pairs two halves of a double-size host
  batch instead, which ties the batch to the host pipeline). MixUp: x =
  lam x + (1 - lam) x', lam ~ Beta(alpha, alpha) per example. CutMix: the
  box of `cutmix_masks` comes from x, the rest from x', lam = the box's area
  fraction. Targets are mixed with the same lam: lam y + (1 - lam) y'.

  Args:
    images_BSSC: float [B, S, S, C] (or [B, H, W, C]).
    targets_BK: float [B, K] one-hot (or soft) targets.
    rng: a PRNG key.
    mixup_alpha: Beta parameter (0: no MixUp).
    cutmix: whether to apply CutMix.

  Returns:
    (images [B, S, S, C] in the images' dtype, targets [B, K]), mixed.

  Raises:
    ValueError: images not [B, H, W, C], targets not [B, K] with the same
      B, or a negative `mixup_alpha`.
  """
  validation.check_rank('images_BSSC', images_BSSC, (4,), '[B, S, S, C]')
  validation.check_shape('targets_BK', targets_BK, (images_BSSC.shape[0], None))
  if not mixup_alpha >= 0:
    raise ValueError(
      f'mixup_alpha: expected a non-negative number (0: no MixUp), got '
      f'{mixup_alpha!r}.'
    )
  batch = images_BSSC.shape[0]
  if mixup_alpha > 0 and cutmix:
    split = batch // 2
  elif mixup_alpha > 0:
    split = batch
  elif cutmix:
    split = 0
  else:
    return images_BSSC, targets_BK
  k_mixup, k_cutmix = jax.random.split(rng)
  dtype = images_BSSC.dtype

  def mixed(x, y, lam_x, lam_y):
    x_mix = lam_x * x + (1 - lam_x) * jnp.flip(x, 0)
    y_mix = lam_y[:, None] * y + (1 - lam_y[:, None]) * jnp.flip(y, 0)
    return x_mix.astype(dtype), y_mix

  parts = []
  if split:
    lam = jax.random.beta(k_mixup, mixup_alpha, mixup_alpha, (split,))
    parts.append(
      mixed(
        images_BSSC[:split],
        targets_BK[:split],
        lam[:, None, None, None].astype(dtype),
        lam,
      )
    )
  if split < batch:
    _, height, width, _ = images_BSSC.shape
    mask = cutmix_masks(k_cutmix, batch - split, height, width)
    parts.append(
      mixed(
        images_BSSC[split:],
        targets_BK[split:],
        mask[..., None].astype(dtype),
        mask.mean(axis=(1, 2)),
      )
    )
  return (
    jnp.concatenate([p[0] for p in parts]),
    jnp.concatenate([p[1] for p in parts]),
  )


def augment_audio(
  key: jax.Array, audio_BA1: jax.Array, *, max_log_gain: float
) -> jax.Array:
  """Random polarity and gain per example (training inputs and targets).

  Not in the paper: with one short clip to train on, the video
  autoencoder otherwise memorises the clip's soundtrack instead of reading
  its input (docs/results/video_autoencoding.md, the audio of `:local`).

  Args:
    key: a PRNG key.
    audio_BA1: [B, A, 1] samples.
    max_log_gain: each example is multiplied by a random sign (+-1, equally
      likely) and by exp(u), u ~ U(-max_log_gain, max_log_gain).

  Returns:
    float32 [B, A, 1].

  Raises:
    ValueError: audio not [B, A, 1], or a negative `max_log_gain`.
  """
  validation.check_shape('audio_BA1', audio_BA1, (None, None, 1))
  if not max_log_gain >= 0:
    raise ValueError(
      f'max_log_gain: expected a non-negative number, got {max_log_gain!r}.'
    )
  key_sign, key_gain = jax.random.split(key)
  b = audio_BA1.shape[0]
  sign = jax.random.rademacher(key_sign, (b, 1, 1), jnp.float32)
  log_gain = jax.random.uniform(
    key_gain, (b, 1, 1), minval=-max_log_gain, maxval=max_log_gain
  )
  return audio_BA1.astype(jnp.float32) * sign * jnp.exp(log_gain)
