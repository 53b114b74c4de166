"""Who is calling: API keys from the settings, checked in constant time.

Keys are configured in ``DIP_API_KEYS`` and ``DIP_ADMIN_KEYS``, each entry a
raw key or ``sha256:<64 hex digits>`` (the digest of a key, so that the key
itself need not sit in the environment). The settings keep only digests.

A request names its key as ``Authorization: Bearer <key>``. The key's
SHA-256 is compared with every configured digest by
:func:`hmac.compare_digest`, so answer times say nothing about how close a
guess was. A caller is known by its key's *fingerprint* (the first half of
the digest): that is what a job records as its owner, never the key.

Standard library only: the settings module imports this one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

DIGEST_PREFIX = "sha256:"
MIN_KEY_LENGTH = 16

_DIGEST = re.compile(r"[0-9a-f]{64}")
# Visible ASCII: what an Authorization header carries unchanged through every proxy.
_KEY = re.compile(r"[\x21-\x7e]+")


class Unauthorized(Exception):
    """No usable key in a request (the message says why, never echoing the key)."""


@dataclass(frozen=True)
class Caller:
    """Who sent a request.

    Attributes:
        owner: Fingerprint of the caller's key, recorded as the owner of the
            jobs it creates (``""`` when the service runs without keys).
        admin: Sees and manages every job, and reads ``/metrics``.
    """

    owner: str
    admin: bool = False

    def can_see(self, owner: str) -> bool:
        """Whether a job owned by ``owner`` is visible to this caller."""
        return self.admin or hmac.compare_digest(self.owner.encode(), owner.encode())


OPEN_CALLER = Caller(owner="", admin=True)
"""Every caller of a service with no keys configured (bound to loopback only)."""


def key_digest(key: str) -> str:
    """``sha256:<hex>`` of ``key``: the form in which keys are configured and kept."""
    return DIGEST_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def fingerprint(digest: str) -> str:
    """The owner id of the key with ``digest`` (``sha256:<hex>``): 128 bits of it."""
    return digest.removeprefix(DIGEST_PREFIX)[:32]


def parse_key_entries(value: str | Iterable[str] | None, *, setting: str) -> tuple[str, ...]:
    """Normalise a key setting to a tuple of ``sha256:<hex>`` digests.

    Args:
        value: A JSON list, a comma-separated string or an iterable of
            entries; each a raw key (at least ``MIN_KEY_LENGTH`` visible ASCII
            characters) or ``sha256:<64 hex digits>``. Empty entries are skipped.
        setting: Name shown in errors (``DIP_API_KEYS``).

    Raises:
        ValueError: A malformed entry, named by position (a key is never echoed).
    """
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{setting}: not a valid JSON list ({exc.msg} at character {exc.pos})") from None
            if not isinstance(value, list):
                raise ValueError(f"{setting}: expected a JSON list of strings")
        else:
            value = text.split(",")
    digests: dict[str, None] = {}  # ordered set: a key listed twice is one key
    for position, entry in enumerate(value, start=1):
        if not isinstance(entry, str):
            raise ValueError(f"{setting}: entry {position} is not a string (got {type(entry).__name__})")
        entry = entry.strip()
        if entry:
            digests[_entry_digest(entry, setting=setting, position=position)] = None
    return tuple(digests)


def authenticate(authorization: str | None, *, api_keys: tuple[str, ...],
                 admin_keys: tuple[str, ...]) -> Caller:
    """The caller presenting ``authorization`` (the header's value).

    With no keys configured at all every request is :data:`OPEN_CALLER`.

    Raises:
        Unauthorized: No ``Bearer`` key, or one matching no configured digest.
    """
    if not api_keys and not admin_keys:
        return OPEN_CALLER
    if not authorization:
        raise Unauthorized("this service needs an API key: send `Authorization: Bearer <key>`")
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("the Authorization header must be `Bearer <key>`")
    digest = key_digest(key)
    admin = _matches(digest, admin_keys)
    if not (_matches(digest, api_keys) or admin):
        raise Unauthorized("invalid API key")
    return Caller(owner=fingerprint(digest), admin=admin)


def _entry_digest(entry: str, *, setting: str, position: int) -> str:
    if entry[: len(DIGEST_PREFIX)].lower() == DIGEST_PREFIX:
        digest = entry[len(DIGEST_PREFIX):].lower()
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"{setting}: entry {position} starts with {DIGEST_PREFIX!r} but is not followed "
                             f"by 64 hex digits (got {len(digest)} characters)")
        return DIGEST_PREFIX + digest
    if len(entry) < MIN_KEY_LENGTH or not _KEY.fullmatch(entry):
        raise ValueError(f"{setting}: entry {position} is not a usable key: a raw key needs at least "
                         f"{MIN_KEY_LENGTH} visible ASCII characters, no spaces or commas "
                         f"(got {len(entry)} characters)")
    return key_digest(entry)


def _matches(digest: str, digests: tuple[str, ...]) -> bool:
    # Compare with every entry, without stopping at a match: the time taken
    # does not depend on which key matched or how much of it.
    found = False
    for candidate in digests:
        found |= hmac.compare_digest(digest, candidate)
    return found
