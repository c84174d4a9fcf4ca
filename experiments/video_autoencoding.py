"""python -m experiments.main --config=experiments/video_autoencoding.py:local --workdir=runs/video_local

Multimodal autoencoding (Perceiver IO Sec. 4.3, App. I, Table 4): one
model reads 16 frames of 224 x 224 video (25 fps, 1x4x4 patches), the
matching 30,720 samples of 48 kHz audio (16-sample patches) and a one-hot
Kinetics-700 label, compresses them into 784 (or 392, 196) latents of 512
channels and decodes all three back. The architecture is the released
`video_autoencoding` model (`perceiver.presets`), called with
`label_mask_prob=0.5` in training (App. I) and 1 in evaluation.

Paper recipe (the config's defaults): loss 0.03 L1(video) + 1 L1(audio) +
1e-4 CE(label) (`:label1`: label weight 1); the label is masked in 50% of the
training examples; training decodes a random 512 pixels, 512 audio samples
(32 patches) and the label per example; evaluation decodes everything in
chunks with the label masked. Learning rate 1e-3, batch 1024. Table 4:

| latents | compression | audio PSNR | video PSNR | top-1 |
|---|---|---|---|---|
| 784 | 88x | 26.97 | 24.37 | 10.2% |
| 392 | 176x | 25.33 | 24.27 | 8.6% |
| 196 | 352x | 14.15 | 23.21 | 11.5% |

`model.audio_gain` (not in the paper; 1 by default, 100 in `:local`) scales
the audio the model reads, and its audio output is divided by it: losses and
PSNRs stay in the file's units.

Metrics: video PSNR on pixels in [0, 1] and audio PSNR on samples in [-1, 1],
both with peak value 1 (`perceiver.train.evaluation.psnr`: 10 log10(1 /
MSE), per example, averaged over the examples); top-1 of the label logits
with the label masked. Baselines measured on the same windows: predicting
each window's mean colour (per channel) and predicting silence.

Variants (comma-separated, e.g. `:latents392,label1`): `latents784`
(default), `latents392`, `latents196`, `label1`, `debug` (a tiny model on 4
frames of 16 x 16 of the vendored clip; seconds on a CPU), `local` (a reduced
model autoencoding windows of the vendored Big Buck Bunny clip on a CPU:
trained on windows within its first 100 frames, evaluated on the two windows
of its last 32 frames). Each evaluation (`make_evaluator`, every `eval_every`
steps and at the end) decodes every held-out window in full, prints

  video PSNR: NN.N dB (baseline NN.N)
  audio PSNR: NN.N dB (baseline NN.N)
  top-1 (label masked): NN.N%

and writes the first held-out window's reconstruction to the workdir
(`reconstruction_frames.png`, `reconstruction_waveform.png`,
`reconstruction.wav`, and `original.wav` to compare with); result.json has
`eval/video_psnr`, `eval/video_psnr_baseline`, `eval/audio_psnr`,
`eval/audio_psnr_baseline`, `eval/top1` and the loss terms.

Shapes: B batch, T frames, S image size, P = T S S pixels, A audio samples,
Q = A / 16 audio patches, C classes, Sp / Sa subsampled pixels / patches.
"""

import functools
import os
from typing import Callable, Dict, Iterable, Mapping

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.data import batch_augment
from experiments.data import writers
from perceiver import presets
from perceiver import validation
from perceiver.train import config as config_lib
from perceiver.train import data as data_lib
from perceiver.train import evaluation
from perceiver.train.task import Task

