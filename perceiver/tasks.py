"""The four released Perceiver IO colabs as library functions.

* `fill_masked_bytes`: masked language modelling on UTF-8 bytes (Sec. 4.1;
  masked_language_modelling.ipynb).
* `classify_image`: ImageNet top-k with the colab's crop, resize and
  normalisation (App. A; imagenet_classification.ipynb).
* `optical_flow`: flow between two frames of any size, by overlapping tiles
  and the colab's pyramid-weighted stitching (Sec. 4.2; optical_flow.ipynb);
  `flow_to_color` / `save_flow_png` draw it with the Middlebury colour wheel
  (Baker et al. 2011).
* `autoencode_video`: video + audio reconstruction and Kinetics-700 label
  probabilities, decoded in chunks (Sec. 4.3; video_autoencoding.ipynb).

Each takes `(model, params, state, inputs...)`. `model` is a preset name
(`perceiver.presets.PRESETS`) or the `hk.TransformedWithState` that
`presets.build` returned; `overrides` are the preset fields the model was
built with (the same dict given to `presets.build`), so the task knows its
sizes. The model's apply is jitted once per model and input shape, and runs
with `is_training=False` and `rng=None`. With random weights these functions
only show that the plumbing works; with a released checkpoint
(`perceiver.checkpoints.load_official`) they do what the colabs do.

Shapes: H, W image height and width; h, w tile height and width; n tiles;
T frames; A audio samples; L sequence length; K classes.
"""

import functools
import os
from typing import (
  Any,
  Callable,
  List,
  Mapping,
  NamedTuple,
  Optional,
  Sequence,
  Tuple,
  Union,
)

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import presets
from perceiver import validation
from perceiver.bytes_tokenizer import BytesTokenizer

Model = Union[str, hk.TransformedWithState]
Params = Mapping[str, Mapping[str, Any]]

_IMAGENET_PRESETS = ('imagenet_fourier', 'imagenet_conv', 'imagenet_learned')
_LABELS_PATH = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'imagenet_labels.txt'
)

# ---------------------------------------------------------------------------
# Models: preset name or transformed model -> (jitted apply, configuration).
# ---------------------------------------------------------------------------


def _hashable(value):
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(v) for v in value)
  return value


@functools.lru_cache(maxsize=32)
def _build(name: str, overrides: Tuple[Tuple[str, Any], ...]):
  return presets.build(name, **dict(overrides))


@functools.lru_cache(maxsize=64)
def _jitted(apply_fn: Callable[..., Any], static: Tuple[Tuple[str, Any], ...]):
  """One `jax.jit` wrapper per (apply, static kwargs): traced once per shape."""
  return jax.jit(functools.partial(apply_fn, **dict(static)))


def _resolve(
  model: Model, names: Sequence[str], overrides: Optional[Mapping[str, Any]]
):
  """Returns (transformed model, preset name, configuration dict)."""
  overrides = dict(overrides or {})
  if isinstance(model, str):
    validation.check_choice('model', model, names)
    name = model
  elif isinstance(model, hk.TransformedWithState):
    name = names[0]
  else:
    raise ValueError(
      f'model: expected a preset name among {list(names)} or '
      'the hk.TransformedWithState of presets.build, got '
      f'{type(model).__name__}.'
    )
  cfg = presets.defaults(name)
  unknown = sorted(set(overrides) - set(cfg))
  if unknown:
    raise ValueError(
      f'overrides: expected fields among {sorted(cfg)}, got unknown {unknown}.'
    )
  cfg.update(overrides)
  if isinstance(model, str):
    key = tuple(sorted((k, _hashable(v)) for k, v in overrides.items()))
    model = _build(name, key)
  return model, name, cfg


def _apply(model: hk.TransformedWithState, params, state, *args, **static):
  """Runs `model.apply(params, state, None, *args, is_training=False, ...)`."""
  fn = _jitted(
    model.apply, tuple(sorted(dict(is_training=False, **static).items()))
  )
  out, _ = fn(params, state, None, *args)
  return out


