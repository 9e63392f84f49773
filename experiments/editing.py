"""python -m experiments.editing --workdir W --out docs/editing_cpu_mnist.jsonl [--stage sweep|masks|img2img] [--num 200]

How well inpainting, outpainting and img2img work on one trained MNIST
model, on digits it never saw: the LeNet judge's held-out images (the first
100 of each class, data.held_out_split), with W trained on the other 4,000
(`--config.data.split=train_minus_heldout`). The first `--num` held-out
digits (an equal number per class) are edited; the other held-out digits are
the real reference for FD.

Stages (each appends one JSON line per run to --out, with CPU, JAX, date):
- `sweep`: the right-half mask, every sampler × --steps × --jumps (RePaint
  resamplings per 10-step block) × --reconstruction (guidance weight), with the true label (at the config's
  guidance scale) and unconditional (the null label);
- `masks`: the --runs settings on every mask: right half, bottom half, a
  centre square (14×14), random strokes (three 4-px segments per image,
  seeded), and outpainting (the digit's centre 16×16, margins 6 on each side
  back to 28×28);
- `img2img`: a strength sweep with the --runs settings;
- `ceiling` (no model): how far the known pixels determine the digit. A
  Gaussian-kernel posterior p(y | known pixels) over the 4,000 training
  digits (bandwidth by leave-one-out log-likelihood) gives E[p(true label |
  known)] on the edited digits: the identity rate of an ideal unconditional
  completion, which draws the class from that posterior. A second estimate:
  a LeNet trained on the known pixels of the same digits, its temperature
  fitted on 600 of them it did not train on;
- `classifier`: the model as its own classifier of the known pixels
  (`Pipeline.infer_labels`, the class with the lowest ε error there), the
  hidden part from the unconditional completion or noise: how often an
  unlabeled edit picks the true label.
Per run: `acc_label` / `acc_uncond`: the judge's accuracy with respect to the
true label; `fd`: LeNet FD of the edits against the reference digits;
`seam`: the mean squared difference across the mask boundary (pixel pairs
that straddle it) over the same on the original digits (1 = as smooth as
real digits); img2img: `change`, the mean |pixel change| from the input in
[-1, 1] units; `s_per_image`: seconds per image of the second sampling call
(steady state; the first, which compiles, is `first_call_s`).

  python -m experiments.editing --table docs/editing_cpu_mnist.jsonl

prints the Markdown tables of docs/results/editing.md. A latent model
(configs/mnist_latent.py: 32x32, digits centred) gets the digits and masks
padded to its canvas and its edits cropped back to 28x28 for the judge; it
pastes the known pixels after decoding (paste_known).
"""

import json
import os
import time

from absl import flags
import numpy as np

from benchmarks import common
from ddpm_jax.metrics import mnist_lenet
from ddpm_jax.metrics.fid import feature_stats, frechet_distance
from ddpm_jax.pipeline import load

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/edit/mnist_heldout',
                               'A workdir trained with data.split=train_minus_heldout.')
_NUM = flags.DEFINE_integer('num', 200, 'Held-out digits edited per run.')
_BATCH = flags.DEFINE_integer('batch', 100, 'Images per sampling call.')
_STAGE = flags.DEFINE_enum('stage', 'sweep', ['sweep', 'masks', 'img2img', 'ceiling',
                                     'classifier'],
                           'What to run.')
_STEPS = flags.DEFINE_list('steps', ['10', '20', '50'], 'Step counts (sweep).')
_JUMPS = flags.DEFINE_list('jumps', ['0', '3'], 'RePaint jumps (sweep).')
_SAMPLERS = flags.DEFINE_list('samplers', None, 'Samplers (sweep; default: all).')
_RECON = flags.DEFINE_list('reconstruction', ['0'], 'Reconstruction guidance '
                           'weights (sweep; 0: off).')
_RUNS = flags.DEFINE_list('runs', ['dpm++2m:20:0', 'ddpm:50:3'],
                          'sampler:steps:jumps[:reconstruction] settings, '
                          'or "defaults": the library\'s (masks, img2img).')
_MASKS = flags.DEFINE_multi_enum(
    'masks', ['right', 'bottom', 'centre', 'strokes', 'outpaint'],
    ['right', 'bottom', 'centre', 'strokes', 'outpaint'], 'Masks (masks).')
_STRENGTHS = flags.DEFINE_list('strengths', ['0.3', '0.5', '0.7', '0.9'],
                               'img2img strengths.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed of every run.')