VARIANTS = (
  'latents784',
  'latents392',
  'latents196',
  'label1',
  'debug',
  'local',
)
SOURCES = ('kinetics', 'clip')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The paper's config; `arg` is a comma-separated list of VARIANTS."""
  variants = config_lib.variants(
    arg,
    VARIANTS,
    what='video_autoencoding',
    exclusive=(('latents784', 'latents392', 'latents196'), ('debug', 'local')),
  )
  c = config_lib.base_config()
  c.seed = 0
  c.batch_size = 1024  # App. I
  # Not in the paper: steps, optimizer, schedule. Chosen: 100k steps (~190
  # epochs of Kinetics-700-2020's ~545k training clips), LAMB without
  # warm-up as the other Perceiver IO recipes, constant then cosine.
  c.total_steps = 100_000
  c.log_every = 100
  c.checkpoint_every = 5000
  c.eval_every = 0
  c.eval_batch_size = 64
  c.optimizer.name = 'lamb'
  c.optimizer.base_lr = 1e-3  # App. I
  c.optimizer.scale_by_batch = False
  c.optimizer.schedule = 'constant_cosine'
  c.optimizer.constant_fraction = 0.5
  c.optimizer.weight_decay = 0.01  # not in the paper
  c.optimizer.clip_norm = 10.0  # not in the paper

  c.loss = ml_collections.ConfigDict(
    dict(
      video_weight=0.03,
      audio_weight=1.0,
      label_weight=1e-4,
      label_mask_prob=0.5,  # of training examples; always masked in eval
      train_pixels=512,  # decoded per training example
      train_audio_samples=512,  # a multiple of model.samples_per_patch
      # Not in the paper (0: off): training audio times a random sign and
      # exp(U(-x, x)), inputs and targets alike (`augment_audio`).
      audio_augment=0.0,
    )
  )
  c.data.update(
    dict(
      source='kinetics',  # or 'clip': windows of one local clip
      dir='',  # Kinetics clips, anywhere under it
      annotations='',  # Kinetics CSV(s): label,youtube_id,...,split
      eval_annotations='',  # if empty: `annotations`
      train_split='train',
      eval_split='val',
      skip_bad=False,  # skip (and count) missing/unreadable/short clips
      eval_position=0.5,  # evaluation window: the central one
      clip='',  # source='clip': the clip (default: the vendored one)
      clip_train_starts=(0, 0),  # [first, last] grid frame of train windows
      clip_eval_starts=(0,),
      fps=25,
      audio_rate=48_000,
    )
  )
  sizes = presets.defaults('video_autoencoding')
  del sizes['compute_dtype']  # the engine's `precision` sets it
  c.model = ml_collections.ConfigDict(
    dict(
      sizes,
      eval_chunk_size=6272,  # points per decode chunk (the colab's 6,272)
      audio_gain=1.0,  # model reads audio x gain, outputs / gain (paper: 1)
    )
  )
  for v in variants:
    if v.startswith('latents'):
      c.model.z_index_dim = int(v[len('latents') :])
    elif v == 'label1':
      c.loss.label_weight = 1.0  # "45% top-1 ... 20.7 PSNR for video"
  if 'debug' in variants or 'local' in variants:
    c.data.source = 'clip'
    c.optimizer.name = 'adamw'
    c.optimizer.weight_decay = 0.0
    c.optimizer.clip_norm = 1.0
    c.progress_bar = False
    m = c.model
    m.num_classes = 2  # the one clip has no Kinetics label: label 0
  if 'debug' in variants:
    c.batch_size = 2
    c.total_steps = 2
    config_lib.quick_test(c)
    c.checkpoint_every = 2
    c.eval_batch_size = 2
    c.data.clip_train_starts = (0, 3)
    c.data.clip_eval_starts = (100, 116)
    m.update(
      presets.tiny('video_autoencoding'),
      num_frames=4,
      image_size=16,
      audio_samples=4 * 1920,
      image_bands=2,
      audio_bands=4,
      label_query_channels=16,
      eval_chunk_size=256,
    )
    c.loss.train_pixels = 16
    c.loss.train_audio_samples = 64
  elif 'local' in variants:
    # 2,000 steps (time launch to exit on the 2-core machine:
    # docs/results/video_autoencoding.md, where what the audio needs here
    # was measured): with 64 or more video tokens beside 10 audio tokens the
    # audio path did not form within 2,750 steps; with 16 it formed within
    # 300-750 steps. Hence few, large video patches and 4 kHz audio.
    c.batch_size = 8
    c.total_steps = 2000  # data-bound: ~1.6 steps/s, 1 or 2 workers
    c.log_every = 50
    c.checkpoint_every = 500
    c.eval_every = 500
    c.eval_batch_size = 2
    c.optimizer.constant_fraction = 0.3
    c.data.worker_count = 1  # decode the next batch while a step runs
    # Frames 0..99 for training, the two windows of frames 100..131 held out.
    c.data.clip_train_starts = (0, 84)
    c.data.clip_eval_starts = (100, 116)
    # 74-81% of the soundtrack's energy is below 300 Hz: 4 kHz keeps it, and
    # 10 patches of 256 samples carry a window's 2,560 samples.
    c.data.audio_rate = 4000
    c.loss.train_audio_samples = 1024  # 4 of the 10 patches
    # The audio L1 in the file's units is ~100x smaller than in the model's
    # (audio_gain); x30 (not varied) keeps its gradients from being dwarfed.
    c.loss.audio_weight = 30.0
    # Against memorising 85 windows of soundtrack (`augment_audio`).
    c.loss.audio_augment = 0.7
    m.update(
      image_size=16,
      # 4x8x8 patches: 16 video tokens of 768 values per window.
      temporal_downsample=4,
      spatial_downsample=8,
      audio_samples=2560,
      samples_per_patch=256,
      z_index_dim=128,
      num_z_channels=256,
      num_self_attends_per_block=4,
      num_self_attend_heads=4,
      image_bands=16,
      audio_bands=64,
      label_query_channels=64,
      eval_chunk_size=4096,
      cross_attention_impl='reference',
      # The clip's soundtrack is quiet (peak 0.085, window RMS 0.001-0.011)
      # beside the Fourier features in the same tokens (RMS 0.71): at gain
      # 1 zeroing the audio moves the untrained model's audio output by
      # 0.008% of its RMS (5% at gain 100). x100 puts the windows' RMS at
      # 0.1-1.1.
      audio_gain=100.0,
    )
  c.lock()
  return c


