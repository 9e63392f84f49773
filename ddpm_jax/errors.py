"""User-facing errors: each carries one line that names the problem."""


class UserError(Exception):
  """A problem with the user's input; scripts print it as one line."""
