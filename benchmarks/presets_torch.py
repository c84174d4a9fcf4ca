"""The PyTorch side of benchmarks/presets.py: transformers' Perceiver.

Run by benchmarks/presets.py in its own process (never alongside JAX's
thread pools; benchmarks/common.py's `spawn`):

  python -m benchmarks.presets_torch --worker='{"kind": "preset", ...}'

A preset spec names the preset, its size overrides, dtype ('float32', or
'bfloat16' for `torch.autocast('cpu', bfloat16)`), mode ('forward' under
`torch.no_grad()`, or 'train': forward + loss + backward + an Adam step, as
the JAX train step) and `export_dir`, where the JAX worker left the initial
weights (our Haiku params converted by `perceiver.hf_convert`), the inputs,
the loss targets and its float32 forward outputs. The record gives the wall
times, the peak RSS above the RSS before the model was built and, for a
float32 forward, the max relative difference to the JAX outputs.

A matmul spec measures torch's n x n x n matmul FLOP/s in float32 and bf16.
"""

import os
from typing import Any, Dict, Optional, Sequence

import numpy as np

from benchmarks import common

MODULE = 'benchmarks.presets_torch'


def transformers_config(name: str, cfg: Dict[str, Any]):
  """A `transformers.PerceiverConfig` with the sizes of our preset `cfg`.

  Widths transformers hard-codes (perceiver/hf_convert.py, gap 6) are not
  set here; 'gelu_new' is the released tanh GELU (gap 1).
  """
  import transformers  # pylint: disable=g-import-not-at-top

  kwargs = dict(
    hidden_act='gelu_new',
    attention_probs_dropout_prob=0.0,
    num_latents=cfg['z_index_dim'],
    d_latents=cfg['num_z_channels'],
    num_self_attends_per_block=cfg['num_self_attends_per_block'],
    cross_attention_widening_factor=1,
    self_attention_widening_factor=1,
  )
  if name == 'language_mlm':
    kwargs.update(
      num_blocks=1,
      d_model=cfg['d_model'],
      num_self_attention_heads=cfg['num_heads'],
      num_cross_attention_heads=cfg['num_heads'],
      qk_channels=cfg['qk_channels'],
      v_channels=cfg['num_z_channels'],
      vocab_size=cfg['vocab_size'],
      max_position_embeddings=cfg['max_seq_len'],
    )
  elif name.startswith('imagenet'):
    kwargs.update(
      num_blocks=cfg['num_blocks'],
      num_self_attention_heads=cfg['num_self_attend_heads'],
      num_cross_attention_heads=1,
      image_size=cfg['image_size'],
      num_labels=cfg['num_classes'],
    )
  elif name == 'optical_flow':
    kwargs.update(
      num_blocks=1,
      num_self_attention_heads=cfg['num_self_attend_heads'],
      num_cross_attention_heads=1,
      train_size=list(cfg['image_size']),
    )
  else:
    raise ValueError(
      f'name: transformers cannot decode {name!r} fully '
      '(perceiver/hf_convert.py, gap 4).'
    )
  return transformers.PerceiverConfig(**kwargs)


def matmul_peak(n: int, repeats: int = 5) -> Dict[str, float]:
  """{dtype: FLOP/s} of torch's n x n x n matmul, float32 and bfloat16,
  median of `repeats` calls after 2, on all cores."""
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count())
  out = {}
  for dtype in ('float32', 'bfloat16'):
    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    times = common.time_calls(lambda: torch.matmul(a, b), 2, repeats)
    out[dtype] = 2.0 * n**3 / float(np.median(times))
  return out


def _loss(logits, targets):
  import torch  # pylint: disable=g-import-not-at-top

  logits = logits.float()
  if targets.dtype in (torch.int32, torch.int64):
    return torch.nn.functional.cross_entropy(
      logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long()
    )
  return torch.mean(torch.square(logits - targets))


def run_preset(spec: Dict[str, Any]) -> Dict[str, Any]:
  """One (preset, dtype, mode) measurement in PyTorch (module docstring)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from perceiver import hf_convert  # pylint: disable=g-import-not-at-top
  from perceiver import presets  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count())
  baseline = common.peak_rss_bytes()
  name = spec['preset']
  cfg = dict(presets.defaults(name), **spec['overrides'])
  config = transformers_config(name, cfg)
  model = getattr(transformers, hf_convert.TRANSFORMERS_CLASSES[name])(config)
  export = spec['export_dir']
  weights = np.load(os.path.join(export, 'weights.npz'))
  model.load_state_dict(
    {k: torch.from_numpy(np.array(weights[k])) for k in weights.files},
    strict=True,
  )
  inputs = np.load(os.path.join(export, 'inputs.npz'))
  kwargs = {k: torch.from_numpy(np.array(inputs[k])) for k in inputs.files}
  targets = torch.from_numpy(np.load(os.path.join(export, 'targets.npy')))
  autocast = (
    torch.autocast('cpu', dtype=torch.bfloat16)
    if spec['dtype'] == 'bfloat16'
    else contextlib.nullcontext()
  )
  rec = dict(
    num_params=int(sum(p.numel() for p in model.parameters())),
    torch_threads=torch.get_num_threads(),
  )
  if spec['mode'] == 'forward':
    model.eval()
    outputs = {}

    def forward():
      with torch.no_grad(), autocast:
        outputs['logits'] = model(**kwargs).logits

    times = common.time_calls(forward, spec['warmup'], spec['repeats'])
    jax_path = os.path.join(export, 'jax_outputs.npy')
    if spec['dtype'] == 'float32' and os.path.exists(jax_path):
      ours = np.load(jax_path).astype(np.float64)
      theirs = outputs['logits'].float().numpy().astype(np.float64)
      if name == 'optical_flow':  # Our preset includes the colab's x20.
        ours = ours / cfg['flow_scale']
      if ours.shape == theirs.shape:
        rec['max_rel_err'] = float(
          np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
        )
  else:
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
      with autocast:
        loss = _loss(model(**kwargs).logits, targets)
      loss.backward()
      optimizer.step()
      optimizer.zero_grad(set_to_none=True)

    times = common.time_calls(step, spec['warmup'], spec['repeats'])
  peak = common.peak_rss_bytes()
  rec.update(
    status='ok',
    times_s=times,
    median_s=float(np.median(times)),
    min_s=float(np.min(times)),
    peak_rss_bytes=peak,
    baseline_rss_bytes=baseline,
    peak_mem_bytes=peak - baseline,
  )
  return rec


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = common.new_parser(MODULE, __doc__)
  p.add_argument('--worker', required=True, help='JSON spec (see above).')
  common.run_worker(
    p.parse_args(argv).worker,
    dict(
      preset=run_preset,
      matmul=lambda spec: dict(matmul_peak_flops=matmul_peak(spec['n'])),
    ),
  )


if __name__ == '__main__':
  main()
