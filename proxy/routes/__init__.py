"""The HTTP routes, each module a `Router` of thin handlers over the services on `app.state`."""

from proxy.routes._router import Router

__all__ = ["Router"]
