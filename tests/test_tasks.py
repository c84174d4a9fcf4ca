"""The colab tasks: shapes, the stitching / colour-wheel maths, validation.

Models are tiny random-weight presets (`tasks.random_weights`, no compiled
init), so only the plumbing is checked; no released checkpoint is needed.
"""

import colorsys
import functools
import os
import runpy
import sys

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from perceiver import presets
from perceiver import tasks
from perceiver.bytes_tokenizer import BytesTokenizer

TINY = {
  'language_mlm': presets.tiny(
    'language_mlm', max_seq_len=64, d_model=32, qk_channels=16
  ),
  'imagenet_conv': presets.tiny(
    'imagenet_conv', image_size=16, num_classes=10, num_bands=2
  ),
  'optical_flow': presets.tiny('optical_flow', image_size=(8, 12), num_bands=2),
  'video_autoencoding': presets.tiny(
    'video_autoencoding',
    num_frames=2,
    image_size=8,
    audio_samples=32,
    num_classes=5,
    image_bands=2,
    audio_bands=2,
  ),
}


@functools.lru_cache(maxsize=None)
def tiny(name):
  """(model, params, state) of a tiny random-weight preset."""
  model = presets.build(name, **TINY[name])
  params, state = tasks.random_weights(name, seed=1, overrides=TINY[name])
  return model, params, state


