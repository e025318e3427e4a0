"""Schemathesis against /api/openapi.json, with a real merchant key and a signed-in session.

Every operation in the document gets a bounded number of generated requests; none may answer
5xx, and every answer must match what the document declares (status, headers, JSON schema).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from tests.utils.factories import AuthActions, MerchantActions

MAX_EXAMPLES = 40

# The server checks addresses with email-validator, which refuses special-use domains (.test,
# .invalid) that a plain "format: email" generator produces; send deliverable-looking ones.
schemathesis.openapi.format(
    "email",
    st.from_regex(
        r"[a-z0-9]{1,8}([._+-][a-z0-9]{1,8}){0,2}@[a-z0-9]{1,12}\.(com|org|de)", fullmatch=True
    ),
)


@dataclass
class Credentials:
    """A merchant key, and a way to sign the order's customer in afresh."""

    merchant: MerchantActions
    auth: AuthActions

    def headers(self) -> dict[str, str]:
        csrf = self.auth.sign_in("fuzz@example.com")
        sid = self.auth.client.get_cookie("waybill_session")
        assert sid is not None
        return {
            "Authorization": f"Bearer {self.merchant.api_key}",
            "X-CSRF-Token": csrf,
            "Cookie": f"waybill_session={sid.value}",
        }


@pytest.fixture
def credentials(merchant: MerchantActions, auth: AuthActions) -> Credentials:
    """A merchant with an order, shipment and events, and that order's customer."""
    order = merchant.create_order(email="fuzz@example.com", items=[{"name": "Lamp", "quantity": 1}])
    shipment = merchant.add_shipment(order["id"])
    merchant.scan(shipment["id"], "in_transit", "2026-01-02T10:00:00Z")
    return Credentials(merchant, auth)


@pytest.mark.parametrize(
    ("mode", "examples"),
    [(GenerationMode.POSITIVE, MAX_EXAMPLES), (GenerationMode.NEGATIVE, MAX_EXAMPLES // 2)],
    ids=["valid-requests", "invalid-requests"],
)
def test_every_operation_answers_as_documented(
    app, credentials: Credentials, mode, examples
) -> None:  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    failures: list[str] = []
    for operation in operations:
        # Signing out ends the session: those operations get a fresh one for every example.
        signs_out = operation.method.upper() == "DELETE" and "/sessions" in operation.path
        headers = credentials.headers()

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            sent = credentials.headers() if signs_out else headers  # noqa: B023
            response = case.call(headers=sent)
            assert response.status_code < 500, response.text[:300]
            # A cursor is opaque: a made-up one is rightly 422, however schema-valid it looks.
            made_up_cursor = bool(case.query and case.query.get("cursor"))
            # A webhook URL must be on a public address: decided by DNS, not by the schema.
            webhook_url = operation.path == "/api/v1/webhook-endpoints"  # noqa: B023
            excluded = [positive_data_acceptance] if made_up_cursor or webhook_url else []
            case.validate_response(response, headers=sent, excluded_checks=excluded)

        try:
            check()
        except Unsatisfiable:  # nothing in this operation can be made invalid (no inputs)
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # report every operation that fails, not just the first
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
