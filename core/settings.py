"""The base of every settings model in vouch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Unknown fields are errors (a typo is never silently ignored); values are immutable;
    each field's docstring is its description in ``vouch config schema``."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
