"""python -m experiments.main --config=experiments/imagenet.py:fashion_mnist

Expected: `top-1 accuracy: 88.5% (top-5 99.7%) on 10000 images` after 10
epochs (4,687 steps of 128), in about 12 minutes on 2 CPU cores (runs and
times: docs/results/imagenet.md).

ImageNet: python -m experiments.main --config=experiments/imagenet.py
  --config.data.dir=/data/imagenet --workdir=runs/imagenet

Perceiver IO on ImageNet from scratch: the paper's config A (Perceiver IO,
App. A) with the released training code's behaviour
(`train/experiment.py`, `train/dataset.py`). Published top-1 after 110 epochs on 64 TPUv3: 79.0%
(:fourier), 82.1% (:conv), 72.7% (:learned); not reproduced here (ImageNet
does not fit this machine). What runs here is the same pipeline at small
scale on Fashion-MNIST (`:fashion_mnist`, below).

Recipe (config A): global batch 1024, 110 epochs of 1,281,167 images; LAMB
(b1 0.9, b2 0.999, eps 1e-6, trust ratio) at 5e-4 x batch / 256 = 2e-3,
constant for the first half and cosine to 0 over the second, no warm-up;
weight decay 0.1 except biases and LayerNorm/BatchNorm parameters (position
embeddings decayed); gradients clipped at global norm 10; no dropout.
Training images: Inception crop (area 0.08-1, aspect 3/4-4/3, 10 tries,
centre-crop fallback), horizontal flip, RandAugment (4 layers, magnitude 5,
the released 16 operations with cutout 40, translate 100, fill 128) on the
crop, bicubic resize to 224, mean/std normalisation; then, in the jitted
forward on the global batch, MixUp (alpha 0.2) on the first half and CutMix
on the second half, targets mixed and then smoothed (0.1). Evaluation:
central 224/256 crop, bicubic resize; top-1 and top-5 over the whole
validation split.

Data (read from disk, never downloaded), `--config.data.format`:
  'imagefolder': DIR/train/<class>/*.JPEG (.jpg, .png) and
    DIR/val/<class>/*; class folders that are ILSVRC 2012 wnids get the
    released 1,000-class order, so released checkpoints evaluate correctly
    (a subset of the classes works too); other names (`cat/`, `dog/`) get
    labels in sorted order and `model.num_classes` = the number of class
    folders (`experiments.data.images.class_order`).
  'tfds': TFDS imagenet2012 prepared as ArrayRecord (read without
    TensorFlow); `data.dir` is the TFDS data directory.
  'fashion_mnist': the vendored Fashion-MNIST (or `data.dir` holding the
    original IDX files).
The schedule follows the data: `num_train` is the number of training
images the reader counts (1,281,167 on ImageNet: 137,625 steps of 1024 in
110 epochs) and `model.num_classes` the label space it finds; setting
either checks it against the data, and `--config.total_steps` replaces
epochs x num_train / batch_size.

Variants (`--config=experiments/imagenet.py:VARIANT`, comma-separated):
  fourier (default; conv for fashion_mnist), conv, learned: the three
    released architectures (`perceiver.presets` imagenet_fourier /
    imagenet_conv / imagenet_learned);
  debug: a tiny model on 256 Fashion-MNIST images (under a minute on a
    CPU, mostly compilation);
  fashion_mnist: the same recipe at small scale on Fashion-MNIST (60,000
    training images, evaluated on the 10,000 test images; the command
    above).

Evaluation (`make_evaluator`, every `eval_every` steps and at the end):
top-1 and top-5 over the whole validation split, logged as eval/top1,
eval/top5 and eval/loss (metrics.jsonl, result.json) and printed as
`top-1 accuracy: NN.N% (top-5 NN.N%) on N images`; the first evaluation
also writes a grid of augmented (and mixed) training examples to
`WORKDIR/augmented_examples.png`.

`--config.init_checkpoint=PATH` starts from a released checkpoint
(`imagenet_{conv_preprocessing, fourier_position_encoding,
learned_position_encoding}.pystate`, read as `model.preset` by
`perceiver.train.warm_start`), an .npz of
`perceiver.checkpoints.save`, or a workdir's latest checkpoint
(`Task.init_params`); with `--config.eval_only=True` the run only
evaluates it, e.g. a released model on a user's validation set:

  python -m experiments.main --config=experiments/imagenet.py:conv
    --config.data.dir=/data/imagenet --config.eval_only=True
    --config.init_checkpoint=imagenet_conv_preprocessing.pystate
    --workdir=runs/imagenet_conv_eval

Shapes: B batch, S image size, K classes.
"""