def validate(config) -> None:
  """Checks the experiment's fields (the engine checks the rest)."""
  m, loss, d = config.model, config.loss, config.data
  for name in (
    'num_frames',
    'image_size',
    'spatial_downsample',
    'temporal_downsample',
    'samples_per_patch',
    'audio_samples',
    'num_classes',
    'z_index_dim',
    'num_z_channels',
    'num_self_attends_per_block',
    'num_self_attend_heads',
    'image_bands',
    'audio_bands',
    'label_query_channels',
    'eval_chunk_size',
  ):
    validation.check_positive(f'model.{name}', m[name])
  validation.check_positive_number('model.audio_gain', m.audio_gain)
  validation.check_divisible(
    'model.image_size',
    m.image_size,
    'model.spatial_downsample',
    m.spatial_downsample,
  )
  validation.check_divisible(
    'model.num_frames',
    m.num_frames,
    'model.temporal_downsample',
    m.temporal_downsample,
  )
  per_frame = d.audio_rate // d.fps
  if m.audio_samples != m.num_frames * per_frame:
    raise ValueError(
      f'model.audio_samples: expected num_frames * audio_rate / fps = '
      f'{m.num_frames} * {per_frame} = {m.num_frames * per_frame}, got '
      f'{m.audio_samples}.'
    )
  validation.check_divisible(
    'model.audio_samples',
    m.audio_samples,
    'model.samples_per_patch',
    m.samples_per_patch,
  )
  validation.check_positive('loss.train_pixels', loss.train_pixels)
  validation.check_positive(
    'loss.train_audio_samples', loss.train_audio_samples
  )
  validation.check_divisible(
    'loss.train_audio_samples',
    loss.train_audio_samples,
    'model.samples_per_patch',
    m.samples_per_patch,
  )
  if not 0.0 <= loss.label_mask_prob <= 1.0:
    raise ValueError(
      f'loss.label_mask_prob: expected a probability in '
      f'[0, 1], got {loss.label_mask_prob!r}.'
    )
  for name in ('video_weight', 'audio_weight', 'label_weight', 'audio_augment'):
    if loss[name] < 0:
      raise ValueError(
        f'loss.{name}: expected a non-negative number, got {loss[name]!r}.'
      )
  validation.check_choice('data.source', d.source, SOURCES)
  if d.skip_corrupt:
    raise ValueError(
      'data.skip_corrupt: expected False (clips are decoded by the ops, '
      'which the loader never skips; set data.skip_bad to skip unreadable '
      'or short clips), got True.'
    )


