"""The one exception type of teacache-trt.

Every message names the failure, the value seen and the fix, so a user can act on it
without reading the source.
"""


class TeaCacheError(ValueError):
    """Raised for bad input, bad artifacts and unsupported models, before any engine runs."""
