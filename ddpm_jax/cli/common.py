"""What every command shares: flag parsing, `--help`, and the error rule.

A `UserError` (a mistake in the user's input) is one `error:` line on stderr
and exit status 2; set DDPM_JAX_DEBUG=1 to see its traceback instead.
Anything else (a bug, a library failure) keeps its traceback and exits 1.
The library's messages name the Python API's arguments (`init_image`,
`overwrite=True`); each command passes `spellings` that turn those names
into its flags (`--init-image`, `--overwrite`).
"""

from __future__ import annotations

import logging as pylogging
import os
import re
import sys
import warnings
from typing import Callable

from absl import app, flags, logging

from ddpm_jax.errors import UserError

DEBUG_ENV = 'DDPM_JAX_DEBUG'


def fail(message: str, code: int = 2):
  """Prints one `error:` line and exits with `code`."""
  sys.stdout.flush()
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def _one_line(e: BaseException) -> str:
  text = ' '.join(str(e).replace('\\n', ' ').split())
  return re.sub(r'^flag --', '--', text)


def define_config(default_path: str, help_text: str):
  """config_flags.DEFINE_config_file, where a bad `--config.*` override that
  ml_collections applies at definition time is one line too."""
  from ml_collections import config_flags
  try:
    return config_flags.DEFINE_config_file('config', default_path, help_text,
                                           lock_config=True)
  except (KeyError, AttributeError) as e:  # a --config.x.y key that is not there
    fail(_unknown_key(e, sys.argv))


def config_path() -> str:
  """The path of the config file the `--config` flag names."""
  return flags.FLAGS['config'].config_filename.split(':')[0]


def _unknown_key(e: BaseException, argv: list[str]) -> str:
  text = str(e).replace('\\n', ' ').replace("\\'", "'")
  key = re.match(r"""^['"]*'?([^'"]+)'""", text)
  key = key.group(1) if key else '?'
  arg = next((a.split('=')[0] for a in argv
              if a.startswith('--config.') and f'.{key}.' in a.split('=')[0] + '.'),
             key)
  hint = re.search(r'Did you mean "([^"]+)"', text)
  return f'unknown config key {arg}' + (f' (did you mean {hint.group(1)}?)' if hint else '')


def shipped_configs() -> dict[str, str]:
  """name -> path of every config that ships with the package (the
  repository's configs/ folder, installed as ddpm_jax.configs)."""
  import importlib.resources
  folder = importlib.resources.files('ddpm_jax.configs')
  return {os.path.splitext(f.name)[0]: str(f) for f in folder.iterdir()
          if f.name.endswith('.py') and not f.name.startswith('_')}


def _resolve_config(value: str) -> str:
  """A --config value as a file path: a path as given, or the shipped config
  of that name (`mnist`, `cifar10`); `:args` after it are kept."""
  path, sep, args = value.partition(':')
  if os.path.isfile(path):
    return value
  shipped = shipped_configs()
  name = path[:-3] if path.endswith('.py') and os.sep not in path else path
  if name in shipped:
    return shipped[name] + sep + args
  fail(f'config file {path} does not exist (shipped configs: '
       f'{", ".join(sorted(shipped))})')


