"""experiments/data/writers.py: the image grid, the reconstruction files and
WAV.

References: pixels placed and de-normalised by hand; WAV files read back
with the standard library's `wave` (the writer uses scipy), against samples
clipped, scaled and rounded by hand.
"""

import os
import wave

import numpy as np
import pytest
from PIL import Image

from experiments.data import writers


def _read_wav(path):
  """(rate, int16 samples) of a mono 16-bit WAV, read with `wave`."""
  with wave.open(path) as f:
    assert (f.getnchannels(), f.getsampwidth()) == (1, 2)
    return f.getframerate(), np.frombuffer(f.readframes(f.getnframes()), '<i2')


def test_write_image_grid(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, (3, 2, 2, 3))
  pixels = pixels.astype(np.float32)
  pixels[0, 0, 0, 0], pixels[1, 1, 1, 2] = 300.0, -20.0  # clipped
  path = writers.write_image_grid(
    str(tmp_path / 'g.png'),
    (pixels - 10.0) / 2.0,
    mean=(10.0,) * 3,
    std=(2.0,) * 3,
    columns=2,
    min_size=4,
  )
  grid = np.asarray(Image.open(path))
  # 2 x 2 images enlarged to 4 x 4 (each pixel a 2 x 2 block), 2-pixel
  # white gaps: cells of 6 pixels, two to a row.
  assert grid.shape == (2 + 2 * 6, 2 + 2 * 6, 3)
  expected = np.clip(pixels, 0, 255).repeat(2, axis=1).repeat(2, axis=2)
  for i, (y, x) in enumerate(((2, 2), (2, 8), (8, 2))):
    np.testing.assert_array_equal(grid[y : y + 4, x : x + 4], expected[i])
  assert (grid[:2] == 255).all() and (grid[:, 6:8] == 255).all()
  assert (grid[8:12, 8:12] == 255).all()  # no fourth image


def test_write_wav_clips_scales_and_rounds(tmp_path):
  audio = np.asarray([[0.0], [0.25], [-0.25], [1.5], [-2.0], [1e-5]])
  path = writers.write_wav(str(tmp_path / 'a.wav'), audio, rate=16000)
  # 0.25 x 32767 = 8191.75; clipped at +-1; 1e-5 x 32767 = 0.33.
  rate, pcm = _read_wav(path)
  assert rate == 16000
  np.testing.assert_array_equal(pcm, [0, 8192, -8192, 32767, -32767, 0])


def test_write_reconstruction(tmp_path):
  rng = np.random.default_rng(0)
  video = rng.uniform(0, 1, (4, 8, 8, 3))
  audio = np.sin(np.arange(960) / 10) * 0.5
  paths = writers.write_reconstruction(
    str(tmp_path / 'new'),
    video,
    video * 0,
    audio,
    audio[:, None] * 2,
    rate=48000,
  )
  names = [os.path.basename(p) for p in paths]
  assert names == [
    'reconstruction_frames.png',
    'reconstruction_waveform.png',
    'reconstruction.wav',
    'original.wav',
  ]
  strip = np.asarray(Image.open(paths[0]))
  assert strip.shape == (16, 32, 3)  # originals on top, reconstruction below
  np.testing.assert_array_equal(strip[:8, 8:16], np.round(video[1] * 255))
  assert (strip[8:] == 0).all()
  assert Image.open(paths[1]).size[0] > 0
  rate, pcm = _read_wav(paths[2])
  assert rate == 48000
  np.testing.assert_array_equal(
    pcm, np.round(np.clip(audio * 2, -1, 1) * 32767)
  )  # clipped at 1
  np.testing.assert_array_equal(_read_wav(paths[3])[1], np.round(audio * 32767))


def test_writers_refuse_bad_input(tmp_path):
  with pytest.raises(ValueError, match='images_NSSC: expected at least one'):
    writers.write_image_grid(
      str(tmp_path / 'g.png'),
      np.zeros((0, 4, 4, 3)),
      mean=(0,) * 3,
      std=(1,) * 3,
    )
  with pytest.raises(ValueError, match='columns: expected a positive integer'):
    writers.write_image_grid(
      str(tmp_path / 'g.png'),
      np.zeros((1, 4, 4, 3)),
      mean=(0,) * 3,
      std=(1,) * 3,
      columns=0,
    )
  with pytest.raises(ValueError, match='rate: expected a positive integer'):
    writers.write_wav(str(tmp_path / 'a.wav'), np.zeros(4), rate=0)
  video = np.zeros((2, 4, 4, 3))
  with pytest.raises(ValueError, match=r'video: expected shape \(2, 4, 4, 3\)'):
    writers.write_reconstruction(
      str(tmp_path), video, video[:1], np.zeros(8), np.zeros(8), rate=8
    )
  with pytest.raises(ValueError, match=r'audio: expected shape \(8,\)'):
    writers.write_reconstruction(
      str(tmp_path), video, video, np.zeros(8), np.zeros(7), rate=8
    )
