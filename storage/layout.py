"""Where things live under a store's root, and the checks that keep every key inside it.

Keys are ``/``-separated and relative to the root::

    <run_id>/manifest.json
    <run_id>/data/<name>.parquet
    <run_id>/cycle=<c>/<kind>/<job_id>.parquet         kind: generated | attributed | predictions
    <run_id>/<relpath>                                 JSON documents and committed folders

Every run id, job id, table name and relpath part is a *name*: 1-128 letters, digits and
``_ . = -``, starting with a letter or digit, with no ``..``. Nothing a caller passes can add a
separator, climb out of the root or land on a hidden (temporary) name.
"""

from __future__ import annotations

import operator
import re

from distillq import paths
from distillq.errors import InvalidInputError
from storage.schemas import schema_of

SHARD_SUFFIX = ".parquet"
HIDDEN = "."          # temp files and folders start with it; readers ignore them
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}")
_CYCLE = re.compile(r"cycle=(\d+)")


def is_name(value: object) -> bool:
    return isinstance(value, str) and bool(_NAME.fullmatch(value)) and ".." not in value


def check_name(value: str, what: str) -> str:
    """``value`` if it is a safe single path part, else InvalidInputError naming ``what``."""
    if not is_name(value):
        raise InvalidInputError(
            f"{what} {value!r} is not allowed: use 1-128 letters, digits, '_', '.', '=', '-', "
            "starting with a letter or digit (no path separators, no '..')"
        )
    return value


def check_relpath(relpath: str) -> str:
    """A relative ``a/b/c`` path whose every part is a name; InvalidInputError otherwise."""
    if not isinstance(relpath, str) or relpath.startswith("/") or "\\" in relpath:
        raise InvalidInputError(f"path {relpath!r} must be a relative '/'-separated path")
    for part in relpath.split("/"):
        check_name(part, f"part {part!r} of path")
    return relpath


def check_cycle(cycle: int) -> int:
    try:
        value = operator.index(cycle)
    except TypeError:
        raise InvalidInputError(f"cycle {cycle!r} must be an integer") from None
    if value < 0:
        raise InvalidInputError(f"cycle {cycle!r} must be >= 0")
    return value


def run_key(run_id: str) -> str:
    return check_name(run_id, "run id")


def rel_key(run_id: str, relpath: str) -> str:
    return f"{run_key(run_id)}/{check_relpath(relpath)}"


def kind_key(run_id: str, cycle: int, kind: str) -> str:
    schema_of(kind)  # StorageError for an unknown kind
    return f"{run_key(run_id)}/{paths.cycle_dir(check_cycle(cycle))}/{kind}"


def shard_key(run_id: str, cycle: int, kind: str, job_id: str) -> str:
    return f"{kind_key(run_id, cycle, kind)}/{check_name(job_id, 'job id')}{SHARD_SUFFIX}"


def table_key(run_id: str, name: str) -> str:
    return f"{run_key(run_id)}/data/{check_name(name, 'table name')}{SHARD_SUFFIX}"


def job_ids(names: list[str]) -> list[str]:
    """Job ids of the shard file names in a kind folder, sorted by job id."""
    return sorted(n[: -len(SHARD_SUFFIX)] for n in names
                  if n.endswith(SHARD_SUFFIX) and is_name(n[: -len(SHARD_SUFFIX)]))


def cycle_of(name: str) -> int | None:
    """The cycle of a ``cycle=<c>`` folder name, else None."""
    match = _CYCLE.fullmatch(name)
    return int(match.group(1)) if match else None
