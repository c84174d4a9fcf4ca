"""Schedules, the weight-decay mask and one optimizer step, by hand.

References: the learning rates of the released schedule
(train/utils.py, train/experiment.py) at batch 1024, and update formulas written out with numpy.
"""

import jax
import numpy as np
import optax
import pytest

from perceiver.train import optim


def _opt_config(**overrides):
  c = optim.default_config()
  c.update(overrides)
  return c


def test_constant_cosine_matches_released_values_at_batch_1024():
  # base 5e-4 * 1024 / 256 = 2e-3; constant for half, cosine to 0.
  schedule = optim.make_schedule(
    _opt_config(), batch_size=1024, total_steps=1000
  )
  got = [float(schedule(s)) for s in (0, 499, 500, 750, 1000)]
  np.testing.assert_allclose(got, [2e-3, 2e-3, 2e-3, 1e-3, 0.0], atol=1e-9)


def test_linear_scaling_with_batch_size_can_be_turned_off():
  scaled = optim.make_schedule(_opt_config(), batch_size=2, total_steps=10)
  assert float(scaled(0)) == pytest.approx(5e-4 * 2 / 256)
  plain = optim.make_schedule(
    _opt_config(scale_by_batch=False), batch_size=2, total_steps=10
  )
  assert float(plain(0)) == pytest.approx(5e-4)


def test_warmup_cosine():
  c = _opt_config(
    schedule='warmup_cosine',
    base_lr=1e-3,
    scale_by_batch=False,
    warmup_steps=10,
    end_lr=1e-5,
  )
  schedule = optim.make_schedule(c, batch_size=64, total_steps=110)
  np.testing.assert_allclose(
    [float(schedule(s)) for s in (0, 5, 10, 60, 110)],
    [0.0, 5e-4, 1e-3, 1e-5 + (1e-3 - 1e-5) * 0.5, 1e-5],
    rtol=1e-5,
    atol=1e-10,
  )


def _params():
  rng = np.random.default_rng(0)
  f = lambda *s: rng.normal(size=s).astype(np.float32)
  return {
    'perceiver_encoder/~/cross_attention/attention/linear': {
      'w': f(3, 4),
      'b': f(4),
    },
    'perceiver_encoder/~/cross_attention/layer_norm': {
      'scale': f(4),
      'offset': f(4),
    },
    'image_preprocessor/~/conv2_d_downsample/~/batchnorm': {
      'scale': f(4),
      'offset': f(4),
    },
    'perceiver_encoder/~/trainable_position_encoding': {'pos_embs': f(5, 4)},
  }


@pytest.mark.parametrize('decay_pos_embs', [True, False])
def test_decay_mask_excludes_biases_norms_and_optionally_pos_embs(
  decay_pos_embs,
):
  mask = optim.decay_mask(_params(), decay_pos_embs)
  flat = {
    f'{m.split("/")[-1]}/{n}': v for m, p in mask.items() for n, v in p.items()
  }
  assert flat == {
    'linear/w': True,
    'linear/b': False,
    'layer_norm/scale': False,
    'layer_norm/offset': False,
    'batchnorm/scale': False,
    'batchnorm/offset': False,
    'trainable_position_encoding/pos_embs': decay_pos_embs,
  }


def _first_adam_direction(g, eps):
  # Bias-corrected first step: m_hat = g, v_hat = g^2.
  return g / (np.abs(g) + eps)


@pytest.mark.parametrize('name', ['adamw', 'lamb'])
def test_one_step_matches_hand_computed_update(name):
  lr, wd, eps = 0.1, 0.5, 1e-6
  c = _opt_config(
    name=name,
    base_lr=lr,
    scale_by_batch=False,
    schedule='constant',
    weight_decay=wd,
    eps=eps,
    clip_norm=0.0,
    decay_pos_embs=False,
  )
  opt = optim.make_optimizer(c, optim.make_schedule(c, 8, 10))
  params = _params()
  grads = jax.tree.map(lambda p: np.full_like(p, 0.3) * np.sign(p), params)
  updates, _ = opt.update(grads, opt.init(params), params)
  mask = optim.decay_mask(params, decay_pos_embs=False)
  for m in params:
    for n, p in params[m].items():
      u = _first_adam_direction(grads[m][n], eps)
      if mask[m][n]:
        u = u + wd * p
      if name == 'lamb':
        ratio = np.linalg.norm(p) / np.linalg.norm(u)
        u = u * ratio
      np.testing.assert_allclose(
        np.asarray(updates[m][n]),
        -lr * u,
        rtol=1e-5,
        atol=1e-7,
        err_msg=f'{m}/{n}',
      )


def test_clipping_by_global_norm_comes_first():
  # With a large eps the Adam step is ~ g / eps, so the clipping shows.
  c = _opt_config(
    name='adamw',
    base_lr=1.0,
    scale_by_batch=False,
    schedule='constant',
    weight_decay=0.0,
    eps=1e3,
    clip_norm=1.0,
  )
  opt = optim.make_optimizer(c, optim.make_schedule(c, 8, 10))
  params = {'linear': {'w': np.ones((2, 2), np.float32)}}
  grads = {'linear': {'w': np.full((2, 2), 3.0, np.float32)}}  # norm 6
  updates, _ = opt.update(grads, opt.init(params), params)
  clipped = 3.0 / 6.0
  np.testing.assert_allclose(
    updates['linear']['w'], -clipped / (clipped + 1e3), rtol=1e-5
  )


def test_unknown_optimizer_is_rejected_naming_the_field():
  c = _opt_config(name='sgd')
  with pytest.raises(ValueError, match="optimizer.name.*'sgd'"):
    optim.make_optimizer(c, optax.constant_schedule(1.0))


def test_unknown_schedule_is_rejected_naming_the_field():
  with pytest.raises(ValueError, match="optimizer.schedule.*'exponential'"):
    optim.make_schedule(_opt_config(schedule='exponential'), 8, 10)
