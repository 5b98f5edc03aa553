"""What the preference store raises. All are ValueErrors: a caller can catch them as bad input."""

from __future__ import annotations

__all__ = ["AlreadyAnsweredError", "QueryRetiredError", "StoreError", "UnknownQueryError"]


class StoreError(ValueError):
    """The store file is missing, already exists, is not a preference store, or is closed."""


class UnknownQueryError(ValueError):
    """No query with that id in the store."""


class AlreadyAnsweredError(ValueError):
    """The query already has a different answer."""


class QueryRetiredError(ValueError):
    """The query was retired (stale) and takes no answers."""