import os
from typing import Any, Dict, List, Optional, Tuple

import grain
import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.data import batch_augment
from experiments.data import fashion_mnist
from experiments.data import image_ops
from experiments.data import images as images_lib
from experiments.data import randaugment
from experiments.data import tfds
from experiments.data import writers
from perceiver import presets
from perceiver import tasks
from perceiver import validation
from perceiver.train import config as config_lib
from perceiver.train import data as data_lib
from perceiver.train import evaluation as evaluation_lib
from perceiver.train import warm_start
from perceiver.train.task import Task

ARCHITECTURES = {
  'fourier': 'imagenet_fourier',
  'conv': 'imagenet_conv',
  'learned': 'imagenet_learned',
}
FORMATS = ('imagefolder', 'tfds', 'fashion_mnist')
# Formats whose label space is fixed: {format: K}.
FIXED_CLASSES = {
  'tfds': tfds.NUM_CLASSES,
  'fashion_mnist': fashion_mnist.NUM_CLASSES,
}
PREVIEW_FILE = 'augmented_examples.png'
# ImageNet-1k (ILSVRC 2012): training images and classes, what
# `compile_task` assumes where the config leaves them to the data.
IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_CLASSES = 1000
_MODEL_FIELDS = tuple(
  k
  for k in presets.defaults('imagenet_fourier')
  if k not in ('image_size', 'compute_dtype')
)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Config A; `arg` picks variants (see the module docstring)."""
  scales = ('debug', 'fashion_mnist')
  parts = config_lib.variants(
    arg,
    tuple(ARCHITECTURES) + scales,
    what='imagenet',
    exclusive=(tuple(ARCHITECTURES), scales),
  )
  arch = [p for p in parts if p in ARCHITECTURES]
  scale = [p for p in parts if p in scales]
  c = config_lib.base_config()
  c.seed = 0
  c.batch_size = 1024
  c.epochs = 110
  c.num_train = config_lib.placeholder()  # None: the training images found
  c.total_steps = (
    c.get_ref('epochs') * c.get_ref('num_train') // c.get_ref('batch_size')
  )
  c.log_every = 100
  c.checkpoint_every = 5000
  c.eval_every = 0  # 0: at the end only
  c.eval_batch_size = 1000
  # init_checkpoint: a released .pystate/.pickle, our .npz or a workdir.

  c.optimizer.name = 'lamb'
  c.optimizer.base_lr = 5e-4  # x batch / 256: 2e-3 at 1024
  c.optimizer.scale_by_batch = True
  c.optimizer.schedule = 'constant_cosine'
  c.optimizer.constant_fraction = 0.5
  c.optimizer.warmup_steps = 0
  c.optimizer.end_lr = 0.0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-6
  c.optimizer.weight_decay = 0.1
  c.optimizer.decay_pos_embs = True
  c.optimizer.clip_norm = 10.0

  c.data.update(
    dict(
      format='imagefolder',
      dir='',
      train_limit=0,  # fashion_mnist only: first N training images (0: all)
      num_eval=0,  # fashion_mnist only: first N test images (0: all)
      image_size=224,
      crop_padding=32,  # eval crop 224 / (224 + 32)
      crop_area=(0.08, 1.0),
      crop_aspect=(3 / 4, 4 / 3),
      crop_attempts=10,
      flip=True,
      randaugment_layers=4,
      randaugment_magnitude=5.0,
      randaugment_cutout=randaugment.CUTOUT_CONST,
      randaugment_translate=randaugment.TRANSLATE_CONST,
      randaugment_fill=randaugment.FILL,
      mixup_alpha=0.2,
      cutmix=True,
      label_smoothing=0.1,
      mean=tasks.IMAGENET_MEAN_RGB,
      std=tasks.IMAGENET_STD_RGB,
      preview_examples=16,  # images in augmented_examples.png (0: none)
    )
  )
  # Fashion-MNIST defaults to the conv stem: 7 x 7 tokens instead of 784.
  default = 'conv' if scale == ['fashion_mnist'] else 'fourier'
  preset = ARCHITECTURES[arch[0] if arch else default]
  defaults = presets.defaults(preset)
  c.model = ml_collections.ConfigDict(
    dict(preset=preset, **{k: defaults[k] for k in _MODEL_FIELDS})
  )
  # None: the label space the data has (see the module docstring).
  c.model.num_classes = config_lib.placeholder()

  if scale and scale[0] == 'fashion_mnist':
    _fashion_mnist(c)
  elif scale:
    _debug(c)
  c.lock()
  return c


def _fashion_mnist(c: ml_collections.ConfigDict) -> None:
  """Config A's recipe at Fashion-MNIST scale (28 x 28 grey, 10 classes).

  The same steps, sized for ~15 minutes on the 2-core machine: a small
  latent array (32 x 96), 10 epochs, LAMB at 2e-3 (not batch-scaled) with
  the constant-then-cosine schedule, and augmentation weakened for so short
  a run: Inception crops of at least 85% of the image (a clothing photo
  fills its frame; at 50% a crop loses sleeves and hems), flip, RandAugment
  1 layer at the released magnitude 5 with its pixel constants scaled to the
  image (28 px here, ~300 px on ImageNet), MixUp (alpha 0.1) on the whole
  batch and no CutMix, label smoothing 0.1; evaluation on the whole image.
  Config A's full strength (crops from 8%, RandAugment 4 layers, CutMix)
  regularises a 110-epoch ImageNet run; weaker settings here are in
  docs/results/imagenet.md.
  """
  c.batch_size = 128
  c.epochs = 10
  c.log_every = 50
  c.checkpoint_every = 500
  c.eval_batch_size = 1000
  c.optimizer.base_lr = 2e-3
  c.optimizer.scale_by_batch = False
  d = c.data
  d.format = 'fashion_mnist'
  d.image_size = 28
  d.crop_padding = 0  # evaluate on the whole image
  d.crop_area = (0.85, 1.0)
  d.randaugment_layers = 1
  d.randaugment_cutout = 3
  d.randaugment_translate = 7
  d.mean = (fashion_mnist.MEAN,) * 3
  d.std = (fashion_mnist.STD,) * 3
  d.cutmix = False
  d.mixup_alpha = 0.1
  # One worker process: augmentation overlaps the model's step.
  d.worker_count = 1
  d.preview_examples = 32
  m = c.model
  m.z_index_dim = 32
  m.num_z_channels = 96
  m.num_blocks = 1
  m.num_self_attends_per_block = 3
  m.num_self_attend_heads = 4
  m.num_bands = 4
  # 784 inputs: the unchunked cross-attention is faster here
  # (docs/results/imagenet.md).
  m.cross_attention_impl = 'reference'


def _debug(c: ml_collections.ConfigDict) -> None:
  """A tiny model on 256 vendored Fashion-MNIST images, 8 steps."""
  c.batch_size = 32
  c.epochs = 1
  config_lib.quick_test(c, log_every=2)
  c.checkpoint_every = 4
  c.eval_batch_size = 64
  c.optimizer.base_lr = 1e-3
  c.optimizer.scale_by_batch = False
  d = c.data
  d.format = 'fashion_mnist'
  d.num_eval = 100  # two eval batches, the second padded
  d.train_limit = 256
  d.image_size = 16
  d.crop_padding = 0
  d.randaugment_cutout = 4
  d.randaugment_translate = 8
  d.mean = (fashion_mnist.MEAN,) * 3
  d.std = (fashion_mnist.STD,) * 3
  d.preview_examples = 8
  c.model.update(presets.tiny(c.model.preset, num_bands=4))


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def _check_range(name: str, pair: Any, low: float, high: float) -> None:
  ok = (
    isinstance(pair, (tuple, list))
    and len(pair) == 2
    and low < pair[0] <= pair[1] <= high
  )
  if not ok:
    raise ValueError(
      f'{name}: expected (min, max) with {low} < min <= max <= {high}, '
      f'got {pair!r}.'
    )


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the ImageNet-specific fields (the engine checks the rest)."""
  d, m = config.data, config.model
  validation.check_choice('data.format', d.format, FORMATS)
  if d.format != 'fashion_mnist' and not d.dir:
    raise ValueError(
      f'data.dir: expected the {d.format} data directory for '
      f"data.format={d.format!r}, got ''."
    )
  validation.check_choice(
    'model.preset', m.preset, tuple(ARCHITECTURES.values())
  )
  expected_classes = FIXED_CLASSES.get(d.format)
  if m.num_classes is not None and expected_classes not in (
    None,
    m.num_classes,
  ):
    raise ValueError(
      f'model.num_classes: expected {expected_classes} for '
      f'data.format={d.format!r} (labels are in that class space), got '
      f'{m.num_classes}.'
    )
  validation.check_positive('model.num_classes', m.num_classes, True)
  validation.check_positive('num_train', config.num_train, True)
  validation.check_positive('epochs', config.epochs)
  validation.check_positive('data.image_size', d.image_size)
  validation.check_positive('data.crop_attempts', d.crop_attempts)
  for name in ('crop_padding', 'randaugment_layers', 'train_limit', 'num_eval'):
    value = d[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ValueError(
        f'data.{name}: expected a non-negative integer, got {value!r}.'
      )
  if m.preset == 'imagenet_conv' and d.image_size % 4:
    raise ValueError(
      'data.image_size: expected a multiple of 4 for the conv stem (stride '
      f'2 conv + stride 2 max-pool), got {d.image_size}.'
    )
  _check_range('data.crop_area', d.crop_area, 0.0, 1.0)
  _check_range('data.crop_aspect', d.crop_aspect, 0.0, float('inf'))
  if not 0 <= d.randaugment_magnitude <= randaugment.MAX_LEVEL:
    raise ValueError(
      f'data.randaugment_magnitude: expected a number in [0, '
      f'{randaugment.MAX_LEVEL:g}], got {d.randaugment_magnitude!r}.'
    )
  if not 0 <= d.randaugment_fill <= 255:
    raise ValueError(
      f'data.randaugment_fill: expected a grey level in [0, 255], got '
      f'{d.randaugment_fill!r}.'
    )
  if not d.mixup_alpha >= 0:
    raise ValueError(
      f'data.mixup_alpha: expected a non-negative number (0: no MixUp), got '
      f'{d.mixup_alpha!r}.'
    )
  if not isinstance(d.cutmix, bool):
    raise ValueError(f'data.cutmix: expected True or False, got {d.cutmix!r}.')
  validation.check_probability('data.label_smoothing', d.label_smoothing)
  for name in ('mean', 'std'):
    if len(d[name]) != 3:
      raise ValueError(
        f'data.{name}: expected 3 values (R, G, B), got {d[name]!r}.'
      )
  if min(d.std) <= 0:
    raise ValueError(f'data.std: expected positive values, got {d.std!r}.')


# ---------------------------------------------------------------------------
# Model and metrics (MixUp / CutMix in JAX, inside the jitted step)
# ---------------------------------------------------------------------------


def model_overrides(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The `presets.build(config.model.preset, **overrides)` of a config:
  the model's fields at `config.data.image_size`."""
  return presets.overrides_from(
    config.model.preset, config.model, image_size=config.data.image_size
  )


def build_model(config: ml_collections.ConfigDict) -> hk.TransformedWithState:
  """The preset `config.model.preset` at `config.data.image_size`."""
  return presets.build(config.model.preset, **model_overrides(config))


def build_forward(config: ml_collections.ConfigDict) -> hk.TransformedWithState:
  """The model of a run's config, for `perceiver.train.restore`: the preset
  of `build_model`, called on normalised images [B, S, S, 3] -> logits
  [B, K] (no labels, no mixing)."""
  return build_model(config)


def make_forward(config: ml_collections.ConfigDict) -> hk.TransformedWithState:
  """batch {'image': [B, S, S, 3], 'label': [B]} -> {'logits', 'targets'}.

  In training the targets are the one-hot labels mixed by
  `batch_augment.mix_batch` (with the images) and then smoothed, `y (1 -
  eps) + eps / K` (the released order); in evaluation they are the plain
  one-hot labels. The mixing draws from the step's rng (split off the
  model's, which config A does not use: no dropout); the preset model
  stays a separate transformed function, so its parameter tree is the
  released checkpoint's.
  """
  model = build_model(config)
  d = config.data
  num_classes = config.model.num_classes

  def init(rng, batch, *, is_training):
    return model.init(rng, batch['image'], is_training=is_training)

  def apply(params, state, rng, batch, *, is_training):
    images = batch['image']
    targets = jax.nn.one_hot(batch['label'], num_classes)  # [B, K]
    if is_training:
      rng, mix_rng = jax.random.split(rng)
      images, targets = batch_augment.mix_batch(
        images,
        targets,
        mix_rng,
        mixup_alpha=d.mixup_alpha,
        cutmix=d.cutmix,
      )
      if d.label_smoothing:
        targets = optax.smooth_labels(targets, d.label_smoothing)
    logits, state = model.apply(
      params, state, rng, images, is_training=is_training
    )
    return {'logits': logits, 'targets': targets}, state

  return hk.TransformedWithState(init=init, apply=apply)


def per_example(outputs, batch) -> Dict[str, jax.Array]:
  """Cross-entropy against the forward's targets; top-1 / top-5 hits of
  the (unmixed) label (with K <= 5 classes every label is in the top 5);
  all [B] float32."""
  logits, labels = outputs['logits'], batch['label']
  _, top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))  # [B, <= 5]
  return {
    'loss': optax.softmax_cross_entropy(logits, outputs['targets']),
    'top1': (top5[:, 0] == labels).astype(jnp.float32),
    'top5': jnp.any(top5 == labels[:, None], axis=-1).astype(jnp.float32),
  }


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def train_ops(data: ml_collections.ConfigDict) -> List[data_lib.Op]:
  """Crop, flip, RandAugment, resize, normalise (the released order)."""
  ops = [
    data_lib.RandomMap(
      image_ops.inception_crop,
      area_range=tuple(data.crop_area),
      aspect_range=tuple(data.crop_aspect),
      attempts=data.crop_attempts,
      image_size=data.image_size,
      crop_padding=data.crop_padding,
    )
  ]
  if data.flip:
    ops.append(data_lib.RandomMap(image_ops.random_flip))
  if data.randaugment_layers:
    ops.append(
      data_lib.RandomMap(
        randaugment.randaugment,
        num_layers=data.randaugment_layers,
        magnitude=data.randaugment_magnitude,
        cutout_const=data.randaugment_cutout,
        translate_const=data.randaugment_translate,
        fill=data.randaugment_fill,
      )
    )
  ops.append(data_lib.Map(image_ops.resize, image_size=data.image_size))
  ops.append(_normalize_op(data))
  return ops


