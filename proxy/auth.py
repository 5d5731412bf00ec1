"""Keys ─▶ teams. Keys are `fp-` + 32 random bytes (URL-safe base64), shown once at creation
and stored only as SHA-256; a presented key is hashed and compared in constant time.

Revocation is immediate everywhere: on PostgreSQL (several replicas) every request looks its
key up; on SQLite the looked-up keys are cached, and the cache is dropped whenever the store's
revocation epoch moves (one stat() of a file every revoking process grows). Unknown keys are
never cached.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, Protocol

from proxy.errors import InvalidApiKey

KEY_PREFIX = "fp-"
_MAX_KEY_CHARS = 200
_CACHE_ENTRIES = 10_000


class KeyStore(Protocol):
    async def find_key(self, key_hash: str) -> dict[str, object] | None: ...

    def revocation_epoch(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a team (through one of its keys), or the administrator."""

    team: str
    key_id: str | None
    models: tuple[str, ...]
    admin: bool = False

    def may_use(self, model: str) -> bool:
        """Whether this key may call `model`: "*", exact names and fnmatch globs."""
        models = self.models
        if "*" in models or model in models:  # most keys: no glob to match
            return True
        return any(fnmatch.fnmatchcase(model, p) for p in models)


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: `secret` is shown to the user once and never stored."""

    key_id: str
    secret: str
    key_hash: str
    key_prefix: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> NewKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(
        key_id="key_" + secrets.token_hex(8),
        secret=secret,
        key_hash=hash_key(secret),
        key_prefix=secret[:10],
    )


def _bearer(header: str | None) -> str:
    if not header:
        raise InvalidApiKey("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise InvalidApiKey("malformed Authorization header: expected 'Bearer <key>'")
    if len(value) > _MAX_KEY_CHARS:
        raise InvalidApiKey("invalid API key")
    return value


class Authenticator:
    """Turns an Authorization header into a `Principal`."""

    def __init__(
        self, store: KeyStore, mode: Literal["keys", "none"], admin_key: str | None
    ) -> None:
        self._store = store
        self._mode = mode
        self._admin_hash = hash_key(admin_key) if admin_key else None
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_epoch: int | None = None

    @property
    def admin_enabled(self) -> bool:
        return self._admin_hash is not None

    def _is_admin(self, secret: str) -> bool:
        return self._admin_hash is not None and hmac.compare_digest(
            hash_key(secret), self._admin_hash
        )

    async def authenticate(self, authorization_header: str | None) -> Principal:
        """The caller, or InvalidApiKey. With auth "none", any caller but the admin key is
        team "default"."""
        if self._mode == "none":
            if authorization_header:
                try:
                    if self._is_admin(_bearer(authorization_header)):
                        return Principal(team="", key_id=None, models=("*",), admin=True)
                except InvalidApiKey:
                    pass  # local use: a stray header is not an error
            return Principal(team="default", key_id=None, models=("*",))
        secret = _bearer(authorization_header)
        if self._is_admin(secret):
            return Principal(team="", key_id=None, models=("*",), admin=True)
        if not secret.startswith(KEY_PREFIX):
            raise InvalidApiKey("invalid API key")
        key_hash = hash_key(secret)
        epoch = self._store.revocation_epoch()
        cached = self._cached(key_hash, epoch)
        if cached is not None:
            return cached
        found = await self._store.find_key(key_hash)
        if found is None or not hmac.compare_digest(str(found["key_hash"]), key_hash):
            raise InvalidApiKey("invalid API key")
        models = found["models"]
        principal = Principal(
            team=str(found["team"]),
            key_id=str(found["id"]),
            models=tuple(str(m) for m in models) if isinstance(models, list) else ("*",),
        )
        # Only if no revocation was seen while we looked: the row we read may predate it.
        if epoch is not None and epoch == self._cache_epoch:
            self._remember(key_hash, principal)
        return principal

    async def authenticate_admin(self, authorization_header: str | None) -> Principal:
        """The administrator, or InvalidApiKey (also when no admin key is configured)."""
        if self._admin_hash is None:
            raise InvalidApiKey("the admin API is off: no admin key is configured")
        secret = _bearer(authorization_header)
        if not self._is_admin(secret):
            raise InvalidApiKey("invalid admin key")
        return Principal(team="", key_id=None, models=("*",), admin=True)

    def forget(self) -> None:
        """Drop every cached key (this process revoked one)."""
        self._cache.clear()

    def _cached(self, key_hash: str, epoch: int | None) -> Principal | None:
        if epoch is None:
            return None
        if epoch != self._cache_epoch:
            self._cache.clear()
            self._cache_epoch = epoch
            return None
        principal = self._cache.get(key_hash)
        if principal is not None:
            self._cache.move_to_end(key_hash)
        return principal

    def _remember(self, key_hash: str, principal: Principal) -> None:
        self._cache[key_hash] = principal
        if len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)