def _input_structs(name: str, cfg: Mapping[str, Any]) -> tuple:
  """The preset's call arguments for batch 1, as ShapeDtypeStructs."""
  f32 = jnp.float32
  if name in _IMAGENET_PRESETS:
    s = cfg['image_size']
    return (jax.ShapeDtypeStruct((1, s, s, 3), f32),)
  if name == 'language_mlm':
    ids = jax.ShapeDtypeStruct((1, cfg['max_seq_len']), jnp.int32)
    return ids, ids
  if name == 'optical_flow':
    h, w = cfg['image_size']
    return (jax.ShapeDtypeStruct((1, 2, h, w, 3), f32),)
  t, s = cfg['num_frames'], cfg['image_size']
  return (
    {
      'image': jax.ShapeDtypeStruct((1, t, s, s, 3), f32),
      'audio': jax.ShapeDtypeStruct((1, cfg['audio_samples'], 1), f32),
      'label': jax.ShapeDtypeStruct((1, cfg['num_classes']), f32),
    },
  )


def random_weights(
  name: str,
  *,
  seed: int = 0,
  scale: float = 0.1,
  overrides: Optional[Mapping[str, Any]] = None,
) -> Tuple[Params, Params]:
  """Random (params, state) for preset `name`, without compiling `init`.

  For running the tasks' plumbing without a checkpoint: the tree comes from
  `jax.eval_shape` of the preset's init (cheap: no compilation), every
  parameter is drawn from N(0, scale^2) except LayerNorm/BatchNorm scales
  (1 + noise), and BatchNorm state is the identity (mean 0, variance 1).
  Unlike the preset's init, the flow head is not zero, so flows are not
  trivially zero.

  Args:
    name: one of `presets.PRESETS`.
    seed: numpy seed.
    scale: standard deviation of the parameters.
    overrides: preset fields, as for `presets.build(name, **overrides)`.

  Returns:
    (params, state) as nested dicts of jnp arrays (float32; BatchNorm
    counters int32).
  """
  validation.check_choice('name', name, presets.PRESETS)
  model, name, cfg = _resolve(name, presets.PRESETS, overrides)
  shapes = jax.eval_shape(
    functools.partial(model.init, is_training=True),
    jax.random.PRNGKey(0),
    *_input_structs(name, cfg),
  )
  rng = np.random.default_rng(seed)

  def param(module, key, leaf):
    value = rng.normal(0.0, scale, leaf.shape)
    if key == 'scale' and 'norm' in module:
      value = value + 1.0
    return jnp.asarray(value, leaf.dtype)

  def stat(module, leaf):
    value = np.ones(leaf.shape) if 'var_ema' in module else np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  params_shape, state_shape = shapes
  params = {
    m: {k: param(m, k, v) for k, v in d.items()}
    for m, d in params_shape.items()
  }
  state = {
    m: {k: stat(m, v) for k, v in d.items()} for m, d in state_shape.items()
  }
  return params, state


def _softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(shifted)
  return e / e.sum(axis=-1, keepdims=True)


def _as_image(name: str, image) -> np.ndarray:
  """A PIL image or array-like -> [H, W, 3] numpy array (dtype kept)."""
  if hasattr(image, 'convert') and hasattr(image, 'size'):  # PIL.Image
    image = image.convert('RGB')
  array = np.asarray(image)
  if array.ndim != 3 or array.shape[-1] != 3:
    raise ValueError(
      f'{name}: expected an RGB image of shape [H, W, 3], got '
      f'shape {array.shape}.'
    )
  if not (
    np.issubdtype(array.dtype, np.integer)
    or np.issubdtype(array.dtype, np.floating)
  ):
    raise ValueError(
      f'{name}: expected integer or float pixels, got dtype {array.dtype}.'
    )
  return array


# ---------------------------------------------------------------------------
# Masked language modelling (Sec. 4.1).
# ---------------------------------------------------------------------------

MLM_EXAMPLE_TEXT = (
  'This is an incomplete sentence where some words are missing.'
)
# The colab masks bytes [51, 60), i.e. ' missing.'; it notes the model does
# better when a masked span starts with a space.
MLM_EXAMPLE_SPANS = ((51, 60),)


class MaskFill(NamedTuple):
  """The result of `fill_masked_bytes`.

  Attributes:
    input_ids: [L] the text's byte ids with MASK at the masked positions
      (unpadded, no BOS/EOS, as in the colab).
    filled_ids: [L] `input_ids` with every MASK replaced by the argmax
      prediction; all other ids are unchanged.
    text: `filled_ids` decoded (special ids dropped).
    span_texts: the decoded prediction of each masked span, in order.
  """

  input_ids: np.ndarray
  filled_ids: np.ndarray
  text: str
  span_texts: List[str]