def eval_ops(data: ml_collections.ConfigDict) -> List[data_lib.Op]:
  """Central crop (224/256), bicubic resize, normalise."""
  crop = data_lib.Map(
    image_ops.center_crop,
    image_size=data.image_size,
    crop_padding=data.crop_padding,
  )
  return [crop, _normalize_op(data)]


def _normalize_op(data: ml_collections.ConfigDict) -> data_lib.Map:
  return data_lib.Map(
    image_ops.normalize, mean=tuple(data.mean), std=tuple(data.std)
  )


def make_sources(config: ml_collections.ConfigDict):
  """(train source, eval source, config) for `config.data.format`.

  The config is `config` with the training split's size (`num_train`) and
  label space (`model.num_classes`) filled in (`config_lib.from_data`; the
  schedule follows). Fashion-MNIST serves the first `data.train_limit`
  training images (0: all).

  Raises:
    ValueError: from the readers (missing directory, no images, a
      validation class the training split lacks), or a set `num_train` or
      `model.num_classes` that differs from the data's.
  """
  d = config.data
  if d.format == 'fashion_mnist':
    train = fashion_mnist.FashionMnistSource(
      'train', d.dir, limit=d.train_limit
    )
    evaluation = fashion_mnist.FashionMnistSource(
      'test', d.dir, limit=d.num_eval
    )
    where = 'the Fashion-MNIST training split'
  elif d.format == 'imagefolder':
    train = images_lib.ImageFolderSource(d.dir, 'train')
    evaluation = images_lib.ImageFolderSource(
      d.dir, 'val', classes=train.classes
    )
    where = os.path.join(d.dir, 'train')
  else:
    train = tfds.TfdsImageNetSource(d.dir, 'train')
    evaluation = tfds.TfdsImageNetSource(d.dir, 'validation')
    where = f'the TFDS training split in {d.dir}'
  num_classes = (
    len(train.classes) if d.format == 'imagefolder' else FIXED_CLASSES[d.format]
  )
  found = {'num_train': len(train), 'model.num_classes': num_classes}
  return train, evaluation, config_lib.from_data(config, found, where=where)


