"""Re-stamping records whose code has not changed: ``python -m icllib.restamp [--dry-run]``.

A record of the full edition carries the hash of the source that computed it (:func:`icllib.records.provenance`),
and a page that replays a record made by other source says so. Records made before 2026-12 were stamped with the
hash of the raw files, so an edit of a comment or a docstring anywhere in the code a record depends on marked it as
made by older source. Today's hash counts code only (:func:`icllib.cache.code_only`).

For each record whose stamp differs from today's hash, this finds the code that made it and compares:

1. *which code made it*: the tree whose raw hash equals the record's stamp: its provenance commit, any other commit
   of the history (a record made from uncommitted changes matches the commit that took them in), or, failing those,
   the working tree (a record just made from code not committed yet);
2. *can today's code give another result*: module by module over the modules the record's function reaches, today's
   code is either that tree's code (comments, docstrings and blank lines aside), or that tree's code plus new
   definitions: every top-level statement of the old module is still there unchanged, and each added one is a
   function, a class or an import that binds only names that no module of the old closure binds (``__all__``
   aside). Code that existed when the record was made cannot call what did not exist, so the result is the same.

Only a record whose maker is found and that passes (2) is re-stamped; its provenance keeps the old stamp and the
tree it was verified against under ``"restamped"``. Every other record stays as it is, and its page keeps saying
that it was made by older source.
"""

from __future__ import annotations

import ast
import datetime
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from icllib import cache, records, settings

__all__ = ["Verdict", "verdicts", "restamp", "extends"]

Sources = dict[str, tuple[str, bytes]]
_WORKING_TREE = "working tree"


class _Trees:
    """The computation modules of the working tree and of commits (read once each through ``git cat-file``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._sources: dict[str, Sources] = {}
        self._digests: dict[tuple[str, str, str], str] = {}

    def _git(self, *args: str, data: bytes | None = None) -> bytes:
        return subprocess.run(["git", *args], cwd=self.root, input=data, capture_output=True, check=True).stdout

    def commits(self) -> list[str]:
        return self._git("rev-list", "HEAD").decode().split()

    def sources(self, tree: str, own_exclusions: bool = False) -> Sources:
        """The modules of ``tree`` that can change a result: by today's list of the others, or (``own_exclusions``)
        by the list in that tree's ``icllib/cache.py``, as its stamps were computed (none before that list came)."""
        if tree not in self._sources:
            self._sources[tree] = self._working_tree() if tree == _WORKING_TREE else self._commit(tree)
        everything = self._sources[tree]
        excluded = _exclusions(everything["icllib.cache"][1]) if own_exclusions else cache._NOT_COMPUTATION
        return {name: source for name, source in everything.items()
                if not any(name == m or name.startswith(m + ".") for m in excluded)}

    def _working_tree(self) -> Sources:
        return {name: (str(path), path.read_bytes()) for name, path in cache._module_files().items()}

    def _commit(self, commit: str) -> Sources:
        paths = [p for p in self._git("ls-tree", "-r", "--name-only", commit, "--", "icllib").decode().split()
                 if p.endswith(".py")]
        names = {}
        for path in paths:
            parts = Path(path).with_suffix("").parts
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
        blobs = self._git("cat-file", "--batch", data="".join(f"{commit}:{p}\n" for p in names.values()).encode())
        return {name: (path, blob) for (name, path), blob in zip(names.items(), _split_batch(blobs), strict=True)}

    def legacy_digest(self, tree: str, module: str) -> str:
        """The stamp a record made from ``tree`` would carry under the hashing of records before 2026-12."""
        key = (tree, module, "legacy")
        if key not in self._digests:
            self._digests[key] = cache.closure_digest((module,), self.sources(tree, own_exclusions=True), code=False)
        return self._digests[key]

    def digest(self, tree: str, module: str) -> str:
        key = (tree, module, "code")
        if key not in self._digests:
            self._digests[key] = cache.closure_digest((module,), self.sources(tree))
        return self._digests[key]

    def closure(self, tree: str, module: str) -> set[str]:
        return cache.closure((module,), self.sources(tree))


def _statements(source: bytes) -> list[ast.stmt]:
    """The top-level statements of a module, docstrings removed at every level (an ``ast.dump`` then compares
    code only: it leaves out positions)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            node.body = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                                   and isinstance(s.value.value, str))] or [ast.Pass()]
    return [s for s in tree.body if not _is_all(s)]


def _is_all(statement: ast.stmt) -> bool:
    targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
    return any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets)


def _bound(statement: ast.stmt) -> set[str] | None:
    """The names an added statement binds, or None when it is not a definition or an import."""
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {statement.name}
    if isinstance(statement, (ast.Import, ast.ImportFrom)) and all(a.name != "*" for a in statement.names):
        return {(a.asname or a.name).split(".")[0] for a in statement.names}
    return None


def _top_level_names(sources: Sources, modules: set[str]) -> set[str]:
    names: set[str] = set()
    for module in modules:
        for statement in ast.parse(sources[module][1]).body:
            names |= _bound(statement) or {t.id for t in ast.walk(statement) if isinstance(t, ast.Name)
                                           and isinstance(t.ctx, ast.Store)}
    return names


def _same_results(trees: _Trees, maker: str, module: str) -> bool:
    """Check (2) of the module docstring for ``module``'s closure in ``maker`` against the working tree."""
    modules = trees.closure(maker, module)
    return modules == trees.closure(_WORKING_TREE, module) and extends(
        trees.sources(maker), trees.sources(_WORKING_TREE), modules)