def fill_masked_bytes(
  model: Model,
  params: Params,
  state: Params,
  text: Union[str, bytes],
  spans: Sequence[Tuple[int, int]] = MLM_EXAMPLE_SPANS,
  *,
  overrides: Optional[Mapping[str, Any]] = None,
) -> MaskFill:
  """Masks byte spans of `text` and fills them with the language model.

  As the colab: the UTF-8 bytes are tokenized with `BytesTokenizer`, the
  `spans` are set to MASK (id 3), the ids are right-padded with PAD to the
  model's `max_seq_len` (2048) with `input_mask` 1 on the real bytes, and each
  masked position takes the argmax of its logits.

  Args:
    model: 'language_mlm' or `presets.build('language_mlm', **overrides)`.
    params, state: the model's parameters and state (state is {}).
    text: the text (str, encoded as UTF-8, or bytes).
    spans: half-open byte ranges [start, end) to mask; the default is the
      colab's ' missing.' of `MLM_EXAMPLE_TEXT`.
    overrides: the preset fields the model was built with, if any.

  Returns:
    A `MaskFill`.

  Raises:
    ValueError: on a text longer than the model's sequence, or spans that are
      empty, overlapping or outside the text.
  """
  model, _, cfg = _resolve(model, ('language_mlm',), overrides)
  tokenizer = BytesTokenizer()
  if not isinstance(text, (str, bytes, bytearray)):
    raise ValueError(f'text: expected str or bytes, got {type(text).__name__}.')
  ids_L = tokenizer.to_int(text)
  length, max_len = len(ids_L), cfg['max_seq_len']
  if not 0 < length <= max_len:
    raise ValueError(
      f'text: expected 1 to {max_len} UTF-8 bytes (the '
      f"model's max_seq_len), got {length}."
    )
  spans = [tuple(s) for s in spans]
  if not spans:
    raise ValueError(
      'spans: expected at least one (start, end) span, got none.'
    )
  masked = np.zeros(length, bool)
  for span in spans:
    if (
      len(span) != 2
      or not all(isinstance(i, (int, np.integer)) for i in span)
      or not 0 <= span[0] < span[1] <= length
    ):
      raise ValueError(
        f'spans: expected integer (start, end) with 0 <= start '
        f'< end <= {length} (the text length in bytes), got '
        f'{span}.'
      )
    if masked[span[0] : span[1]].any():
      raise ValueError(f'spans: expected non-overlapping spans, got {spans}.')
    masked[span[0] : span[1]] = True

  input_ids_L = np.where(masked, tokenizer.mask_token, ids_L).astype(np.int32)
  pad = max_len - length
  padded_L = np.pad(input_ids_L, (0, pad), constant_values=tokenizer.pad_token)
  mask_L = np.pad(np.ones(length, np.int32), (0, pad))  # 1 on real bytes
  logits = _apply(
    model, params, state, jnp.asarray(padded_L[None]), jnp.asarray(mask_L[None])
  )  # [1, L_max, vocab]
  predicted_L = np.asarray(jnp.argmax(logits[0, :length], axis=-1), np.int32)
  filled_L = np.where(masked, predicted_L, input_ids_L).astype(np.int32)
  return MaskFill(
    input_ids=input_ids_L,
    filled_ids=filled_L,
    text=tokenizer.to_string(filled_L),
    span_texts=[tokenizer.to_string(predicted_L[a:b]) for a, b in spans],
  )


# ---------------------------------------------------------------------------
# ImageNet classification (App. A).
# ---------------------------------------------------------------------------

IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CROP_PADDING = 32


@functools.lru_cache(maxsize=1)
def imagenet_labels() -> Tuple[str, ...]:
  """The 1000 ImageNet class names in label-index order.

  From `imagenet_labels.txt` beside this file (WordNet lemmas of the ILSVRC
  2012 synsets in sorted-wnid order, from the timm package, Apache-2.0).
  """
  names = []
  with open(_LABELS_PATH, encoding='utf-8') as f:
    for line in f:
      if line.strip() and not line.startswith('#'):
        names.append(line.rstrip('\n').split('\t', 1)[1])
  if len(names) != 1000:
    raise RuntimeError(
      f'{_LABELS_PATH}: expected 1000 classes, found {len(names)}.'
    )
  return tuple(names)