def augmented_examples(
  config: ml_collections.ConfigDict, source, count: int
) -> Tuple[np.ndarray, np.ndarray]:
  """The first `count` training records as the model sees them.

  `train_ops` with record rngs from (seed, index), then
  `batch_augment.mix_batch` and label smoothing as in the forward (key
  from the seed).

  Returns:
    images float32 [count, S, S, 3] (normalised), targets float32 [count, K].
  """
  ops, records = train_ops(config.data), []
  for index in range(min(count, len(source))):
    record = source[index]
    rng = np.random.default_rng([config.seed, index])
    for op in ops:
      if isinstance(op, data_lib.RandomMap):
        record = op.random_map(record, rng)
      else:
        record = op.map(record)
    records.append(record)
  batch = {k: np.stack([r[k] for r in records]) for k in ('image', 'label')}
  d = config.data
  targets = jax.nn.one_hot(batch['label'], config.model.num_classes)
  mixed, targets = batch_augment.mix_batch(
    jnp.asarray(batch['image']),
    targets,
    jax.random.PRNGKey(config.seed),
    mixup_alpha=d.mixup_alpha,
    cutmix=d.cutmix,
  )
  if d.label_smoothing:
    targets = optax.smooth_labels(targets, d.label_smoothing)
  return np.asarray(mixed), np.asarray(targets)