def uint8_image(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# Masked language modelling.


def test_mlm_example_masks_missing():
  data = tasks.MLM_EXAMPLE_TEXT.encode()
  assert len(data) == 60
  ((start, end),) = tasks.MLM_EXAMPLE_SPANS
  assert data[start:end] == b' missing.'


def test_fill_masked_bytes_changes_only_masked_positions():
  # (The examples, run below, pass preset names instead of models.)
  model, params, state = tiny('language_mlm')
  spans = [(0, 4), (51, 60)]
  out = tasks.fill_masked_bytes(
    model,
    params,
    state,
    tasks.MLM_EXAMPLE_TEXT,
    spans,
    overrides=TINY['language_mlm'],
  )
  ids = BytesTokenizer().to_int(tasks.MLM_EXAMPLE_TEXT)
  masked = np.zeros(len(ids), bool)
  for a, b in spans:
    masked[a:b] = True
  assert out.input_ids.shape == out.filled_ids.shape == ids.shape
  np.testing.assert_array_equal(out.input_ids[masked], 3)
  np.testing.assert_array_equal(out.input_ids[~masked], ids[~masked])
  np.testing.assert_array_equal(out.filled_ids[~masked], ids[~masked])
  assert np.all((out.filled_ids >= 0) & (out.filled_ids < 262))
  assert len(out.span_texts) == 2
  assert out.text == BytesTokenizer().to_string(out.filled_ids)


def test_fill_masked_bytes_str_and_bytes_agree():
  model, params, state = tiny('language_mlm')
  kw = dict(overrides=TINY['language_mlm'])
  a = tasks.fill_masked_bytes(model, params, state, b'abcdef', [(2, 4)], **kw)
  b = tasks.fill_masked_bytes(model, params, state, 'abcdef', [(2, 4)], **kw)
  np.testing.assert_array_equal(a.filled_ids, b.filled_ids)


@pytest.mark.parametrize(
  'text, spans, match',
  [
    ('x' * 65, [(0, 1)], 'text'),
    ('', [(0, 1)], 'text'),
    (3, [(0, 1)], 'text'),
    ('hello', [], 'spans'),
    ('hello', [(2, 2)], 'spans'),
    ('hello', [(3, 9)], 'spans'),
    ('hello', [(0, 3), (2, 4)], 'spans'),
  ],
)
def test_fill_masked_bytes_validates(text, spans, match):
  model, params, state = tiny('language_mlm')
  with pytest.raises(ValueError, match=match):
    tasks.fill_masked_bytes(
      model, params, state, text, spans, overrides=TINY['language_mlm']
    )


# ImageNet classification.


def test_imagenet_labels():
  labels = tasks.imagenet_labels()
  assert len(labels) == 1000
  # WordNet names two classes just 'crane' (the bird and the machine).
  assert len(set(labels)) == 999 and labels.count('crane') == 2
  assert labels[0].startswith('tench')
  assert labels[281].startswith('tabby')
  assert labels[999].startswith('toilet tissue')


def test_cubic_resize_matrix_is_identity_at_same_size_and_keeps_constants():
  np.testing.assert_allclose(
    tasks.cubic_resize_matrix(7, 7), np.eye(7), atol=1e-12
  )
  for n_in, n_out in [(10, 3), (3, 10), (262, 224), (1, 4)]:
    np.testing.assert_allclose(
      tasks.cubic_resize_matrix(n_in, n_out).sum(axis=1), 1.0, atol=1e-12
    )


def test_cubic_resize_matrix_matches_keys_kernel_pointwise():
  # Independent reference: evaluate the kernel at every (output, input) pair.
  def keys(d, a=-0.75):
    d = abs(d)
    if d <= 1:
      return (a + 2) * d**3 - (a + 3) * d**2 + 1
    return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a if d < 2 else 0.0

  n_in, n_out = 9, 5
  expected = np.zeros((n_out, n_in))
  for i in range(n_out):
    src = (i + 0.5) * n_in / n_out - 0.5
    for j in range(int(np.floor(src)) - 1, int(np.floor(src)) + 3):
      expected[i, min(max(j, 0), n_in - 1)] += keys(src - j)
  np.testing.assert_allclose(
    tasks.cubic_resize_matrix(n_in, n_out), expected, atol=1e-12
  )


def test_resize_matches_opencv_when_installed():
  cv2 = pytest.importorskip('cv2')
  image = uint8_image((75, 100, 3))
  ours = tasks.resize_bicubic(image, (56, 48)).astype(int)
  ref = cv2.resize(image, (48, 56), interpolation=cv2.INTER_CUBIC).astype(int)
  assert np.abs(ours - ref).max() <= 1  # OpenCV rounds fixed-point weights


def test_center_crop_window():
  # ratio 35 / (35 + 5) of min(40, 50) = 35: no resize, just the crop.
  image = uint8_image((40, 50, 3))
  out = tasks.center_crop_and_resize(image, image_size=35, crop_padding=5)
  np.testing.assert_array_equal(out, image[3:38, 8:43])


def test_preprocess_image_normalises():
  mean = np.asarray(tasks.IMAGENET_MEAN_RGB, np.float32)
  std = np.asarray(tasks.IMAGENET_STD_RGB, np.float32)
  image = np.broadcast_to(mean + 2 * std, (30, 20, 3))
  out = tasks.preprocess_image(image, image_size=16)
  assert out.shape == (16, 16, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, 2.0, atol=1e-5)
  pil = tasks.preprocess_image(Image.fromarray(uint8_image((30, 20, 3))), 16)
  assert pil.shape == (16, 16, 3)


def test_classify_image_top5():
  model, params, state = tiny('imagenet_conv')
  names = [f'class {i}' for i in range(10)]
  out = tasks.classify_image(
    model,
    params,
    state,
    uint8_image((30, 40, 3)),
    labels=names,
    overrides=TINY['imagenet_conv'],
  )
  assert out.indices.shape == out.probs.shape == (5,)
  assert len(set(out.indices.tolist())) == 5
  assert np.all(np.diff(out.probs) <= 0)
  assert np.all(out.probs >= 0) and out.probs.sum() <= 1 + 1e-6
  assert out.labels == [names[i] for i in out.indices]
  # Without names: the indices as labels.
  again = tasks.classify_image(
    model,
    params,
    state,
    uint8_image((30, 40, 3)),
    overrides=TINY['imagenet_conv'],
  )
  np.testing.assert_array_equal(again.indices, out.indices)
  assert again.labels == [str(i) for i in out.indices]


def test_top_k_validates_and_breaks_ties_by_index():
  out = tasks.top_k(np.array([0.1, 0.3, 0.3, 0.3]), k=3)
  assert out.indices.tolist() == [1, 2, 3]
  with pytest.raises(ValueError, match='k'):
    tasks.top_k(np.ones(3) / 3, k=4)
  with pytest.raises(ValueError, match='labels'):
    tasks.top_k(np.ones(3) / 3, k=2, labels=['a'])


def test_classify_image_validates():
  model, params, state = tiny('imagenet_conv')
  with pytest.raises(ValueError, match='image'):
    tasks.classify_image(
      model, params, state, np.zeros((8, 8)), overrides=TINY['imagenet_conv']
    )
  with pytest.raises(ValueError, match='model'):
    tasks.classify_image('optical_flow', params, state, uint8_image((8, 8, 3)))
  with pytest.raises(ValueError, match='model'):
    tasks.classify_image(object(), params, state, uint8_image((8, 8, 3)))
  with pytest.raises(ValueError, match='overrides'):
    tasks.classify_image(
      model,
      params,
      state,
      uint8_image((8, 8, 3)),
      overrides=dict(num_latents=3),
    )


# Optical flow: tiles, stitching, model.


@pytest.mark.parametrize(
  'size, tile, overlap',
  [
    (8, 8, 2),
    (9, 8, 2),
    (20, 8, 2),
    (21, 8, 3),
    (436, 368, 20),
    (1024, 496, 20),
    (100, 7, 0),
  ],
)
def test_tile_starts_cover_every_pixel_with_overlap(size, tile, overlap):
  starts = tasks.tile_starts(size, tile, overlap)
  assert starts[0] == 0 and starts[-1] == size - tile
  assert starts == sorted(set(starts))
  covered = np.zeros(size, int)
  for s in starts:
    covered[s : s + tile] += 1
  assert covered.min() >= 1
  for a, b in zip(starts, starts[1:]):
    assert a + tile - b >= overlap  # neighbours overlap by >= min_overlap


def test_grid_indices_of_a_sintel_frame_match_the_colab():
  # range(0, 436, 348) -> [0, 348], last made flush: [0, 68]; likewise x.
  assert tasks.grid_indices((436, 1024), (368, 496), 20) == [
    (y, x) for y in (0, 68) for x in (0, 476, 528)
  ]


@pytest.mark.parametrize(
  'args, match',
  [
    ((5, 8, 2), 'size'),
    ((10, 8, 8), 'min_overlap'),
    ((10, 8, -1), 'min_overlap'),
    ((10, 0, 0), 'tile'),
  ],
)
def test_tile_starts_validates(args, match):
  with pytest.raises(ValueError, match=match):
    tasks.tile_starts(*args)


def test_pyramid_weights():
  np.testing.assert_array_equal(
    tasks.pyramid_weights((3, 4)), [[1, 1, 1, 1], [1, 2, 2, 1], [1, 1, 1, 1]]
  )
  w = tasks.pyramid_weights((6, 9))
  assert w.max() == 3 and w.min() == 1


@pytest.mark.parametrize('value', [1.25, -3.5, 0.0, 7.0])
def test_stitching_a_constant_flow_returns_it_exactly(value):
  image_shape, tile = (23, 31), (8, 12)
  corners = tasks.grid_indices(image_shape, tile, 3)
  tiles = np.full((len(corners),) + tile + (2,), value)
  out = tasks.stitch_tiles(tiles, corners, image_shape)
  assert out.shape == image_shape + (2,)
  np.testing.assert_array_equal(out, value)


def test_stitching_equals_a_per_pixel_weighted_average():
  image_shape, (h, w) = (17, 26), (8, 12)
  corners = tasks.grid_indices(image_shape, (h, w), 2)
  tiles = np.random.default_rng(0).normal(size=(len(corners), h, w, 2))
  out = tasks.stitch_tiles(tiles, corners, image_shape)
  # Independent reference: loop over pixels, and the tiles that contain them.
  for y in range(image_shape[0]):
    for x in range(image_shape[1]):
      num, den = np.zeros(2), 0.0
      for tile, (ty, tx) in zip(tiles, corners):
        dy, dx = y - ty, x - tx
        if 0 <= dy < h and 0 <= dx < w:
          weight = min(dy + 1, h - dy, dx + 1, w - dx)
          num += weight * tile[dy, dx]
          den += weight
      np.testing.assert_allclose(out[y, x], num / den, rtol=1e-12)


def test_stitching_validates():
  tiles = np.zeros((1, 8, 12, 2))
  with pytest.raises(ValueError, match='corners'):
    tasks.stitch_tiles(tiles, [(0, 0)], (9, 12))  # a row left uncovered
  with pytest.raises(ValueError, match='corners'):
    tasks.stitch_tiles(tiles, [(2, 0)], (9, 12))  # a tile sticking out
  with pytest.raises(ValueError, match='corners'):
    tasks.stitch_tiles(tiles, [], (8, 12))


@functools.lru_cache(maxsize=None)
def jitted_flow_apply():
  model, _, _ = tiny('optical_flow')
  return jax.jit(functools.partial(model.apply, is_training=False))


def apply_flow_directly(image1, image2):
  """The tiny model on one pair of tile-sized frames, without tasks."""
  _, params, state = tiny('optical_flow')
  frames = np.stack(
    [tasks.normalize_flow_image(image1), tasks.normalize_flow_image(image2)]
  )[None]
  out, _ = jitted_flow_apply()(params, state, None, jnp.asarray(frames))
  return np.asarray(out[0])


def test_optical_flow_of_one_tile_is_the_model_output():
  model, params, state = tiny('optical_flow')
  image1, image2 = uint8_image((8, 12, 3), 0), uint8_image((8, 12, 3), 1)
  out = tasks.optical_flow(
    model,
    params,
    state,
    image1,
    image2,
    min_overlap=2,
    overrides=TINY['optical_flow'],
  )
  assert out.shape == (8, 12, 2) and out.dtype == np.float32
  assert np.abs(out).max() > 0  # random weights give a non-trivial flow
  np.testing.assert_allclose(
    out, apply_flow_directly(image1, image2), rtol=1e-5, atol=1e-6
  )


def test_optical_flow_tiles_any_size_and_batching_does_not_matter():
  model, params, state = tiny('optical_flow')
  image1, image2 = uint8_image((19, 29, 3), 0), uint8_image((19, 29, 3), 1)
  kw = dict(min_overlap=3, overrides=TINY['optical_flow'])
  one = tasks.optical_flow(model, params, state, image1, image2, **kw)
  four = tasks.optical_flow(
    model, params, state, image1, image2, batch_size=4, **kw
  )
  assert one.shape == (19, 29, 2)
  assert np.all(np.isfinite(one))
  np.testing.assert_allclose(one, four, rtol=1e-5, atol=1e-6)
  # The top-left corner is covered by the first tile only.
  direct = apply_flow_directly(image1[:8, :12], image2[:8, :12])
  np.testing.assert_allclose(one[:3, :3], direct[:3, :3], rtol=1e-5, atol=1e-6)


def test_optical_flow_traces_the_model_once_for_all_tiles_and_sizes():
  model, params, state = tiny('optical_flow')
  traces = []

  def counting_apply(*args, **kwargs):
    traces.append(1)  # runs only while jax traces
    return model.apply(*args, **kwargs)

  counted = hk.TransformedWithState(model.init, counting_apply)
  kw = dict(min_overlap=2, overrides=TINY['optical_flow'])
  for shape in [(8, 12, 3), (19, 29, 3), (30, 14, 3)]:
    tasks.optical_flow(
      counted, params, state, uint8_image(shape, 0), uint8_image(shape, 1), **kw
    )
  assert len(traces) == 1


def test_optical_flow_pads_small_images():
  model, params, state = tiny('optical_flow')
  image1, image2 = uint8_image((5, 7, 3), 0), uint8_image((5, 7, 3), 1)
  out = tasks.optical_flow(
    model,
    params,
    state,
    image1,
    image2,
    min_overlap=2,
    overrides=TINY['optical_flow'],
  )
  assert out.shape == (5, 7, 2)
  padded = [
    np.pad(im, ((0, 3), (0, 5), (0, 0)), mode='edge') for im in (image1, image2)
  ]
  np.testing.assert_allclose(
    out, apply_flow_directly(*padded)[:5, :7], rtol=1e-5, atol=1e-6
  )


def test_optical_flow_validates():
  model, params, state = tiny('optical_flow')
  kw = dict(overrides=TINY['optical_flow'])
  with pytest.raises(ValueError, match='image2'):
    tasks.optical_flow(
      model,
      params,
      state,
      uint8_image((8, 12, 3)),
      uint8_image((8, 13, 3)),
      min_overlap=2,
      **kw,
    )
  with pytest.raises(ValueError, match='min_overlap'):
    tasks.optical_flow(
      model,
      params,
      state,
      uint8_image((8, 12, 3)),
      uint8_image((8, 12, 3)),
      **kw,
    )  # 20 >= tile 8
  with pytest.raises(ValueError, match='image1'):
    tasks.optical_flow(
      model,
      params,
      state,
      np.zeros((8, 12)),
      np.zeros((8, 12)),
      min_overlap=2,
      **kw,
    )
  with pytest.raises(ValueError, match='batch_size'):
    tasks.optical_flow(
      model,
      params,
      state,
      uint8_image((8, 12, 3)),
      uint8_image((8, 12, 3)),
      min_overlap=2,
      batch_size=0,
      **kw,
    )


# Colour wheel.


def hue_degrees(rgb):
  return 360 * colorsys.rgb_to_hsv(*(np.asarray(rgb) / 255.0))[0]


def test_color_wheel():
  wheel = tasks.color_wheel()
  assert wheel.shape == (55, 3)
  np.testing.assert_array_equal(wheel[0], [255, 0, 0])  # red
  np.testing.assert_array_equal(wheel[15], [255, 255, 0])  # yellow
  np.testing.assert_array_equal(wheel[21], [0, 255, 0])  # green
  np.testing.assert_array_equal(wheel[25], [0, 255, 255])  # cyan
  np.testing.assert_array_equal(wheel[36], [0, 0, 255])  # blue
  np.testing.assert_array_equal(wheel[49], [255, 0, 255])  # magenta
  assert wheel.min() == 0 and wheel.max() == 255


@pytest.mark.parametrize(
  'flow, hue',
  [
    ((1.0, 0.0), 0),  # right: red (where the wheel closes)
    ((1.0, -1e-9), 350),  # just above right: red, towards magenta
    ((-1.0, 0.0), 190),  # left: cyan-blue
    ((0.0, 1.0), 54),  # down (y grows downwards): yellow-orange
    ((0.0, -1.0), 261),  # up: blue-violet
    ((1.0, 1.0), 27),  # down-right: orange
  ],
)
def test_flow_directions_map_to_known_hues(flow, hue):
  field = np.zeros((2, 2, 2))
  field[0, 0] = flow
  rgb = tasks.flow_to_color(field)
  assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
  distance = abs(hue_degrees(rgb[0, 0]) - hue) % 360
  assert min(distance, 360 - distance) <= 3
  assert max(rgb[0, 0]) == 255 and min(rgb[0, 0]) < 60  # fully saturated
  np.testing.assert_array_equal(rgb[1, 1], [255, 255, 255])  # zero: white


def test_flow_to_color_saturation_and_overflow():
  field = np.array([[[0.5, 0.0], [2.0, 0.0]]])
  rgb = tasks.flow_to_color(field, max_flow=1.0).astype(int)
  half, over = rgb[0, 0], rgb[0, 1]
  assert half[0] == 255 and 100 < half[1] < 160  # half-way to white
  assert over[0] == int(255 * 0.75)  # beyond max_flow: darkened
  with pytest.raises(ValueError, match='flow'):
    tasks.flow_to_color(np.zeros((2, 2, 3)))
  with pytest.raises(ValueError, match='max_flow'):
    tasks.flow_to_color(np.zeros((2, 2, 2)), max_flow=0.0)


def test_save_flow_png_round_trips(tmp_path):
  flow = np.random.default_rng(0).normal(size=(9, 13, 2))
  path = tasks.save_flow_png(flow, str(tmp_path / 'flow.png'))
  with Image.open(path) as image:
    assert image.format == 'PNG' and image.size == (13, 9)
    np.testing.assert_array_equal(
      np.asarray(image.convert('RGB')), tasks.flow_to_color(flow)
    )
  with pytest.raises(ValueError, match='path'):
    tasks.save_flow_png(flow, str(tmp_path / 'flow.jpg'))


# Video autoencoding.


def video_inputs():
  rng = np.random.default_rng(0)
  return (
    rng.uniform(0, 1, (2, 8, 8, 3)).astype(np.float32),
    rng.uniform(-1, 1, (32,)).astype(np.float32),
  )


def test_autoencode_video_shapes_and_chunking():
  model, params, state = tiny('video_autoencoding')
  video, audio = video_inputs()
  kw = dict(overrides=TINY['video_autoencoding'])
  out = tasks.autoencode_video(model, params, state, video, audio, **kw)
  assert out.video.shape == (2, 8, 8, 3)
  assert out.audio.shape == (32, 1)
  assert out.label_probs.shape == (5,)
  np.testing.assert_allclose(out.label_probs.sum(), 1.0, rtol=1e-5)
  whole = tasks.autoencode_video(
    model, params, state, video, audio[:, None], num_chunks=1, **kw
  )
  for a, b in zip(out, whole):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_autoencode_video_converts_integer_inputs():
  model, params, state = tiny('video_autoencoding')
  video, audio = video_inputs()
  video8 = np.round(video * 255).astype(np.uint8)
  audio16 = np.round(audio * 2**14).astype(np.int16)
  kw = dict(overrides=TINY['video_autoencoding'])
  ints = tasks.autoencode_video(model, params, state, video8, audio16, **kw)
  floats = tasks.autoencode_video(
    model, params, state, video8 / 255.0, audio16 / 2.0**15, **kw
  )
  for a, b in zip(ints, floats):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_autoencode_video_validates():
  model, params, state = tiny('video_autoencoding')
  video, audio = video_inputs()
  kw = dict(overrides=TINY['video_autoencoding'])
  with pytest.raises(ValueError, match='video'):
    tasks.autoencode_video(model, params, state, video[:1], audio, **kw)
  with pytest.raises(ValueError, match='audio'):
    tasks.autoencode_video(model, params, state, video, audio[:16], **kw)
  with pytest.raises(ValueError, match='num_chunks'):
    tasks.autoencode_video(
      model, params, state, video, audio, num_chunks=0, **kw
    )


def test_random_weights_tree_equals_init_tree():
  name = 'imagenet_conv'
  params, state = tasks.random_weights(name, overrides=TINY[name])
  model = presets.build(name, **TINY[name])
  images = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  ref_params, ref_state = jax.eval_shape(
    functools.partial(model.init, is_training=True),
    jax.random.PRNGKey(0),
    images,
  )
  shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
  assert shapes(params) == shapes(ref_params)
  assert shapes(state) == shapes(ref_state)


# The example scripts, without a checkpoint (tiny random-weight models).

EXAMPLES = os.path.join(os.path.dirname(__file__), '..', 'examples')


@pytest.mark.parametrize(
  'script, extra',
  [
    ('fill_masked_bytes.py', []),
    ('classify_image.py', ['--preset', 'imagenet_conv']),
    ('optical_flow.py', ['--out', '{tmp}/flow.png']),
    ('video_autoencoding.py', ['--num_chunks', '4']),
  ],
)
def test_example_runs_without_checkpoint(
  script, extra, tmp_path, monkeypatch, capsys
):
  argv = [script] + [a.format(tmp=tmp_path) for a in extra]
  monkeypatch.setattr(sys, 'argv', argv)
  monkeypatch.syspath_prepend(EXAMPLES)
  runpy.run_path(os.path.join(EXAMPLES, script), run_name='__main__')
  printed = capsys.readouterr().out
  assert 'tiny random-weight' in printed
  if script == 'optical_flow.py':
    with Image.open(tmp_path / 'flow.png') as image:
      assert image.size == (70, 40)
