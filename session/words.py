"""Speakable words: invite codes and the short authentication string
(specs/session-protocol.md, "Invite codes" and "Short authentication string").

One list of 256 distinct, common English words (written for didmesh, sorted), so one
word carries exactly 8 bits. An invite code is ``NAMEPLATE-WORD-WORD`` (for example
``4-orbit-lantern``): the nameplate is public (it picks the rendezvous mailbox), the
words are the PAKE password's entropy (16 bits with the default two words). The short
authentication string (SAS) is five words (40 bits) derived from the roster hash.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Callable

from .errors import InvalidCode

WORDS: tuple[str, ...] = (
    "acorn", "adobe", "agent", "alarm", "album", "alpine", "amber", "anchor", "angle", "apple",
    "apron", "arch", "arrow", "atlas", "attic", "autumn", "badge", "bagel", "bamboo", "banjo",
    "barley", "basket", "beacon", "beetle", "bell", "bench", "berry", "bison", "blanket",
    "blossom", "bottle", "bramble", "breeze", "brick", "bridge", "bucket", "buffalo", "bugle",
    "butter", "cabin", "cactus", "camel", "candle", "canoe", "canyon", "carpet", "castle",
    "cedar", "cello", "chalk", "cherry", "chimney", "cider", "cinema", "circus", "citrus",
    "clover", "cobalt", "cocoa", "comet", "copper", "coral", "cotton", "crater", "crayon",
    "cricket", "crystal", "cupboard", "dahlia", "daisy", "desert", "diamond", "dolphin", "domino",
    "dragon", "drum", "eagle", "easel", "echo", "eclipse", "elbow", "ember", "emerald", "engine",
    "falcon", "feather", "fern", "ferry", "fiddle", "fig", "flute", "forest", "fossil",
    "fountain", "fox", "galaxy", "garden", "garlic", "gazelle", "geyser", "ginger", "glacier",
    "globe", "goblet", "gondola", "granite", "grape", "gravel", "guitar", "hammock", "harbor",
    "harp", "hazel", "helmet", "heron", "hickory", "honey", "horizon", "husky", "igloo", "indigo",
    "island", "ivory", "jacket", "jaguar", "jasmine", "jelly", "jigsaw", "jungle", "kayak",
    "kettle", "kiwi", "koala", "ladder", "lagoon", "lantern", "lava", "lemon", "lentil", "lilac",
    "lizard", "llama", "lobster", "locket", "lotus", "mango", "maple", "marble", "meadow",
    "melon", "meteor", "mint", "mirror", "mitten", "mosaic", "muffin", "nebula", "nectar",
    "needle", "nickel", "noodle", "nutmeg", "oasis", "oboe", "ocean", "olive", "onion", "opal",
    "orbit", "orchid", "otter", "owl", "oyster", "paddle", "pancake", "panda", "papaya", "parrot",
    "peach", "pebble", "pepper", "piano", "pigeon", "pillow", "planet", "plum", "pocket",
    "pollen", "pony", "poppy", "potato", "prairie", "pretzel", "puffin", "pumpkin", "quartz",
    "quilt", "rabbit", "radar", "radish", "raven", "reef", "ribbon", "river", "robin", "rocket",
    "saddle", "saffron", "salmon", "sandal", "satin", "scarf", "shadow", "shell", "sierra",
    "silver", "sketch", "sparrow", "spider", "spruce", "squirrel", "statue", "summit", "sunset",
    "swan", "table", "tango", "teapot", "temple", "thunder", "tiger", "timber", "tomato", "topaz",
    "tractor", "trumpet", "tulip", "tundra", "turtle", "umbrella", "valley", "velvet", "violin",
    "volcano", "wagon", "walnut", "walrus", "whale", "whistle", "willow", "window", "wizard",
    "yacht", "yogurt", "zebra", "zephyr",
)
assert len(WORDS) == 256 and len(set(WORDS)) == 256
_INDEX = {w: i for i, w in enumerate(WORDS)}

MAX_NAMEPLATE = 9999
DEFAULT_CODE_WORDS = 2
MIN_CODE_WORDS, MAX_CODE_WORDS = 2, 6
SAS_WORDS = 5
SAS_LABEL = b"didmesh-sas-v1"  # BLAKE2b personalisation (<= 16 bytes)
_SEP = re.compile(r"[\s-]+")


def new_code(
    words: int = DEFAULT_CODE_WORDS, rng: Callable[[int], bytes] = os.urandom
) -> tuple[int, str]:
    """A fresh code: ``(nameplate, "N-word-word")``. The nameplate is 1..9999."""
    if not MIN_CODE_WORDS <= words <= MAX_CODE_WORDS:
        raise ValueError(f"a code has {MIN_CODE_WORDS}..{MAX_CODE_WORDS} words")
    raw = rng(2 + words)
    nameplate = int.from_bytes(raw[:2], "big") % MAX_NAMEPLATE + 1
    return nameplate, "-".join([str(nameplate), *(WORDS[b] for b in raw[2:])])


def parse_code(text: str) -> tuple[int, str]:
    """Normalize a typed code: ``(nameplate, "N-word-word")``; raises :class:`InvalidCode`."""
    parts = [p for p in _SEP.split(text.strip().lower()) if p]
    if len(parts) < 1 + MIN_CODE_WORDS or len(parts) > 1 + MAX_CODE_WORDS:
        raise InvalidCode(
            f"invite code {text[:40]!r} should be a number and {MIN_CODE_WORDS} or more words, "
            "like 4-orbit-lantern"
        )
    if not (parts[0].isascii() and parts[0].isdigit()) or not 1 <= int(parts[0]) <= MAX_NAMEPLATE:
        raise InvalidCode(f"invite code must start with a number 1..{MAX_NAMEPLATE}")
    for word in parts[1:]:
        if word not in _INDEX:
            close = difflib.get_close_matches(word, WORDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidCode(f"{word[:20]!r} is not a code word{hint}")
    nameplate = int(parts[0])
    return nameplate, "-".join([str(nameplate), *parts[1:]])


def _sas_bytes(roster_hash: bytes) -> bytes:
    return hashlib.blake2b(roster_hash, digest_size=SAS_WORDS, person=SAS_LABEL).digest()


def sas_words(roster_hash: bytes) -> str:
    """Five words (40 bits) for people to compare by voice: equal words, equal rosters."""
    return " ".join(WORDS[b] for b in _sas_bytes(roster_hash))


def sas_digits(roster_hash: bytes) -> str:
    """The same 40 bits as twelve digits in three groups (for those who prefer numbers)."""
    n = int.from_bytes(_sas_bytes(roster_hash), "big") % 10**12
    s = f"{n:012d}"
    return f"{s[:4]} {s[4:8]} {s[8:]}"