def make_evaluator(
  config: ml_collections.ConfigDict,
  train,
  evaluation,
  process_index: int,
  process_count: int,
) -> evaluation_lib.Evaluator:
  """The evaluator: top-1 / top-5 over the whole validation split.

  Its rows are `per_example`'s over `evaluation` (loss: cross-entropy
  against the plain one-hot labels), its metrics their means {'top1',
  'top5', 'loss'}, logged as `eval/top1`...; process 0 prints `top-1
  accuracy: NN.N% (top-5 NN.N%) on N images` and, the first time (if it is
  not there yet), writes `workdir/augmented_examples.png`.
  """
  d = config.data

  def report(metrics, rows) -> str:
    return (
      f'top-1 accuracy: {100 * metrics["top1"]:.1f}% '
      f'(top-5 {100 * metrics["top5"]:.1f}%) on {len(rows["top1"])} images'
    )

  def preview(metrics, rows, workdir: str) -> None:
    del metrics, rows  # The preview shows training examples.
    path = os.path.join(workdir, PREVIEW_FILE)
    if d.preview_examples and not os.path.exists(path):
      grid, _ = augmented_examples(config, train, d.preview_examples)
      writers.write_image_grid(path, grid, mean=d.mean, std=d.std)

  return evaluation_lib.Evaluator(
    name='',
    data=lambda: eval_batches(config, evaluation, process_index, process_count),
    predict=per_example,
    report=report,
    artifacts=preview,
  )