def cubic_resize_matrix(
  in_size: int, out_size: int, a: float = -0.75
) -> np.ndarray:
  """[out, in] weights of a 1-D bicubic resize like OpenCV's INTER_CUBIC.

  Keys' cubic convolution kernel with a = -0.75, half-pixel centres
  (source x = (i + 0.5) * in / out - 0.5), four taps, edge pixels repeated
  past the border, and no anti-aliasing when shrinking.
  """
  validation.check_positive('in_size', in_size)
  validation.check_positive('out_size', out_size)
  src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  left = np.floor(src).astype(np.int64)
  frac = src - left
  weights = np.zeros((out_size, in_size))
  rows = np.arange(out_size)
  for tap in range(-1, 3):
    d = np.abs(frac - tap)  # distance from the sample to pixel left + tap
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    w = np.where(d <= 1, near, np.where(d < 2, far, 0.0))
    np.add.at(weights, (rows, np.clip(left + tap, 0, in_size - 1)), w)
  return weights


def resize_bicubic(image, size: Tuple[int, int]) -> np.ndarray:
  """Resizes [H, W, C] to `size` = (height, width) with `cubic_resize_matrix`.

  uint8 input is rounded and clipped back to uint8 (as cv2.resize does);
  other input gives float32.
  """
  image = np.asarray(image)
  validation.check_rank('image', image, (3,), '[H, W, C]')
  rows = cubic_resize_matrix(image.shape[0], size[0])
  cols = cubic_resize_matrix(image.shape[1], size[1])
  out = np.einsum('yh,hwc->ywc', rows, image.astype(np.float64), optimize=True)
  out = np.einsum('ywc,xw->yxc', out, cols, optimize=True)
  if image.dtype == np.uint8:
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
  return out.astype(np.float32)


def center_crop_and_resize(
  image, image_size: int = 224, crop_padding: int = CROP_PADDING
) -> np.ndarray:
  """The colab's crop: the central square of side
  int(image_size / (image_size + crop_padding) * min(H, W)), resized
  bicubically to [image_size, image_size, 3]."""
  image = _as_image('image', image)
  validation.check_positive('image_size', image_size)
  height, width = image.shape[:2]
  ratio = np.float32(image_size / (image_size + crop_padding))
  crop = int(ratio * np.float32(min(height, width)))
  if crop < 1:
    raise ValueError(f'image: too small to crop, got shape {image.shape}.')
  top = (height - crop + 1) // 2
  left = (width - crop + 1) // 2
  return resize_bicubic(
    image[top : top + crop, left : left + crop], (image_size, image_size)
  )


def preprocess_image(image, image_size: int = 224) -> np.ndarray:
  """Colab preprocessing: crop, bicubic resize, (x - mean) / std.

  Args:
    image: [H, W, 3] RGB with values in [0, 255] (uint8 or float), or a PIL
      image.
    image_size: the model's input size.

  Returns:
    [image_size, image_size, 3] float32, normalised with the ImageNet mean
    and std (x255).
  """
  resized = center_crop_and_resize(image, image_size).astype(np.float32)
  mean = np.asarray(IMAGENET_MEAN_RGB, np.float32)
  std = np.asarray(IMAGENET_STD_RGB, np.float32)
  return (resized - mean) / std


class TopK(NamedTuple):
  """The k most probable classes, most probable first.

  Attributes:
    indices: [k] class indices.
    probs: [k] softmax probabilities (non-increasing).
    labels: k class names (`imagenet_labels()` for a 1000-class model, the
      index as a string otherwise, unless labels were given).
  """

  indices: np.ndarray
  probs: np.ndarray
  labels: List[str]


