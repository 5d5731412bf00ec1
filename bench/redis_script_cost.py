"""The client's CPU per Lua script call with redis-py's asyncio client (issue 17): what each of
a request's two budget scripts (reserve, settle) costs the proxy, with hiredis's parser and
packer when it is importable, redis-py's pure-Python ones when it is not.

    .venv/bin/python bench/redis_script_cost.py                  # Redis on 127.0.0.1:6379
    .venv/bin/python bench/redis_script_cost.py --calls 20000 --url redis://host:6379/0

Run it twice, with and without hiredis importable (`pip uninstall hiredis` in a scratch
venv), pinned to one core (`taskset -c 1`), and compare the best of the repeats. CPU time is
the process's (`time.process_time`), so waiting on Redis does not count.
"""

from __future__ import annotations

import argparse
import asyncio
import time

# The shape of a budget script's reply: a tag, then five fields per budget line.
_SCRIPT = """
local out = {'ok'}
for i = 1, 3 do
  table.insert(out, 'energy_j'); table.insert(out, 'day')
  table.insert(out, '100'); table.insert(out, '1.5'); table.insert(out, '0.25')
end
redis.call('SET', KEYS[1], ARGV[1])
return out
"""


async def measure(url: str, calls: int, repeats: int) -> tuple[bool, float]:
    from redis.asyncio import Redis
    from redis.utils import HIREDIS_AVAILABLE

    client = Redis.from_url(url)
    script = client.register_script(_SCRIPT)
    args = ["req-0123456789abcdef", "60000", "2026-12-02", "2026-12", *["1.25"] * 6]
    try:
        for _ in range(200):  # warm: the script loaded, the connection open
            await script(keys=["footprint-bench:script"], args=args)
        best = float("inf")
        for _ in range(repeats):
            started = time.process_time()
            for _ in range(calls):
                await script(keys=["footprint-bench:script"], args=args)
            best = min(best, (time.process_time() - started) / calls)
        await client.delete("footprint-bench:script")
    finally:
        await client.aclose()
    return HIREDIS_AVAILABLE, best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    hiredis, us = asyncio.run(measure(args.url, args.calls, args.repeats))
    parser_name = "hiredis" if hiredis else "redis-py's Python parser"
    print(f"{parser_name}: {us:.1f} µs of CPU per script call (best of {args.repeats})")


if __name__ == "__main__":
    main()
