"""Who may call what: API keys stored as hashes, their scopes, and the one access check.

Both transports call :meth:`AccessPolicy.check` once per call, with the call's headers (HTTP
headers or gRPC metadata, names lower-cased) and the kind of access it needs; the check
raises :class:`UnauthenticatedError` (UNAUTHENTICATED / 401) or
:class:`PermissionDeniedError` (PERMISSION_DENIED / 403) from the error table.

A key travels as ``authorization: Bearer <key>`` or ``x-api-key: <key>``. The gateway never
holds a key itself: the key file lists SHA-256 digests, and a presented key is hashed and
compared with every digest in constant time (no early exit), so neither the comparison nor
the position of a match leaks through timing. Keys are random (``python -m gateway.auth
new``), so one SHA-256 is enough; a slow password hash would only slow every request down.

Key file (JSON; ``extra`` fields are errors, so a typo is not silently ignored)::

    {"keys": [
        {"id": "ci-bot", "sha256": "<64 hex digits>", "scopes": ["inference"]},
        {"id": "ops", "sha256": "<64 hex digits>", "scopes": ["inference", "admin", "metrics"]}
    ]}

Scopes: ``inference`` (infer, model metadata and config, the repository index, server
metadata), ``admin`` (repository load / unload, reload), ``metrics`` (``/metrics`` when
``auth_open_metrics`` is false). Health calls are open unless ``auth_open_health`` is false,
then any known key may call them.
"""

from __future__ import annotations

import argparse
import contextvars
import enum
import hashlib
import hmac
import json
import logging
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.config import GatewaySettings
from gateway.errors import PermissionDeniedError, UnauthenticatedError
from gateway.metrics import GatewayMetrics
from gateway.watch import FileSignature, file_signature, one_line

log = logging.getLogger(__name__)

KEY_PREFIX = "vg_"
"""Prefix of generated keys, so a leaked one is easy to recognise (and to scan for)."""


class Scope(enum.StrEnum):
    """What a key may do."""

    INFERENCE = "inference"
    ADMIN = "admin"
    METRICS = "metrics"


class Access(enum.Enum):
    """The kind of access a call needs; each transport maps its calls onto these."""

    HEALTH = "health"
    INFERENCE = "inference"
    ADMIN = "admin"
    METRICS = "metrics"


_SCOPE_OF = {
    Access.INFERENCE: Scope.INFERENCE,
    Access.ADMIN: Scope.ADMIN,
    Access.METRICS: Scope.METRICS,
}


class KeyEntry(BaseModel):
    """One key: a name for logs, the SHA-256 of the key, and what it may do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    """Name of the key in logs (never the key itself)."""
    sha256: str
    """Hex SHA-256 digest of the key (``python -m gateway.auth hash``)."""
    scopes: frozenset[Scope] = Field(min_length=1)
    """What the key may do."""

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        digest = value.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(
                "must be the 64-hex-digit SHA-256 digest of the key, never the key itself "
                "(python -m gateway.auth hash)"
            )
        return digest


class KeyFile(BaseModel):
    """The key file's contents."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: tuple[KeyEntry, ...]

    @model_validator(mode="after")
    def _unique(self) -> KeyFile:
        for what in ("id", "sha256"):
            values = [getattr(k, what) for k in self.keys]
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                shown = ", ".join(duplicates) if what == "id" else f"{len(duplicates)} digests"
                raise ValueError(f"each key's {what} must be unique; repeated: {shown}")
        return self


def hash_key(key: str) -> str:
    """The hex SHA-256 digest of a key, as the key file stores it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def read_key_file(path: Path) -> KeyFile:
    """Read and validate a key file.

    Raises:
        ValueError: The file is missing, not JSON, or not a valid key file.
    """
    try:
        return KeyFile.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read the key file {path}: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        raise ValueError(f"invalid key file {path}: {one_line(exc)}") from exc


@dataclass(frozen=True)
class Principal:
    """Who made a call: a key's id and scopes, or the anonymous caller of an open call."""

    key_id: str
    scopes: frozenset[Scope]


ANONYMOUS = Principal("", frozenset())
"""The caller of an open call, or of any call while authentication is off."""

current_caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")
"""The key id of the call being served, set by the access check for the request log (the
transports run the check and the call in the same task, so the value travels along)."""


