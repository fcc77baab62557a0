"""gunicorn's access log without secrets: every query value masked (the OIDC callback's `code`
and `state`, the provider's `error_description` that may quote an e-mail), no credential
header, no environ (docs/operations.md, "Logs")."""

import re
from urllib.parse import urlsplit

from gunicorn.glogging import Logger

MASK = "[Filtered]"
# A parameter name is kept when it looks like one; anything else could be data.
_NAME = re.compile(r"[A-Za-z_][\w.\[\]-]{0,40}")
# Request and response headers never written, whatever access_log_format asks for.
_SECRET_HEADERS = frozenset(
    {"authorization", "cookie", "proxy-authorization", "set-cookie", "x-service-auth"}
)


class AccessLogger(Logger):
    """gunicorn's logger (`--logger-class messages.access_log.AccessLogger`) whose access
    lines name each query parameter with its value masked: `GET /oidc/callback/?code=[Filtered]
    &state=[Filtered] HTTP/1.1`."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        query = masked_query(environ.get("QUERY_STRING", ""))
        atoms["r"] = "{} {}{} {}".format(
            environ["REQUEST_METHOD"],
            urlsplit(environ["RAW_URI"]).path,
            f"?{query}" if query else "",
            environ["SERVER_PROTOCOL"],
        )
        atoms["q"] = query
        atoms["f"] = masked_url(atoms["f"])
        for key in list(atoms):
            if not key.startswith("{"):
                continue
            name, kind = key[1:].rsplit("}", 1)
            # The environ repeats the query and every header: none of it is logged.
            if kind == "e" or name in _SECRET_HEADERS:
                del atoms[key]
            else:
                atoms[key] = masked_url(atoms[key])
        return atoms


def masked_query(query: str) -> str:
    """A query string with every value replaced by the mask, the names kept when they look
    like names."""
    if not query:
        return ""
    parts = []
    for name, equals, _value in (part.partition("=") for part in query.split("&")):
        name = name if _NAME.fullmatch(name) else MASK
        parts.append(f"{name}={MASK}" if equals else name)
    return "&".join(parts)


def masked_url(value: str) -> str:
    """A URL (a Referer, a Location) with its query values masked and no fragment."""
    if not isinstance(value, str) or ("?" not in value and "#" not in value):
        return value
    base, _, rest = value.partition("#")[0].partition("?")
    query = masked_query(rest)
    return f"{base}?{query}" if query else base
