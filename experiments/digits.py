"""python -m experiments.main --config=experiments/digits.py --workdir=runs/digits

Expected: about 97.3% held-out accuracy after 10 epochs, 625 steps of 128,
in a few minutes on 2 CPU cores (runs and times: docs/results/digits.md).

A Perceiver IO image classifier (Perceiver IO, Sec. 4.5 / App. E, at toy scale)
on the 10,000 MNIST digits vendored in `experiments/data/mnist_10k.npz`: the
first 8,000 train, the last 2,000 are held out. As in the paper's ImageNet
variant with convolutional preprocessing, a conv stem (7x7 conv with stride
2, BatchNorm, ReLU, 3x3 max-pool with stride 2) turns the 28x28 pixels into
7x7 = 49 feature vectors; Fourier position features are concatenated, one
cross-attention reads them into 32 latents, two self-attention layers
process the latents and a classification query decodes the logits. Training
uses random shifts of up to 2 pixels, AdamW, label smoothing 0.1 and the
released constant-then-cosine schedule.

Variants: `:debug` (a tiny model and a few steps; seconds on a CPU).
"""

import functools

import grain
import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import perceiver
from perceiver import io_processors
from perceiver import presets
from perceiver import validation
from perceiver.train import config as config_lib
from perceiver.train import data as data_lib
from perceiver.train import evaluation
from perceiver.train.task import Task