_OUT = flags.DEFINE_string('out', '/tmp/editing.jsonl', 'JSON-lines file to append to.')
_TABLE = flags.DEFINE_string('table', None, 'Print the tables of this JSON-lines '
                             'file and exit.')

SIZE = 28
CENTRE = slice(6, 22)   # outpainting keeps this 16x16 centre of each digit


def masks(n: int, seed: int = 0) -> dict[str, np.ndarray]:
  """[n, 28, 28, 1] masks, 1 = regenerate."""
  m = {k: np.zeros((n, SIZE, SIZE, 1), np.float32)
       for k in ('right', 'bottom', 'centre', 'strokes')}
  m['right'][:, :, SIZE // 2:] = 1
  m['bottom'][:, SIZE // 2:] = 1
  m['centre'][:, 7:21, 7:21] = 1
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:SIZE, :SIZE]
  for i in range(n):
    for _ in range(3):   # a 4-px wide segment between two random points
      (y0, x0), (y1, x1) = rng.uniform(4, SIZE - 4, (2, 2))
      d = np.array([y1 - y0, x1 - x0])
      t = np.clip(((yy - y0) * d[0] + (xx - x0) * d[1]) / max(d @ d, 1e-6), 0, 1)
      dist = np.hypot(yy - (y0 + t * d[0]), xx - (x0 + t * d[1]))
      m['strokes'][i, dist <= 2.0] = 1
  return m


def seam(x: np.ndarray, mask: np.ndarray) -> float:
  """Mean squared difference of neighbouring pixels on opposite sides of the
  mask boundary."""
  tot, cnt = 0.0, 0
  for axis in (1, 2):
    a, b = np.moveaxis(x, axis, 0), np.moveaxis(mask, axis, 0)
    cross = b[1:] != b[:-1]
    tot += float((np.square(a[1:] - a[:-1]) * cross).sum())
    cnt += int(cross.sum())
  return tot / max(cnt, 1)


def timed(pipe, num: int, batch: int, **kw) -> tuple[np.ndarray, float, float]:
  """(images, first call s, s per image of the later calls)."""
  xs, times = [], []
  for i in range(0, num, batch):
    sub = {k: (v[i:i + batch] if isinstance(v, np.ndarray) and len(v) == num
               else v) for k, v in kw.items()}
    t0 = time.perf_counter()
    xs.append(pipe.sample(num=min(batch, num - i), seed=_SEED.value + i,
                          batch_size=batch, **sub))
    times.append(time.perf_counter() - t0)
  later = times[1:] or times
  return np.concatenate(xs), times[0], float(np.mean(later)) / batch


class Judge:
  def __init__(self, num: int):
    self.model, held, labels = mnist_lenet.mnist_classifier()
    per = num // 10
    pick = np.concatenate([np.flatnonzero(labels == c)[:per] for c in range(10)])
    rest = np.setdiff1d(np.arange(len(labels)), pick)
    self.x, self.y = held[pick], labels[pick]
    feats, _ = mnist_lenet.classify(self.model, held[rest])
    self.ref = feature_stats(feats)

  def score(self, x: np.ndarray) -> tuple[float, float]:
    feats, probs = mnist_lenet.classify(self.model, x)
    return (float((probs.argmax(1) == self.y).mean()),
            float(frechet_distance(*feature_stats(feats), *self.ref)))


def _pad(a: np.ndarray, p: int, value: float) -> np.ndarray:
  """28x28 digits (or masks) centred on the model's canvas (a latent model's
  32x32, as data.resize='pad' trained it)."""
  return np.pad(a, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=value) if p else a


def edit_run(pipe, judge: Judge, head: dict, mask_name: str, mask,
             sampler: str | None, steps: int | None, jumps: int | None,
             out: str, reconstruction: float | None = 0.0) -> None:
  """One editing setting, with the label and without; sampler None: every
  editing default of the library (an unlabeled edit infers its label),
  else exactly this setting (no inferred label)."""
  x, y = judge.x, judge.y
  defaults = sampler is None
  p = (pipe.image_shape[0] - SIZE) // 2
  if mask_name == 'outpaint':
    kw = dict(init_image=x[:, CENTRE, CENTRE], outpaint=(CENTRE.start + p,) * 4)
    mask = np.ones_like(x)
    mask[:, CENTRE, CENTRE] = 0
  else:   # the regenerated part blacked out: a latent model encodes the
    # whole init image, and its known latents would carry what is hidden
    kw = dict(init_image=_pad(np.where(mask > 0, -1.0, x), p, -1.0),
              mask=_pad(mask, p, 0.0))
  row = dict(head, stage=_STAGE.value, mask=mask_name,
             sampler=sampler or 'defaults', steps=steps, jumps=jumps,
             reconstruction=reconstruction, infer_label=defaults,
             num=len(x), workdir=_WORKDIR.value)
  real_seam = seam(x, mask)
  for cond in ('label', 'uncond'):
    labels = y if cond == 'label' else None
    edits, first, per = timed(pipe, len(x), _BATCH.value, sampler=sampler,
                              num_steps=steps, jumps=jumps, labels=labels,
                              reconstruction=reconstruction,
                              **({} if defaults or labels is not None
                                 else dict(infer_label=False)), **kw)
    edits = edits[:, p:p + SIZE, p:p + SIZE]
    acc, fd = judge.score(edits)
    row.update({f'acc_{cond}': acc, f'fd_{cond}': fd,
                f'seam_{cond}': seam(edits, mask) / real_seam,
                f's_per_image_{cond}': per, f'first_call_s_{cond}': first})
  print(json.dumps(row), flush=True)
  common.append_jsonl(out, row)


def img2img_run(pipe, judge: Judge, head: dict, sampler: str, steps: int,
                strength: float, out: str) -> None:
  row = dict(head, stage='img2img', sampler=sampler, steps=steps,
             strength=strength, num=len(judge.x), workdir=_WORKDIR.value)
  p = (pipe.image_shape[0] - SIZE) // 2
  for cond in ('label', 'uncond'):
    labels = judge.y if cond == 'label' else None
    edits, first, per = timed(pipe, len(judge.x), _BATCH.value, sampler=sampler,
                              num_steps=steps, labels=labels,
                              init_image=_pad(judge.x, p, -1.0), strength=strength)
    edits = edits[:, p:p + SIZE, p:p + SIZE]
    acc, fd = judge.score(edits)
    row.update({f'acc_{cond}': acc, f'fd_{cond}': fd,
                f'change_{cond}': float(np.abs(edits - judge.x).mean()),
                f's_per_image_{cond}': per, f'first_call_s_{cond}': first})
  print(json.dumps(row), flush=True)
  common.append_jsonl(out, row)


def _softmax_t(logp: np.ndarray, temperature: float) -> np.ndarray:
  z = logp / temperature
  z = np.exp(z - z.max(1, keepdims=True))
  return z / z.sum(1, keepdims=True)


def lenet_posterior(judge: Judge, images: np.ndarray, labels: np.ndarray,
                    known: np.ndarray) -> tuple[np.ndarray, float]:
  """(p(y | known pixels) of the edited digits, temperature): a LeNet (the
  judge's architecture) trained on the known pixels of the training digits
  (the rest black), its temperature fitted on 600 of them held out of its
  training (calibrated likelihood)."""
  perm = np.random.default_rng(0).permutation(len(images))
  val, fit = perm[:600], perm[600:]
  a = (images * known).astype(np.uint8)
  model = mnist_lenet.train_classifier(a[fit], labels[fit], steps=1500)
  _, pv = mnist_lenet.classify(model, (a[val] / 127.5 - 1).astype(np.float32))
  _, pe = mnist_lenet.classify(
      model, np.where(known, judge.x, -1.0).astype(np.float32))
  lv, le = np.log(pv + 1e-12), np.log(pe + 1e-12)
  nll = lambda t: -np.log(_softmax_t(lv, t)[np.arange(len(val)),
                                             labels[val]]).mean()
  t = float(min(np.linspace(0.5, 4.0, 36), key=nll))
  return _softmax_t(le, t), t


def ceiling_run(judge: Judge, head: dict, out: str) -> None:
  from ddpm_jax.data import held_out_split, load_embedded_mnist
  src = load_embedded_mnist()
  train, _ = held_out_split(src.labels)
  images = src.images[train].reshape(len(train), SIZE, SIZE, 1)
  ref = src.images[train].astype(np.float64).reshape(len(train), SIZE, SIZE) / 255
  ref_y = src.labels[train]
  x = (judge.x[..., 0].astype(np.float64) + 1) / 2
  sq = lambda a, b: np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None]
                               - 2 * a @ b.T, 0)

  def posterior(d, h):
    w = np.exp(-(d - d.min(1, keepdims=True)) / (2 * h * h))
    p = np.stack([(w * (ref_y == c)).sum(1) for c in range(10)], 1) + 1e-12
    return p / p.sum(1, keepdims=True)
  outpaint = np.ones((SIZE, SIZE), bool)
  outpaint[CENTRE, CENTRE] = False
  for name, m in [*masks(1).items(), ('outpaint', outpaint[None, ..., None])]:
    if name == 'strokes':
      continue   # a mask per digit: no common set of known pixels
    known = m[0, ..., 0] == 0
    a, b = ref[:, known], x[:, known]
    d = sq(a, a)
    np.fill_diagonal(d, np.inf)
    loo = lambda h: np.log(posterior(d, h)[np.arange(len(a)), ref_y]).mean()
    h = max((0.5, 0.75, 1.0, 1.5, 2.0, 3.0), key=loo)
    p = posterior(sq(b, a), h)
    q, temperature = lenet_posterior(judge, images, ref_y, m[0] == 0)
    at = np.arange(len(x)), judge.y
    row = dict(head, stage='ceiling', mask=name, num=len(x), bandwidth=h,
               expected_p_true=float(p[at].mean()),
               argmax_acc=float((p.argmax(1) == judge.y).mean()),
               lenet_expected_p_true=float(q[at].mean()),
               lenet_argmax_acc=float((q.argmax(1) == judge.y).mean()),
               lenet_temperature=temperature)
    print(json.dumps(row), flush=True)
    common.append_jsonl(out, row)


