"""User-facing errors: each carries one line that names the problem."""


class UserError(Exception):
  """A problem with the user's input; scripts print it as one line."""


def describe(e: BaseException) -> str:
  """A library's exception as part of one line: its type and its message,
  whitespace collapsed, at most 300 characters."""
  text = ' '.join(str(e).split())
  return f'{type(e).__name__}: {text[:300]}'
