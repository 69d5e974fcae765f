"""The base of every config section, and the one check of grader specs that sections share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


def checked_graders(specs: list) -> list:
    """Grader specs parsed once at load, so that a typo is a config error with a suggestion."""
    from tunery.errors import TuneryError
    from tunery.graders import parse_graders

    try:
        parse_graders(specs)
    except TuneryError as exc:
        raise ValueError(exc.render().replace("\n", " ")) from None
    return specs


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
