"""The one rule for each kind of name corral takes from outside: documents, API bodies,
command lines and agents all check a name here, so no name reaches a path, a log line or
a certificate unchecked.

Rules match the whole text (a trailing newline is not allowed), and each says in words
what it allows, for error messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from corral.errors import BadRequestError


@dataclass(frozen=True)
class NameRule:
    """What one kind of name may be: `pattern` matches the whole name."""

    kind: str  # "cluster name", for messages
    pattern: str  # anchored with ^ and $ for JSON schema; matched with fullmatch here
    allowed: str  # the rule in words
    max_length: int

    def matches(self, value: object) -> bool:
        return isinstance(value, str) and re.fullmatch(self.pattern[1:-1], value) is not None

    def check(self, value: object) -> str:
        """Return `value` if it follows the rule; raises ValueError saying the rule."""
        if not self.matches(value):
            shown = (
                repr(value)
                if not isinstance(value, str) or len(value) <= 60
                else (repr(value[:57]) + "...")
            )
            raise ValueError(f"not a {self.kind}: {shown} ({self.allowed})")
        return value  # type: ignore[return-value]

    def require(self, value: object, field: str = "name") -> str:
        """`check` outside pydantic: raises BadRequestError naming `field` and the rule."""
        try:
            return self.check(value)
        except ValueError as exc:
            raise BadRequestError(f"{field}: {exc}", field=field) from None

    @property
    def type(self) -> Any:
        """This rule as a pydantic string type, checked by `check` and described in JSON
        schema (OpenAPI) by its pattern and length."""
        return Annotated[
            str,
            AfterValidator(self.check),
            Field(json_schema_extra={"pattern": self.pattern, "maxLength": self.max_length}),
        ]


CLUSTER = NameRule(
    "cluster name",
    r"^[a-z][a-z0-9-]{0,40}$",
    "lowercase letters, digits and '-', starting with a letter, at most 41 characters",
    41,
)
GROUP = NameRule(
    "group name",
    r"^[a-z][a-z0-9-]{0,30}$",
    "lowercase letters, digits and '-', starting with a letter, at most 31 characters",
    31,
)
ROLE = NameRule(
    "role name",
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
    "letters, digits, '_', '.' and '-', starting with a letter or digit, at most 64 characters",
    64,
)
# a node of a cluster: its group's name and its index in the group (`worker-12`)
NODE = NameRule(
    "node name",
    r"^[a-z][a-z0-9-]{0,30}-[0-9]{1,5}$",
    "a group name, '-' and the node's number in its group, like worker-0",
    37,
)
# users, hosts and pools: also used as SSH principals and in file names
ACCOUNT = NameRule(
    "name",
    r"^[a-z][a-z0-9_.-]{0,63}$",
    "lowercase letters, digits, '_', '.' and '-', starting with a letter, at most 64 characters",
    64,
)
IMAGE = NameRule(
    "image name",
    r"^[a-z0-9][a-z0-9_.-]{0,127}$",
    "lowercase letters, digits, '_', '.' and '-', starting with a letter or digit, "
    "at most 128 characters",
    128,
)
# a key of a document's `data`: it becomes a file name or variable in role scripts
DATA_KEY = NameRule(
    "data name",
    r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$",
    "letters, digits, '_', '.' and '-', starting with a letter or '_', at most 64 characters",
    64,
)