def extends(old: Sources, new: Sources, modules: set[str]) -> bool:
    """Whether, in each of ``modules``, the ``new`` source is the ``old`` one (code only) or the old one plus new
    definitions: functions, classes or imports binding names that no module of ``modules`` bound before."""
    taken = _top_level_names(old, modules)
    for name in modules:
        if cache.code_only(old[name][1]) == cache.code_only(new[name][1]):
            continue
        added = list(_statements(new[name][1]))
        for statement in (ast.dump(s) for s in _statements(old[name][1])):  # each old one, unchanged, once
            match = next((i for i, s in enumerate(added) if ast.dump(s) == statement), None)
            if match is None:
                return False
            added.pop(match)
        for statement in added:
            names = _bound(statement)
            if names is None or names & taken:
                return False
    return True


def _exclusions(cache_source: bytes) -> tuple[str, ...]:
    """The ``_NOT_COMPUTATION`` tuple of a version of ``icllib/cache.py`` (empty where it has none)."""
    for statement in ast.parse(cache_source).body:
        if isinstance(statement, ast.Assign) and any(getattr(t, "id", "") == "_NOT_COMPUTATION"
                                                     for t in statement.targets):
            return tuple(ast.literal_eval(statement.value))
    return ()


def _split_batch(output: bytes) -> Iterator[bytes]:
    """The objects of ``git cat-file --batch`` output: a header ``<sha> <type> <size>``, the bytes, a newline."""
    position = 0
    while position < len(output):
        end = output.index(b"\n", position)
        size = int(output[position:end].split()[2])
        yield output[end + 1:end + 1 + size]
        position = end + 1 + size + 1


class Verdict:
    """What re-stamping says of one record: ``status`` is ``"current"`` (stamped with today's hash),
    ``"restamp"`` (made by ``maker``, whose code equals today's), ``"changed"`` (made by ``maker``, whose code
    differs), ``"unknown"`` (no tree of the history has the record's stamp) or ``"chapter"`` (a chapter's own
    function: its stamp covers the chapter's code, which this does not check)."""

    def __init__(self, path: Path, status: str, today: str = "", maker: str = "") -> None:
        self.path, self.status, self.today, self.maker = path, status, today, maker

    def __repr__(self) -> str:
        return f"{self.status:8s} {self.path}" + (f" (made by {self.maker[:10]})" if self.maker else "")


def _record_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.json") if p.name != "pending.json")


def verdicts(directory: Path | None = None) -> list[Verdict]:
    """A :class:`Verdict` for every record under ``directory`` (default: the repository's ``records/``)."""
    root = settings.repository_root()
    if root is None:
        raise records.RecordError("re-stamping reads the history of the book's repository: run it in a checkout")
    directory = Path(directory) if directory is not None else records.records_dir()
    if not directory.is_dir():
        raise ValueError(f"directory must be a folder of records, got {str(directory)!r}")
    trees = _Trees(root)
    history: list[str] | None = None
    out = []
    for path in _record_files(directory):
        info = json.loads(path.read_text())["provenance"]
        module = info["function"].rpartition(".")[0]
        if module.split(".")[0] != "icllib":
            out.append(Verdict(path, "chapter"))
            continue
        today = trees.digest(_WORKING_TREE, module)
        if info["source"] == today:
            out.append(Verdict(path, "current", today))
            continue
        if history is None:
            history = trees.commits()
        candidates = [info.get("commit", ""), *history, _WORKING_TREE]  # a commit names the code for good
        maker = next((tree for tree in dict.fromkeys(candidates) if tree and (
            trees.legacy_digest(tree, module) == info["source"])), "")
        if not maker:
            out.append(Verdict(path, "unknown", today))
            continue
        same = trees.digest(maker, module) == today or _same_results(trees, maker, module)
        out.append(Verdict(path, "restamp" if same else "changed", today, maker))
    return out


def restamp(directory: Path | None = None, dry_run: bool = False) -> list[Verdict]:
    """Re-stamp every record whose verdict is ``"restamp"`` (see the module docstring); returns all verdicts."""
    found = verdicts(directory)
    if dry_run:
        return found
    today = datetime.date.today().isoformat()
    for verdict in found:
        if verdict.status != "restamp":
            continue
        document = json.loads(verdict.path.read_text())
        info = document["provenance"]
        info["restamped"] = {"date": today, "stamp_before": info["source"], "verified_against": verdict.maker,
                             "how": "today's code is that tree's code, or that code plus new definitions only "
                                    "(comments, docstrings and blank lines aside)"}
        info["source"] = verdict.today
        tmp = verdict.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        tmp.replace(verdict.path)
    return found


if __name__ == "__main__":
    results = restamp(dry_run="--dry-run" in sys.argv[1:])
    for v in results:
        print(v)
    counts = {s: sum(v.status == s for v in results) for s in ("current", "restamp", "changed", "unknown", "chapter")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))
