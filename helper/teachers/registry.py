"""The registry of published teachers (scripts/teachers.json): their files, sources, SHA-256 and published top-1.

Standard library only, so the fetch scripts can run it as a file without importing torch:
    python3 helper/teachers/registry.py files DATASET          # "name file sha256" of each file the fetcher downloads
    python3 helper/teachers/registry.py check DATASET NAME FILE
check exits 0 when FILE's SHA-256 is the published one (or none is published: it says so on stderr), 1 with one
line on stderr when it is not, 2 on bad input. TEACHER_REGISTRY=path reads another registry (mirrors, tests).
"""
import hashlib
import json
import os
import re
import sys

REGISTRY_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts",
                             "teachers.json")
FIELDS = {"name": str, "dataset": str, "file": str, "fetch": bool, "sources": list, "sha256": str,
          "top1": (int, float)}
HEX = re.compile(r"^[0-9a-f]*$")
FULL_DIGEST_LENGTH = 64
WARN_POINTS = 1.0  # more than this many points between measured and published top-1 gets a warning


class RegistryError(ValueError):
    """A registry file that is missing or malformed."""


def registry_path():
    """The registry in use: $TEACHER_REGISTRY, else scripts/teachers.json."""
    return os.environ.get("TEACHER_REGISTRY") or REGISTRY_PATH


def load_registry(path=None):
    """The registry's rows (dicts with at least FIELDS); RegistryError naming what is wrong."""
    path = path or registry_path()
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as err:
        raise RegistryError(f"cannot read the teacher registry {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise RegistryError(f"the teacher registry {path} is not valid JSON ({err})") from None
    rows = data.get("teachers") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise RegistryError(f"the teacher registry {path} has no 'teachers' list")
    for number, row in enumerate(rows, 1):
        for key, kind in FIELDS.items():
            value = row.get(key) if isinstance(row, dict) else None
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):  # True is an int
                raise RegistryError(f"the teacher registry {path}: row {number} has no valid {key!r}")
        digest = row["sha256"]
        if not HEX.match(digest) or len(digest) > FULL_DIGEST_LENGTH or 0 < len(digest) < 8:
            raise RegistryError(f"the teacher registry {path}: row {number} ({row['name']}): sha256 must be empty, "
                                "a prefix of at least 8 or the full 64 lowercase hex digits")
    return rows


def sha256_of(path, chunk=1 << 20):
    """The SHA-256 of a file, in lowercase hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_matches(expected, actual):
    """Whether `actual` (a full digest) is `expected`: equal to a full digest, or starting with a prefix."""
    return bool(expected) and actual.startswith(expected)


def rows_for(rows, dataset, name):
    """The registry rows of teacher `name` on `dataset`."""
    return [r for r in rows if r["dataset"] == dataset and r["name"] == name]


def check_file(path, dataset, name, rows=None):
    """(status, message) of a teacher file against the registry: 'ok', 'unknown' (no digest published) or 'mismatch'."""
    rows = load_registry() if rows is None else rows
    known = rows_for(rows, dataset, name)
    if not known:
        raise RegistryError(f"the teacher registry has no {dataset} teacher {name!r}")
    published = [r for r in known if r["sha256"]]
    if not published:
        return "unknown", f"no published SHA-256 for {name}: {path} is checked by loading it only"
    actual = sha256_of(path)
    for row in published:
        if digest_matches(row["sha256"], actual):
            return "ok", f"{path}: SHA-256 is the published {row['file']}'s"
    wanted = " or ".join(f"{r['sha256'][:16]}... ({r['file']})" for r in published)
    return "mismatch", f"{path} has SHA-256 {actual[:16]}..., not the published {name}'s {wanted}"


def teacher_accuracy_warning(path, model_t, dataset, measured_top1, rows=None, points=WARN_POINTS):
    """One warning line when `path` is a registered teacher whose measured top-1 is off its published one, else None.

    The file is hashed only when the registry publishes a digest for (model_t, dataset).
    """
    try:
        rows = load_registry() if rows is None else rows
    except RegistryError:
        return None  # the check is advice: a broken registry must not stop a training run
    candidates = [r for r in rows_for(rows, dataset, model_t) if r["sha256"]]
    if not candidates or not os.path.isfile(path):
        return None
    actual = sha256_of(path)
    row = next((r for r in candidates if digest_matches(r["sha256"], actual)), None)
    if row is None or abs(measured_top1 - row["top1"]) <= points:
        return None
    return (f"warning: teacher {path} is the published {model_t} ({row['file']}, top-1 {row['top1']:.2f}% on "
            f"{dataset}) but measures {measured_top1:.2f}% here ({measured_top1 - row['top1']:+.2f} points): check "
            "the data (--dataset, --data_root, the whole test split), its normalisation, and the file")


def main(argv=None):
    """The command line the fetch scripts use (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) == 2 and argv[0] == "files":
            for row in load_registry():
                if row["dataset"] == argv[1] and row["fetch"]:
                    print(row["name"], row["file"], row["sha256"] or "-")
            return 0
        if len(argv) == 4 and argv[0] == "check":
            dataset, name, path = argv[1:]
            if not os.path.isfile(path):
                print(f"teacher_registry: error: {path} does not exist", file=sys.stderr)
                return 2
            status, message = check_file(path, dataset, name)
            print(("error: " if status == "mismatch" else "") + message, file=sys.stderr)
            return 1 if status == "mismatch" else 0
    except RegistryError as err:
        print(f"teacher_registry: error: {err}", file=sys.stderr)
        return 2
    print("usage: teacher_registry.py files DATASET | check DATASET NAME FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