def classifier_run(pipe, judge: Judge, head: dict, out: str) -> None:
  """The model as its own classifier of the known pixels (Li et al., 2023,
  "Your Diffusion Model is Secretly a Zero-Shot Classifier"), as an
  unlabeled edit uses it: `Pipeline.infer_labels` (the class with the lowest
  ε error on the known pixels over 10 noise levels x 2 draws), with the
  hidden part taken from the unconditional completion (`context:
  completion`, what the library does) or pure noise at every level
  (`context: noise`)."""
  x, y = judge.x, judge.y
  all_masks = masks(len(x), _SEED.value)
  for name in _MASKS.value:
    if name not in all_masks:
      continue   # outpainting: a canvas, not a mask of the digit
    m = all_masks[name]
    init = np.where(m > 0, -1.0, x)
    t0 = time.perf_counter()
    done = pipe.sample(num=len(x), seed=_SEED.value, init_image=init, mask=m,
                       infer_label=False, batch_size=_BATCH.value)
    completion_s = (time.perf_counter() - t0) / len(x)
    noise = np.random.default_rng(_SEED.value).standard_normal(x.shape)
    for context, images in (('completion', done),
                            ('noise', np.where(m > 0, noise, x))):
      t1 = time.perf_counter()
      labels = pipe.infer_labels(images, 1 - m, _SEED.value, _BATCH.value)
      row = dict(head, stage='classifier', mask=name, context=context,
                 num=len(x), argmax_acc=float((labels == y).mean()),
                 s_per_image=(time.perf_counter() - t1) / len(x),
                 completion_s_per_image=(completion_s if context == 'completion'
                                         else 0.0),
                 workdir=_WORKDIR.value)
      print(json.dumps(row), flush=True)
      common.append_jsonl(out, row)