NUM_CLASSES = 10
IMAGE_SIZE = 28
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The digits config; `arg='debug'` shrinks it to seconds on a CPU."""
  arg = config_lib.variant(arg, ('', 'debug'), what='digits')
  c = config_lib.base_config()
  c.seed = 0
  c.batch_size = 128
  c.epochs = 10
  c.num_train = 8000  # the rest of the 10,000 digits is held out
  c.total_steps = (
    c.get_ref('epochs') * c.get_ref('num_train') // c.get_ref('batch_size')
  )
  c.log_every = 25
  c.checkpoint_every = 500
  c.eval_every = 0
  c.eval_batch_size = 500

  c.optimizer.name = 'adamw'
  c.optimizer.base_lr = 1e-3
  c.optimizer.scale_by_batch = False
  c.optimizer.schedule = 'constant_cosine'
  c.optimizer.constant_fraction = 0.3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.eps = 1e-8
  c.optimizer.clip_norm = 1.0
  c.optimizer.decay_pos_embs = False

  c.data.max_shift = 2  # random translation in pixels (train only)
  c.data.label_smoothing = 0.1

  c.model = ml_collections.ConfigDict(
    dict(
      prep_type='conv',  # 7x7 conv (stride 2) + BatchNorm + max-pool
      spatial_downsample=4,  # 28x28 pixels -> 7x7 = 49 input tokens
      num_channels=64,  # channels of the conv stem
      num_bands=8,  # Fourier bands per spatial axis
      num_latents=32,
      num_z_channels=64,
      num_blocks=1,
      num_self_attends_per_block=2,
      num_self_attend_heads=4,
      num_cross_attend_heads=1,
      qk_channels=None,
      v_channels=None,
      widening_factor=2,
      dropout_prob=0.0,
      decoder_num_channels=64,
      attention_impl='reference',
    )
  )

  if arg == 'debug':
    # Not `config_lib.quick_test`: the demo run keeps its progress bar,
    # TensorBoard events and curves (tests/test_train_config.py).
    c.epochs = 1
    c.num_train = 512
    c.batch_size = 64
    c.log_every = 2
    c.checkpoint_every = 4
    c.eval_batch_size = 256
    c.model.num_channels = 8
    tiny = presets.TINY
    c.model.num_latents = tiny['z_index_dim']
    c.model.num_z_channels = tiny['num_z_channels']
    c.model.num_self_attends_per_block = tiny['num_self_attends_per_block']
    c.model.num_self_attend_heads = tiny['num_self_attend_heads']
    c.model.decoder_num_channels = 16
    c.model.num_bands = 4
  c.lock()
  return c


def make_forward(model: ml_collections.ConfigDict) -> hk.TransformedWithState:
  """images [B, 28, 28, 1] float -> logits [B, 10]."""

  def forward(batch, *, is_training):
    preprocessor = io_processors.ImagePreprocessor(
      prep_type=model.prep_type,
      spatial_downsample=model.spatial_downsample,
      num_channels=model.num_channels,
      position_encoding_type='fourier',
      concat_or_add_pos='concat',
      fourier_position_encoding_kwargs=dict(
        num_bands=model.num_bands,
        max_resolution=(IMAGE_SIZE // model.spatial_downsample,) * 2,
        concat_pos=True,
        sine_only=False,
      ),
    )
    encoder = perceiver.PerceiverEncoder(
      num_self_attends_per_block=model.num_self_attends_per_block,
      num_blocks=model.num_blocks,
      z_index_dim=model.num_latents,
      num_z_channels=model.num_z_channels,
      qk_channels=model.qk_channels,
      v_channels=model.v_channels,
      num_cross_attend_heads=model.num_cross_attend_heads,
      num_self_attend_heads=model.num_self_attend_heads,
      cross_attend_widening_factor=model.widening_factor,
      self_attend_widening_factor=model.widening_factor,
      dropout_prob=model.dropout_prob,
      attention_impl=model.attention_impl,
    )
    decoder = perceiver.ClassificationDecoder(
      NUM_CLASSES,
      num_z_channels=model.num_z_channels,
      use_query_residual=True,
      position_encoding_type='trainable',
      trainable_position_encoding_kwargs=dict(
        num_channels=model.decoder_num_channels, init_scale=0.02
      ),
      attention_impl=model.attention_impl,
    )
    net = perceiver.Perceiver(
      encoder=encoder, decoder=decoder, input_preprocessor=preprocessor
    )
    return net(batch['image'], is_training=is_training)

  return hk.transform_with_state(forward)


def build_forward(config) -> hk.TransformedWithState:
  """The model of a run's config, for `perceiver.train.restore`: batch
  {'image': float32 [B, 28, 28, 1], normalised as by `normalise`}
  -> logits [B, 10]."""
  return make_forward(config.model)


def per_example(logits, batch, *, label_smoothing: float = 0.0):
  """Cross-entropy with label smoothing (as released) and accuracy, [B]."""
  labels = jax.nn.one_hot(batch['label'], NUM_CLASSES)
  if label_smoothing:
    labels = optax.smooth_labels(labels, label_smoothing)
  return {
    'loss': optax.softmax_cross_entropy(logits, labels),
    'accuracy': (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32),
  }


def normalise(images_u8: np.ndarray) -> np.ndarray:
  """uint8 [N, 28, 28] -> float32 [N, 28, 28, 1], zero mean, unit variance."""
  x = images_u8.astype(np.float32) / 255.0
  return ((x - MNIST_MEAN) / MNIST_STD)[..., None]


def pad(images: np.ndarray, max_shift: int) -> np.ndarray:
  """[N, 28, 28, 1] -> [N, 28 + 2 max_shift, 28 + 2 max_shift, 1], padded
  with the normalised background (done once, before the random crops)."""
  background = (0.0 - MNIST_MEAN) / MNIST_STD
  s = max_shift
  return np.pad(
    images, ((0, 0), (s, s), (s, s), (0, 0)), constant_values=background
  )


def random_shift(record, rng: np.random.Generator, *, max_shift: int):
  """Translates the image by up to `max_shift` pixels along each axis
  (uniform integer offsets from `rng`): a 28x28 crop of the padded image
  'image' [28 + 2 max_shift, 28 + 2 max_shift, 1] (see `pad`)."""
  dy, dx = rng.integers(0, 2 * max_shift + 1, size=2)
  return dict(
    record, image=record['image'][dy : dy + IMAGE_SIZE, dx : dx + IMAGE_SIZE]
  )


def validate(config) -> None:
  """Checks the digits-specific fields (the engine checks the rest)."""
  if not 0 < config.num_train <= 8000:
    raise ValueError(
      f'num_train: expected an integer in [1, 8000] (the last '
      f'2,000 digits are held out), got {config.num_train!r}.'
    )
  if config.batch_size > config.num_train:
    raise ValueError(
      f'batch_size: expected at most num_train={config.num_train} (the '
      f'training split), got {config.batch_size}; it would also make '
      f'total_steps = epochs * num_train // batch_size = '
      f'{config.epochs * config.num_train // config.batch_size}.'
    )
  shift = config.data.max_shift
  if not isinstance(shift, int) or isinstance(shift, bool) or shift < 0:
    raise ValueError(
      f'data.max_shift: expected a non-negative integer, got {shift!r}.'
    )
  m = config.model
  validation.check_choice(
    'model.prep_type', m.prep_type, ('pixels', 'patches', 'conv')
  )
  for name in (
    'spatial_downsample',
    'num_channels',
    'num_bands',
    'num_latents',
    'num_z_channels',
    'num_blocks',
    'num_self_attends_per_block',
    'num_self_attend_heads',
    'num_cross_attend_heads',
    'widening_factor',
    'decoder_num_channels',
  ):
    validation.check_positive(f'model.{name}', m[name])
  if IMAGE_SIZE % m.spatial_downsample:
    raise ValueError(
      f'model.spatial_downsample: expected a divisor of '
      f'{IMAGE_SIZE}, got {m.spatial_downsample}.'
    )
  if m.prep_type == 'conv' and m.spatial_downsample != 4:
    raise ValueError(
      f'model.spatial_downsample: expected 4 for the conv stem (conv '
      f'stride 2 + max-pool stride 2), got {m.spatial_downsample}.'
    )
  if m.num_z_channels % m.num_self_attend_heads:
    raise ValueError(
      f'model.num_self_attend_heads: expected a divisor of '
      f'model.num_z_channels={m.num_z_channels}, got '
      f'{m.num_self_attend_heads}.'
    )


def compile_task(config) -> Task:
  """The model and loss without data, for `--compile_only`: `example_batch`
  has the training batch's keys, dtypes and per-example shapes."""
  validate(config)
  size = (IMAGE_SIZE, IMAGE_SIZE, 1)
  return Task(
    forward=make_forward(config.model),
    per_example=functools.partial(
      per_example, label_smoothing=config.data.label_smoothing
    ),
    train_data=None,
    example_batch={
      'image': np.zeros((2,) + size, np.float32),
      'label': np.zeros((2,), np.int32),
    },
  )


