"""Look up zoo families by name; each lives in ``builders/zoo/<name>/family.py``."""

from __future__ import annotations

import importlib

from builders.zoo.api import ZooFamily

FAMILY_NAMES = ("vision", "digits", "speech", "translation")


class UnknownFamilyError(ValueError):
    """Raised for a family name the zoo does not have."""


def get_family(name: str) -> ZooFamily:
    """Return the zoo family called ``name``, importing its module (and torch) on demand."""
    if name not in FAMILY_NAMES:
        raise UnknownFamilyError(f"unknown family {name!r}; known: {', '.join(FAMILY_NAMES)}")
    module = importlib.import_module(f"builders.zoo.{name}.family")
    family: ZooFamily = module.FAMILY
    return family
