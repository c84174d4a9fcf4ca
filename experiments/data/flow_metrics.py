"""Optical-flow metrics, classical baselines and the scoring of pair sets.

Shapes: B batch, H, W image height and width in pixels; channel 0 of a flow
is u (along x), channel 1 is v (along y), pixels (as `experiments/data/
flow.py`). Records are {'frame1', 'frame2': uint8 [H, W, 3], 'flow': float
[H, W, 2], 'valid': bool [H, W]}.

Metrics (Perceiver IO Sec. 4.2 reports the first):
* EPE, the average end-point error: the Euclidean distance between the
  predicted and the true flow vector, averaged over the valid pixels (the
  field's standard term; Baker et al. 2011). Over a set of pairs it is
  pixel-weighted: the sum over every valid pixel of the set divided by
  their count.
* zero-flow EPE: the EPE of predicting no motion, the mean |true flow|.
* Fl-all (KITTI 2015, Menze & Geiger 2015): the share of valid pixels
  whose end-point error exceeds both 3 px and 5% of the true flow's length.

Baselines scored beside a model on the same pairs: the per-pair mean flow
(an oracle reading the ground truth) and classical block matching.

`evaluate_pairs` runs a model (any `(frame1, frame2) -> flow` predictor,
e.g. the tiled `perceiver.tasks.optical_flow`) over a set of pairs beside
the baselines' EPEs, prints the set's line and collects colour-wheel PNGs
(`perceiver.tasks.flow_to_color`); `experiments/flow.py` makes one
evaluator of it per set.
"""

import os
from typing import Callable, Dict, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from perceiver import tasks

Record = Mapping[str, np.ndarray]
Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]
Baseline = Callable[[Record], np.ndarray]

# KITTI's outlier: end-point error > 3 px and > 5% of the true flow's length.
FL_ABS_PX, FL_REL = 3.0, 0.05
_EPS = 1e-12  # under the EPE's square root: a finite gradient at zero error


def epe_per_example(
  flow_pred_BHW2, flow_BHW2, valid_BHW
) -> Dict[str, jax.Array]:
  """Each example's metrics over its valid pixels, differentiable (jax).

  Args:
    flow_pred_BHW2: the predicted flow [B, H, W, 2], pixels.
    flow_BHW2: the true flow [B, H, W, 2], pixels.
    valid_BHW: [B, H, W], nonzero where the true flow is known.

  Returns:
    {'epe': average end-point error, 'zero_flow_epe': the EPE of predicting
    no motion, 'fl': KITTI's outlier share}, each float32 [B] (0 for an
    example without valid pixels). The end-point error is sqrt(|pred -
    true|^2 + 1e-12): its gradient is finite at zero error.
  """
  valid = jnp.asarray(valid_BHW).astype(jnp.float32)
  count = jnp.maximum(valid.sum((1, 2)), 1.0)
  gt = jnp.asarray(flow_BHW2).astype(jnp.float32)
  sq = jnp.sum(jnp.square(jnp.asarray(flow_pred_BHW2, jnp.float32) - gt), -1)
  epe = jnp.sqrt(sq + _EPS)  # [B, H, W]
  mag = jnp.sqrt(jnp.sum(jnp.square(gt), -1))
  outlier = (epe > FL_ABS_PX) & (epe > FL_REL * mag)
  mean = lambda x: jnp.sum(x * valid, (1, 2)) / count
  return {
    'epe': mean(epe),
    'zero_flow_epe': mean(mag),
    'fl': mean(outlier.astype(jnp.float32)),
  }


