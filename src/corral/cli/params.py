"""Click parameters the commands share: checked names, hours, and --json."""

from __future__ import annotations

from typing import Any

import click

from corral import limits, names
from corral.units import parse_duration

# ctx.meta is shared by a command's context and its group's: main.py reads it on an error
JSON_REQUESTED = "corral.json"


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta[JSON_REQUESTED] = value
    return value


json_option = click.option(
    "--json", "as_json", is_flag=True, callback=_remember_json, help="Print stable JSON."
)


class NameType(click.ParamType):
    """A name on the command line, checked by its rule (names.py) before any request."""

    def __init__(self, rule: names.NameRule) -> None:
        self.rule = rule
        self.name = rule.kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return self.rule.check(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Hours(click.ParamType):
    """A positive, finite number of hours within the longest duration corral takes."""

    name = "hours"
    most = limits.MAX_DURATION_SECONDS / 3600

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            hours = float(value)
        except ValueError:
            self.fail(f"not a number: {value!r}", param, ctx)
        if not 0 < hours <= self.most:  # also refuses nan
            self.fail(f"must be more than 0 and at most {self.most:g}, got {value!r}", param, ctx)
        return hours


class Duration(click.ParamType):
    """A positive duration (`90s`, `10m`, `1h30m`), in seconds."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            return parse_duration(value).total_seconds()
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


CLUSTER_NAME = NameType(names.CLUSTER)
ACCOUNT_NAME = NameType(names.ACCOUNT)
IMAGE_NAME = NameType(names.IMAGE)
