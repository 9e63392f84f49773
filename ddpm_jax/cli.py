"""Shared plumbing of train.py and sample.py: one clear line on bad input."""

from __future__ import annotations

import os
import re
import sys
from typing import Callable

from absl import app, flags, logging

from ddpm_jax.errors import UserError


def fail(message: str, code: int = 2) -> None:
  """Prints one line and exits. Saves are already finished (the trainer
  waits for Orbax in `finally`); os._exit skips interpreter shutdown, where
  Orbax's background event loop would print tracebacks after a failed
  restore."""
  sys.stdout.flush()
  sys.stderr.flush()
  err = os.dup(2)
  os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # threads can't add to the line
  os.write(err, f'error: {message}\n'.encode())
  os._exit(code)


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
  except (KeyError, AttributeError) as e:
    fail(_unknown_key(e, sys.argv))
  except Exception as e:
    fail(f'cannot load the config: {type(e).__name__}: {_one_line(e)}')


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
  """absl flag parsing where every failure is one line and exit code 2."""
  for path in _config_paths(argv):
    if not os.path.isfile(path):
      fail(f'config file {path} does not exist')
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # unknown flag, bad value, missing required flag
    fail(_one_line(e))
  except (KeyError, AttributeError) as e:  # a --config.x.y key that is not there
    fail(_unknown_key(e, argv))
  except Exception as e:  # a config file that does not load
    fail(f'cannot load the config: {type(e).__name__}: {_one_line(e)}')
  return []


def guarded(main: Callable[[list[str]], object]) -> Callable[[list[str]], object]:
  """Wraps an absl main so user errors print one line and exit non-zero."""
  def wrapper(argv):
    logging.set_verbosity(logging.ERROR)  # Orbax logs routine saves at INFO/WARNING
    try:
      return main(argv)
    except UserError as e:
      fail(str(e))
    except KeyboardInterrupt:
      fail('interrupted', 130)
  return wrapper


def run(main: Callable[[list[str]], object]) -> None:
  app.run(guarded(main), flags_parser=parse_flags)
