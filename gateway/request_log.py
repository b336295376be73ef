"""One log line per inference request: its id, who sent it, what served it, how it ended.

Request ids are the client's (the request's ``id``, else an ``x-request-id`` header) or
generated here, and go back in the response. The line names the caller by its key's id
(``gateway.auth``), never the key, and carries no payload: only names, codes and times, so
logs can be shipped where request data may not go. Logger ``gateway.requests``, level INFO.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from gateway.auth import current_caller
from gateway.limits import Limits

log = logging.getLogger("gateway.requests")

REQUEST_ID_HEADER = "x-request-id"


def request_id(given: str, headers: Mapping[str, str]) -> str:
    """The request's id: the client's, else a new one (32 hex digits).

    Raises:
        LimitExceededError: A header id that is too long or not printable.
    """
    if given:
        return given  # checked by the transport's decoder
    header = headers.get(REQUEST_ID_HEADER, "")
    if header:
        Limits.check_request_id(header)
        return header
    return uuid.uuid4().hex


def log_request(
    rid: str, protocol: str, model: str, variant: str, code: str, elapsed_s: float
) -> None:
    """Write the request's line (nothing when INFO is off for ``gateway.requests``)."""
    if not log.isEnabledFor(logging.INFO):
        return
    log.info(
        "request id=%s protocol=%s model=%s variant=%s code=%s ms=%.2f key=%s",
        rid,
        protocol,
        model,
        variant or "-",
        code,
        elapsed_s * 1000,
        current_caller.get() or "-",
    )
