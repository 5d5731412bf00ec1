"""Keys: made from a secure source, stored hashed, refused once revoked, on every replica."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from proxy.auth import Authenticator, Principal, generate_key
from proxy.config import LedgerSettings
from proxy.errors import InvalidApiKey
from proxy.ledger import Ledger, open_ledger

ADMIN = "admin-secret-" + "x" * 30


async def make_key(
    ledger: Ledger, team: str = "search", models: list[str] | None = None
) -> tuple[str, str]:
    if not await ledger.team_exists(team):
        await ledger.create_team(team)
    new = generate_key()
    await ledger.create_key(
        key_id=new.key_id,
        team=team,
        key_hash=new.key_hash,
        key_prefix=new.key_prefix,
        models=models or ["*"],
    )
    return new.key_id, new.secret


@pytest.fixture
async def ledger(ledger_url: str) -> Ledger:
    led = await open_ledger(LedgerSettings(url=ledger_url))
    yield led  # type: ignore[misc]
    await led.aclose()


def test_keys_are_long_random_and_distinct() -> None:
    keys = {generate_key().secret for _ in range(200)}
    assert len(keys) == 200
    assert all(k.startswith("fp-") and len(k) >= 3 + 43 for k in keys)


async def test_a_key_authenticates_as_its_team(ledger: Ledger) -> None:
    key_id, secret = await make_key(ledger, models=["llama-*", "gpt-4o"])
    auth = Authenticator(ledger, "keys", ADMIN)
    principal = await auth.authenticate(f"Bearer {secret}")
    assert principal == Principal(team="search", key_id=key_id, models=("llama-*", "gpt-4o"))
    assert principal.may_use("llama-3.1-8b") and principal.may_use("gpt-4o")
    assert not principal.may_use("gpt-4o-mini")


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Basic abc", "Bearer fp-not-a-real-key", "Bearer " + "fp-" + "a" * 400],
)
async def test_missing_malformed_and_unknown_keys_are_refused(
    ledger: Ledger, header: str | None
) -> None:
    auth = Authenticator(ledger, "keys", ADMIN)
    with pytest.raises(InvalidApiKey) as caught:
        await auth.authenticate(header)
    assert caught.value.status_code == 401
    assert caught.value.body()["error"]["code"] == "invalid_api_key"


async def test_only_the_hash_is_stored(sqlite_url: str) -> None:
    ledger = await open_ledger(LedgerSettings(url=sqlite_url))
    try:
        key_id, secret = await make_key(ledger)
        listed = await ledger.list_keys("search")
    finally:
        await ledger.aclose()
    assert listed[0]["id"] == key_id and "key" not in listed[0]
    db = Path(sqlite_url.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert secret.encode() not in stored
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored


async def test_a_revoked_key_is_refused_at_once_on_every_replica(ledger_url: str) -> None:
    # Two replicas: two ledgers and authenticators on one database, both caches warm.
    first = await open_ledger(LedgerSettings(url=ledger_url))
    second = await open_ledger(LedgerSettings(url=ledger_url))
    try:
        key_id, secret = await make_key(first)
        auth_a = Authenticator(first, "keys", ADMIN)
        auth_b = Authenticator(second, "keys", ADMIN)
        for _ in range(3):
            assert (await auth_a.authenticate(f"Bearer {secret}")).team == "search"
            assert (await auth_b.authenticate(f"Bearer {secret}")).team == "search"
        assert await first.revoke_key(key_id)
        with pytest.raises(InvalidApiKey):
            await auth_b.authenticate(f"Bearer {secret}")
        with pytest.raises(InvalidApiKey):
            await auth_a.authenticate(f"Bearer {secret}")
        # Other keys of the team keep working.
        _, other = await make_key(first)
        assert (await auth_b.authenticate(f"Bearer {other}")).team == "search"
    finally:
        await first.aclose()
        await second.aclose()


async def test_admin_key_and_auth_none(ledger: Ledger) -> None:
    auth = Authenticator(ledger, "keys", ADMIN)
    assert (await auth.authenticate(f"Bearer {ADMIN}")).admin
    assert (await auth.authenticate_admin(f"Bearer {ADMIN}")).admin
    _, secret = await make_key(ledger)
    with pytest.raises(InvalidApiKey):
        await auth.authenticate_admin(f"Bearer {secret}")
    with pytest.raises(InvalidApiKey):
        await Authenticator(ledger, "keys", "").authenticate_admin("Bearer ")

    local = Authenticator(ledger, "none", None)
    principal = await local.authenticate(None)
    assert principal.team == "default" and not principal.admin and principal.may_use("anything")