def top_k(probs_K, k: int = 5, labels: Optional[Sequence[str]] = None) -> TopK:
  """The `k` largest of `probs_K` [K], ties broken by lower index."""
  probs_K = np.asarray(probs_K)
  validation.check_rank('probs', probs_K, (1,), '[K]')
  validation.check_positive('k', k)
  if k > probs_K.shape[0]:
    raise ValueError(
      f'k: expected at most {probs_K.shape[0]} (the number of '
      f'classes), got {k}.'
    )
  if labels is not None and len(labels) != probs_K.shape[0]:
    raise ValueError(
      f'labels: expected {probs_K.shape[0]} names, got {len(labels)}.'
    )
  order = np.argsort(-probs_K, kind='stable')[:k]
  names = [labels[i] if labels is not None else str(i) for i in order]
  return TopK(indices=order, probs=probs_K[order], labels=names)


def classify_image(
  model: Model,
  params: Params,
  state: Params,
  image,
  *,
  k: int = 5,
  labels: Optional[Sequence[str]] = None,
  overrides: Optional[Mapping[str, Any]] = None,
) -> TopK:
  """Classifies one image with an ImageNet Perceiver, as the colab does.

  Args:
    model: 'imagenet_fourier', 'imagenet_conv', 'imagenet_learned' or the
      model `presets.build` returned for one of them.
    params, state: the model's parameters and state.
    image: [H, W, 3] RGB in [0, 255] (uint8 or float) or a PIL image, of any
      size; it is centre-cropped and resized by `preprocess_image`.
    k: how many classes to return (5 in the colab).
    labels: class names; default `imagenet_labels()` when the model has 1000
      classes, else the indices.
    overrides: the preset fields the model was built with, if any.

  Returns:
    A `TopK` of softmax probabilities.
  """
  model, _, cfg = _resolve(model, _IMAGENET_PRESETS, overrides)
  images = preprocess_image(image, cfg['image_size'])[None]  # [1, S, S, 3]
  logits_K = np.asarray(
    _apply(model, params, state, jnp.asarray(images))[0], np.float64
  )
  if labels is None and cfg['num_classes'] == 1000:
    labels = imagenet_labels()
  return top_k(_softmax(logits_K), k, labels)


# ---------------------------------------------------------------------------
# Optical flow (Sec. 4.2): tiles, stitching, colour wheel.
# ---------------------------------------------------------------------------

FLOW_MIN_OVERLAP = 20


def tile_starts(
  size: int, tile: int, min_overlap: int = FLOW_MIN_OVERLAP
) -> List[int]:
  """Start offsets along one axis of tiles that cover [0, size).

  Tiles start every `tile - min_overlap` pixels and the last one ends at
  the border (the colab's placement; repeats are dropped).

  Raises:
    ValueError: if size < tile, or min_overlap is not in [0, tile).
  """
  validation.check_positive('tile', tile)
  if not isinstance(min_overlap, int) or not 0 <= min_overlap < tile:
    raise ValueError(
      f'min_overlap: expected an integer in [0, {tile}) (the '
      f'tile size), got {min_overlap!r}.'
    )
  if size < tile:
    raise ValueError(
      f'size: expected at least the tile size {tile}, got {size}.'
    )
  return list(range(0, size - tile, tile - min_overlap)) + [size - tile]


def grid_indices(
  image_shape: Tuple[int, int],
  tile_shape: Tuple[int, int],
  min_overlap: int = FLOW_MIN_OVERLAP,
) -> List[Tuple[int, int]]:
  """(y, x) top-left corners of the overlapping tiles covering an image."""
  ys = tile_starts(image_shape[0], tile_shape[0], min_overlap)
  xs = tile_starts(image_shape[1], tile_shape[1], min_overlap)
  return [(y, x) for y in ys for x in xs]


def pyramid_weights(tile_shape: Tuple[int, int]) -> np.ndarray:
  """[h, w] stitching weights: 1 + the distance to the nearest tile edge."""
  h, w = tile_shape
  wy = np.minimum(np.arange(h) + 1, h - np.arange(h))
  wx = np.minimum(np.arange(w) + 1, w - np.arange(w))
  return np.minimum(wy[:, None], wx[None, :]).astype(np.float64)


