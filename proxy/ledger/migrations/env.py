"""Alembic environment: runs on the connection `proxy.ledger` hands it, or on `sqlalchemy.url`.

`open_ledger` runs the migrations itself at start; this file also lets an operator run
`alembic -c proxy/ledger/alembic.ini upgrade head` against a database by hand.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from proxy.ledger._schema import metadata

config = context.config


def _run(connection: object) -> None:
    context.configure(connection=connection, target_metadata=metadata)  # type: ignore[arg-type]
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set sqlalchemy.url (a synchronous driver URL) to migrate by hand")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
