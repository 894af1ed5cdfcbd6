"""The REST API fuzzed from its own OpenAPI description (issue 18): schemathesis generates
valid and invalid requests for every operation, sent as the admin, in-process.

Every answer must be documented for its operation (status code, content type and body
schema) and none may be a server error. The run is bounded (a fixed number of examples per
operation and mode) and derandomized, so it asks the same requests every time.
"""

from __future__ import annotations

import collections
import contextlib

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from inprocess import admin_token
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = 40  # per operation and generation mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error_or_an_undocumented_answer(make_service):
    service = make_service()
    auth = {"Authorization": f"Bearer {admin_token(service)}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", service.app)
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    for loaded in schema.get_all_operations():
        for mode in GenerationMode:
            with contextlib.suppress(Unsatisfiable):  # nothing to make invalid in this mode
                fuzz(loaded.ok(), mode, auth, statuses, failures)

    answered = sum(statuses.values())
    print(f"schemathesis: {answered} requests, statuses {dict(sorted(statuses.items()))}")
    assert not failures, f"{len(failures)} of {answered} answers failed:\n" + "\n".join(
        failures[:20]
    )
    assert answered > 1000, statuses  # the run asked what it should have


def fuzz(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    auth: dict[str, str],
    statuses: collections.Counter[int],
    failures: list[str],
) -> None:
    """Ask `operation` EXAMPLES generated requests; count each answer's status and note
    each that fails a check."""
    where = f"{operation.label} ({mode.value})"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def ask(case: schemathesis.Case) -> None:
        try:
            response = case.call(headers=auth)
        except Exception as exc:  # the app raised: a client would get a 500
            statuses[500] += 1
            failures.append(f"{where}: server error {exc!r:.200}")
            return
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseExceptionGroup as found:  # schemathesis's FailureGroup
            failures.append(f"{where}: {response.status_code}: {found!s:.400}")

    ask()