def build_task(config, process_index: int, process_count: int) -> Task:
  """Model, loss and this process's share of the MNIST digits."""
  from experiments.data import load_mnist_10k  # pylint: disable=g-import-not-at-top

  validate(config)
  images, labels = load_mnist_10k()
  x = normalise(images)
  shift = config.data.max_shift
  train = data_lib.ArraySource(
    {
      'image': pad(x[: config.num_train], shift),
      'label': labels[: config.num_train],
    }
  )
  held_out = data_lib.ArraySource({'image': x[-2000:], 'label': labels[-2000:]})
  ops = [data_lib.RandomMap(random_shift, max_shift=shift)] if shift else []
  loader = dict(
    process_index=process_index,
    process_count=process_count,
    # In-memory records: reader threads would only contend for the GIL.
    read_options=grain.ReadOptions(num_threads=0, prefetch_buffer_size=0),
  )
  train_data = data_lib.train_iterator_from_config(
    train, config, ops=ops, **loader
  )
  metrics = functools.partial(
    per_example, label_smoothing=config.data.label_smoothing
  )
  held_out_means = evaluation.Evaluator(
    name='',
    data=lambda: data_lib.eval_batches_from_config(held_out, config, **loader),
    predict=metrics,
  )
  return Task(
    forward=make_forward(config.model),
    per_example=metrics,
    train_data=train_data,
    example_batch={'image': x[:2], 'label': labels[:2]},
    evaluators=[held_out_means],
  )