def stitch_tiles(
  tiles_nhwC, corners: Sequence[Tuple[int, int]], image_shape: Tuple[int, int]
) -> np.ndarray:
  """Blends overlapping tiles into one [H, W, C] field.

  Each pixel is the average of the tiles covering it, weighted by
  `pyramid_weights` (the colab's stitching), accumulated in float64.

  Args:
    tiles_nhwC: [n, h, w, C] per-tile values.
    corners: n (y, x) top-left corners, e.g. from `grid_indices`.
    image_shape: (H, W).

  Returns:
    [H, W, C] float64.

  Raises:
    ValueError: on a tile outside the image or a pixel no tile covers.
  """
  tiles_nhwC = np.asarray(tiles_nhwC)
  validation.check_rank('tiles', tiles_nhwC, (4,), '[n, h, w, C]')
  n, h, w, c = tiles_nhwC.shape
  if len(corners) != n:
    raise ValueError(
      f'corners: expected {n} corners (one per tile), got {len(corners)}.'
    )
  height, width = image_shape
  weights_hw = pyramid_weights((h, w))
  total_HWC = np.zeros((height, width, c))
  weight_HW = np.zeros((height, width))
  for tile_hwC, (y, x) in zip(tiles_nhwC, corners):
    if not (0 <= y <= height - h and 0 <= x <= width - w):
      raise ValueError(
        f'corners: tile at {(y, x)} of size {(h, w)} is not '
        f'inside the image {tuple(image_shape)}.'
      )
    total_HWC[y : y + h, x : x + w] += tile_hwC * weights_hw[..., None]
    weight_HW[y : y + h, x : x + w] += weights_hw
  if not weight_HW.all():
    raise ValueError('corners: the tiles leave pixels uncovered.')
  return total_HWC / weight_HW[..., None]


def normalize_flow_image(image) -> np.ndarray:
  """[0, 255] pixels -> [-1, 1] float32, as the colab's `normalize`."""
  return (np.asarray(image, np.float32) / 255.0 * 2.0 - 1.0).astype(np.float32)


def optical_flow(
  model: Model,
  params: Params,
  state: Params,
  image1,
  image2,
  *,
  min_overlap: int = FLOW_MIN_OVERLAP,
  batch_size: int = 1,
  overrides: Optional[Mapping[str, Any]] = None,
) -> np.ndarray:
  """Optical flow from `image1` to `image2`, frames of any size.

  The frames are normalised to [-1, 1] and cut into overlapping tiles of the
  model's size (368 x 496) with at least `min_overlap` pixels of overlap;
  the tiles' flows are blended with `stitch_tiles`. A frame smaller than a
  tile along an axis is first padded to the tile size by repeating its edge
  pixels (bottom / right), and the flow is cropped back: the colab raises an
  error there instead.

  Args:
    model: 'optical_flow' or `presets.build('optical_flow', **overrides)`.
    params, state: the model's parameters and state.
    image1, image2: [H, W, 3] RGB frames in [0, 255] (uint8 or float, or PIL
      images) of the same size.
    min_overlap: least overlap of neighbouring tiles, in pixels (20 in the
      colab).
    batch_size: tiles per model call (the last batch is padded), to trade
      memory for speed; the result does not depend on it.
    overrides: the preset fields the model was built with, if any.

  Returns:
    [H, W, 2] float32 flow in pixels (channel 0 along x / width, 1 along y /
    height).
  """
  model, _, cfg = _resolve(model, ('optical_flow',), overrides)
  image1, image2 = _as_image('image1', image1), _as_image('image2', image2)
  if image1.shape != image2.shape:
    raise ValueError(
      f'image2: expected the shape of image1 {image1.shape}, '
      f'got {image2.shape}.'
    )
  validation.check_positive('batch_size', batch_size)
  tile_h, tile_w = cfg['image_size']
  height, width = image1.shape[:2]
  frames_2HW3 = np.stack(
    [normalize_flow_image(image1), normalize_flow_image(image2)]
  )
  pad_h, pad_w = max(tile_h - height, 0), max(tile_w - width, 0)
  if pad_h or pad_w:
    frames_2HW3 = np.pad(
      frames_2HW3, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode='edge'
    )
  padded_shape = frames_2HW3.shape[1:3]
  corners = grid_indices(padded_shape, (tile_h, tile_w), min_overlap)
  pieces = [frames_2HW3[:, y : y + tile_h, x : x + tile_w] for y, x in corners]
  flows = []
  for start in range(0, len(pieces), batch_size):
    batch = pieces[start : start + batch_size]
    used = len(batch)
    batch += [batch[-1]] * (batch_size - used)  # one shape: one compilation
    out = _apply(model, params, state, jnp.asarray(np.stack(batch)))
    flows.append(np.asarray(out[:used], np.float64))  # [b, h, w, 2]
  flow_HW2 = stitch_tiles(np.concatenate(flows), corners, padded_shape)
  return flow_HW2[:height, :width].astype(np.float32)