def flow_errors(pred_HW2, gt_HW2, valid_HW) -> Dict[str, float]:
  """Sums over the valid pixels of one pair, for pixel-weighted averages
  (float64, numpy).

  Args:
    pred_HW2: the predicted flow [H, W, 2], pixels.
    gt_HW2: the true flow [H, W, 2], pixels.
    valid_HW: bool [H, W], True where the true flow is known.

  Returns:
    {'epe': sum of |pred - gt|, 'zero': sum of |gt| (zero-flow EPE), 'fl':
    number of outliers (> 3 px and > 5%), 'count': valid pixels}.

  Raises:
    ValueError: `pred_HW2` not of the ground truth's shape.
  """
  pred = np.asarray(pred_HW2, np.float64)
  gt = np.asarray(gt_HW2, np.float64)
  if pred.shape != gt.shape:
    raise ValueError(f'pred: expected shape {gt.shape}, got {pred.shape}.')
  valid = np.asarray(valid_HW, bool)
  epe = np.linalg.norm(pred - gt, axis=-1)[valid]
  mag = np.linalg.norm(gt, axis=-1)[valid]
  return {
    'epe': float(epe.sum()),
    'zero': float(mag.sum()),
    'fl': float(((epe > FL_ABS_PX) & (epe > FL_REL * mag)).sum()),
    'count': float(valid.sum()),
  }


# ---------------------------------------------------------------------------
# Baselines.
# ---------------------------------------------------------------------------


def mean_flow(record: Record) -> np.ndarray:
  """The per-pair mean-flow oracle: the true flow's mean over the pair's
  valid pixels, predicted at every pixel, float64 [H, W, 2] (zeros when no
  pixel is valid). It reads the ground truth: a bound on what one global
  motion per pair can score, not a method."""
  valid = np.asarray(record['valid'], bool)
  flow = np.asarray(record['flow'], np.float64)
  mean = flow[valid].mean(0) if valid.any() else np.zeros(2)
  return np.broadcast_to(mean, flow.shape)


def block_match(
  frame1_HW3, frame2_HW3, *, radius: int = 7, window: int = 7
) -> np.ndarray:
  """Classical block matching: for every frame-1 pixel, the integer motion
  (u, v) in [-radius, radius]^2 whose window x window block of frame 2
  around (x + u, y + v) has the least sum of squared RGB differences to the
  block around (x, y).

  Exhaustive: one vectorised cost image per displacement (a box filter of
  the squared differences, `scipy.ndimage.uniform_filter`, edge-replicated
  at the image borders). Ties go to the shortest motion (zero first), so a
  textureless block stays still.

  Args:
    frame1_HW3, frame2_HW3: uint8 or float [H, W, 3] (any channel count C,
      the same in both).
    radius: the largest motion searched, pixels per axis (>= 0).
    window: the block side, pixels (odd, >= 1).

  Returns:
    float32 [H, W, 2] flow (u along x, v along y), integer pixels.

  Raises:
    ValueError: frames of different shapes, a negative radius or an even
      or non-positive window.
  """
  f1 = np.asarray(frame1_HW3, np.float32)
  f2 = np.asarray(frame2_HW3, np.float32)
  if f1.shape != f2.shape or f1.ndim != 3:
    raise ValueError(
      f'frame2_HW3: expected the shape of frame1_HW3 {f1.shape} ([H, W, C]), '
      f'got {f2.shape}.'
    )
  if not isinstance(radius, (int, np.integer)) or radius < 0:
    raise ValueError(f'radius: expected an integer >= 0, got {radius!r}.')
  if not isinstance(window, (int, np.integer)) or window < 1 or window % 2 == 0:
    raise ValueError(f'window: expected an odd integer >= 1, got {window!r}.')
  h, w = f1.shape[:2]
  r = int(radius)
  padded = np.pad(f2, ((r, r), (r, r), (0, 0)), mode='edge')
  moves = sorted(
    ((u, v) for v in range(-r, r + 1) for u in range(-r, r + 1)),
    key=lambda m: m[0] ** 2 + m[1] ** 2,
  )
  best = np.full((h, w), np.inf, np.float32)
  flow = np.zeros((h, w, 2), np.float32)
  for u, v in moves:
    moved = padded[r + v : r + v + h, r + u : r + u + w]
    cost = ndimage.uniform_filter(
      np.square(f1 - moved).sum(-1), size=window, mode='nearest'
    )
    better = cost < best
    best = np.where(better, cost, best)
    flow[better] = (u, v)
  return flow


