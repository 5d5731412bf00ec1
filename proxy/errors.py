"""Every error the proxy makes itself, in OpenAI's error shape.

One hierarchy, one renderer: handlers raise a `ProxyError` subclass and the app's exception
handler turns it into `{"error": {"message", "type", "param", "code"}}` with the right status,
so the `openai` SDK raises its usual exception class for each.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response


class ProxyError(Exception):
    """Base of every error the proxy answers itself."""

    status_code = 500
    error_type = "api_error"
    code: str | None = None
    default_headers: tuple[tuple[str, str], ...] = ()  # headers every answer of this kind has

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = {**dict(self.default_headers), **(headers or {})}

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_response(self, extra_headers: Mapping[str, str] | None = None) -> Response:
        headers = {**self.headers, **(extra_headers or {})}
        return Response(
            orjson.dumps(self.body()),
            status_code=self.status_code,
            media_type="application/json",
            headers=headers,
        )

    def sse_event(self) -> bytes:
        """The same error as one SSE event, for a stream whose headers are already sent."""
        return b"data: " + orjson.dumps(self.body()) + b"\n\n"


class InvalidRequest(ProxyError):
    """Body is not JSON, or a field is missing or of the wrong type (400)."""

    status_code = 400
    error_type = "invalid_request_error"


class InvalidApiKey(ProxyError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ProxyError):
    status_code = 403
    error_type = "permission_error"


class NotFound(ProxyError):
    """A resource (request record, trace, team, key) that does not exist or is not the caller's."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(ProxyError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class Conflict(ProxyError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class DuplicateRequestId(ProxyError):
    """An `x-request-id` already in flight or recorded (409)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "duplicate_request_id"


class RequestTooLarge(ProxyError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class BudgetExceeded(ProxyError):
    """The team's budget is spent (429, the only status used for it)."""

    status_code = 429
    error_type = "insufficient_quota"
    code = "footprint_budget_exceeded"

    # A spent budget stays spent until its period turns: the OpenAI SDKs would retry a 429
    # twice more unless told not to.
    default_headers = (("x-should-retry", "false"),)


class UpstreamUnavailable(ProxyError):
    """Upstream unreachable, or it answered something that is not what it should (502)."""

    status_code = 502
    error_type = "api_error"
    code = "upstream_unavailable"


class UpstreamTimeout(ProxyError):
    status_code = 504
    error_type = "api_error"
    code = "upstream_timeout"


class ServiceUnavailable(ProxyError):
    """A dependency the proxy needs (ledger, budget store) is down and policy says refuse (503)."""

    status_code = 503
    error_type = "api_error"
    code = "service_unavailable"
