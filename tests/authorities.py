"""When the test authorities' certificates end (conftest.py's `authority` and
`other_authority` fixtures make them)."""

from __future__ import annotations

import datetime

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
LEASE_END = NOW + datetime.timedelta(hours=12)
