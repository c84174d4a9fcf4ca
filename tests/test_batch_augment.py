"""experiments/data/batch_augment.py: MixUp / CutMix of the released
ImageNet recipe and the random audio polarity and gain, in JAX.

References: the CutMix boxes built by hand from the same draws; mixed
examples checked pixel by pixel against the two images they came from;
the audio factors read back from the output.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.data import batch_augment


def test_cutmix_masks_are_the_released_boxes():
  n, height, width = 64, 12, 9
  rng = jax.random.PRNGKey(3)
  masks = np.asarray(batch_augment.cutmix_masks(rng, n, height, width))
  # The same draws, boxes built by hand.
  k_y, k_x, k_p = jax.random.split(rng, 3)
  cy = np.asarray(jax.random.randint(k_y, (n,), 0, height))
  cx = np.asarray(jax.random.randint(k_x, (n,), 0, width))
  p = np.asarray(jax.random.uniform(k_p, (n,)))
  for i in range(n):
    side = np.sqrt(1 - np.float32(p[i]))
    rh, rw = int(side * height) // 2, int(side * width) // 2
    expected = np.zeros((height, width), np.float32)
    y0, y1 = max(cy[i] - rh, 0), min(cy[i] + rh, height)
    x0, x1 = max(cx[i] - rw, 0), min(cx[i] + rw, width)
    expected[y0:y1, x0:x1] = 1
    np.testing.assert_array_equal(masks[i], expected)
  assert 0 < masks.mean() < 1


def _mix(batch, mixup_alpha=0.2, cutmix=True, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch, 6, 6, 3)).astype(np.float32)
  labels = np.arange(batch) % 10
  targets = np.eye(10, dtype=np.float32)[labels]
  out_x, out_y = batch_augment.mix_batch(
    jnp.asarray(images),
    jnp.asarray(targets),
    jax.random.PRNGKey(seed),
    mixup_alpha=mixup_alpha,
    cutmix=cutmix,
  )
  return images, labels, np.asarray(out_x), np.asarray(out_y)


def _check_mixup(images, labels, out_x, out_y, rows):
  n = len(rows)
  for k, i in enumerate(rows):
    p = rows[n - 1 - k]  # mirror in the half
    lam = out_y[i, labels[i]] if p != i else 1.0
    if p != i:
      assert out_y[i, labels[p]] == pytest.approx(1 - lam, abs=1e-6)
    np.testing.assert_allclose(
      out_x[i], lam * images[i] + (1 - lam) * images[p], atol=1e-5
    )


def _check_cutmix(images, labels, out_x, out_y, rows):
  n = len(rows)
  for k, i in enumerate(rows):
    p = rows[n - 1 - k]
    if p == i:  # the middle of an odd half is mixed with itself
      np.testing.assert_array_equal(out_x[i], images[i])
      assert out_y[i, labels[i]] == pytest.approx(1.0)
      continue
    from_i = np.all(out_x[i] == images[i], axis=-1)  # [H, W]
    from_p = np.all(out_x[i] == images[p], axis=-1)
    assert np.all(from_i | from_p)
    ys, xs = np.nonzero(from_i)
    if len(ys):  # one axis-aligned box
      assert from_i[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()
    assert out_y[i, labels[i]] == pytest.approx(from_i.mean(), abs=1e-6)
    assert out_y[i, labels[p]] == pytest.approx(1 - from_i.mean(), abs=1e-6)


@pytest.mark.parametrize('batch', [8, 9])
def test_mix_batch_mixup_then_cutmix(batch):
  images, labels, out_x, out_y = _mix(batch)
  np.testing.assert_allclose(out_y.sum(-1), 1, atol=1e-6)
  half = batch // 2
  _check_mixup(images, labels, out_x, out_y, list(range(half)))
  _check_cutmix(images, labels, out_x, out_y, list(range(half, batch)))


def test_mix_batch_one_kind_or_none():
  images, labels, out_x, out_y = _mix(8, cutmix=False)
  _check_mixup(images, labels, out_x, out_y, list(range(8)))
  images, labels, out_x, out_y = _mix(8, mixup_alpha=0.0)
  _check_cutmix(images, labels, out_x, out_y, list(range(8)))
  images, labels, out_x, out_y = _mix(8, mixup_alpha=0.0, cutmix=False)
  np.testing.assert_array_equal(out_x, images)
  np.testing.assert_array_equal(out_y, np.eye(10)[labels])


def test_augment_audio_sign_and_gain_per_example():
  audio = np.random.default_rng(0).normal(size=(256, 40, 1)).astype(np.float32)
  out = np.asarray(
    batch_augment.augment_audio(jax.random.PRNGKey(0), audio, max_log_gain=0.5)
  )
  factor = out[:, :, 0] / audio[:, :, 0]
  # One factor per example: +-exp(u), |u| <= 0.5, both signs drawn.
  np.testing.assert_allclose(
    factor, factor[:, :1] * np.ones((1, 40)), rtol=1e-5
  )
  log_gain = np.log(np.abs(factor[:, 0]))
  assert np.all(np.abs(log_gain) <= 0.5 + 1e-6)
  assert log_gain.min() < -0.3 and log_gain.max() > 0.3
  assert 0.3 < np.mean(factor[:, 0] > 0) < 0.7


@pytest.mark.parametrize(
  'images, targets, alpha, match',
  [
    ((8, 6, 6), (8, 10), 0.2, r'images_BSSC: expected an array of rank 4'),
    (
      (8, 6, 6, 3),
      (7, 10),
      0.2,
      r"targets_BK: expected shape \(8, '\*'\), got \(7, 10\)",
    ),
    ((8, 6, 6, 3), (8, 10), -0.1, 'mixup_alpha: expected a non-negative'),
  ],
)
def test_mix_batch_refuses_bad_input(images, targets, alpha, match):
  with pytest.raises(ValueError, match=match):
    batch_augment.mix_batch(
      jnp.zeros(images),
      jnp.zeros(targets),
      jax.random.PRNGKey(0),
      mixup_alpha=alpha,
      cutmix=True,
    )


def test_cutmix_masks_refuse_a_bad_size():
  with pytest.raises(ValueError, match='height: expected a positive integer'):
    batch_augment.cutmix_masks(jax.random.PRNGKey(0), 2, 0, 4)


@pytest.mark.parametrize(
  'shape, gain, match',
  [
    (
      (4, 40),
      0.5,
      r"audio_BA1: expected shape \('\*', '\*', 1\), got \(4, 40\)",
    ),
    ((4, 40, 1), -0.5, 'max_log_gain: expected a non-negative number'),
  ],
)
def test_augment_audio_refuses_bad_input(shape, gain, match):
  with pytest.raises(ValueError, match=match):
    batch_augment.augment_audio(
      jax.random.PRNGKey(0), np.zeros(shape), max_log_gain=gain
    )
