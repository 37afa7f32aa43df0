"""Video ids: derived from file names, always safe as one path component."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_MAX_LENGTH = 120


def _short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


def video_id_for_file(url: str) -> str:
    """The video id of a file: its name without folders and extension, made safe."""
    stem = re.split(r"[/\\]", url)[-1]
    if "." in stem.lstrip("."):
        stem = stem[: stem.rindex(".")]
    return video_id_from_stem(stem)


def video_id_from_stem(stem: str) -> str:
    """The video id for a file stem or an annotation key.

    The stem is kept when it is plain ASCII letters, digits, `_`, `-` and `.` (not at the
    start); otherwise unsafe runs become `_` and a short hash of the original is appended,
    so two different names never share an id and no id can be `..`, hidden, empty or hold
    a path separator.
    """
    normal = unicodedata.normalize("NFKC", stem)
    safe = _UNSAFE.sub("_", normal).lstrip(".")
    if safe != stem or not safe or len(safe) > _MAX_LENGTH:
        safe = f"{(safe or 'video')[:_MAX_LENGTH]}-{_short_hash(stem)}"
    return safe


def annotation_key_to_video_id(key: str, known: set[str]) -> str | None:
    """Matches an annotation key to a known video id (ActivityNet files carry a `v_` prefix)."""
    for candidate in (key, f"v_{key}"):
        video_id = video_id_from_stem(candidate)
        if video_id in known:
            return video_id
    return None