def eval_batches(
  config: ml_collections.ConfigDict,
  evaluation,
  process_index: int,
  process_count: int,
):
  """One pass of this process's rows of the evaluation batches.

  Returns:
    An iterator of {'image': float32 [b, S, S, 3], 'label': int32 [b],
    data_lib.EVAL_MASK: float32 [b]} (b = eval_batch_size / process_count;
    0 on the padding of the last batch), preprocessed by `eval_ops`.
  """
  return data_lib.eval_batches_from_config(
    evaluation,
    config,
    process_index,
    process_count,
    ops=eval_ops(config.data),
    read_options=_read_options(config.data),
  )


def _read_options(
  data: ml_collections.ConfigDict,
) -> Optional[grain.ReadOptions]:
  """grain's reader settings for the format (None: grain's defaults)."""
  if data.format == 'fashion_mnist':
    # In-memory records: reader threads would only contend for the GIL
    # (grain's default reader threads suit the JPEG / ArrayRecord reads).
    return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  return None


def _model_task(config: ml_collections.ConfigDict) -> Task:
  """The model, loss and warm start (`config.init_checkpoint`, read as
  `model.preset` at this config's sizes) of a config whose sizes are
  known."""
  size = config.data.image_size
  return Task(
    forward=make_forward(config),
    per_example=per_example,
    train_data=None,
    example_batch={
      'image': np.zeros((2, size, size, 3), np.float32),
      'label': np.zeros((2,), np.int32),
    },
    config=config,
    init_params=warm_start.init_params_hook(
      config, preset=config.model.preset, overrides=model_overrides(config)
    ),
  )


