"""`footprint teams|keys|budgets|report`: the admin API from the command line.

These commands talk to a running proxy over HTTP (`--url`, default from the config's
server.host/port, or $FOOTPRINT_URL), with the admin key read from the environment variable
that server.admin_key_env names (FOOTPRINT_ADMIN_KEY by default). Going through the proxy
rather than the database keeps one place that validates input and one place that tells every
replica about a revoked key.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from meters.numbers import format_decimal
from proxy.budgets import METRICS
from proxy.config import Settings, load_settings
from proxy.ledger import parse_moment

if TYPE_CHECKING:
    import httpx

NUMBER_COLUMNS = (
    "requests",
    "tokens",
    "energy_j",
    "co2e_g",
    "co2e_market_g",
    "market_energy_share",
    "water_ml",
)


class CliError(Exception):
    """One clear line for the user."""


def register_admin_commands(subparsers: Any) -> None:
    """Add `teams`, `keys`, `budgets`, `limits`, `upstreams` and `report` to the `footprint`
    command."""
    teams = subparsers.add_parser("teams", help="create and list teams")
    teams_cmd = teams.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = teams_cmd.add_parser("create", help="create a team")
    p.add_argument("name")
    _common(p, _teams_create)
    _common(teams_cmd.add_parser("list", help="list teams"), _teams_list)

    keys = subparsers.add_parser("keys", help="create, list and revoke API keys")
    keys_cmd = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = keys_cmd.add_parser("create", help="create a key (printed once, keep it)")
    p.add_argument("--team", required=True)
    p.add_argument("--models", default="*", help="comma-separated names or globs (default *)")
    _common(p, _keys_create)
    p = keys_cmd.add_parser("list", help="list keys (never the keys themselves)")
    p.add_argument("--team")
    _common(p, _keys_list)
    p = keys_cmd.add_parser("revoke", help="revoke a key: refused from then on")
    p.add_argument("key_id")
    _common(p, _keys_revoke)

    budgets = subparsers.add_parser("budgets", help="set and show team budgets")
    budgets_cmd = budgets.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = budgets_cmd.add_parser("set", help="set a budget")
    p.add_argument("--team", required=True)
    p.add_argument("--metric", required=True, choices=METRICS)
    p.add_argument("--limit", required=True, type=float)
    p.add_argument("--period", required=True, choices=["day", "month", "total"])
    _common(p, _budgets_set)
    p = budgets_cmd.add_parser("show", help="a team's budgets, used and remaining")
    p.add_argument("--team", required=True)
    _common(p, _budgets_show)

    limits = subparsers.add_parser("limits", help="set and show rate limits per team or key")
    limits_cmd = limits.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = limits_cmd.add_parser("set", help="set a team's (or one key's) rate limits")
    p.add_argument("--team", required=True)
    p.add_argument("--key-id", help="limit this key only (default: the whole team)")
    p.add_argument("--rpm", type=int, help="requests per minute (omit: no limit)")
    p.add_argument("--tpm", type=int, help="tokens per minute (omit: no limit)")
    _common(p, _limits_set)
    p = limits_cmd.add_parser("show", help="a team's rate limits")
    p.add_argument("--team", required=True)
    _common(p, _limits_show)

    upstreams = subparsers.add_parser(
        "upstreams", help="each upstream's health, in-flight count, J/token, intensity now"
    )
    upstreams.add_argument("--format", choices=["table", "json"], default="table")
    _common(upstreams, _upstreams)

    report = subparsers.add_parser("report", help="usage sums over the ledger")
    report.add_argument("--group-by", default="team", help="any of team,model,upstream,day")
    report.add_argument("--from", dest="start", help="ISO date or date-time (UTC)")
    report.add_argument("--to", dest="end", help="ISO date or date-time (UTC), exclusive")
    report.add_argument("--month", help="YYYY-MM: shorthand for --from/--to of that month")
    report.add_argument("--team")
    report.add_argument("--idle", choices=["report", "spread"])
    report.add_argument("--format", choices=["table", "csv", "json"], default="table")
    report.add_argument(
        "--recompute",
        action="store_true",
        help="recompute every row's figures from its stored inputs and list the rows that "
        "changed, and why (reads the ledger of --config directly)",
    )
    _common(report, _report)
    report.set_defaults(func=_report_or_recompute)


def _common(parser: argparse.ArgumentParser, action: Callable[..., int]) -> None:
    parser.add_argument("--url", help="the proxy (default: $FOOTPRINT_URL or the config's)")
    parser.add_argument("--config", help="TOML file (default: ./footprint.toml if present)")
    parser.set_defaults(func=lambda args: _run(action, args))


def _run(action: Callable[..., int], args: argparse.Namespace) -> int:
    # httpx imported here, not at the top: `footprint serve` registers these commands too.
    import httpx

    try:
        settings = load_settings(args.config)
        with admin_client(args, settings=settings) as client:
            try:
                return action(client, args)
            except Refused as refused:
                raise CliError(why_refused(refused, settings.server.admin_key_env)) from None
    except CliError as error:
        print(f"footprint: {error}", file=sys.stderr)
        return 1
    except httpx.HTTPError as error:
        print(f"footprint: cannot reach the proxy: {error}", file=sys.stderr)
        return 1


def proxy_url(settings: Settings, url: str | None, environ: Mapping[str, str]) -> str:
    """Where the proxy answers: `url`, else $FOOTPRINT_URL, else the config's host and port
    (a wildcard host is reached on 127.0.0.1)."""
    url = url or environ.get("FOOTPRINT_URL")
    if not url:
        host = settings.server.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        url = f"http://{host}:{settings.server.port}"
    return url.rstrip("/")


def admin_client(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
    settings: Settings | None = None,
) -> httpx.Client:
    import httpx

    environ = os.environ if environ is None else environ
    if settings is None:
        settings = load_settings(args.config, environ=environ)
    url = proxy_url(settings, args.url, environ)
    # No key, no header: a proxy with auth "none" answers `report` (its team "default"); one
    # that wants a key answers 401, and why_refused says which variable to set.
    key = environ.get(settings.server.admin_key_env, "")
    return httpx.Client(
        base_url=url.rstrip("/"),
        headers={"authorization": f"Bearer {key}"} if key else {},
        timeout=30.0,
        transport=transport,
    )


class Refused(CliError):
    """The proxy answered 401: the key is missing, wrong, or the admin API is off."""

    def __init__(self, message: str, *, url: str, sent_key: bool) -> None:
        super().__init__(message)
        self.message, self.url, self.sent_key = message, url, sent_key


def why_refused(refused: Refused, key_env: str) -> str:
    """One line that says what to set, for a 401 from the proxy at `refused.url`."""
    if "admin API is off" in refused.message:
        return (
            f"the proxy at {refused.url} has no admin key, so its admin API is off: start it "
            f"with {key_env} set (server.admin_key_env), then set the same value here"
        )
    if not refused.sent_key:
        return (
            f'the proxy at {refused.url} wants a key (server.auth = "keys"): set {key_env} '
            "to the value it was started with"
        )
    return f"the proxy at {refused.url} refused the key in {key_env}: {refused.message}"


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    response = client.request(method, path, **kwargs)
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        if response.status_code == 401:
            sent_key = "authorization" in response.request.headers
            raise Refused(message, url=str(client.base_url).rstrip("/"), sent_key=sent_key)
        raise CliError(f"{response.status_code}: {message}")
    return response


def _teams_create(client: httpx.Client, args: argparse.Namespace) -> int:
    team = _call(client, "POST", "/admin/teams", json={"name": args.name}).json()
    print(f"team {team['name']} created")
    return 0


def _teams_list(client: httpx.Client, args: argparse.Namespace) -> int:
    after: str | None = None
    while True:
        params = {"limit": "1000", **({"after": after} if after else {})}
        page = _call(client, "GET", "/admin/teams", params=params).json()
        for team in page["data"]:
            print(team["name"])
        if not page.get("has_more") or not page["data"]:
            return 0
        after = page["data"][-1]["name"]


def _keys_create(client: httpx.Client, args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    made = _call(client, "POST", "/admin/keys", json={"team": args.team, "models": models}).json()
    print(f"key {made['id']} for team {made['team']} (models: {', '.join(made['models'])})")
    print(made["key"])
    print("This key is shown only now; store it somewhere safe.", file=sys.stderr)
    return 0


def _keys_list(client: httpx.Client, args: argparse.Namespace) -> int:
    params = {"team": args.team} if args.team else {}
    rows = _call(client, "GET", "/admin/keys", params=params).json()["data"]
    table = [
        {
            "id": k["id"],
            "team": k["team"],
            "prefix": k["key_prefix"] + "…",
            "models": ",".join(k["models"]),
            "created": k["created_at"][:19],
            "revoked": (k["revoked_at"] or "")[:19],
        }
        for k in rows
    ]
    print(render_table(table, ["id", "team", "prefix", "models", "created", "revoked"]))
    return 0


def _keys_revoke(client: httpx.Client, args: argparse.Namespace) -> int:
    _call(client, "DELETE", f"/admin/keys/{args.key_id}")
    print(f"key {args.key_id} revoked")
    return 0


def _budgets_set(client: httpx.Client, args: argparse.Namespace) -> int:
    body = {"team": args.team, "metric": args.metric, "limit": args.limit, "period": args.period}
    line = _call(client, "PUT", "/admin/budgets", json=body).json()
    print(
        f"budget for {args.team}: {line['metric']} per {line['period']} = {_num(line['limit'])} "
        f"(used {_num(line['used'])}, remaining {_num(line['remaining'])})"
    )
    return 0


def _budgets_show(client: httpx.Client, args: argparse.Namespace) -> int:
    lines = _call(client, "GET", "/admin/budgets", params={"team": args.team}).json()["data"]
    print(render_table(lines, ["metric", "period", "limit", "used", "reserved", "remaining"]))
    return 0


def _limits_set(client: httpx.Client, args: argparse.Namespace) -> int:
    body = {
        "team": args.team,
        "key_id": args.key_id,
        "requests_per_minute": args.rpm,
        "tokens_per_minute": args.tpm,
    }
    line = _call(client, "PUT", "/admin/limits", json=body).json()
    who = f"key {line['key_id']}" if line["key_id"] else f"team {line['team']}"
    rpm, tpm = line["requests_per_minute"], line["tokens_per_minute"]
    print(
        f"rate limits for {who}: {rpm if rpm is not None else 'no limit'} requests/min, "
        f"{tpm if tpm is not None else 'no limit'} tokens/min"
    )
    return 0


def _limits_show(client: httpx.Client, args: argparse.Namespace) -> int:
    lines = _call(client, "GET", "/admin/limits", params={"team": args.team}).json()["data"]
    for line in lines:
        line["key_id"] = line["key_id"] or "(team)"
    print(render_table(lines, ["key_id", "requests_per_minute", "tokens_per_minute"]))
    return 0


UPSTREAM_COLUMNS = [
    "name",
    "zone",
    "circuit",
    "in_flight",
    "max_concurrency",
    "ttft_ms",
    "j_per_output_token",
    "gco2e_per_kwh",
    "intensity_source",
]


def _upstreams(client: httpx.Client, args: argparse.Namespace) -> int:
    data = _call(client, "GET", "/admin/upstreams").json()["data"]
    if args.format == "json":
        print(json.dumps(data, indent=2))
        return 0
    for row in data:
        # The measured J per output token of the upstream's most recently fitted model.
        fits = row.get("measured") or []
        row["j_per_output_token"] = fits[-1]["j_per_output_token"] if fits else "-"
        for column in ("ttft_ms", "gco2e_per_kwh"):
            if row.get(column) is None:
                row[column] = "-"
    print(render_table(data, UPSTREAM_COLUMNS))
    return 0


def month_window(month: str) -> tuple[str, str]:
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise CliError(f"--month must look like 2025-03, not {month!r}") from None
    if start.month == 12:
        end = start.replace(year=start.year + 1, month=1)
    else:
        end = start.replace(month=start.month + 1)
    return start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")


def _report_or_recompute(args: argparse.Namespace) -> int:
    if not args.recompute:
        return _run(_report, args)
    try:
        return _recompute(args)
    except CliError as error:
        print(f"footprint: {error}", file=sys.stderr)
        return 2


def _moment(text: str | None, flag: str) -> datetime | None:
    if not text:
        return None
    try:
        return parse_moment(text)  # as the proxy reads the same --from/--to in a report
    except ValueError:
        raise CliError(f"{flag} must be an ISO date or date-time, not {text!r}") from None


def _recompute(args: argparse.Namespace) -> int:
    import asyncio

    from proxy.ledger import open_ledger
    from proxy.recompute import recompute_rows

    settings = load_settings(args.config)
    start, end = args.start, args.end
    if args.month:
        start, end = month_window(args.month)
    since, until = _moment(start, "--from"), _moment(end, "--to")

    async def read() -> list[dict[str, Any]]:
        ledger = await open_ledger(settings.ledger)
        try:
            return await ledger.request_rows(since, until, args.team)
        finally:
            await ledger.aclose()

    count, changes = recompute_rows(asyncio.run(read()))
    for change in changes:
        moved = "; ".join(
            f"{name} {_num(stored)} → {_num(now)}" for name, (stored, now) in change.changed.items()
        )
        print(f"{change.request_id}: {change.reason}" + (f": {moved}" if moved else ""))
    print(
        f"{count} row(s) recomputed from their stored inputs: {count - len(changes)} the same, "
        f"{len(changes)} changed"
    )
    return 1 if changes else 0


def _report(client: httpx.Client, args: argparse.Namespace) -> int:
    params: dict[str, str] = {"group_by": args.group_by}
    start, end = args.start, args.end
    if args.month:
        start, end = month_window(args.month)
    if start:
        params["from"] = start
    if end:
        params["to"] = end
    if args.team:
        params["team"] = args.team
    if args.idle:
        params["idle"] = args.idle
    if args.format == "csv":
        params["format"] = "csv"
        sys.stdout.write(_call(client, "GET", "/v1/footprint/usage", params=params).text)
        return 0
    report = _call(client, "GET", "/v1/footprint/usage", params=params).json()
    if args.format == "json":
        print(json.dumps(report, indent=2))
        return 0
    group_by = report["group_by"]
    columns = [*group_by, *NUMBER_COLUMNS]
    print(render_table(report["data"], columns))
    window = f"{report['from'] or 'start'} → {report['to'] or 'now'}"
    print(f"\n{len(report['data'])} row(s), {window}, idle energy: {report['idle_policy']}")
    for idle in report.get("idle", []):
        print(f"idle (not in rows above): {idle['upstream']}: {_num(idle['energy_j'])} J")
    if report.get("accounts"):
        print("\nGPU energy per upstream and day: requests + idle + other traffic = measured")
        print(render_table([_account_row(a) for a in report["accounts"]], ACCOUNT_COLUMNS))
    for line in carbon_totals(report["totals"]):
        print(line)
    avoided_g = float(report["totals"].get("co2e_avoided_g") or 0.0)
    if avoided_g:
        print(f"carbon avoided by routing (against the priority choice): {_num(avoided_g)} g CO2e")
    return 0


def carbon_totals(totals: Mapping[str, Any]) -> list[str]:
    """The period's carbon both ways (GHG Protocol Scope 2), as the report's closing lines."""
    lines = [
        f"carbon, location-based (co2e_g): {_num(float(totals['co2e_g']))} g",
    ]
    market_g = totals.get("co2e_market_g")
    if market_g is None:
        lines.append(
            "carbon, market-based (co2e_market_g): none: no request in the period had "
            "contract data ([upstreams.carbon])"
        )
    else:
        share = float(totals["market_energy_share"])
        rest = "" if share >= 1.0 else "; the rest had no contract data"
        lines.append(
            f"carbon, market-based (co2e_market_g): {_num(float(market_g))} g, over "
            f"{format_decimal(share * 100.0, significant=3)} % of the energy "
            f"({_num(float(totals['market_energy_j']))} of {_num(float(totals['energy_j']))} J"
            f"{rest})"
        )
    lines.append(f"embodied carbon, in both: {_num(float(totals['embodied_co2e_g']))} g")
    return lines


ACCOUNT_COLUMNS = [
    "upstream",
    "day",
    "requests_gpu_energy_j",
    "idle_gpu_energy_j",
    "other_gpu_energy_j",
    "measured_gpu_energy_j",
    "through_footprint",
]


def _account_row(account: dict[str, Any]) -> dict[str, Any]:
    """One account line; `through_footprint` is the share of the GPUs' working energy that
    Footprint's requests carry (the rest is other traffic: bypass, or replicas elsewhere)."""
    share = account.get("passed_share")
    return {
        **account,
        "through_footprint": "-" if share is None else f"{share * 100:.1f}%",
    }


def _num(value: Any) -> str:
    if value is None:
        return "-"  # no figure (co2e_market_g where no row had contract data)
    if isinstance(value, float):
        return format_decimal(value)
    return str(value)


def render_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows as an aligned terminal table; numbers right-aligned, plain decimals."""
    if not rows:
        return "(nothing)"
    cells = [[_num(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), int | float | None) for row in rows) for c in columns]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = io.StringIO()
    out.write(line(columns) + "\n")
    out.write(line(["-" * w for w in widths]) + "\n")
    for r in cells:
        out.write(line(r) + "\n")
    return out.getvalue().rstrip("\n")


__all__ = ["CliError", "register_admin_commands", "render_table"]
