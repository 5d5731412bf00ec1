"""Debian's Chromium as the dashboard's tests and benchmark launch it through Playwright: the
system binary (never a browser Playwright downloads), headless, with nothing phoning home."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
