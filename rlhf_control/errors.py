"""UserError: the project's one type for mistakes a user makes and can fix.

A bad flag or config value, an unknown name, a task entry that does not check, a file that is not
what it should be (a damaged checkpoint, a foreign store, a malformed sweep spec): each raises a
``UserError`` (or a subclass) whose message names the value and what is allowed. The command line
prints it in one line, without a traceback, and exits with status 2. Any other exception is a bug
and keeps its traceback. ``UserError`` is a ``ValueError``, so callers that catch bad values still do.
"""


class UserError(ValueError):
    """A mistake in what the user gave (see the module docstring)."""
