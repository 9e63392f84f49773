"""The pre-emption soak at a small size: 20 kills, SIGTERM and SIGKILL mixed."""

import json

import pytest

from soak import run_soak


@pytest.mark.slow
def test_soak_survives_20_kills(tmp_path):
  r = run_soak(str(tmp_path / 'wd'), kills=20, num_steps=400, checkpoint_every=10,
               seed=0)
  print(json.dumps(r))
  assert r['kills'] == 20 and r['sigterm'] > 0 and r['sigkill'] > 0
  assert r['final_step'] == 400 and r['all_steps_logged_once']
  assert r['sigterm_steps_lost_max'] == 0
  assert r['repeated_steps'] > 0 and r['repeated_loss_mismatches'] == 0