def _with_config_paths(argv: list[str]) -> list[str]:
  """argv with each --config value resolved by `_resolve_config`."""
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith('--config='):
      out[i] = '--config=' + _resolve_config(a.split('=', 1)[1])
    elif a == '--config' and i + 1 < len(out):
      out[i + 1] = _resolve_config(out[i + 1])
  return out


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing where every mistake is one line and exit code 2."""
  argv = _with_config_paths(argv)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:  # unknown flag, bad value, missing required flag
    fail(_one_line(e))
  except (KeyError, AttributeError) as e:  # a --config.x.y key that is not there
    fail(_unknown_key(e, argv))
  except SyntaxError as e:  # a config file that is not Python
    fail(f'config file {e.filename} line {e.lineno}: {e.msg}')
  if len(rest) > 1:
    fail(f'unexpected arguments: {" ".join(rest[1:])}')
  return rest


def backend_line() -> str:
  """Where this process computes: backend, device kind and count, and its
  place among the processes of the run."""
  import jax
  devices = jax.local_devices()
  kinds = sorted({d.device_kind for d in devices})
  return (f'backend: {jax.default_backend()}, {len(devices)} x '
          f'{"/".join(kinds)} (of {jax.device_count()} in all), process '
          f'{jax.process_index()} of {jax.process_count()}')


def nvidia_gpu_present() -> bool:
  """Whether the NVIDIA driver sees a GPU on this machine."""
  gpus = '/proc/driver/nvidia/gpus'
  return os.path.isdir(gpus) and bool(os.listdir(gpus))


def report_backend() -> None:
  """Prints `backend_line()`, and a warning when an NVIDIA GPU is present
  but JAX computes on the CPU (the CPU-only jaxlib is installed)."""
  import jax
  print(backend_line(), flush=True)
  if jax.default_backend() == 'cpu' and nvidia_gpu_present():
    print("warning: an NVIDIA GPU is present but JAX runs on the CPU; install "
          "JAX's CUDA build: pip install -e '.[cuda12]' (or "
          "pip install 'jax[cuda12]')", file=sys.stderr, flush=True)


def _warning_line(message, category, filename, lineno, line=None) -> str:
  """A warning of ours (e.g. a prompt cut to fit) as one `warning:` line."""
  return f'warning: {_one_line(message)}\n'


def spell(message: str, spellings: dict[str, str]) -> str:
  """`message` with each API argument name of `spellings` replaced by its
  flag, where it stands as a word of its own (not inside a path)."""
  for name, flag in spellings.items():
    message = re.sub(rf'(?<![\w/.-]){re.escape(name)}(?![\w/.-])', flag, message)
  return message


def _help_for(command_module: str) -> None:
  """`--help` prints the main module's docstring and key flags. When the
  main module is a shim (train.py, sample.py) the flags live in the command
  module: make them, and the shared --config, the main module's key flags,
  and the command's docstring the help text."""
  main_name = sys.argv[0]
  for module in {command_module, __name__}:
    for flag in flags.FLAGS.get_flags_for_module(module):
      flags.FLAGS.register_key_flag_for_module(main_name, flag)
  if command_module != '__main__':
    sys.modules['__main__'].__doc__ = sys.modules[command_module].__doc__


def _positional(args: list[str], name: str) -> list[str]:
  """Bare arguments as --name=value, except the value of a flag given
  without '=' (`--workdir W`)."""
  out, value_next = [], False
  for a in args:
    if value_next or a.startswith('-'):
      flag = a.lstrip('-').split('=', 1)[0]
      value_next = (not value_next and a.startswith('-') and '=' not in a
                    and flag in flags.FLAGS and not flags.FLAGS[flag].boolean)
      out.append(a)
    else:
      out.append(f'--{name}={a}')
  return out


def run(main: Callable[[], object], positional: str | None = None,
        spellings: dict[str, str] | None = None) -> None:
  """Parses flags, then calls `main()` under the error rule. With
  `positional`, bare arguments are taken as values of that flag; `spellings`
  maps the library's argument names to this command's flags."""
  _help_for(main.__module__)
  if set(sys.argv[1:]) & {'-h', '-?', '--help', '--helpshort'}:
    app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)  # absl's: 1
  if positional:
    sys.argv = [sys.argv[0]] + _positional(sys.argv[1:], positional)

  def wrapper(argv):
    del argv  # parse_flags refused positional arguments
    # JAX's warnings ("falling back to cpu" among them; Python loggers named
    # jax.*) show. Orbax and TFDS log routine saves and reads through absl's
    # logger: only its errors show, unless --verbosity is given.
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
      pylogging.getLogger('absl').setLevel(pylogging.ERROR)
    warnings.formatwarning = _warning_line
    try:
      return main()
    except UserError as e:
      if os.environ.get(DEBUG_ENV) == '1':
        raise
      fail(spell(str(e), spellings or {}))
    except KeyboardInterrupt:
      # Exit at once: an interpreter shutting down while XLA's or Orbax's
      # threads still run can crash. Files are written atomically, and the
      # lock and checkpoint were closed on the way here.
      sys.stdout.flush()
      print('\nerror: interrupted', file=sys.stderr, flush=True)  # after a bar
      os._exit(130)
  app.run(wrapper, flags_parser=parse_flags)
