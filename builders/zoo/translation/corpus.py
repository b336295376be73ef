"""English→German sentence pairs from the German gettext catalogs (``.mo``) of a Debian system.

Every pair is a human translation of a program message. Cleaning keeps the text as a user
would see it: contexts are dropped, plural forms become two pairs, whitespace is collapsed,
GTK mnemonic underscores are removed, and printf-style format specifiers are kept verbatim
(pairs whose specifiers disagree are dropped, they are usually stale translations).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import struct
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LOCALE_DIR = Path("/usr/share/locale/de/LC_MESSAGES")
DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("train", "heldout", "calibration")
SPLIT_SEED = 1234
HELDOUT_PAIRS = 1000
CALIBRATION_PAIRS = 200
MAX_SOURCE_CHARS = 160
"""Longer messages are mostly multi-line usage texts, not sentences."""
MAX_TARGET_CHARS = 240

_MO_MAGIC = 0x950412DE
PRINTF_SPECIFIER = re.compile(
    r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?"
    r"(?:hh|h|ll|l|L|q|j|z|t|I)?([diouxXeEfFgGaAcspn])|%<(\w+)>|%\((\w+)\)[sd]"
)
_MNEMONIC = re.compile(r"_(?=[^\W\d_])")
_IDENTIFIER = re.compile(r"\w+_\w+")
_SPACE = re.compile(r"\s+")
_LETTER = re.compile(r"[^\W\d_]")


@dataclass(frozen=True)
class Pair:
    """One English message and its German translation, with the catalog it came from."""

    catalog: str
    en: str
    de: str


def _charset(header: str) -> str:
    match = re.search(r"charset=([\w-]+)", header)
    return match.group(1) if match else "utf-8"


def read_mo(path: Path) -> list[tuple[str, str]]:
    """Read the (msgid, msgstr) entries of a compiled gettext catalog.

    Message contexts are stripped; a plural entry yields (singular, first form) and
    (plural, last form). The header entry and untranslated entries are skipped.
    """
    blob = path.read_bytes()
    endian = "<" if struct.unpack("<I", blob[:4])[0] == _MO_MAGIC else ">"
    if struct.unpack(endian + "I", blob[:4])[0] != _MO_MAGIC:
        raise ValueError(f"{path.name} is not a gettext .mo file")
    _, _, count, ids_at, strs_at = struct.unpack(endian + "5I", blob[:20])

    def entry(table_at: int, index: int) -> bytes:
        length, offset = struct.unpack(endian + "2I", blob[table_at + 8 * index :][:8])
        return blob[offset : offset + length]

    raw = [(entry(ids_at, i), entry(strs_at, i)) for i in range(count)]
    header = next((s for m, s in raw if m == b""), b"").decode("ascii", "replace")
    charset = _charset(header)
    out: list[tuple[str, str]] = []
    for msgid_b, msgstr_b in raw:
        if not msgid_b or not msgstr_b:
            continue
        msgid = msgid_b.decode(charset, "replace").split("\x04")[-1]
        forms = msgstr_b.decode(charset, "replace").split("\x00")
        ids = msgid.split("\x00")
        out.append((ids[0], forms[0]))
        if len(ids) > 1 and len(forms) > 1:
            out.append((ids[1], forms[-1]))
    return out


def _specifiers(text: str) -> list[str]:
    return sorted("".join(groups) for groups in PRINTF_SPECIFIER.findall(text))


def _strip_mnemonics(en: str, de: str) -> tuple[str, str]:
    """Drop GTK keyboard mnemonics (``_Open`` / ``Ö_ffnen``) but keep identifiers.

    A mnemonic is the only underscore on each side and precedes a letter; an identifier
    such as ``week_start`` or ``SO_PASSCRED`` is told apart by being copied verbatim.
    """
    if en.count("_") != 1 or de.count("_") != 1:
        return en, de
    if not _MNEMONIC.search(en) or not _MNEMONIC.search(de):
        return en, de
    identifier = _IDENTIFIER.search(en)
    if identifier is not None and identifier.group(0) in de:
        return en, de
    return en.replace("_", ""), de.replace("_", "")


def clean(en: str, de: str) -> tuple[str, str] | None:
    """Normalise one catalog entry, or return None when it is not a usable sentence pair."""
    en = _SPACE.sub(" ", en).strip()
    de = _SPACE.sub(" ", de).strip()
    en, de = _strip_mnemonics(en, de)
    if not en or not de or en == de or "\ufffd" in en + de:
        return None
    if len(en) > MAX_SOURCE_CHARS or len(de) > MAX_TARGET_CHARS:
        return None
    if not _LETTER.search(en) or not _LETTER.search(de):
        return None
    if len(en) > 12 and not 0.3 <= len(de) / len(en) <= 4.0:
        return None  # length mismatch: usually a stale or misaligned entry
    if _specifiers(en) != _specifiers(de):
        return None
    return en, de


def debian_package(path: Path) -> str:
    """The Debian package that ships ``path`` (with its version), or "" where dpkg is absent."""
    if shutil.which("dpkg-query") is None:
        return ""
    found = subprocess.run(
        ["dpkg-query", "-S", str(path.resolve())], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        return ""
    package = found.stdout.split(":", 1)[0].strip()
    version = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{package}={version}" if version else package


def catalogs_in(locale_dir: Path) -> list[Path]:
    """The catalogs of a locale directory in name order, without symlinked aliases."""
    return sorted(p for p in locale_dir.glob("*.mo") if not p.is_symlink())


def collect_pairs(catalogs: Iterable[Path]) -> tuple[list[Pair], dict[str, dict[str, int]]]:
    """Clean and deduplicate the pairs of several catalogs.

    A source text that several catalogs translate differently keeps its most frequent
    translation (ties: the alphabetically first), credited to the first catalog that has it.

    Returns:
        The pairs sorted by source text, and per catalog the raw and kept entry counts.
    """
    translations: dict[str, Counter[str]] = defaultdict(Counter)
    first_catalog: dict[tuple[str, str], str] = {}
    counts: dict[str, dict[str, int]] = {}
    for path in catalogs:
        name = path.name.removesuffix(".mo")
        entries = read_mo(path)
        counts[name] = {"entries": len(entries), "pairs": 0}
        for msgid, msgstr in entries:
            cleaned = clean(msgid, msgstr)
            if cleaned is None:
                continue
            translations[cleaned[0]][cleaned[1]] += 1
            first_catalog.setdefault(cleaned, name)
    pairs = []
    for en in sorted(translations):
        de = min(translations[en].items(), key=lambda item: (-item[1], item[0]))[0]
        pair = Pair(first_catalog[(en, de)], en, de)
        counts[pair.catalog]["pairs"] += 1
        pairs.append(pair)
    return pairs, counts


def _group_key(text: str) -> str:
    """Sources that differ only in case, punctuation or specifiers land in the same split."""
    return re.sub(r"[\W_]+", "", PRINTF_SPECIFIER.sub("", text).lower())


def split_pairs(pairs: list[Pair], seed: int = SPLIT_SEED) -> dict[str, list[Pair]]:
    """Shuffle groups of near-identical sources and cut heldout, calibration and train."""
    groups: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        groups[_group_key(pair.en)].append(pair)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    splits: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    wanted = {"heldout": HELDOUT_PAIRS, "calibration": CALIBRATION_PAIRS}
    for key in keys:
        name = next((n for n, size in wanted.items() if len(splits[n]) < size), "train")
        splits[name].extend(groups[key])
    return splits


def write_split(pairs: list[Pair], path: Path) -> None:
    """Write pairs as a tab-separated file with a ``catalog en de`` header."""
    lines = ["catalog\ten\tde"] + [f"{p.catalog}\t{p.en}\t{p.de}" for p in pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_split(name: str, data_dir: Path = DATA_DIR) -> list[Pair]:
    """Read one committed split (``train``, ``heldout`` or ``calibration``)."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
    lines = (data_dir / f"{name}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [Pair(*line.split("\t")) for line in lines]


def extract(locale_dir: Path = DEFAULT_LOCALE_DIR, out_dir: Path = DATA_DIR) -> dict[str, object]:
    """Regenerate the committed splits and ``sources.json`` from the catalogs in ``locale_dir``.

    Returns:
        The content written to ``sources.json``: per catalog its Debian package and counts,
        and the size of each split.
    """
    catalogs = catalogs_in(locale_dir)
    if not catalogs:
        raise FileNotFoundError(f"no .mo catalogs in {locale_dir}")
    pairs, counts = collect_pairs(catalogs)
    splits = split_pairs(pairs)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        write_split(split, out_dir / f"{name}.tsv")
    sources: dict[str, object] = {
        "locale": locale_dir.parent.name,
        "split_seed": SPLIT_SEED,
        "max_source_chars": MAX_SOURCE_CHARS,
        "max_target_chars": MAX_TARGET_CHARS,
        "splits": {name: len(split) for name, split in splits.items()},
        "pairs": len(pairs),
        "catalogs": {
            path.name: {"package": debian_package(path), **counts[path.name.removesuffix(".mo")]}
            for path in catalogs
        },
    }
    (out_dir / "sources.json").write_text(json.dumps(sources, indent=1) + "\n", encoding="utf-8")
    return sources