def _runs(values):
  out = []
  for v in values:
    if v == 'defaults':
      out.append((None, None, None, None))
      continue
    parts = v.split(':')
    if len(parts) not in (3, 4):
      common.fail(f'--runs takes sampler:steps:jumps[:reconstruction], got {v}')
    out.append((parts[0], int(parts[1]), int(parts[2]),
                float(parts[3]) if len(parts) == 4 else 0.0))
  return out


def _pair(r: dict, key: str, fmt: str) -> str:
  """A row's label and unconditional figures of `key`, as "a / b"."""
  return f"{r[key + '_label']:{fmt}} / {r[key + '_uncond']:{fmt}}"


def _table(header: list[str], lines: list[list[str]], gap: bool = True) -> None:
  """One Markdown table (after a blank line unless `gap` is False)."""
  print(('\n' if gap else '') + '| ' + ' | '.join(header) + ' |')
  print('| --- ' * len(header) + '|')
  for cells in lines:
    print('| ' + ' | '.join(cells) + ' |')


def print_tables(path: str) -> None:
  rows = [json.loads(l) for l in open(path)]
  of = lambda *stages: [r for r in rows if r['stage'] in stages]
  dash = lambda v: '-' if v is None else f'{v:g}'
  edit = of('sweep', 'masks')
  if edit:
    models = len({r['workdir'] for r in edit}) > 1   # then a column names it
    _table(['model'] * models + [
        'mask', 'sampler', 'steps', 'jumps', 'recon.', 'acc. label / uncond',
        'FD label / uncond', 'seam label / uncond', 's/image label / uncond'],
        [[os.path.basename(r['workdir'])] * models + [
            r['mask'], r['sampler'], dash(r['steps']), dash(r['jumps']),
            dash(r.get('reconstruction', 0)), _pair(r, 'acc', '.3f'),
            _pair(r, 'fd', '.1f'), _pair(r, 'seam', '.2f'),
            _pair(r, 's_per_image', '.3f')] for r in edit], gap=False)
  if of('img2img'):
    _table(['sampler', 'steps', 'strength', 'acc. label / uncond',
            'FD label / uncond', 'mean change label / uncond',
            's/image label / uncond'],
           [[str(r['sampler']), str(r['steps']), str(r['strength']),
             _pair(r, 'acc', '.3f'), _pair(r, 'fd', '.1f'),
             _pair(r, 'change', '.3f'), _pair(r, 's_per_image', '.3f')]
            for r in of('img2img')])
  if of('classifier'):
    _table(['known part of', 'model', 'hidden part',
            'the model as classifier: acc.', 's/image'],
           [[f"{r['mask']} mask", os.path.basename(r['workdir']), r['context'],
             f"{r['argmax_acc']:.3f}", f"{r['s_per_image']:.2f}"]
            for r in of('classifier')])
  if of('ceiling'):
    _table(['known part of', 'kernel: E[p(true \\| known)]',
            'kernel: argmax acc.',
            'LeNet on the known part: E[p(true \\| known)]',
            'LeNet: argmax acc.'],
           [[f"{r['mask']} mask", f"{r['expected_p_true']:.3f}",
             f"{r['argmax_acc']:.3f}",
             *((f"{r['lenet_expected_p_true']:.3f}",
                f"{r['lenet_argmax_acc']:.3f}") if 'lenet_argmax_acc' in r
               else ('-', '-'))] for r in of('ceiling')])


