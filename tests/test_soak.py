"""The pre-emption soak at a small size: 3 kills, SIGTERM and SIGKILL mixed
(`python tests/soak.py` runs 20 by default; 3 here, for the suite's
15-minute limit on a 2-core machine). Seed 3 draws SIGTERM, SIGKILL,
SIGTERM. 120 steps: the 3 kills come within ~25 steps of each resume (the
first step past the checkpoint, then at most 1 s), so ~75 at most, and the
final run trains the rest."""

import json

import pytest

from soak import run_soak


@pytest.mark.slow
def test_soak_survives_3_kills(tmp_path):
  r = run_soak(str(tmp_path / 'wd'), kills=3, num_steps=120, checkpoint_every=10,
               seed=3)
  print(json.dumps(r))
  assert r['kills'] == 3 and r['sigterm'] > 0 and r['sigkill'] > 0
  assert r['final_step'] == 120 and r['all_steps_logged_once']
  assert r['sigterm_steps_lost_max'] == 0
  assert r['repeated_steps'] > 0 and r['repeated_loss_mismatches'] == 0
