"""Shared by the example scripts: a released checkpoint, or a tiny random model.

With `--checkpoint PATH` the full-size preset is built and the released
weights are loaded with `perceiver.checkpoints.load_official`. Without it a
tiny random-weight version of the preset runs (`SMALL` below), so the script
finishes in seconds and shows only that the plumbing works.
"""

import argparse
import time

from perceiver import presets
from perceiver import tasks

# Tiny configurations for runs without a checkpoint: `presets.TINY`'s latent
# sizes and each script's input sizes.
SMALL = {
  'imagenet': presets.tiny(
    'imagenet_conv', image_size=32, num_classes=1000, num_bands=4
  ),
  'language_mlm': presets.tiny(
    'language_mlm', max_seq_len=128, d_model=32, qk_channels=16
  ),
  'optical_flow': presets.tiny(
    'optical_flow', image_size=(24, 32), num_bands=4
  ),
  'video_autoencoding': presets.tiny(
    'video_autoencoding',
    num_frames=2,
    image_size=16,
    audio_samples=64,
    num_classes=700,
    image_bands=4,
    audio_bands=4,
  ),
}


def parser(description: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description)
  p.add_argument(
    '--checkpoint',
    default=None,
    metavar='PATH',
    help='a released checkpoint file; without it a tiny '
    'random-weight model runs (plumbing only)',
  )
  return p


def load(name: str, checkpoint):
  """Returns (params, state, overrides) for preset `name`."""
  start = time.time()
  if checkpoint:
    from perceiver import checkpoints  # pylint: disable=g-import-not-at-top

    params, state = checkpoints.load_official(checkpoint, name)
    overrides = {}
    print(f'Loaded {checkpoint} ({time.time() - start:.1f} s).')
  else:
    family = 'imagenet' if name.startswith('imagenet') else name
    overrides = SMALL[family]
    params, state = tasks.random_weights(name, overrides=overrides)
    print(
      f'No --checkpoint: a tiny random-weight {name} model '
      '(the output is meaningless; this shows the plumbing works).'
    )
  return params, state, overrides
