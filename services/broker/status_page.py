"""The operator's status page at `GET /`: what `mlnode-upgrade status --watch` shows, in a browser.

One self-contained HTML file (inline CSS and vanilla JS, no build step, nothing fetched from
elsewhere: operators' machines may have no internet) that polls `upgrade/live` every 500 ms.
It is read once at import. Its Content-Security-Policy allows only the page's own inline script
and style (by hash) and requests to its own origin, so even a node id that slipped into markup
could neither run a script nor load anything.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

__all__ = ["PAGE", "PAGE_HEADERS", "status_page_routes"]

PAGE = resources.files("services.broker").joinpath("status_page.html").read_text(encoding="utf-8")


def _inline_hashes(page: str, tag: str) -> str:
    """The CSP source list for every inline `<tag>` block of `page` ('sha256-...' each)."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
    if not blocks:
        raise ValueError(f"the status page has no inline <{tag}>")
    digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)
    return " ".join(f"'sha256-{d}'" for d in digests)


PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; "
        f"script-src {_inline_hashes(PAGE, 'script')}; "
        f"style-src {_inline_hashes(PAGE, 'style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    # A broker upgraded under the operator's open tab serves its new page on the next load.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def status_page_routes() -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def status_page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers=PAGE_HEADERS)

    return router
