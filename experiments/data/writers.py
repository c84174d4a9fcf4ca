"""Files a user can look at and listen to: image grids, frames, waveforms, WAV.

The writers of the experiments' evaluation artifacts (the readers are
beside them in this package): `write_image_grid` (ImageNet's grid of
augmented training examples), `write_wav` (16-bit PCM through
`scipy.io.wavfile`) and `write_reconstruction` (video autoencoding: one
window's frames, waveform and audio next to its original). Images are
written with Pillow, plots with matplotlib (Agg).

Shapes: N images, S image size, C channels (3, RGB), T frames, A audio
samples.
"""

import os
from typing import List, Sequence

import numpy as np
from PIL import Image
from scipy.io import wavfile

from perceiver import validation

FRAMES_FILE = 'reconstruction_frames.png'
WAVEFORM_FILE = 'reconstruction_waveform.png'
RECONSTRUCTION_WAV = 'reconstruction.wav'
ORIGINAL_WAV = 'original.wav'


def write_image_grid(
  path: str,
  images_NSSC: np.ndarray,
  *,
  mean: Sequence[float],
  std: Sequence[float],
  columns: int = 8,
  min_size: int = 96,
) -> str:
  """Writes normalised images as one PNG grid (de-normalised, clipped).

  Pixels are `image * std + mean`, rounded and clipped to [0, 255]. Images
  smaller than `min_size` are enlarged by an integer factor (nearest
  neighbour) so they can be seen; a 2-pixel white gap separates them, row
  by row, `columns` to a row.

  Args:
    path: the PNG file.
    images_NSSC: float [N, S, S, C] normalised images.
    mean, std: the C per-channel values of the normalisation.
    columns: images per row.
    min_size: the smallest side (pixels) an image is shown at.

  Returns:
    `path`.

  Raises:
    ValueError: images not [N, S, S, C] with N >= 1, or a non-positive
      `columns` / `min_size`.
  """
  validation.check_rank('images_NSSC', images_NSSC, (4,), '[N, S, S, C]')
  if not len(images_NSSC):
    raise ValueError('images_NSSC: expected at least one image, got none.')
  validation.check_positive('columns', columns)
  validation.check_positive('min_size', min_size)
  pixels = images_NSSC * np.asarray(std, np.float32) + np.asarray(
    mean, np.float32
  )
  pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
  n, size = pixels.shape[:2]
  zoom = max(1, -(-min_size // size))
  pixels = pixels.repeat(zoom, axis=1).repeat(zoom, axis=2)
  cell = size * zoom + 2
  rows = -(-n // columns)
  grid = np.full(
    (rows * cell + 2, min(n, columns) * cell + 2, 3), 255, np.uint8
  )
  for i, image in enumerate(pixels):
    y, x = 2 + (i // columns) * cell, 2 + (i % columns) * cell
    grid[y : y + cell - 2, x : x + cell - 2] = image
  Image.fromarray(grid).save(path, format='PNG')
  return path


def write_wav(path: str, audio: np.ndarray, *, rate: int) -> str:
  """Writes mono float audio as 16-bit PCM WAV.

  Args:
    path: the WAV file.
    audio: float samples, any shape (flattened: [A] or [A, 1]), full scale
      [-1, 1]; clipped there, then scaled by 32767 and rounded.
    rate: the sample rate (Hz).

  Returns:
    `path`.

  Raises:
    ValueError: a non-positive `rate`.
  """
  validation.check_positive('rate', rate)
  pcm = np.round(
    np.clip(np.asarray(audio, np.float64).reshape(-1), -1, 1) * 32767
  ).astype('<i2')
  wavfile.write(path, rate, pcm)
  return path


def write_reconstruction(
  workdir: str,
  original_video: np.ndarray,
  video: np.ndarray,
  original_audio: np.ndarray,
  audio: np.ndarray,
  *,
  rate: int,
) -> List[str]:
  """Writes one window's reconstruction next to its original (Sec. 4.3).

  Files in `workdir` (created if missing): FRAMES_FILE, the T frames side
  by side, the original on top and the reconstruction below; WAVEFORM_FILE,
  the two waveforms one above the other against time; RECONSTRUCTION_WAV
  and ORIGINAL_WAV (`write_wav`).

  Args:
    workdir: output directory.
    original_video, video: float [T, S, S, 3] in [0, 1] (clipped there).
    original_audio, audio: float [A] or [A, 1] in [-1, 1].
    rate: audio sample rate (Hz).

  Returns:
    The paths written, in the order above.

  Raises:
    ValueError: videos not [T, S, S, 3] of one shape, or audio of
      different lengths.
  """
  # pylint: disable=g-import-not-at-top
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  original_video, video = np.asarray(original_video), np.asarray(video)
  validation.check_rank('original_video', original_video, (4,), '[T, S, S, 3]')
  validation.check_shape('video', video, original_video.shape)
  original_audio = np.asarray(original_audio).reshape(-1)
  audio = np.asarray(audio).reshape(-1)
  validation.check_shape('audio', audio, original_audio.shape)
  os.makedirs(workdir, exist_ok=True)
  rows = [
    np.concatenate(list(np.clip(v, 0, 1)), axis=1)
    for v in (original_video, video)
  ]
  strip = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
  frames_png = os.path.join(workdir, FRAMES_FILE)
  Image.fromarray(strip).save(frames_png)

  t = np.arange(audio.shape[0]) / rate
  fig, axes = plt.subplots(2, 1, figsize=(10, 4), sharex=True, sharey=True)
  for ax, y, name in zip(
    axes, (original_audio, audio), ('original', 'reconstruction')
  ):
    ax.plot(t, y, lw=0.5)
    ax.set_ylabel(name)
  axes[1].set_xlabel('time (s)')
  fig.tight_layout()
  wave_png = os.path.join(workdir, WAVEFORM_FILE)
  fig.savefig(wave_png, dpi=100)
  plt.close(fig)
  return [
    frames_png,
    wave_png,
    write_wav(os.path.join(workdir, RECONSTRUCTION_WAV), audio, rate=rate),
    write_wav(os.path.join(workdir, ORIGINAL_WAV), original_audio, rate=rate),
  ]
