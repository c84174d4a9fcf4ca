"""python -m experiments.main --config=experiments/audioset.py --workdir=runs/audioset --config.data.dir=DIR

(with `--config.data.segments=`, `--config.data.eval_segments=` and
`--config.data.labels=` the CSV files.)

AudioSet multi-label classification from video + raw audio (Perceiver IO
App. C, Table 10): 527 classes, mean average precision.
Raw-audio model: video in 2x8x8 patches (32 frames of 224 x 224 give 12,544
tokens) and 48 kHz audio in 128-sample patches (480), each with Fourier
features; one cross-attention into 512 latents of 512
channels, 12 self-attention layers, and a single learned class query
(`ClassificationDecoder`) giving 527 logits. Paper result: 43.3 mAP (raw
audio + video, D=512); 44.9 with mel-spectrograms and D=1024.

Training reads one random 32-frame window per clip (App. C) and minimises the
sigmoid cross-entropy summed over the classes; evaluation averages the sigmoid
probabilities of 16 overlapping 32-frame windows spread over each 10-second
clip (App. C). Each evaluation (`make_evaluator`, every `eval_every` steps
and at the end) gathers every process's averaged predictions and computes
`perceiver.train.evaluation.mean_average_precision` over the classes of
the whole evaluation set, printed as `mAP: NN.N% (N clips, K windows each)`
and logged as `eval/mAP` (a fraction) with the means of the per-example
loss and hit@1 (the top class is a positive one).

Not in the paper (App. C points to the Perceiver's protocol, Jaegle et al.
2021): optimizer, schedule, batch. Chosen: LAMB, 2e-3 constant then cosine
over 100 epochs of the 1.8M-clip unbalanced train set at batch 512.

Data on disk: AudioSet's segment CSV(s) (`YTID, start_seconds, end_seconds,
positive_labels`), the ontology's `class_labels_indices.csv` and the clips
(`<YTID>_<start:06d>_<end:06d>.<ext>` anywhere under `data.dir`, each holding
its 10 s segment); see `experiments/data/video.py`.

Variants: `debug` (a tiny model on short windows; for the clips and CSVs
tests write, given with --config.data.*).

Shapes: B batch, K windows per clip, T frames, S image size, A audio
samples, C classes.
"""

from typing import Callable, Dict, Iterable

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import perceiver as P
from perceiver import io_processors as io
from perceiver import presets
from perceiver import validation
from perceiver.train import config as config_lib
from perceiver.train import data as data_lib
from perceiver.train import evaluation
from perceiver.train.task import Task

NUM_CLASSES = 527


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The App. C config (raw audio + video); `arg='debug'` shrinks it."""
  arg = config_lib.variant(arg, ('', 'debug'), what='audioset')
  c = config_lib.base_config()
  c.batch_size = 512  # not in the paper
  c.total_steps = 100 * 1_800_000 // 512  # 100 epochs (App. C)
  c.log_every = 100
  c.checkpoint_every = 5000
  c.eval_batch_size = 64
  c.optimizer.name = 'lamb'
  c.optimizer.base_lr = 2e-3  # not in the paper
  c.optimizer.scale_by_batch = False
  c.optimizer.schedule = 'constant_cosine'
  c.data.update(
    dict(
      dir='',  # clips anywhere under it
      segments='',  # e.g. unbalanced_train_segments.csv
      eval_segments='',  # e.g. eval_segments.csv
      labels='',  # class_labels_indices.csv
      skip_bad=False,  # skip (and count) missing/unreadable/short clips
      num_frames=32,  # per window (App. C)
      eval_windows=16,  # overlapping windows averaged at test (App. C)
      fps=25,
      audio_rate=48_000,
      image_size=224,
    )
  )
  c.model = ml_collections.ConfigDict(
    dict(
      num_classes=NUM_CLASSES,
      image_patch=8,
      frame_patch=2,  # 2x8x8 video patches
      samples_per_patch=128,
      image_bands=32,
      audio_bands=192,  # not in App. C: the AE model's
      z_index_dim=512,
      num_z_channels=512,
      num_self_attends_per_block=12,
      num_self_attend_heads=8,
      decoder_channels=1024,
      attention_impl='reference',
      cross_attention_impl='chunked',
    )
  )
  if arg == 'debug':
    c.batch_size = 2
    c.total_steps = 2
    config_lib.quick_test(c)
    c.checkpoint_every = 2
    c.eval_batch_size = 2
    c.data.update(num_frames=4, eval_windows=3, image_size=16)
    # Its encoder's fields are the video_autoencoding preset's.
    c.model.update(
      presets.tiny('video_autoencoding'),
      num_classes=3,
      image_bands=2,
      audio_bands=4,
      decoder_channels=16,
    )
  c.lock()
  return c


def validate(config) -> None:
  """Checks the experiment's fields (the engine checks the rest)."""
  m, d = config.model, config.data
  for name in ('num_frames', 'eval_windows', 'image_size'):
    validation.check_positive(f'data.{name}', d[name])
  for name in (
    'num_classes',
    'image_patch',
    'frame_patch',
    'samples_per_patch',
    'z_index_dim',
    'num_z_channels',
    'num_self_attends_per_block',
    'num_self_attend_heads',
    'decoder_channels',
  ):
    validation.check_positive(f'model.{name}', m[name])
  validation.check_divisible(
    'data.image_size', d.image_size, 'model.image_patch', m.image_patch
  )
  validation.check_divisible(
    'data.num_frames', d.num_frames, 'model.frame_patch', m.frame_patch
  )
  if d.skip_corrupt:
    raise ValueError(
      'data.skip_corrupt: expected False (clips are decoded by the ops, '
      'which the loader never skips; set data.skip_bad to skip unreadable '
      'or short clips), got True.'
    )
  validation.check_divisible(
    'data.audio_rate / data.fps * num_frames',
    d.audio_rate // d.fps * d.num_frames,
    'model.samples_per_patch',
    m.samples_per_patch,
  )


