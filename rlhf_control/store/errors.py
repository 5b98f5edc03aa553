"""What the preference store raises. All are UserErrors (and so ValueErrors): a caller can catch them as bad input."""

from __future__ import annotations

from rlhf_control.errors import UserError

__all__ = ["AlreadyAnsweredError", "QueryRetiredError", "StoreError", "UnknownQueryError"]


class StoreError(UserError):
    """The store file is missing, already exists, is not a preference store, or is closed."""


class UnknownQueryError(UserError):
    """No query with that id in the store."""


class AlreadyAnsweredError(UserError):
    """The query already has a different answer."""


class QueryRetiredError(UserError):
    """The query was retired (stale) and takes no answers."""
