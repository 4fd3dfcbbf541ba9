"""The playground's files (web/) served by the local API at ``/``, beside the API's routes.

API Gateway serves no files; a deployment hosts web/ on S3 and CloudFront or anywhere else
(README, "Try it in a browser"). Locally the page and the API share one origin, so the page
needs no CORS and its default API URL (``config.js``: the page's own origin) is right.

Only regular files directly in the folder are served (``/`` is ``index.html``): no listing, no
subfolder, nothing outside it. A route of the API always wins over a file of the same path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
INDEX = "index.html"


@dataclass(frozen=True)
class StaticFile:
    content_type: str
    body: bytes


class StaticSite:
    """The files of one folder by URL path, read at each request (edit, reload, see it)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def find(self, path: str) -> StaticFile | None:
        """The file ``path`` names (``/`` or ``/name.ext``), or None."""
        name = path.lstrip("/") or INDEX
        if "/" in name or "\\" in name or name.startswith("."):
            return None
        content_type = CONTENT_TYPES.get(Path(name).suffix.lower())
        file = self.root / name
        if content_type is None or not file.is_file() or file.resolve().parent != self.root:
            return None
        return StaticFile(content_type, file.read_bytes())