# Middlebury colour wheel (Baker et al., "A Database and Evaluation
# Methodology for Optical Flow", IJCV 2011): hue segments and their lengths.
_WHEEL_SEGMENTS = (
  ('RY', 15),
  ('YG', 6),
  ('GC', 4),
  ('CB', 11),
  ('BM', 13),
  ('MR', 6),
)


def color_wheel() -> np.ndarray:
  """[55, 3] RGB colours (0..255) of the Middlebury flow colour wheel.

  Red -> yellow -> green -> cyan -> blue -> magenta -> red, with 15, 6, 4,
  11, 13 and 6 steps; in each segment one channel ramps by floor(255 i / n).
  """
  # For each segment: (channel that stays 255, channel that ramps, up/down).
  ramps = {
    'RY': (0, 1, True),
    'YG': (1, 0, False),
    'GC': (1, 2, True),
    'CB': (2, 1, False),
    'BM': (2, 0, True),
    'MR': (0, 2, False),
  }
  rows = []
  for name, n in _WHEEL_SEGMENTS:
    full, ramp, up = ramps[name]
    step = np.floor(255 * np.arange(n) / n)
    seg = np.zeros((n, 3))
    seg[:, full] = 255
    seg[:, ramp] = step if up else 255 - step
    rows.append(seg)
  return np.concatenate(rows)


def flow_to_color(flow_HW2, max_flow: Optional[float] = None) -> np.ndarray:
  """Middlebury visualisation of a flow field: hue = direction, saturation =
  magnitude.

  Args:
    flow_HW2: [H, W, 2] flow (x, y) in pixels, y pointing down the image.
    max_flow: the magnitude drawn fully saturated; default the largest
      magnitude in the field. Larger vectors are drawn darkened (x 0.75).

  Returns:
    [H, W, 3] uint8 RGB; zero flow is white, flow to the right is red, down
    yellow-orange, left cyan-blue and up blue-violet.
  """
  flow_HW2 = np.asarray(flow_HW2, np.float64)
  validation.check_rank('flow', flow_HW2, (3,), '[H, W, 2]')
  if flow_HW2.shape[-1] != 2:
    raise ValueError(f'flow: expected shape [H, W, 2], got {flow_HW2.shape}.')
  if not np.all(np.isfinite(flow_HW2)):
    raise ValueError('flow: expected finite values, got NaN or inf.')
  u, v = flow_HW2[..., 0], flow_HW2[..., 1]
  radius = np.sqrt(u * u + v * v)
  if max_flow is None:
    max_flow = float(radius.max())
  elif not max_flow > 0:
    raise ValueError(f'max_flow: expected a positive number, got {max_flow!r}.')
  radius = radius / max(max_flow, np.finfo(np.float64).tiny)  # 0 if no flow
  wheel = color_wheel() / 255.0
  ncols = wheel.shape[0]
  angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
  position = (angle + 1) / 2 * (ncols - 1)
  k0 = np.floor(position).astype(np.int64)
  k1 = (k0 + 1) % ncols
  frac = (position - k0)[..., None]
  color = (1 - frac) * wheel[k0] + frac * wheel[k1]  # [H, W, 3]
  inside = (radius <= 1)[..., None]
  color = np.where(inside, 1 - radius[..., None] * (1 - color), color * 0.75)
  return np.floor(255 * color).astype(np.uint8)


