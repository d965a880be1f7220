"""What a console script imports before the client: httpx, without httpx's own command line.

`httpx/__init__` imports `httpx._main` (its `httpx` command) whenever click, pygments and rich
are installed, and falls back to a stub that asks for `pip install 'httpx[cli]'` when they are
not. click comes with uvicorn, so a plain install pays for click, and a dev install for click,
rich and pygments too: ~60 ms of a `call-me request` that needs none of them. Only our own
processes take this path (the library never does it), so a user's httpx is left as it is.
"""

from __future__ import annotations

import sys

_HTTPX_CLI = "httpx._main"


def import_httpx_without_its_cli() -> None:
    """Import httpx as if its optional CLI were not installed (`httpx.main` is then its stub)."""
    if "httpx" in sys.modules or _HTTPX_CLI in sys.modules:
        return
    # None in sys.modules makes that import raise ImportError: httpx's own "CLI not installed" path.
    sys.modules[_HTTPX_CLI] = None  # type: ignore[assignment]
    try:
        import httpx  # noqa: F401
    finally:
        # Forget the block, so that a later explicit `import httpx._main` still works.
        if sys.modules.get(_HTTPX_CLI, False) is None:
            del sys.modules[_HTTPX_CLI]
