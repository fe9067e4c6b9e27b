"""Every integration test validates each response against the spec's
schemas (tests/helpers.py) when ../shared/matrix-spec is there. This test is
the one that skips, with its reason, when it is not, so the summary counts
it; it also proves the validator rejects wrong bodies, so validation cannot
quietly accept everything."""

from __future__ import annotations

import jsonschema
import pytest

from .conftest import HAVE_SPEC, require_spec
from .spec_validation import validate_response


def test_responses_are_validated_against_the_spec() -> None:
    require_spec()
    assert HAVE_SPEC
    validate_response("GET", "/_matrix/client/versions", 200, {"versions": ["v1.11"]})
    with pytest.raises(jsonschema.ValidationError):
        validate_response("GET", "/_matrix/client/versions", 200, {"versions": "v1.11"})
    # an error answer without errcode breaks the standard error schema
    with pytest.raises(jsonschema.ValidationError):
        validate_response("GET", "/_matrix/client/v3/account/whoami", 401, {"error": "no token"})
    # the legacy r0 path is checked against v3's schema
    with pytest.raises(jsonschema.ValidationError):
        validate_response("GET", "/_matrix/client/r0/account/whoami", 200, {"device_id": "D"})
