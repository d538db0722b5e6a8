"""``teacache-eval [--model NAME] ...``: the speed / quality evaluation of a bundled model.

Each bundled model brings its own evaluation (its pipeline, its prompts, its quality measures);
this command finds it through the model's driver (the ``teacache_trt.drivers`` entry points,
a driver's ``evaluate(argv) -> exit status``) and hands it the remaining arguments, so the
tools import no demo code.  ``--model digits`` (the default) evaluates the digits image model,
``--model video`` the moving-digits Wan video model; ``teacache-eval --model NAME --help``
lists that evaluation's own options.
"""
from __future__ import annotations

import sys

from .. import options
from ..errors import TeaCacheError

PROG = "teacache-eval"
DEFAULT_MODEL = "digits"


def evaluator(model: str):
    """The driver named ``model`` if it can evaluate, else None.  Only that entry point is
    loaded: another driver's imports (torch, for one) would slow ``--help``."""
    from .drivers import installed_drivers, load_driver

    driver = load_driver(model)
    if driver is not None and hasattr(driver, "evaluate"):
        return driver
    found = [name for name, d in sorted(installed_drivers().items()) if hasattr(d, "evaluate")]
    raise TeaCacheError(f"--model {model!r} has no evaluation: give one of {', '.join(found) or 'none'} "
                        f"(installed drivers with an evaluation)")


def split_model(argv: list[str]) -> tuple[str, list[str]]:
    """(the --model value, the other arguments); ``--model X`` and ``--model=X`` both work."""
    rest, model, i = [], DEFAULT_MODEL, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--model":
            if i + 1 >= len(argv):
                raise TeaCacheError("--model needs a value: digits or video")
            model, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--model="):
            model = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return model, rest


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        model, rest = split_model(argv)
        return evaluator(model).evaluate(rest)

    return options.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