@dataclass(frozen=True)
class _Key:
    digest: bytes
    principal: Principal


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a call carries, from ``authorization: Bearer`` or ``x-api-key`` (or None).

    Raises:
        UnauthenticatedError: An ``authorization`` header of another scheme, or no key in it.
    """
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise UnauthenticatedError("the authorization header must be 'Bearer <key>'")
        token = token.strip()
        if not token:
            raise UnauthenticatedError("the authorization header holds no key")
        return token
    key = headers.get("x-api-key")
    return key.strip() if key is not None else None


class KeyStore:
    """The known keys; replaced whole, so a check never sees half a rotation."""

    def __init__(self, keys: KeyFile) -> None:
        """Hold ``keys``."""
        self._keys = self._index(keys)

    @staticmethod
    def _index(keys: KeyFile) -> tuple[_Key, ...]:
        return tuple(
            _Key(bytes.fromhex(k.sha256), Principal(k.id, frozenset(k.scopes))) for k in keys.keys
        )

    def replace(self, keys: KeyFile) -> None:
        """Swap in a new set of keys (one assignment)."""
        self._keys = self._index(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, key: str) -> Principal | None:
        """The principal of ``key``, compared against every digest in constant time."""
        digest = hashlib.sha256(key.encode("utf-8", errors="surrogateescape")).digest()
        found: Principal | None = None
        for entry in self._keys:  # no early exit: every digest is compared
            if hmac.compare_digest(digest, entry.digest):
                found = entry.principal
        return found


class AccessPolicy:
    """The one access check both transports call; with no key store, every call is open."""

    def __init__(
        self,
        store: KeyStore | None,
        *,
        open_health: bool = True,
        open_metrics: bool = True,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        """Check calls against ``store`` (None: authentication off).

        Args:
            store: The known keys, or None to let every call through.
            open_health: Health calls need no key.
            open_metrics: ``/metrics`` needs no key.
            metrics: Counts refused calls.
        """
        self.store = store
        self.open_health = open_health
        self.open_metrics = open_metrics
        self.metrics = metrics

    @property
    def enabled(self) -> bool:
        """Whether calls need keys at all."""
        return self.store is not None

    def is_open(self, access: Access) -> bool:
        """Whether ``access`` needs no key."""
        if self.store is None:
            return True
        if access is Access.HEALTH:
            return self.open_health
        return access is Access.METRICS and self.open_metrics

    def check(self, headers: Mapping[str, str], access: Access) -> Principal:
        """Authenticate the call and authorise ``access``.

        Returns:
            Who is calling (:data:`ANONYMOUS` for an open call).

        Raises:
            UnauthenticatedError: No key, or a key the gateway does not know.
            PermissionDeniedError: The key lacks the scope ``access`` needs.
        """
        if self.store is None or self.is_open(access):
            return ANONYMOUS
        try:
            principal = self._principal(self.store, headers)
            scope = _SCOPE_OF.get(access)
            if scope is not None and scope not in principal.scopes:
                raise PermissionDeniedError(
                    f"key '{principal.key_id}' lacks the '{scope.value}' scope this call needs"
                )
        except (UnauthenticatedError, PermissionDeniedError) as exc:
            if self.metrics is not None:
                self.metrics.auth_rejections_total.labels(exc.code_name).inc()
            raise
        current_caller.set(principal.key_id)
        return principal

    @staticmethod
    def _principal(store: KeyStore, headers: Mapping[str, str]) -> Principal:
        key = presented_key(headers)
        if not key:
            raise UnauthenticatedError(
                "this call needs an API key: send 'authorization: Bearer <key>' or 'x-api-key'"
            )
        principal = store.lookup(key)
        if principal is None:
            raise UnauthenticatedError("unknown API key")
        return principal


class KeyFileSource:
    """The key file behind a :class:`KeyStore`, re-read when it changes (key rotation).

    A file that fails to read or validate at a reload leaves the keys in service as they
    were, with one error line per change; at startup it is an error.
    """

    def __init__(self, path: Path, store: KeyStore, signature: FileSignature | None) -> None:
        """Watch ``path`` for ``store``, which was read from the file with ``signature``."""
        self.path = path
        self.store = store
        self._signature = signature

    @classmethod
    def open(cls, path: Path) -> KeyFileSource:
        """Read the key file once.

        Raises:
            ValueError: The file is missing or invalid.
        """
        signature = file_signature(path)
        return cls(path, KeyStore(read_key_file(path)), signature)

    def refresh(self) -> bool | None:
        """Re-read the file if it changed: True reloaded, False failed, None unchanged."""
        signature = file_signature(self.path)
        if signature == self._signature:
            return None
        self._signature = signature
        try:
            keys = read_key_file(self.path)
        except ValueError as exc:
            log.error("key file not reloaded, the previous keys stay in service: %s", exc)
            return False
        self.store.replace(keys)
        log.info("key file %s reloaded: %d keys", self.path.name, len(keys.keys))
        return True


def access_policy(settings: GatewaySettings) -> tuple[AccessPolicy, KeyFileSource | None]:
    """The access policy the settings describe, and the key file to watch (if any).

    Raises:
        ValueError: ``auth_keys_file`` is set but cannot be read or is invalid.
    """
    if settings.auth_keys_file is None:
        return AccessPolicy(None), None
    source = KeyFileSource.open(settings.auth_keys_file)
    policy = AccessPolicy(
        source.store,
        open_health=settings.auth_open_health,
        open_metrics=settings.auth_open_metrics,
    )
    return policy, source


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.auth",
        description="Make API keys and key-file entries (the gateway stores digests only).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser(
        "new", help="print a new key, then its key-file entry (JSON) on the next line"
    )
    new.add_argument("--id", required=True, help="name of the key in logs")
    new.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=[s.value for s in Scope],
        help="what the key may do; repeat for several",
    )
    commands.add_parser("hash", help="print the SHA-256 digest of a key read from stdin")
    check = commands.add_parser("check", help="validate a key file and list its keys")
    check.add_argument("path", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.auth``: make keys and entries, hash a key, check a key file."""
    args = _parser().parse_args(argv)
    out = sys.stdout
    if args.command == "new":
        key = new_key()
        scopes = sorted(set(args.scope))
        item = KeyEntry(
            id=args.id, sha256=hash_key(key), scopes=frozenset(Scope(s) for s in scopes)
        )
        out.write(f"{key}\n")
        out.write(json.dumps({"id": item.id, "sha256": item.sha256, "scopes": scopes}) + "\n")
        return 0
    if args.command == "hash":
        out.write(hash_key(sys.stdin.readline().strip()) + "\n")
        return 0
    try:
        keys = read_key_file(args.path)
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    for item in keys.keys:
        out.write(f"{item.id}: {', '.join(sorted(s.value for s in item.scopes))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
