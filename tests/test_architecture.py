"""The import rules of the package, checked on its source (no import runs).

Layers, lowest first; a module imports only from its own layer or lower:
  0  options checks errors files xla_options schedules diffusion samplers sampling
     data image_folder input_pipeline images sharding tokenizer captions
  1  config builders models/ checkpoint latent
  2  train/ pipeline metrics/
  3  cli/
"""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / 'ddpm_jax'

LAYERS = {
    0: {'options', 'checks', 'errors', 'files', 'xla_options', 'schedules', 'diffusion',
        'samplers', 'sampling', 'data', 'image_folder', 'input_pipeline',
        'images', 'sharding', 'tokenizer', 'captions', 'clip_tokenizer',
        'memory', 'diffusers_schedulers'},
    1: {'config', 'builders', 'models', 'checkpoint', 'latent'},
    2: {'train', 'pipeline', 'metrics', 'diffusers_format', 'stable_diffusion'},
    3: {'cli'},
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}
PURE = {'models', 'schedules', 'diffusion', 'samplers', 'sampling',
        'diffusers_schedulers'}  # no state, no I/O


def _modules():
  for path in sorted(PKG.rglob('*.py')):
    rel = path.relative_to(PKG).with_suffix('')
    if rel.parts == ('__init__',):
      continue  # the package's lazy `load`/`Pipeline` re-export
    yield rel.parts[0], path


def _imports(path):
  """Every module an import statement names, anywhere in the file."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      if node.module == 'ddpm_jax':  # from ddpm_jax import x, y
        out |= {f'ddpm_jax.{a.name}' for a in node.names}
  return out


def _ours(imports):
  return {m.split('.')[1] for m in imports if m.startswith('ddpm_jax.')}


def test_every_module_has_a_layer():
  assert {top for top, _ in _modules()} <= set(LAYER_OF)


@pytest.mark.parametrize('top, path', list(_modules()), ids=lambda v: str(v))
def test_imports_run_one_way(top, path):
  imports = _imports(path)
  ours = _ours(imports)
  upward = {m for m in ours if LAYER_OF[m] > LAYER_OF[top]}
  assert not upward, f'{path.name} imports the higher layer(s) {upward}'
  if top in PURE:
    assert not ours & {'train', 'pipeline', 'checkpoint'}, path
  if top == 'pipeline':
    assert not ours & {'train', 'metrics'}, 'inference imports training'
  if top == 'train':
    assert not ours & {'pipeline', 'metrics'}, path
  if top != 'checkpoint':
    assert not any(m.split('.')[0] == 'orbax' for m in imports), \
        f'{path.name} imports orbax; only checkpoint.py may'
  if top != 'train' and top != 'metrics':
    assert 'optax' not in imports, f'{path.name} builds an optimizer'


@pytest.mark.parametrize('top, path', list(_modules()), ids=lambda v: str(v))
def test_only_commands_define_flags(top, path):
  tree = ast.parse(path.read_text())
  defines = [n.attr for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and n.attr.startswith('DEFINE')]
  if top != 'cli':
    assert not defines, f'{path.name} defines flags: {defines}'


def test_the_rules_catch_a_violation(tmp_path):
  """The checker itself: a pipeline that imports training is caught."""
  bad = tmp_path / 'pipeline.py'
  bad.write_text('def f():\n  from ddpm_jax.train import step\n')
  assert _ours(_imports(bad)) == {'train'}
  bad.write_text('from ddpm_jax import checkpoint, train\nimport orbax.checkpoint\n')
  assert _ours(_imports(bad)) == {'checkpoint', 'train'}
  assert 'orbax.checkpoint' in _imports(bad)


def test_every_option_list_is_written_once():
  """Each tuple of options.py is spelled out nowhere else in the package:
  validation, registries and flags read it."""
  from ddpm_jax import options
  lists = [v for k, v in vars(options).items() if k.isupper()
           and isinstance(v, tuple) and len(v) > 1 and all(isinstance(x, str) for x in v)]
  assert len(lists) >= 10
  for path in PKG.rglob('*.py'):
    if path.name == 'options.py':
      continue
    text = path.read_text()
    for values in lists:
      for quote in ("'", '"'):
        spelled = ', '.join(f'{quote}{v}{quote}' for v in values[:2])
        assert spelled not in text, f'{path.name} spells out {values}'