def compile_task(config: ml_collections.ConfigDict) -> Task:
  """The model and loss without data (`--compile_only`): the training
  batch's keys, dtypes and shapes, with ImageNet-1k's 1,281,167 images and
  1,000 classes where the config leaves them to the data (`Task.config`)."""
  found = {
    k: v
    for k, v in (
      ('num_train', IMAGENET_TRAIN_IMAGES),
      ('model.num_classes', IMAGENET_CLASSES),
    )
    if config_lib.flat_fields(config)[k] is None
  }
  return _model_task(
    config_lib.from_data(config, found, where='ImageNet-1k (compile only)')
  )


def build_task(
  config: ml_collections.ConfigDict, process_index: int, process_count: int
) -> Task:
  """Model, loss, this process's share of the training data, evaluation.

  `Task.evaluators` is `make_evaluator` (whole-split top-1 / top-5, the
  printed line, the grid of augmented examples); `Task.init_params` loads
  `config.init_checkpoint` when one is given (the whole model: a released
  or earlier ImageNet model has every parameter of this one). Everything
  is built from `make_sources`' config (the size and classes found), which
  is also `Task.config`.

  Args:
    config: from `get_config`.
    process_index, process_count: this JAX process and how many there are.

  Raises:
    ValueError: a bad config field (`validate`) or data directory, or a
      set `num_train` / `model.num_classes` the data does not have.
  """
  validate(config)
  train, evaluation, config = make_sources(config)
  d = config.data
  train_data = data_lib.train_iterator_from_config(
    train,
    config,
    process_index,
    process_count,
    ops=train_ops(d),
    read_options=_read_options(d),
  )
  return _model_task(config)._replace(
    train_data=train_data,
    evaluators=[
      make_evaluator(config, train, evaluation, process_index, process_count)
    ],
  )
