"""The error every refused upload raises (no torch import: the HTTP shell and the header checks use it)."""

from __future__ import annotations

from typing import Any

from medmlops.errors import UserError


class InputError(UserError, ValueError):
    """An upload the model cannot take; ``error`` is a stable code, ``detail`` one sentence for the client."""

    def __init__(self, error: str, detail: str, status: int = 400) -> None:
        super().__init__(f"{error}: {detail}")
        self.error, self.detail, self.status = error, detail, status

    def body(self) -> dict[str, Any]:
        """The JSON a server answers with."""
        return {"error": self.error, "detail": self.detail}
