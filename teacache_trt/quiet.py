"""Third-party messages that come before the project's own and say nothing a user can act on,
filtered out by the command-line tools (``install()`` after parsing their arguments); every
other warning of those libraries still shows.

- diffusers' "Some weights ... were not initialized ... You should probably TRAIN this model":
  a checkpoint that does not match its config is refused right after with the project's own
  message (``Family.load_model``: what is missing and the fix);
- onnxscript's "Skipping constant folding for op ... with multiple outputs": the export's graph
  simplification leaves such nodes as they are, which is correct and costs nothing;
- Ray's "Token authentication is enabled/disabled for this Ray cluster": ``--ray local`` starts
  a private cluster for this process only.
"""
from __future__ import annotations

import logging

# logger name -> the start of the messages dropped (or a phrase they contain)
NOISE = {
    "diffusers.models.modeling_utils": ("TRAIN this model",),
    "onnxscript.optimizer._constant_folding": ("Skipping constant folding",),
    "ray._private.authentication.authentication_token_setup": ("Token authentication is",),
}


class _Drop(logging.Filter):
    def __init__(self, phrases: tuple[str, ...]):
        super().__init__()
        self.phrases = phrases

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not any(p in message for p in self.phrases)


def install() -> None:
    """Add the filters (once per logger)."""
    for name, phrases in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(phrases))
