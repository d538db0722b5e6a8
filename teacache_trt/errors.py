"""The one exception type of teacache-trt.

Every message names the failure, the value seen and the fix, so a user can act on it
without reading the source.
"""


class TeaCacheError(ValueError):
    """Raised for bad input, bad artifacts and unsupported models, before any engine runs."""


def shown(value, limit: int = 80) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters: a 20 MB prompt or id
    must not be echoed whole into a terminal or a results file."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