def save_flow_png(flow_HW2, path: str, max_flow: Optional[float] = None) -> str:
  """Writes `flow_to_color(flow_HW2, max_flow)` to `path` as a PNG; returns
  the path."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if not str(path).lower().endswith('.png'):
    raise ValueError(
      f'path: expected a file name ending in .png, got {path!r}.'
    )
  Image.fromarray(flow_to_color(flow_HW2, max_flow), mode='RGB').save(
    path, format='PNG'
  )
  return path


# ---------------------------------------------------------------------------
# Multimodal (video + audio) autoencoding (Sec. 4.3).
# ---------------------------------------------------------------------------

VIDEO_NUM_CHUNKS = 128


class VideoReconstruction(NamedTuple):
  """The result of `autoencode_video`.

  Attributes:
    video: [T, H, W, 3] reconstructed frames (the input's scale, [0, 1]).
    audio: [A, 1] reconstructed audio.
    label_probs: [K] softmax of the label logits (Kinetics-700 classes).
  """

  video: np.ndarray
  audio: np.ndarray
  label_probs: np.ndarray


def autoencode_video(
  model: Model,
  params: Params,
  state: Params,
  video,
  audio,
  *,
  num_chunks: int = VIDEO_NUM_CHUNKS,
  overrides: Optional[Mapping[str, Any]] = None,
) -> VideoReconstruction:
  """Reconstructs a clip's frames and audio and classifies it.

  As the colab: the label input is zero (the model masks it anyway), and the
  16 x 224 x 224 pixel and 1,920 audio-patch queries are decoded in
  `num_chunks` chunks (128 chunks of 6,272 pixels and 15 audio patches), so
  the decoder's memory is 1/num_chunks of a full decode.

  Args:
    model: 'video_autoencoding' or `presets.build('video_autoencoding',
      **overrides)`.
    params, state: the model's parameters and state.
    video: [T, H, W, 3] RGB frames of the model's size (16 x 224 x 224),
      float in [0, 1] or uint8 (divided by 255). The colab gets them by
      cropping each frame to its central square and resizing it to 224
      (bilinear).
    audio: [A] or [A, 1] mono audio of the model's length (30,720 samples at
      48 kHz), float in [-1, 1] or int16 (divided by 2**15).
    num_chunks: number of decoding chunks (128 in the colab; 1 decodes all
      at once).
    overrides: the preset fields the model was built with, if any.

  Returns:
    A `VideoReconstruction`.
  """
  model, _, cfg = _resolve(model, ('video_autoencoding',), overrides)
  t, size, samples = cfg['num_frames'], cfg['image_size'], cfg['audio_samples']
  video = np.asarray(video)
  if video.shape != (t, size, size, 3):
    raise ValueError(
      f'video: expected shape {(t, size, size, 3)} (frames, '
      f'height, width, RGB), got {video.shape}.'
    )
  video = (video / 255.0 if video.dtype == np.uint8 else video).astype(
    np.float32
  )
  audio = np.asarray(audio)
  if audio.shape not in ((samples,), (samples, 1)):
    raise ValueError(
      f'audio: expected shape ({samples},) or ({samples}, 1), '
      f'got {audio.shape}.'
    )
  audio = (
    (audio / 2.0**15 if audio.dtype == np.int16 else audio)
    .astype(np.float32)
    .reshape(samples, 1)
  )
  validation.check_positive('num_chunks', num_chunks)
  pixels = t * size * size
  if num_chunks > pixels:
    raise ValueError(
      f'num_chunks: expected at most {pixels} (one pixel per '
      f'chunk), got {num_chunks}.'
    )
  chunk = None if num_chunks == 1 else -(-pixels // num_chunks)
  inputs = {
    'image': jnp.asarray(video[None]),
    'audio': jnp.asarray(audio[None]),
    'label': jnp.zeros((1, cfg['num_classes']), jnp.float32),
  }
  out = _apply(model, params, state, inputs, decode_chunk_size=chunk)
  logits_K = np.asarray(out['label'][0], np.float64)
  return VideoReconstruction(
    video=np.asarray(out['image'][0], np.float32),
    audio=np.asarray(out['audio'][0], np.float32),
    label_probs=_softmax(logits_K).astype(np.float32),
  )


__all__ = [
  'MLM_EXAMPLE_SPANS',
  'MLM_EXAMPLE_TEXT',
  'MaskFill',
  'TopK',
  'VideoReconstruction',
  'autoencode_video',
  'center_crop_and_resize',
  'classify_image',
  'color_wheel',
  'cubic_resize_matrix',
  'fill_masked_bytes',
  'flow_to_color',
  'grid_indices',
  'imagenet_labels',
  'normalize_flow_image',
  'optical_flow',
  'preprocess_image',
  'pyramid_weights',
  'resize_bicubic',
  'save_flow_png',
  'stitch_tiles',
  'tile_starts',
  'top_k',
]
