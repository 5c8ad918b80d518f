"""The base of every config section."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def section_keys(cls) -> dict[str, Any]:
        """Every key this section accepts -> its type (a section class for a nested section).

        The declared fields; a section with keys defined elsewhere adds them (the model section:
        one per registered enhancement)."""
        return {name: field.annotation for name, field in cls.model_fields.items()}