def baseline_epes(
  pairs: Iterable[Record], baselines: Mapping[str, Baseline]
) -> Dict[str, float]:
  """The EPE (pixel-weighted over valid pixels, as `evaluate_pairs`) of
  each baseline on `pairs`.

  Args:
    pairs: records {'frame1', 'frame2', 'flow', 'valid'}.
    baselines: name -> (record -> flow [H, W, 2]), e.g. `mean_flow`.

  Returns:
    {name: EPE}.

  Raises:
    ValueError: no valid pixel in `pairs`.
  """
  totals = dict.fromkeys(baselines, 0.0)
  count = 0.0
  for record in pairs:
    for b, fn in baselines.items():
      errors = flow_errors(fn(record), record['flow'], record['valid'])
      totals[b] += errors['epe']
    count += float(np.sum(record['valid']))
  if not count:
    raise ValueError('pairs: no valid pixels to evaluate the baselines on.')
  return {b: v / count for b, v in totals.items()}


# ---------------------------------------------------------------------------
# Scoring a model on pair sets.
# ---------------------------------------------------------------------------


def evaluate_pairs(
  predict: Predict,
  pairs: Iterable[Record],
  name: str,
  *,
  compared: Optional[Mapping[str, float]] = None,
  pngs: Optional[Dict[str, np.ndarray]] = None,
  num_pngs: int = 0,
  say: Callable[[str], None] = print,
) -> Dict[str, float]:
  """EPE (pixel-weighted over valid pixels), zero-flow EPE and Fl-all,
  beside baselines' EPEs on the same pairs.

  Prints `<name> (<n> pairs) EPE: N.NN (zero flow: N.NN[, <baseline>:
  N.NN]...), Fl-all: P%` (a baseline's name with spaces for underscores)
  and adds the colour-wheel images `flow_<name>_<i>_{pred,gt}.png` (same
  colour scale) of the first `num_pngs` pairs to `pngs`.

  Args:
    predict: (frame1, frame2) -> flow [H, W, 2], the model.
    pairs: records {'frame1', 'frame2', 'flow', 'valid'}.
    name: the set's name.
    compared: baseline name -> its EPE on these pairs (`baseline_epes`).
    pngs: file name -> RGB uint8 [H, W, 3] (`perceiver.tasks.
      flow_to_color`), for `write_pngs`; None: no images.
    num_pngs: images of the first `num_pngs` pairs.
    say: receives the line.

  Returns:
    {'epe', 'zero_flow_epe', 'fl_all' (a fraction), '<baseline>_epe' per
    baseline of `compared`}.

  Raises:
    ValueError: no valid pixel in `pairs`.
  """
  compared = dict(compared or {})
  totals = dict(epe=0.0, zero=0.0, fl=0.0, count=0.0)
  n = 0
  for i, record in enumerate(pairs):
    pred = predict(record['frame1'], record['frame2'])
    for k, v in flow_errors(pred, record['flow'], record['valid']).items():
      totals[k] += v
    if pngs is not None and i < num_pngs:
      gt = np.where(record['valid'][..., None], record['flow'], 0.0)
      scale = max(float(np.linalg.norm(gt, axis=-1).max()), 1e-6)
      for kind, flow_HW2 in (('pred', pred), ('gt', gt)):
        pngs[f'flow_{name}_{i}_{kind}.png'] = tasks.flow_to_color(
          flow_HW2, scale
        )
    n += 1
  if not totals['count']:
    raise ValueError(f'{name}: no valid pixels to evaluate.')
  out = {
    'epe': totals['epe'] / totals['count'],
    'zero_flow_epe': totals['zero'] / totals['count'],
    'fl_all': totals['fl'] / totals['count'],
  }
  out.update({f'{b}_epe': float(v) for b, v in compared.items()})
  beside = ''.join(
    f', {b.replace("_", " ")}: {v:.2f}' for b, v in compared.items()
  )
  say(
    f'{name} ({n} pairs) EPE: {out["epe"]:.2f} (zero flow: '
    f'{out["zero_flow_epe"]:.2f}{beside}), Fl-all: '
    f'{100 * out["fl_all"]:.1f}%'
  )
  return out


def write_pngs(pngs: Mapping[str, np.ndarray], workdir: str) -> None:
  """Writes each RGB image of `pngs` (`evaluate_pairs`) to
  `<workdir>/<file name>`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  for name, rgb in pngs.items():
    Image.fromarray(rgb, mode='RGB').save(
      os.path.join(workdir, name), format='PNG'
    )
