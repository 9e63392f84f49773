"""What every command shares: flag parsing, `--help`, and the error rule.

A `UserError` (a mistake in the user's input) is one `error:` line on stderr
and exit status 2; set DDPM_JAX_DEBUG=1 to see its traceback instead.
Anything else (a bug, a library failure) keeps its traceback and exits 1.
The library's messages name the Python API's arguments (`init_image`,
`overwrite=True`); each command passes `spellings` that turn those names
into its flags (`--init-image`, `--overwrite`).
"""

from __future__ import annotations

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


def _config_paths(argv: list[str]) -> list[str]:
  out = []
  for i, a in enumerate(argv):
    if a.startswith('--config='):
      out.append(a.split('=', 1)[1])
    elif a == '--config' and i + 1 < len(argv):
      out.append(argv[i + 1])
  return [p.split(':')[0] for p in out]


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing where every mistake is one line and exit code 2."""
  for path in _config_paths(argv):
    if not os.path.isfile(path):
      fail(f'config file {path} does not exist')
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


def run(main: Callable[[], object], positional: str | None = None,
        spellings: dict[str, str] | None = None) -> None:
  """Parses flags, then calls `main()` under the error rule. With
  `positional`, bare arguments are taken as values of that flag; `spellings`
  maps the library's argument names to this command's flags."""
  _help_for(main.__module__)
  if set(sys.argv[1:]) & {'-h', '-?', '--help', '--helpshort'}:
    app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)  # absl's: 1
  if positional:
    sys.argv = [sys.argv[0]] + [a if a.startswith('-') else f'--{positional}={a}'
                                for a in sys.argv[1:]]

  def wrapper(argv):
    del argv  # parse_flags refused positional arguments
    logging.set_verbosity(logging.ERROR)  # Orbax logs routine saves at INFO/WARNING
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
