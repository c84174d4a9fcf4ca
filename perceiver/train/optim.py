"""Optimizers and learning-rate schedules (Perceiver IO, App. E;
the released train/utils.py).

Everything is built from optax's own transformations:

- schedules: 'constant_cosine' (the ImageNet recipe: constant for a fraction
  of the steps, then cosine to zero), 'warmup_cosine' (the MLM recipe) and
  'constant'; the base rate is optionally scaled linearly with the global batch
  (`lr * batch / 256`, Goyal et al. 2017);
- optimizers: 'lamb' and 'adamw', both preceded by clipping by global norm, with
  decoupled weight decay that skips biases ('b'), LayerNorm/BatchNorm
  parameters and, if asked, the position embeddings ('pos_embs').
"""

from typing import Any, Callable

import ml_collections
import optax

SCHEDULES = ('constant_cosine', 'warmup_cosine', 'constant')
OPTIMIZERS = ('lamb', 'adamw')
_NORM_MODULE_MARKERS = ('layer_norm', 'batchnorm')


def scaled_base_lr(
  base_lr: float,
  batch_size: int,
  scale_by_batch: bool,
  reference_batch: int = 256,
) -> float:
  """`base_lr * batch_size / reference_batch` if scaling, else `base_lr`."""
  return base_lr * batch_size / reference_batch if scale_by_batch else base_lr


def make_schedule(
  cfg: ml_collections.ConfigDict, batch_size: int, total_steps: int
) -> optax.Schedule:
  """The learning-rate schedule described by `cfg` (the `optimizer` section).

  Fields: `schedule`, `base_lr`, `scale_by_batch`, `constant_fraction`
  (constant_cosine), `warmup_steps` (warmup_cosine), `end_lr`.
  """
  lr = scaled_base_lr(cfg.base_lr, batch_size, cfg.scale_by_batch)
  if cfg.schedule == 'constant':
    return optax.constant_schedule(lr)
  if cfg.schedule == 'constant_cosine':
    boundary = int(total_steps * cfg.constant_fraction)
    decay_steps = max(total_steps - boundary, 1)
    alpha = cfg.end_lr / lr if lr else 0.0
    return optax.join_schedules(
      [
        optax.constant_schedule(lr),
        optax.cosine_decay_schedule(lr, decay_steps, alpha=alpha),
      ],
      [boundary],
    )
  if cfg.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=lr,
      warmup_steps=cfg.warmup_steps,
      decay_steps=max(total_steps, cfg.warmup_steps + 1),
      end_value=cfg.end_lr,
    )
  raise ValueError(
    f'optimizer.schedule: expected one of {list(SCHEDULES)}, '
    f'got {cfg.schedule!r}.'
  )


def decay_mask(params: Any, decay_pos_embs: bool = True) -> Any:
  """True for the parameters that get weight decay.

  Excluded (as in the released train/utils.py): biases (named 'b'), every parameter of a module
  whose name contains 'layer_norm' or 'batchnorm', and, unless
  `decay_pos_embs`, the position tables/latents/queries named 'pos_embs'.

  Args:
    params: a Haiku parameter mapping {module_name: {param_name: array}}.
    decay_pos_embs: whether 'pos_embs' are decayed (the released default).

  Returns:
    A pytree of bools with the structure of `params`.
  """

  def keep(module_name: str, name: str) -> bool:
    if name == 'b':
      return False
    if any(m in module_name for m in _NORM_MODULE_MARKERS):
      return False
    if name == 'pos_embs' and not decay_pos_embs:
      return False
    return True

  return {m: {n: keep(m, n) for n in p} for m, p in params.items()}


def make_optimizer(
  cfg: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
  """LAMB or AdamW with global-norm clipping and masked weight decay.

  The chain matches the released `make_optimizer` (clip, Adam moments,
  decoupled decay, trust ratio for LAMB, schedule, negate), using
  `optax.lamb`/`optax.adamw` whose internals are exactly that chain.
  """
  mask: Callable[[Any], Any] = lambda p: decay_mask(p, cfg.decay_pos_embs)
  factories = {'lamb': optax.lamb, 'adamw': optax.adamw}
  if cfg.name not in factories:
    raise ValueError(
      f'optimizer.name: expected one of {list(OPTIMIZERS)}, got {cfg.name!r}.'
    )
  opt = factories[cfg.name](
    schedule,
    b1=cfg.b1,
    b2=cfg.b2,
    eps=cfg.eps,
    weight_decay=cfg.weight_decay,
    mask=mask,
  )
  if cfg.clip_norm and cfg.clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
  return opt


def default_config() -> ml_collections.ConfigDict:
  """The released ImageNet optimizer settings (LAMB, released
  train/experiment.py)."""
  return ml_collections.ConfigDict(
    dict(
      name='lamb',
      base_lr=5e-4,
      scale_by_batch=True,
      schedule='constant_cosine',
      constant_fraction=0.5,
      warmup_steps=0,
      end_lr=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      weight_decay=0.1,
      decay_pos_embs=True,
      clip_norm=10.0,
    )
  )
