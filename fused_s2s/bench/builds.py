"""The A/B gate's builds: git revisions of this project resolved, built once each into a cache, and found
again on the next run.

A revision is built with pip into its own folder (`pip install --no-build-isolation --no-deps --target
CACHE/lib-<commit>-<python>-<torch> SRC`): the torch already installed is used, nothing is downloaded, and
the folder is never the checkout's own editable build. SRC is one source folder per cache that each build
syncs to its revision file by file (unchanged files keep their timestamps), and scikit-build-core keeps its
CMake build folder inside it, so a build of a revision close to the last one built recompiles only the
files that differ. ccache, when it is on PATH, is CMake's compiler launcher as well, which also helps
across caches. A finished build is marked complete and reused as it is; the cache is locked while a build
runs, so two gates on one machine do not build into the same folder at once.
"""
from __future__ import annotations

import fcntl
import io
import os
import shutil
import subprocess
import sys
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional


class GateError(Exception):
    """A problem with the gate's input (revision, build, file) that ends it with a one-line message."""


def default_cache() -> Path:
    """$FUSED_S2S_AB_CACHE, else ~/.cache/fused_s2s/ab (kept across clones on one machine)."""
    if os.environ.get("FUSED_S2S_AB_CACHE"):
        return Path(os.environ["FUSED_S2S_AB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fused_s2s" / "ab"


def _git(repo: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    except OSError as e:
        raise GateError(f"git is needed to resolve revisions ({e})") from None
    if out.returncode != 0:
        raise GateError(f"git {' '.join(args)}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'failed'}")
    return out.stdout.strip()


def repo_root(start: Path) -> Path:
    """The top of the git checkout holding `start`; GateError if there is none or it is not fused_s2s."""
    try:
        top = Path(_git(start, "rev-parse", "--show-toplevel"))
    except GateError:
        raise GateError(f"{start} is not inside a git checkout of fused_s2s (run ab from one, or pass --repo)") from None
    if not (top / "fused_s2s" / "__init__.py").is_file() or not (top / "pyproject.toml").is_file():
        raise GateError(f"{top} is a git checkout, but not of fused_s2s (no fused_s2s/ and pyproject.toml)")
    return top


def resolve(repo: Path, rev: str) -> str:
    """The full commit id of `rev`; GateError naming it if git does not know it."""
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except GateError:
        raise GateError(f"unknown revision {rev!r} in {repo}") from None


def base_for_head(repo: Path, recorded: str, head: str) -> tuple[str, str]:
    """The base commit for a baseline recorded at `recorded`: itself if it is an ancestor of `head` (or
    head itself), else their merge-base. Returns (commit, how it was chosen)."""
    commit = resolve(repo, recorded)
    if subprocess.run(["git", "merge-base", "--is-ancestor", commit, head], cwd=repo).returncode == 0:
        return commit, f"the baseline's commit {commit[:12]}"
    try:
        mb = _git(repo, "merge-base", commit, head)
    except GateError:
        raise GateError(f"the baseline's commit {commit[:12]} shares no history with head {head[:12]}") from None
    return mb, f"merge-base {mb[:12]} of the baseline's commit {commit[:12]} (not an ancestor of head) and head"


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sync_source(repo: Path, commit: str, dest: Path) -> None:
    """Make `dest` hold exactly the tracked files of `commit`, rewriting only files whose bytes differ (so
    make/ninja rebuild only those); the build/ folder inside is left alone."""
    try:
        blob = subprocess.run(["git", "archive", "--format=tar", commit], cwd=repo, capture_output=True,
                              check=True).stdout
    except subprocess.CalledProcessError as e:
        raise GateError(f"git archive {commit[:12]} failed: {e.stderr.decode().strip()}") from None
    dest.mkdir(parents=True, exist_ok=True)
    wanted: set[Path] = set()
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        for member in tar:
            path = dest / member.name
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():
                continue  # symlinks and the like: this project has none
            wanted.add(path)
            data = tar.extractfile(member).read()
            if not path.is_file() or path.read_bytes() != data:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                path.chmod(member.mode & 0o777 | 0o600)
    for path in sorted(dest.rglob("*"), reverse=True):
        rel = path.relative_to(dest)
        if rel.parts[0] == "build":
            continue
        if path.is_file() and path not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _build_tag() -> str:
    import torch

    return f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}"


def build(repo: Path, commit: str, cache: Path, log: Optional[Path] = None) -> tuple[Path, bool]:
    """The folder holding `commit` built and installed (building it now unless the cache has it), and
    whether it came from the cache. GateError with the log's last lines if the build fails."""
    lib = cache / f"lib-{commit[:16]}-{_build_tag()}"
    if (lib / ".complete").is_file():
        return lib, True
    with _locked(cache):
        if (lib / ".complete").is_file():  # another gate built it while this one waited
            return lib, True
        src = cache / "src"
        sync_source(repo, commit, src)
        shutil.rmtree(lib, ignore_errors=True)
        log = log or cache / f"build-{commit[:12]}.log"
        cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-compile",
               "--disable-pip-version-check", "--target", str(lib), str(src)]
        if shutil.which("ccache"):
            cmd += ["--config-settings=cmake.define.CMAKE_CXX_COMPILER_LAUNCHER=ccache"]
        with open(log, "w") as f:
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ,
                                  "PIP_ROOT_USER_ACTION": "ignore"})
        if done.returncode != 0:
            tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-3:]
            raise GateError(f"revision {commit[:12]} does not build (pip exit {done.returncode}; log {log}): "
                            + " / ".join(t.strip() for t in tail))
        (lib / ".complete").write_text(commit + "\n")
    return lib, False
