"""Autoencodes 16 frames of video + audio and classifies the clip (K-700).

  python examples/video_autoencoding.py \
      --checkpoint video_autoencoding_checkpoint.pystate --npz clip.npz

As the colab (video_autoencoding.ipynb): 16 frames of 224 x 224 in [0, 1]
and 30,720 audio samples (48 kHz), decoded in 128 chunks. --npz takes a file
with arrays 'video' [16, 224, 224, 3] and 'audio' [30720] or [30720, 1];
without it a synthetic clip (a moving square and a tone) is used. Kinetics-
700 class names are not shipped: the top classes are printed as indices.
"""

import numpy as np

from perceiver import presets
from perceiver import tasks

import _common


def synthetic_clip(frames, size, samples):
  """A bright square moving right over a gradient, and a 440 Hz tone."""
  video = np.zeros((frames, size, size, 3), np.float32)
  video += np.linspace(0.1, 0.5, size)[None, :, None, None]
  side = max(size // 4, 1)
  for t in range(frames):
    x = (t * size // max(frames, 1)) % (size - side + 1)
    video[t, size // 3 : size // 3 + side, x : x + side] = (0.9, 0.8, 0.2)
  audio = 0.5 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)
  return video, audio.astype(np.float32)


def main():
  p = _common.parser(__doc__.splitlines()[0])
  p.add_argument('--npz', default=None, metavar='PATH')
  p.add_argument('--num_chunks', type=int, default=tasks.VIDEO_NUM_CHUNKS)
  args = p.parse_args()
  params, state, overrides = _common.load('video_autoencoding', args.checkpoint)
  cfg = {**presets.defaults('video_autoencoding'), **overrides}
  if args.npz:
    with np.load(args.npz) as data:
      video, audio = data['video'], data['audio']
  else:
    video, audio = synthetic_clip(
      cfg['num_frames'], cfg['image_size'], cfg['audio_samples']
    )
  num_chunks = min(args.num_chunks, cfg['num_frames'] * cfg['image_size'] ** 2)
  out = tasks.autoencode_video(
    'video_autoencoding',
    params,
    state,
    video,
    audio,
    num_chunks=num_chunks,
    overrides=overrides,
  )
  video = video / 255.0 if video.dtype == np.uint8 else video
  mse = float(np.mean((out.video - video) ** 2))
  psnr = 10 * np.log10(1.0 / max(mse, 1e-12))
  audio = np.reshape(audio, (-1, 1))
  audio = audio / 2.0**15 if audio.dtype == np.int16 else audio
  print(f'Video reconstruction {out.video.shape}: PSNR {psnr:.1f} dB')
  print(
    f'Audio reconstruction {out.audio.shape}: MSE '
    f'{float(np.mean((out.audio - audio) ** 2)):.5f}'
  )
  top = tasks.top_k(out.label_probs, 5)
  print(
    'Top-5 Kinetics-700 classes (indices):',
    ', '.join(f'{i} ({p:.1%})' for i, p in zip(top.indices, top.probs)),
  )


if __name__ == '__main__':
  main()