def main() -> None:
  if _TABLE.value:
    if not os.path.isfile(_TABLE.value):
      common.fail(f'{_TABLE.value} does not exist')
    print_tables(_TABLE.value)
    return
  if _NUM.value % 10 or _NUM.value > 1000 or _NUM.value % _BATCH.value:
    common.fail('--num must be a multiple of 10 (at most 1000) and of --batch')
  pipe = load(_WORKDIR.value)
  if pipe.config.data.get('split') != 'train_minus_heldout':
    print(f'warning: {_WORKDIR.value} was trained on data.split='
          f'{pipe.config.data.split}: the edited digits are in its training set')
  judge = Judge(_NUM.value)
  head = common.header()
  if _STAGE.value == 'ceiling':
    ceiling_run(judge, head, _OUT.value)
  elif _STAGE.value == 'classifier':
    classifier_run(pipe, judge, head, _OUT.value)
  elif _STAGE.value == 'sweep':
    m = masks(len(judge.x))['right']
    from ddpm_jax import options
    for name in _SAMPLERS.value or options.SAMPLERS:
      for steps in map(int, _STEPS.value):
        for jumps in map(int, _JUMPS.value):
          if jumps and steps <= 10:
            continue   # one 10-step block: RePaint never jumps
          for w in map(float, _RECON.value):
            edit_run(pipe, judge, head, 'right', m, name, steps, jumps,
                     _OUT.value, w)
  elif _STAGE.value == 'masks':
    all_masks = masks(len(judge.x), _SEED.value)
    for sampler, steps, jumps, w in _runs(_RUNS.value):
      for name in _MASKS.value:
        edit_run(pipe, judge, head, name, all_masks.get(name), sampler, steps,
                 jumps, _OUT.value, w)
  else:
    for sampler, steps, _, _ in _runs(_RUNS.value):
      for strength in map(float, _STRENGTHS.value):
        img2img_run(pipe, judge, head, sampler, steps, strength, _OUT.value)


if __name__ == '__main__':
  common.run(main)
