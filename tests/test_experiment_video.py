"""The video autoencoding and AudioSet experiments: model, loss, metrics,
files, and `:debug` end to end through `perceiver.train.train`."""

import json
import os
import wave

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from experiments import audioset
from experiments import video_autoencoding as vae
from perceiver import presets
from tests import test_data_video as clips_lib
from tests import test_train_evaluation as evaluation_test


def small_model(**overrides):
  m = vae.get_config('debug').model.to_dict()
  m.update(overrides)
  return m


def random_batch(m, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  return {
    'image': rng.integers(
      0, 256, (batch, m['num_frames'], m['image_size'], m['image_size'], 3)
    ).astype(np.uint8),
    'audio': rng.uniform(-1, 1, (batch, m['audio_samples'], 1)).astype(
      np.float32
    ),
    'label': rng.integers(0, m['num_classes'], (batch,)).astype(np.int32),
  }


def init_params(forward, batch):
  """The forward's parameters and state, initialised for training (seed 0)."""
  return jax.jit(
    lambda b: forward.init(jax.random.PRNGKey(0), b, is_training=True)
  )(batch)


def train_decode(forward, params, state, batch):
  """The forward's training outputs for `batch` (rng seed 3)."""
  return jax.jit(
    lambda b: forward.apply(
      params, state, jax.random.PRNGKey(3), b, is_training=True
    )[0]
  )(batch)


def as_cfg(d):
  return ml_collections.ConfigDict(d)


def test_model_is_the_preset():
  m = small_model()
  loss = vae.get_config('debug').loss
  forward = vae.make_forward(as_cfg(m), loss)
  batch = random_batch(m)
  params, state = init_params(forward, batch)
  preset = presets.build(
    'video_autoencoding', **presets.overrides_from('video_autoencoding', m)
  )
  inputs = vae.model_inputs(batch, m['num_classes'])
  p2 = jax.eval_shape(
    lambda x: preset.init(jax.random.PRNGKey(1), x, is_training=False)[0],
    inputs,
  )
  shapes = lambda p: jax.tree.map(lambda x: x.shape, p)
  assert shapes(params) == shapes(p2)
  # Evaluation (label masked) is the preset's unchunked decode.
  ours, _ = jax.jit(
    lambda b: forward.apply(params, state, None, b, is_training=False)
  )(batch)
  theirs, _ = jax.jit(
    lambda x: preset.apply(params, state, None, x, is_training=False)
  )(inputs)
  for k in ('image', 'audio', 'label'):
    np.testing.assert_allclose(ours[k], theirs[k], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(ours['image_target'], inputs['image'], atol=1e-7)
  np.testing.assert_array_equal(ours['audio_target'], batch['audio'])


def test_training_decodes_random_points_per_example():
  m = small_model()
  loss = vae.get_config('debug').loss
  forward = vae.make_forward(as_cfg(m), loss)
  batch = random_batch(m)
  batch['image'][1] = batch['image'][0]  # two identical examples
  batch['audio'][1] = batch['audio'][0]
  params, state = init_params(forward, batch)
  out = train_decode(forward, params, state, batch)
  assert out['image'].shape == out['image_target'].shape == (2, 16, 3)
  assert out['audio'].shape == out['audio_target'].shape == (2, 64)
  assert out['label'].shape == (2, 2)
  pixels = batch['image'][0].reshape(-1, 3) / 255.0
  for b in range(2):
    for row in np.asarray(out['image_target'][b]):
      assert np.isclose(pixels, row, atol=1e-6).all(axis=1).any()
    # Each target patch is 16 consecutive samples of the clip's audio.
    patches = batch['audio'][b, :, 0].reshape(-1, 16)
    for patch in np.asarray(out['audio_target'][b]).reshape(-1, 16):
      assert np.isclose(patches, patch, atol=1e-6).all(axis=1).any()
  # Same clip, different points: each example draws its own.
  assert not np.allclose(out['image_target'][0], out['image_target'][1])


def test_label_masking_per_example():
  # The preset masks at 0 and 1 as asked (tests/test_presets.py); here the
  # config's 0.5 reaches it and each example draws its own mask.
  m = small_model()
  loss = vae.get_config('debug').loss
  assert loss.label_mask_prob == 0.5
  forward = vae.make_forward(as_cfg(m), loss)
  batch = random_batch(m, batch=8)
  params, state = init_params(forward, batch)
  apply = jax.jit(
    lambda b: forward.apply(
      params, state, jax.random.PRNGKey(3), b, is_training=True
    )[0]['label']
  )
  other = dict(batch, label=(batch['label'] + 1) % 2)
  # A masked label does not reach the logits; a visible one does.
  seen = ~np.isclose(apply(batch), apply(other), atol=1e-6).all(axis=1)
  assert 0 < int(seen.sum()) < 8, seen


def test_per_example_values():
  image = np.zeros((1, 2, 4, 4, 3), np.uint8)
  image[0, 1] = 255  # mean colour 0.5: baseline MSE 0.25
  batch = {
    'image': image,
    'audio': np.full((1, 8, 1), 0.1, np.float32),
    'label': np.array([1]),
  }
  target = image / 255.0
  outputs = {
    'image': target + 0.1,
    'image_target': target,
    'audio': np.zeros((1, 8, 1)),
    'audio_target': batch['audio'],
    'label': jnp.log(jnp.array([[0.25, 0.75]])),
  }
  got = vae.per_example(
    outputs, batch, video_weight=0.03, audio_weight=1.0, label_weight=1e-4
  )
  np.testing.assert_allclose(got['video_psnr'], [20.0], rtol=1e-5)
  np.testing.assert_allclose(
    got['video_psnr_baseline'], [10 * np.log10(4)], rtol=1e-5
  )
  np.testing.assert_allclose(got['audio_psnr'], [20.0], rtol=1e-5)
  np.testing.assert_allclose(got['audio_psnr_baseline'], [20.0], rtol=1e-5)
  np.testing.assert_allclose(got['label_ce'], [-np.log(0.75)], rtol=1e-5)
  np.testing.assert_allclose(
    got['loss'], [0.03 * 0.1 + 0.1 - 1e-4 * np.log(0.75)], rtol=1e-5
  )
  assert float(got['top1'][0]) == 1.0
  # Training scores a subsample: the baselines score the same points (the
  # mean colour still that of the whole window).
  batch['audio'][0, :4] = 0.0  # the decoded samples are silent
  subsample = dict(
    outputs,
    image=np.full((1, 2, 3), 0.6),
    image_target=np.ones((1, 2, 3)),  # two white pixels: error 0.5
    audio=np.full((1, 4), 0.01),
    audio_target=batch['audio'][:, :4, 0],
  )
  got = vae.per_example(
    subsample, batch, video_weight=0.03, audio_weight=1.0, label_weight=1e-4
  )
  np.testing.assert_allclose(got['video_psnr'], [10 * np.log10(1 / 0.16)])
  np.testing.assert_allclose(got['video_psnr_baseline'], [10 * np.log10(4)])
  np.testing.assert_allclose(got['audio_psnr'], [40.0], rtol=1e-5)
  np.testing.assert_allclose(got['audio_psnr_baseline'], [100.0])  # floor
  assert vae.report(
    {
      'video_psnr': 20.04,
      'video_psnr_baseline': 6.02,
      'audio_psnr': 31.25,
      'audio_psnr_baseline': 46.5,
      'top1': 0.5,
    }
  ) == (
    'video PSNR: 20.0 dB (baseline 6.0)\n'
    'audio PSNR: 31.2 dB (baseline 46.5)\n'
    'top-1 (label masked): 50.0%'
  )


def test_audio_gain_scales_what_the_model_reads_not_the_units():
  """The preset reads audio x gain; outputs come back divided by it, targets
  are the batch's samples, in training and in evaluation."""
  gain = 8.0
  m = small_model(audio_gain=gain)
  loss = vae.get_config('debug').loss
  loss.unlock()
  loss.label_mask_prob = 1.0  # training then encodes what evaluation does
  forward = vae.make_forward(as_cfg(m), loss)
  batch = random_batch(m)
  batch['audio'] *= 0.01  # a quiet track
  params, state = init_params(forward, batch)
  preset = presets.build(
    'video_autoencoding', **presets.overrides_from('video_autoencoding', m)
  )
  loud = dict(batch, audio=batch['audio'] * gain)
  theirs, _ = jax.jit(
    lambda x: preset.apply(params, state, None, x, is_training=False)
  )(vae.model_inputs(loud, m['num_classes']))
  ours, _ = jax.jit(
    lambda b: forward.apply(params, state, None, b, is_training=False)
  )(batch)
  np.testing.assert_allclose(
    ours['audio'], np.asarray(theirs['audio']) / gain, rtol=1e-4, atol=1e-6
  )
  np.testing.assert_array_equal(ours['audio_target'], batch['audio'])
  np.testing.assert_allclose(ours['image'], theirs['image'], atol=1e-5)
  train, _ = jax.jit(
    lambda b: forward.apply(
      params, state, jax.random.PRNGKey(3), b, is_training=True
    )
  )(batch)
  patches = batch['audio'][0, :, 0].reshape(-1, 16)
  full = np.asarray(ours['audio'][0, :, 0]).reshape(-1, 16)
  target = np.asarray(train['audio_target'][0]).reshape(-1, 16)
  output = np.asarray(train['audio'][0]).reshape(-1, 16)
  for patch, out in zip(target, output):
    (where,) = np.nonzero(np.isclose(patches, patch, rtol=1e-6).all(axis=1))
    assert where.size == 1  # the patch the training decode drew
    np.testing.assert_allclose(out, full[where[0]], rtol=1e-4, atol=1e-6)


def test_training_reads_and_scores_the_augmented_audio():
  """With loss.audio_augment, an example's training targets are its audio
  times one random +-gain, and the model reads that same audio: its training
  decode equals the full decode of the scaled batch at the drawn patches."""
  m = small_model()
  loss = vae.get_config('debug').loss
  loss.unlock()
  loss.label_mask_prob = 1.0
  loss.audio_augment = 0.7
  forward = vae.make_forward(as_cfg(m), loss)
  batch = random_batch(m, batch=1)
  params, state = init_params(forward, batch)
  train = train_decode(forward, params, state, batch)
  patches = batch['audio'][0, :, 0].reshape(-1, 16)
  target = np.asarray(train['audio_target'][0]).reshape(-1, 16)
  # Each target patch is one of the batch's patches times one factor.
  ratios = target[:, None] / patches[None]  # [drawn, Q, 16]
  spread = ratios.std(-1) / np.abs(ratios.mean(-1))
  drawn = np.argmin(spread, axis=1)
  assert np.all(spread[np.arange(len(drawn)), drawn] < 1e-4)
  factors = ratios[np.arange(len(drawn)), drawn].mean(-1)
  factor = factors[0]
  np.testing.assert_allclose(factors, factor, rtol=1e-4)
  assert abs(np.log(abs(factor))) <= 0.7 + 1e-6 and abs(factor - 1) > 1e-3
  scaled = dict(batch, audio=batch['audio'] * factor)
  full, _ = jax.jit(
    lambda b: forward.apply(params, state, None, b, is_training=False)
  )(scaled)
  full_patches = np.asarray(full['audio'][0, :, 0]).reshape(-1, 16)
  output = np.asarray(train['audio'][0]).reshape(-1, 16)
  np.testing.assert_allclose(output, full_patches[drawn], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
  'arg, latents, label_weight',
  [('', 784, 1e-4), ('latents392', 392, 1e-4), ('latents196,label1', 196, 1.0)],
)
def test_config_variants(arg, latents, label_weight):
  c = vae.get_config(arg)
  assert c.model.z_index_dim == latents and c.loss.label_weight == label_weight
  assert (c.batch_size, c.optimizer.base_lr, c.loss.label_mask_prob) == (
    1024,
    1e-3,
    0.5,
  )
  assert (c.loss.train_pixels, c.loss.train_audio_samples) == (512, 512)
  assert (c.model.num_frames, c.model.image_size, c.model.audio_samples) == (
    16,
    224,
    30720,
  )
  vae.validate(c)


def test_config_errors():
  with pytest.raises(ValueError, match='config: expected variants of video'):
    vae.get_config('latents100')
  with pytest.raises(ValueError, match='config: expected at most one of'):
    vae.get_config('debug,local')
  c = vae.get_config('debug')
  c.unlock()
  c.model.audio_samples = 1000
  with pytest.raises(ValueError, match='model.audio_samples: expected'):
    vae.validate(c)
  c.model.audio_samples = 4 * 1920
  c.model.audio_gain = 0.0
  with pytest.raises(ValueError, match='model.audio_gain: expected'):
    vae.validate(c)
  c.model.audio_gain = 1.0
  c.loss.audio_augment = -0.1
  with pytest.raises(ValueError, match='loss.audio_augment: expected a non-n'):
    vae.validate(c)
  c.loss.audio_augment = 0.0
  c.model.spatial_downsample = 3
  with pytest.raises(ValueError, match='image_size=16 must be divisible by'):
    vae.validate(c)
  c.model.spatial_downsample = 4
  c.model.temporal_downsample = 3
  with pytest.raises(ValueError, match='num_frames=4 must be divisible by'):
    vae.validate(c)
  c = vae.get_config('debug')
  c.unlock()
  c.data.clip = '/no/such/clip.mp4'
  with pytest.raises(ValueError, match="data.clip: .*'/no/such/clip.mp4'"):
    vae.make_sources(c)
  for experiment in (vae, audioset):
    c = experiment.get_config('debug')
    assert {'worker_count', 'prefetch', 'skip_corrupt'} <= set(c.data)
    c.unlock()
    c.data.skip_corrupt = True
    with pytest.raises(ValueError, match='data.skip_corrupt: expected False'):
      experiment.validate(c)


def test_audioset_forward_averages_windows():
  c = audioset.get_config('debug')
  forward = audioset.make_forward(c.model, c.data)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (2, 3, 4, 16, 16, 3)).astype(np.uint8)
  audio = rng.uniform(-1, 1, (2, 3, 7680, 1)).astype(np.float32)
  params, state = jax.jit(
    lambda b: forward.init(jax.random.PRNGKey(0), b, is_training=True)
  )({'image': image[:, 0], 'audio': audio[:, 0]})
  apply = jax.jit(
    lambda b: forward.apply(params, state, None, b, is_training=False)[0]
  )
  out = apply({'image': image, 'audio': audio})
  singles = [
    apply({'image': image[:, k], 'audio': audio[:, k]}) for k in range(3)
  ]
  np.testing.assert_allclose(
    out['probs'], np.mean([s['probs'] for s in singles], 0), atol=1e-6
  )
  np.testing.assert_allclose(
    out['logits'], np.mean([s['logits'] for s in singles], 0), atol=1e-5
  )
  labels = np.array([[1, 0, 1], [0, 0, 0]], np.float32)
  got = audioset.per_example(out, {'label': labels})
  logits = np.asarray(out['logits'], np.float64)
  expected = np.sum(np.log1p(np.exp(-logits)) + (1 - labels) * logits, -1)
  np.testing.assert_allclose(got['loss'], expected, rtol=1e-5)


# --- end to end through the engine ----------------------------------------

EVAL_KEYS = (
  'loss',
  'video_l1',
  'audio_l1',
  'label_ce',
  'top1',
  'video_psnr',
  'video_psnr_baseline',
  'audio_psnr',
  'audio_psnr_baseline',
)


def test_video_autoencoding_debug_trains(tmp_path, capsys):
  from experiments.data import video as video_data
  from perceiver.train import train

  config = vae.get_config('debug')
  result = train(config, vae.build_task, str(tmp_path))
  assert result['nonfinite_count'] == 0
  assert set(result['losses']) == {1, 2}
  with open(tmp_path / 'result.json') as f:
    saved = json.load(f)
  assert {f'eval/{k}' for k in EVAL_KEYS} <= set(saved)
  for k in EVAL_KEYS:
    assert np.isfinite(saved[f'eval/{k}'])
    assert saved[f'eval/{k}'] == pytest.approx(result['eval'][f'eval/{k}'])
  printed = capsys.readouterr().out
  for name in ('video', 'audio'):
    line = (
      f'{name} PSNR: {saved[f"eval/{name}_psnr"]:.1f} dB (baseline '
      f'{saved[f"eval/{name}_psnr_baseline"]:.1f})'
    )
    assert line in printed.splitlines()
  assert f'top-1 (label masked): {100 * saved["eval/top1"]:.1f}%' in printed

  # Independent reference: the two held-out windows decoded one at a time.
  m = config.model
  kw = dict(
    num_frames=m.num_frames,
    fps=config.data.fps,
    image_size=m.image_size,
    audio_rate=config.data.audio_rate,
  )
  windows = video_data.clip_windows(
    video_data.BIG_BUCK_BUNNY, list(config.data.clip_eval_starts)
  )
  records = [video_data.window_at(windows[i], **kw) for i in range(2)]
  ts = result['train_state']
  forward = vae.make_forward(m, config.loss)
  video_mse, audio_mse, baseline = [], [], []
  for r in records:
    batch = {k: np.asarray(v)[None] for k, v in r.items()}
    out, _ = forward.apply(ts.params, ts.state, None, batch, is_training=False)
    image = r['image'] / 255.0
    video_mse.append(np.mean((np.asarray(out['image'][0]) - image) ** 2))
    audio_mse.append(np.mean((np.asarray(out['audio'][0]) - r['audio']) ** 2))
    baseline.append(np.mean((image - image.mean((0, 1, 2))) ** 2))
  db = lambda mse: np.mean(10 * np.log10(1 / np.asarray(mse)))
  assert saved['eval/video_psnr'] == pytest.approx(db(video_mse), abs=1e-3)
  assert saved['eval/audio_psnr'] == pytest.approx(db(audio_mse), abs=1e-3)
  assert saved['eval/video_psnr_baseline'] == pytest.approx(
    db(baseline), abs=1e-3
  )
  silence = [np.mean(r['audio'] ** 2) for r in records]
  assert saved['eval/audio_psnr_baseline'] == pytest.approx(
    db(silence), abs=1e-3
  )

  # The first held-out window's reconstruction, as files.
  strip = np.asarray(Image.open(tmp_path / 'reconstruction_frames.png'))
  assert strip.shape == (2 * 16, 4 * 16, 3)
  np.testing.assert_array_equal(strip[:16, :16], records[0]['image'][0])
  assert Image.open(tmp_path / 'reconstruction_waveform.png').size[0] > 0
  for name, audio in (
    ('original.wav', records[0]['audio']),
    ('reconstruction.wav', None),
  ):
    with wave.open(str(tmp_path / name)) as f:
      assert (f.getnchannels(), f.getframerate(), f.getnframes()) == (
        1,
        48000,
        m.audio_samples,
      )
      pcm = np.frombuffer(f.readframes(m.audio_samples), '<i2')
    if audio is not None:
      np.testing.assert_allclose(pcm / 32767, audio[:, 0], atol=1 / 32767)


def audioset_files(tmp_path):
  d = tmp_path / 'clips'
  os.makedirs(d)
  ids = ['--PJHxphWEs', '-0RWZT-miFs', 'abcdefghijk', 'zyxwvutsrqp']
  for i, vid in enumerate(ids):
    clips_lib.write_clip(str(d / f'{vid}_000030_000040.mkv'), 12 + i, 25)
  labels = clips_lib.write_text(
    str(tmp_path / 'labels.csv'), clips_lib.LABELS_CSV
  )
  rows = ['/m/09x0r,/t/dd00088', '/m/05zppz', '/t/dd00088', '/m/09x0r']
  segments = clips_lib.write_text(
    str(tmp_path / 'seg.csv'),
    (
      '# Segments csv created Sun Mar  5 10:54:31 2017\n'
      '# YTID, start_seconds, end_seconds, positive_labels\n'
      + ''.join(f'{vid}, 30.000, 40.000, "{r}"\n' for vid, r in zip(ids, rows))
    ),
  )
  return str(d), segments, labels


def test_audioset_debug_trains(tmp_path, capsys):
  from experiments.data import video as video_data
  from perceiver.train import train

  config = audioset.get_config('debug')
  config.unlock()
  config.data.dir, config.data.segments, config.data.labels = audioset_files(
    tmp_path
  )
  config.lock()
  result = train(config, audioset.build_task, str(tmp_path / 'run'))
  with open(tmp_path / 'run' / 'result.json') as f:
    saved = json.load(f)
  assert {'eval/mAP', 'eval/loss', 'eval/hit_at_1'} <= set(saved)

  # Reference: each clip's K windows decoded by the op, the model applied in
  # the evaluation's batches of 2, AP from the naive threshold sweep.
  d = config.data
  kw = dict(
    num_frames=d.num_frames,
    fps=d.fps,
    image_size=d.image_size,
    audio_rate=d.audio_rate,
  )
  held_out, _ = video_data.audioset_source(
    d.dir,
    d.segments,
    d.labels,
    video_data.WindowSpec(**kw),
  )
  records = [
    video_data.spaced_windows(held_out[i], num_windows=d.eval_windows, **kw)
    for i in range(len(held_out))
  ]
  ts = result['train_state']
  forward = audioset.make_forward(config.model, d)
  probs, labels, losses = [], [], []
  for i in range(0, len(records), 2):
    batch = {
      k: np.stack([r[k] for r in records[i : i + 2]])
      for k in ('image', 'audio', 'label')
    }
    out, _ = forward.apply(ts.params, ts.state, None, batch, is_training=False)
    probs.append(np.asarray(out['probs']))
    labels.append(batch['label'] > 0)
    losses.append(audioset.per_example(out, batch)['loss'])
  probs, labels = np.concatenate(probs), np.concatenate(labels)
  expected = np.mean(
    [
      evaluation_test.naive_average_precision(probs[:, c], labels[:, c])
      for c in range(labels.shape[1])
      if labels[:, c].any()
    ]
  )
  assert saved['eval/mAP'] == pytest.approx(expected, abs=1e-9)
  assert saved['eval/loss'] == pytest.approx(
    np.mean(np.concatenate(losses)), rel=1e-5
  )
  assert f'mAP: {100 * expected:.1f}% (4 clips, 3 windows each)' in (
    capsys.readouterr().out.splitlines()
  )
