"""``--policy NAME`` and ``--policy-param KEY=VALUE``: the caching policy on every command line.

A value is read as JSON where it parses (``0.2``, ``true``, ``[0, 5, 10]``,
``{"first": 1, "last": false}``), else as a string.  The policy's constructor checks the
parameters before any heavy work; a bad one is one line and exit code 2.
"""
from __future__ import annotations

import argparse
import json

from .. import policies
from ..errors import TeaCacheError


def policy_param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE, e.g. threshold=0.2 or steps=[0,5,10,15,19]")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def add_arguments(parser: argparse.ArgumentParser, what: str = "") -> None:
    names = ", ".join(sorted(policies.registered()))
    parser.add_argument("--policy", metavar="NAME",
                        help=f"caching policy{what}: {names} (default: the artifact's, TeaCache at its default "
                             f"threshold); parameters with --policy-param")
    parser.add_argument("--policy-param", metavar="KEY=VALUE", type=policy_param, action="append", default=[],
                        help="a parameter of --policy (repeatable; VALUE as JSON, else a string), e.g. "
                             "threshold=0.2, coefficients=[1.5,0.1], steps=[0,5,10,15,19]")


def from_args(args) -> policies.Policy | None:
    """The policy the options name (checked), or None when ``--policy`` is absent."""
    params = dict(args.policy_param)
    if args.policy is None:
        if params:
            raise TeaCacheError(f"--policy-param {sorted(params)} needs --policy NAME "
                                f"(one of {sorted(policies.registered())})")
        return None
    return policies.make(args.policy, **params)