def make_forward(m, d) -> hk.TransformedWithState:
  """batch {'image': uint8 [B, (K,) T, S, S, 3], 'audio': [B, (K,) A, 1]} ->
  {'logits': [B, C] (mean over windows), 'probs': [B, C] (mean of the
  windows' sigmoid probabilities)}."""
  num_samples = d.num_frames * d.audio_rate // d.fps

  def forward(batch, *, is_training: bool):
    image, audio = batch['image'], batch['audio']
    windows = image.shape[1] if image.ndim == 6 else 1
    b = image.shape[0]
    image = image.reshape((b * windows,) + image.shape[-4:])
    audio = audio.reshape(b * windows, num_samples, 1)
    preprocessor = io.MultimodalPreprocessor(
      min_padding_size=4,
      modalities=dict(
        audio=io.AudioPreprocessor(
          prep_type='patches',
          samples_per_patch=m.samples_per_patch,
          position_encoding_type='fourier',
          fourier_position_encoding_kwargs=dict(
            num_bands=m.audio_bands,
            max_resolution=(num_samples // m.samples_per_patch,),
            sine_only=False,
            concat_pos=True,
          ),
        ),
        image=io.ImagePreprocessor(
          prep_type='patches',
          spatial_downsample=m.image_patch,
          temporal_downsample=m.frame_patch,
          position_encoding_type='fourier',
          fourier_position_encoding_kwargs=dict(
            num_bands=m.image_bands,
            max_resolution=(
              d.num_frames // m.frame_patch,
              d.image_size // m.image_patch,
              d.image_size // m.image_patch,
            ),
            sine_only=False,
            concat_pos=True,
          ),
        ),
      ),
    )
    encoder = P.PerceiverEncoder(
      num_self_attends_per_block=m.num_self_attends_per_block,
      num_blocks=1,
      z_index_dim=m.z_index_dim,
      num_z_channels=m.num_z_channels,
      num_cross_attend_heads=1,
      num_self_attend_heads=m.num_self_attend_heads,
      cross_attend_widening_factor=1,
      self_attend_widening_factor=1,
      attention_impl=m.attention_impl,
      cross_attention_impl=m.cross_attention_impl,
    )
    decoder = P.ClassificationDecoder(
      num_classes=m.num_classes,
      num_z_channels=m.num_z_channels,
      use_query_residual=True,
      position_encoding_type='trainable',
      trainable_position_encoding_kwargs=dict(
        num_channels=m.decoder_channels, init_scale=0.02
      ),
      attention_impl=m.attention_impl,
    )
    net = P.Perceiver(
      encoder=encoder, decoder=decoder, input_preprocessor=preprocessor
    )
    inputs = {
      'image': image.astype(jnp.float32) / 255.0,
      'audio': audio.astype(jnp.float32),
    }
    logits = net(inputs, is_training=is_training)
    logits = logits.reshape(b, windows, m.num_classes)  # [B, K, C]
    return {
      'logits': jnp.mean(logits, axis=1),
      'probs': jnp.mean(jax.nn.sigmoid(logits), axis=1),
    }

  return hk.transform_with_state(forward)


def per_example(outputs, batch) -> Dict[str, jax.Array]:
  """Sigmoid cross-entropy summed over classes, and hit@1, each [B]."""
  labels = batch['label']  # float32 multi-hot [B, C]
  top = jnp.argmax(outputs['probs'], axis=-1)
  return {
    'loss': jnp.sum(
      optax.sigmoid_binary_cross_entropy(outputs['logits'], labels), axis=-1
    ),
    'hit_at_1': jnp.take_along_axis(labels, top[:, None], axis=1)[:, 0],
  }


def make_sources(config):
  """(train source, train ops, eval source, eval ops, class names)."""
  # pylint: disable=g-import-not-at-top
  from experiments.data import video as video_data

  d = config.data
  kw = dict(
    num_frames=d.num_frames,
    fps=d.fps,
    image_size=d.image_size,
    audio_rate=d.audio_rate,
  )
  spec = video_data.WindowSpec(**kw)
  train, names = video_data.audioset_source(
    d.dir, d.segments, d.labels, spec, skip_bad=d.skip_bad
  )
  if len(names) != config.model.num_classes:
    raise ValueError(
      f'data.labels: expected {config.model.num_classes} '
      f'classes, got {len(names)}.'
    )
  held_out, _ = video_data.audioset_source(
    d.dir, d.eval_segments or d.segments, d.labels, spec, skip_bad=d.skip_bad
  )
  return (
    train,
    [data_lib.RandomMap(video_data.random_window, **kw)],
    held_out,
    [data_lib.Map(video_data.spaced_windows, num_windows=d.eval_windows, **kw)],
    names,
  )


def make_evaluator(
  eval_data: Callable[[], Iterable[Dict[str, np.ndarray]]],
  eval_windows: int,
) -> evaluation.Evaluator:
  """The evaluator: mAP over the classes of the whole evaluation set.

  Args:
    eval_data: a fresh pass over this process's evaluation batches (each
      record with its `eval_windows` windows).
    eval_windows: windows averaged per clip (for the printed line).

  Returns:
    An evaluator named '' whose metrics are 'mAP'
    (`evaluation.mean_average_precision` of every clip's averaged window
    probabilities) and the means of `per_example`'s 'loss' and
    'hit_at_1'. Process 0 prints the mAP.
  """

  def predict(outputs, batch):
    return dict(
      per_example(outputs, batch),
      probs=outputs['probs'],
      labels=batch['label'],
    )

  def reduce(rows):
    return {
      'mAP': evaluation.mean_average_precision(rows['probs'], rows['labels']),
      'loss': float(np.mean(rows['loss'])),
      'hit_at_1': float(np.mean(rows['hit_at_1'])),
    }

  return evaluation.Evaluator(
    name='',
    data=eval_data,
    predict=predict,
    reduce=reduce,
    report=lambda metrics, rows: (
      f'mAP: {100 * metrics["mAP"]:.1f}% ({len(rows["probs"])} clips, '
      f'{eval_windows} windows each)'
    ),
  )


def compile_task(config) -> Task:
  """The model and loss without data (`--compile_only`; `build_task` adds
  the data): `example_batch` has the clips' keys, dtypes and shapes."""
  d, m = config.data, config.model
  samples = d.num_frames * d.audio_rate // d.fps
  return Task(
    forward=make_forward(m, d),
    per_example=per_example,
    train_data=None,
    example_batch={
      'image': np.zeros(
        (2, d.num_frames, d.image_size, d.image_size, 3), np.uint8
      ),
      'audio': np.zeros((2, samples, 1), np.float32),
      'label': np.zeros((2, m.num_classes), np.float32),
      'index': np.zeros((2,), np.int32),
    },
  )


def build_task(config, process_index: int, process_count: int) -> Task:
  """Model, loss, this process's share of the AudioSet clips and mAP."""
  validate(config)
  train, train_ops, held_out, eval_ops, _ = make_sources(config)
  eval_data = lambda: data_lib.eval_batches_from_config(
    held_out, config, process_index, process_count, ops=eval_ops
  )
  return compile_task(config)._replace(
    train_data=data_lib.train_iterator_from_config(
      train, config, process_index, process_count, ops=train_ops
    ),
    evaluators=[make_evaluator(eval_data, config.data.eval_windows)],
  )
