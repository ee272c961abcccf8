"""Secrets out of every text the worker prints or serves: URL credentials masked, known secrets scrubbed.

Below everything (no project imports), so config, sources, sinks and service can all use it.

Two layers, because neither is enough alone:
- `mask_url` masks the credentials of a URL it is given, also when the password holds `#`, `/` or `?`
  (which `urllib.parse.urlsplit` reads as the start of fragment, path or query, leaving the secret in
  the "host").
- `scrub` removes every *registered* secret (each camera's password or user-part token, in its raw,
  URL-decoded and URL-encoded forms) from any text, wherever it came from: FFmpeg's error messages quote
  the URL as given, exception texts, probe output. `register_url` is called for every URL the worker
  opens; `ScrubFilter` (installed on the log handlers by `service.runner.setup_logging`) applies `scrub`
  to every log record, its arguments and its traceback.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import quote, unquote

MASK = "***"
# Shorter secrets are not scrubbed from free text (a 2-letter password would mangle every line); URLs
# that carry them are still masked by `mask_url` and the URL pattern in `scrub`.
MIN_SECRET_LEN = 4

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
# scheme://userinfo@ in free text: userinfo is everything up to the last '@' before whitespace or a quote.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s'\"<>]*)@")


def split_userinfo(url: str) -> tuple[str, str, str] | None:
    """`scheme://user:pass@rest` -> (`scheme://`, `user:pass`, `rest`); None without credentials.

    The userinfo ends at the LAST '@' of the URL: a password may contain '@' unencoded (FFmpeg accepts it),
    and '#', '/', '?' reach here too (FFmpeg refuses those with "Invalid argument"; config validation asks
    for them percent-encoded, but `probe` takes any URL); a camera path almost never contains '@'.
    """
    head, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return None
    userinfo, _, tail = rest.rpartition("@")
    return head + sep, userinfo, tail


def url_host_port(url: str) -> tuple[str, str]:
    """(host, port text or "") of a URL, read past any credentials (also ones with '#', '/', '?', '@')."""
    parts = split_userinfo(url)
    rest = parts[2] if parts is not None else url.partition("://")[2]
    hostport = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if hostport.startswith("["):
        host, _, after = hostport[1:].partition("]")
        return host, after.removeprefix(":")
    if hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
        return host, port
    return hostport, ""


def url_host(url: str) -> str:
    return url_host_port(url)[0]


def url_secrets(url: str) -> set[str]:
    """The secrets of a URL: the password, or the user part when there is no password (a token)."""
    parts = split_userinfo(url)
    if parts is None:
        return set()
    user, colon, password = parts[1].partition(":")
    raw = password if colon else user
    if not raw:
        return set()
    forms = {raw, unquote(raw)}
    forms |= {quote(f, safe="") for f in list(forms)} | {quote(f, safe="!$&'()*+,;=:") for f in list(forms)}
    return {f for f in forms if f}


def mask_url(url: str) -> str:
    """`rtsp://user:secret@host/x` -> `rtsp://user:***@host/x`; `rtsp://TOKEN@host` -> `rtsp://***@host`.

    Registered secrets elsewhere in the URL are masked too: a value that came from the environment
    (`rtsp://host/${CAM_KEY}`, config.expand_env registers it) or another camera's password in a path.
    """
    parts = split_userinfo(url)
    if parts is not None:
        head, userinfo, tail = parts
        user, colon, _ = userinfo.partition(":")
        url = f"{head}{user}:{MASK}@{tail}" if colon and user else f"{head}{MASK}@{tail}"
    pattern = _pattern
    return pattern.sub(MASK, url) if pattern is not None else url


def register_secret(secret: str) -> None:
    """Scrub `secret` from every text from now on (process-wide: log lines come from every thread)."""
    global _pattern
    if len(secret) < MIN_SECRET_LEN:
        return
    with _lock:
        if secret in _secrets:
            return
        _secrets.add(secret)
        # Longest first, so that a secret containing another is replaced whole.
        alternatives = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in alternatives))


def register_url(url: str) -> None:
    for s in url_secrets(url):
        register_secret(s)


def _mask_userinfo(m: re.Match[str]) -> str:
    user, colon, _ = m.group("userinfo").partition(":")
    return f"{m.group('scheme')}{user}:{MASK}@" if colon and user else f"{m.group('scheme')}{MASK}@"


def scrub(text: str) -> str:
    """`text` with every registered secret replaced by `***` and every URL's credentials masked."""
    if not text:
        return text
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    if "://" in text and "@" in text:
        text = _URL_USERINFO.sub(_mask_userinfo, text)
    return text


class ScrubFilter(logging.Filter):
    """Scrubs a log record's final message and traceback; attach it to a handler (sees every logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logged as is rather than lost
            return True
        record.msg, record.args = scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True