# ---------------------------------------------------------------------------
# Model.
# ---------------------------------------------------------------------------


def model_inputs(batch, num_classes: int, audio_gain: float = 1.0):
  """Batch -> the model's inputs: image float [B, T, S, S, 3] in [0, 1],
  audio float [B, A, 1] (the batch's samples times `audio_gain`), label
  one-hot [B, C]."""
  return {
    'image': batch['image'].astype(jnp.float32) / 255.0,
    'audio': batch['audio'].astype(jnp.float32) * audio_gain,
    'label': jax.nn.one_hot(batch['label'], num_classes),
  }


def make_forward(m, loss) -> hk.TransformedWithState:
  """`apply(params, state, rng, batch, is_training)` -> outputs and targets.

  The model is the `video_autoencoding` preset (its parameter tree; it has
  no state). Training (`is_training=True`, needs an rng): each example
  independently has its label masked with probability
  `loss.label_mask_prob` and decodes `loss.train_pixels` random pixels and
  `loss.train_audio_samples / 16` random audio patches (drawn with
  replacement) plus the label. The decoders take one [S] set of points for
  the whole batch, so the examples are mapped with `jax.vmap` over the
  preset's `apply` (parameters shared, one rng per example). Evaluation:
  the label is always masked and every pixel and audio sample is decoded
  in chunks of `model.eval_chunk_size` (no rng). The model reads the audio
  times `model.audio_gain` and its audio output is divided by it, so
  'audio' and 'audio_target' (and every loss and PSNR) are in the batch's
  units.

  Returns a dict: 'image' [B, Sp, 3] (eval: [B, T, S, S, 3]), 'audio'
  [B, 16 Sa] (eval: [B, A, 1]), 'label' logits [B, C], and 'image_target' /
  'audio_target', the inputs at the same points in the same layout.
  """
  net = presets.build(
    'video_autoencoding', **presets.overrides_from('video_autoencoding', m)
  )
  spp = m.samples_per_patch
  num_patches = m.audio_samples // spp
  num_pixels = m.num_frames * m.image_size**2
  gain = m.audio_gain

  def init(rng, batch, *, is_training):
    del is_training  # Same parameters either way.
    return net.init(rng, model_inputs(batch, m.num_classes), is_training=False)

  def decode_some(params, state, key, inputs, audio_1A):
    """One example ([1, ...] inputs; `audio_1A` its samples in the batch's
    units) at random points."""
    key_image, key_audio, key_model = jax.random.split(key, 3)
    points = {
      'image': jax.random.randint(
        key_image, (loss.train_pixels,), 0, num_pixels
      ),
      'audio': jax.random.randint(
        key_audio, (loss.train_audio_samples // spp,), 0, num_patches
      ),
      'label': None,
    }
    out, _ = net.apply(
      params,
      state,
      key_model,
      inputs,
      is_training=True,
      subsampled_output_points=points,
      label_mask_prob=loss.label_mask_prob,
    )
    image_1P3 = inputs['image'].reshape(1, num_pixels, 3)
    audio_1QK = audio_1A.reshape(1, num_patches, spp)
    return dict(
      out,
      audio=out['audio'] / gain,
      image_target=image_1P3[:, points['image']],  # [1, Sp, 3]
      audio_target=audio_1QK[:, points['audio']].reshape(1, -1),
    )

  def apply(params, state, rng, batch, *, is_training):
    if is_training and loss.audio_augment > 0:
      rng, key = jax.random.split(rng)
      batch = dict(
        batch,
        audio=batch_augment.augment_audio(
          key, batch['audio'], max_log_gain=loss.audio_augment
        ),
      )
    inputs = model_inputs(batch, m.num_classes, gain)
    batch_size = inputs['image'].shape[0]
    if is_training:
      one = jax.tree.map(lambda x: x[:, None], inputs)  # [B, 1, ...]
      keys = jax.random.split(rng, batch_size)
      audio_B1A = batch['audio'].astype(jnp.float32).reshape(batch_size, 1, -1)
      out = jax.vmap(decode_some, in_axes=(None, None, 0, 0, 0))(
        params, state, keys, one, audio_B1A
      )
      return jax.tree.map(lambda x: x[:, 0], out), state
    out, state = net.apply(
      params,
      state,
      None,
      inputs,
      is_training=False,
      decode_chunk_size=m.eval_chunk_size,
    )
    return dict(
      out,
      audio=out['audio'] / gain,
      image_target=inputs['image'],
      audio_target=batch['audio'].astype(jnp.float32),
    ), state

  return hk.TransformedWithState(init=init, apply=apply)


# ---------------------------------------------------------------------------
# Loss and metrics.
# ---------------------------------------------------------------------------


def _per_example_mean(x):
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def per_example(
  outputs,
  batch,
  *,
  video_weight: float,
  audio_weight: float,
  label_weight: float,
) -> Dict[str, jax.Array]:
  """Loss (App. I) and metrics per example, each [B] float32.

  Baselines score the points the model is scored on (in training the
  decoded subsample, in evaluation every pixel and sample): each window's
  mean colour (per channel, over all of its T, S, S pixels in `batch`) and
  silence.
  """
  image_err = outputs['image'] - outputs['image_target']
  audio_err = outputs['audio'] - outputs['audio_target']
  video_l1 = _per_example_mean(jnp.abs(image_err))
  audio_l1 = _per_example_mean(jnp.abs(audio_err))
  label_ce = optax.softmax_cross_entropy_with_integer_labels(
    outputs['label'], batch['label']
  )
  image = batch['image'].astype(jnp.float32) / 255.0  # [B, T, S, S, 3]
  target = outputs['image_target']  # [B, Sp, 3] or [B, T, S, S, 3]
  mean_colour = jnp.mean(image, axis=(1, 2, 3)).reshape(
    (-1,) + (1,) * (target.ndim - 2) + (3,)
  )
  return {
    'loss': (
      video_weight * video_l1
      + audio_weight * audio_l1
      + label_weight * label_ce
    ),
    'video_l1': video_l1,
    'audio_l1': audio_l1,
    'label_ce': label_ce,
    'top1': (jnp.argmax(outputs['label'], -1) == batch['label']).astype(
      jnp.float32
    ),
    'video_psnr': evaluation.psnr(_per_example_mean(image_err**2)),
    'audio_psnr': evaluation.psnr(_per_example_mean(audio_err**2)),
    'video_psnr_baseline': evaluation.psnr(
      _per_example_mean((target - mean_colour) ** 2)
    ),
    'audio_psnr_baseline': evaluation.psnr(
      _per_example_mean(outputs['audio_target'] ** 2)
    ),
  }


def report(metrics: Mapping[str, float]) -> str:
  """The printed result lines, from the evaluator's metrics.

  Args:
    metrics: 'video_psnr', 'video_psnr_baseline', 'audio_psnr',
      'audio_psnr_baseline' (dB) and 'top1' (a fraction).

  Returns:
    `video PSNR: NN.N dB (baseline NN.N)`, `audio PSNR: ...` and
    `top-1 (label masked): NN.N%`, one per line.
  """
  lines = [
    f'{name} PSNR: {metrics[f"{name}_psnr"]:.1f} dB (baseline '
    f'{metrics[f"{name}_psnr_baseline"]:.1f})'
    for name in ('video', 'audio')
  ]
  lines.append(f'top-1 (label masked): {100 * metrics["top1"]:.1f}%')
  return '\n'.join(lines)


# ---------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------


def _spec_kwargs(config) -> dict:
  m, d = config.model, config.data
  return dict(
    num_frames=m.num_frames,
    fps=d.fps,
    image_size=m.image_size,
    audio_rate=d.audio_rate,
  )


def make_sources(config):
  """(train source, train ops, eval source, eval ops) for `config.data`."""
  # pylint: disable=g-import-not-at-top
  from experiments.data import video as video_data

  d, m = config.data, config.model
  kw = _spec_kwargs(config)
  spec = video_data.WindowSpec(**kw)
  if d.source == 'clip':
    path = d.clip or video_data.BIG_BUCK_BUNNY
    if not os.path.isfile(path):
      raise ValueError(
        f'data.clip: expected a video file (or empty for the vendored clip), '
        f'got {d.clip!r}, which is not a file.'
      )
    first, last = d.clip_train_starts
    train = video_data.clip_windows(path, list(range(first, last + 1)))
    held_out = video_data.clip_windows(path, list(d.clip_eval_starts))
    op = data_lib.Map(video_data.window_at, **kw)
    return train, [op], held_out, [op]
  train, classes = video_data.kinetics_source(
    d.dir,
    d.annotations,
    d.train_split,
    spec,
    skip_bad=d.skip_bad,
    num_classes=m.num_classes,
  )
  held_out, eval_classes = video_data.kinetics_source(
    d.dir,
    d.eval_annotations or d.annotations,
    d.eval_split,
    spec,
    skip_bad=d.skip_bad,
    num_classes=m.num_classes,
  )
  if eval_classes != classes:
    raise ValueError(
      'data.eval_annotations: expected the class names of '
      'data.annotations, got different ones.'
    )
  return (
    train,
    [data_lib.RandomMap(video_data.random_window, **kw)],
    held_out,
    [data_lib.Map(video_data.fixed_window, position=d.eval_position, **kw)],
  )


def example_batch(m) -> Dict[str, np.ndarray]:
  """Two zero examples with the records' shapes and dtypes (for init)."""
  return {
    'image': np.zeros(
      (2, m.num_frames, m.image_size, m.image_size, 3), np.uint8
    ),
    'audio': np.zeros((2, m.audio_samples, 1), np.float32),
    'label': np.zeros((2,), np.int32),
    'index': np.zeros((2,), np.int32),
  }


def compile_task(config) -> Task:
  """The model and losses without data (`--compile_only`; `build_task`
  adds the data): `example_batch` has the clips' keys, dtypes and shapes."""
  loss = config.loss
  return Task(
    forward=make_forward(config.model, loss),
    per_example=functools.partial(
      per_example,
      video_weight=loss.video_weight,
      audio_weight=loss.audio_weight,
      label_weight=loss.label_weight,
    ),
    train_data=None,
    example_batch=example_batch(config.model),
  )


def build_task(config, process_index: int, process_count: int) -> Task:
  """Model, loss, this process's share of the clips and the evaluation."""
  validate(config)
  train, train_ops, held_out, eval_ops = make_sources(config)
  eval_data = lambda: data_lib.eval_batches_from_config(
    held_out, config, process_index, process_count, ops=eval_ops
  )
  task = compile_task(config)
  return task._replace(
    train_data=data_lib.train_iterator_from_config(
      train, config, process_index, process_count, ops=train_ops
    ),
    evaluators=[
      make_evaluator(task.per_example, eval_data, config.data.audio_rate)
    ],
  )


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------


# The decoded window and its target, kept for the first batch: `artifacts`.
SAMPLES = ('image', 'image_target', 'audio', 'audio_target')


def make_evaluator(
  losses: Callable[..., Dict[str, jax.Array]],
  eval_data: Callable[[], Iterable[Dict[str, np.ndarray]]],
  audio_rate: int,
) -> evaluation.Evaluator:
  """The evaluator: the held-out windows decoded in full (label masked).

  Args:
    losses: `per_example` with the config's loss weights.
    eval_data: a fresh pass over this process's evaluation batches.
    audio_rate: sample rate of the written WAVs (Hz).

  Returns:
    An evaluator named '' whose metrics are the means over every held-out
    window of `per_example`'s ('loss', 'video_l1', 'audio_l1', 'label_ce',
    'top1' and the PSNRs and baselines in dB). Process 0 prints `report`
    and writes the first window's reconstruction with
    `experiments.data.writers.write_reconstruction`.
  """

  def predict(outputs, batch):
    decoded = {k: outputs[k] for k in SAMPLES}  # [B, T, S, S, 3], [B, A, 1]
    return dict(losses(outputs, batch), **decoded)

  def artifacts(metrics, rows, workdir: str) -> None:
    del metrics
    first = {k: rows[k][0] for k in SAMPLES}
    writers.write_reconstruction(
      workdir,
      first['image_target'],
      first['image'],
      first['audio_target'],
      first['audio'],
      rate=audio_rate,
    )

  return evaluation.Evaluator(
    name='',
    data=eval_data,
    predict=predict,
    samples=SAMPLES,
    report=lambda metrics, rows: report(metrics),
    artifacts=artifacts,
  )
