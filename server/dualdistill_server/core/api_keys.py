"""Tenants and their API keys: `tenant:key` entries from `--api-key-file` and/or DUALDISTILL_API_KEYS.

Only SHA-256 digests of the keys are kept. A presented key is hashed and compared with EVERY stored digest
by `hmac.compare_digest` (no early exit), so neither the comparison nor the loop tells an attacker how
close a guess was. Keys never enter a log line or an error message; parse errors name the line number.

With no key configured, authentication is off and every request belongs to the tenant "anonymous" (the
per-tenant limits then apply to all clients together).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from ..errors import Unauthenticated

ANONYMOUS = "anonymous"
_TENANT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # also a metrics label value: short and plain


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_entries(lines: list[str], source: str) -> list[tuple[str, str]]:
    """[(tenant, key)] from 'tenant:key' entries; blank entries and '#' comments are skipped.
    Raises ValueError naming `source` and the entry number, never the entry's text."""
    out = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tenant, sep, key = line.partition(":")
        tenant, key = tenant.strip(), key.strip()
        if not sep or not key or any(c.isspace() for c in key):
            raise ValueError(f"{source}, entry {number}: expected 'tenant:key' (a key without spaces)")
        if not _TENANT_RE.match(tenant):
            raise ValueError(f"{source}, entry {number}: tenant names are 1-64 of A-Z a-z 0-9 . _ -")
        out.append((tenant, key))
    return out


class ApiKeys:
    """Maps `Authorization: Bearer KEY` values to tenant names."""

    def __init__(self, entries: list[tuple[str, str]]) -> None:
        digests: dict[bytes, str] = {}
        for tenant, key in entries:
            digest = _digest(key)
            if digests.get(digest, tenant) != tenant:
                raise ValueError(f"one key is given to two tenants ({digests[digest]!r} and {tenant!r})")
            digests[digest] = tenant
        self._digests = list(digests.items())

    @classmethod
    def from_settings(cls, key_file: str | None, keys: str | None) -> ApiKeys:
        """Entries of the file (one per line) plus those of the comma-separated `keys` string."""
        entries = []
        if key_file:
            try:
                text = Path(key_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"cannot read api_key_file {key_file}: {exc.strerror}") from None
            entries += parse_entries(text.splitlines(), f"api_key_file {key_file}")
        if keys:
            entries += parse_entries(keys.split(","), "DUALDISTILL_API_KEYS")
        if (key_file or keys) and not entries:
            raise ValueError("API keys are configured but none is given (only comments or blank entries)")
        return cls(entries)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    @property
    def tenants(self) -> list[str]:
        return sorted(set(tenant for _, tenant in self._digests))

    def tenant_for(self, authorization: str | None) -> str:
        """The tenant of an `Authorization` header value ('Bearer KEY'); ANONYMOUS when keys are off.
        Raises Unauthenticated for a missing, malformed or unknown key."""
        if not self._digests:
            return ANONYMOUS
        scheme, _, key = (authorization or "").strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("this server needs an API key: send 'authorization: Bearer KEY'")
        presented = _digest(key)
        found = None
        for digest, tenant in self._digests:  # every digest is compared: the time does not depend on which
            if hmac.compare_digest(presented, digest):
                found = tenant
        if found is None:
            raise Unauthenticated("the API key is not valid on this server")
        return found
