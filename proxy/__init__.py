"""Footprint: the OpenAI-compatible proxy that meters every request's energy, carbon and water."""

from importlib import metadata


def version() -> str:
    """The installed footprint-proxy's version; "0.0.0" when run from a checkout that was
    never installed (the GPU validation run, for one)."""
    try:
        return metadata.version("footprint-proxy")
    except metadata.PackageNotFoundError:
        return "0.0.0"
