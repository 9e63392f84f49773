"""Shared by bench.py and profile_ops.py: the PyTorch reference UNet and the
JSON report writer."""

import json
import os


def torch_unet(config):
  """diffusers UNet2DModel with the config's UNet shape (eval mode)."""
  import torch
  from diffusers import UNet2DModel
  torch.set_num_threads(os.cpu_count())
  m, d = config.model, config.data
  res, down = d.image_size, []
  for level in range(len(m.ch_mult)):
    attn = res in tuple(m.attn_resolutions)
    down.append('AttnDownBlock2D' if attn else 'DownBlock2D')
    res //= 2 if level < len(m.ch_mult) - 1 else 1
  up = [b.replace('Down', 'Up') for b in reversed(down)]
  return UNet2DModel(
      sample_size=d.image_size, in_channels=d.channels, out_channels=d.channels,
      block_out_channels=tuple(m.ch * k for k in m.ch_mult),
      layers_per_block=m.num_res_blocks, down_block_types=tuple(down),
      up_block_types=tuple(up), norm_num_groups=m.num_groups, norm_eps=1e-6,
      attention_head_dim=None, dropout=m.dropout, act_fn='silu',
      freq_shift=1, flip_sin_to_cos=False).eval()


def write_report(path: str | None, report: dict) -> None:
  """Writes the report as JSON when a path is given."""
  if path:
    with open(path, 'w') as f:
      json.dump(report, f, indent=1)
    print(f'wrote {path}')
