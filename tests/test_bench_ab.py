"""The A/B gate (fused-s2s-bench ab): revisions and baselines resolved in a small git repository, the error
paths (each one line and exit code 2), and an end-to-end run on the smoke grid of two installs of this
build. Nothing here judges a timing."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("scipy")
pytest.importorskip("tqdm")

from fused_s2s.bench.builds import GateError, base_for_head, build, repo_root, resolve, sync_source  # noqa: E402
from fused_s2s.bench.cli import main  # noqa: E402

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository shaped like fused_s2s: main with two commits, a branch that left main after the first."""
    r = tmp_path / "repo"
    (r / "fused_s2s").mkdir(parents=True)
    git(r, "init", "-q", "-b", "main")
    git(r, "config", "user.email", "t@example.invalid")
    git(r, "config", "user.name", "t")
    (r / "fused_s2s" / "__init__.py").write_text("")
    (r / "pyproject.toml").write_text("this is not toml [\n")  # any build of it fails at once
    (r / "data.txt").write_text("one\n")
    git(r, "add", ".")
    git(r, "commit", "-q", "-m", "first")
    git(r, "checkout", "-q", "-b", "side")
    (r / "side.txt").write_text("side\n")
    git(r, "add", ".")
    git(r, "commit", "-q", "-m", "side")
    git(r, "checkout", "-q", "main")
    (r / "data.txt").write_text("two\n")
    git(r, "commit", "-q", "-am", "second")
    return r


@needs_git
def test_revisions_resolve(repo):
    assert repo_root(repo / "fused_s2s") == repo
    head = resolve(repo, "HEAD")
    assert resolve(repo, "main") == head and len(head) == 40
    assert resolve(repo, "HEAD~1") == git(repo, "rev-parse", "main~1")
    with pytest.raises(GateError, match="unknown revision 'no-such-branch'"):
        resolve(repo, "no-such-branch")


@needs_git
def test_base_is_the_baseline_commit_or_its_merge_base(repo):
    head, first, side = resolve(repo, "main"), resolve(repo, "main~1"), resolve(repo, "side")
    assert base_for_head(repo, first, head)[0] == first  # an ancestor: itself
    assert base_for_head(repo, head, head)[0] == head
    commit, how = base_for_head(repo, side, head)  # a commit off main: where it branched
    assert commit == first and "merge-base" in how


@needs_git
def test_not_a_fused_s2s_checkout(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q")
    with pytest.raises(GateError, match="not of fused_s2s"):
        repo_root(other)
    with pytest.raises(GateError, match="not inside a git checkout"):
        repo_root(Path("/"))


@needs_git
def test_source_sync_rewrites_only_what_changed(repo, tmp_path):
    dest = tmp_path / "src"
    sync_source(repo, resolve(repo, "side"), dest)
    assert (dest / "side.txt").read_text() == "side\n" and (dest / "data.txt").read_text() == "one\n"
    (dest / "build").mkdir()
    (dest / "build" / "cache").write_text("kept")
    mtime = (dest / "pyproject.toml").stat().st_mtime_ns
    sync_source(repo, resolve(repo, "main"), dest)
    assert not (dest / "side.txt").exists() and (dest / "data.txt").read_text() == "two\n"
    assert (dest / "pyproject.toml").stat().st_mtime_ns == mtime  # unchanged: not rewritten
    assert (dest / "build" / "cache").read_text() == "kept"  # the build folder survives


@needs_git
def test_a_revision_that_does_not_build(repo, tmp_path):
    with pytest.raises(GateError, match=r"does not build \(pip exit"):
        build(repo, resolve(repo, "HEAD"), tmp_path / "cache")


def run_ab(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["ab", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@needs_git
@pytest.mark.parametrize("make_args,message", [
    (lambda r, t: ["--base", "nope", "--head", "HEAD"], "unknown revision 'nope'"),
    (lambda r, t: ["--base", "HEAD", "--head", "HEAD"], "does not build"),
    (lambda r, t: ["--baseline", str(t / "absent.json"), "--head", "HEAD"], "no such file"),
    (lambda r, t: ["--baseline", str(t / "bad.json"), "--head", "HEAD"], "not valid JSON"),
    (lambda r, t: ["--baseline", str(t / "nocommit.json"), "--head", "HEAD"], "records no commit"),
    (lambda r, t: ["--baseline", str(t / "full.json"), "--head", "HEAD", "--quick"], "'full' grid"),
    (lambda r, t: ["--baseline", str(t / "other.json"), "--head", "HEAD", "--quick"], "another machine kind"),
    (lambda r, t: ["--base", "HEAD", "--head", "HEAD", "--pairs", "4"], "--pairs must be at least 5"),
    (lambda r, t: ["--base-lib", str(t), "--head-lib", str(t)], "holds no installed fused_s2s"),
])
def test_bad_input_is_one_line_and_exit_2(repo, tmp_path, capsys, make_args, message):
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "nocommit.json").write_text(json.dumps({"benchmarks": [], "settings": {"grid": "quick"}}))
    (tmp_path / "full.json").write_text(json.dumps({"benchmarks": [], "settings": {"grid": "full"},
                                                    "commit_info": {"id": resolve(repo, "HEAD~1")}}))
    (tmp_path / "other.json").write_text(json.dumps({"benchmarks": [], "settings": {"grid": "quick"},
                                                     "machine_info": {"machine_kind": "cpu-elsewhere-1t"},
                                                     "commit_info": {"id": resolve(repo, "HEAD~1")}}))
    code, out, err = run_ab(capsys, *make_args(repo, tmp_path), "--repo", str(repo), "--cache",
                            str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 2
    assert message in err and err.startswith("fused-s2s-bench ab: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err


def install_copy(dest: Path, broken_decoder: bool = False) -> Path:
    """An install of the fused_s2s this test imports (its Python files and built extension), as `pip install
    --target` would lay it out; with broken_decoder, FusedDecoder.step raises (a feature head lacks)."""
    import fused_s2s
    import fused_s2s._C

    pkg = Path(fused_s2s.__file__).resolve().parent
    shutil.copytree(pkg, dest / "fused_s2s", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(fused_s2s._C.__file__, dest / "fused_s2s")
    if broken_decoder:
        path = dest / "fused_s2s" / "nn" / "decoder.py"
        path.write_text(path.read_text() + "\n\ndef _broken(*a, **k):\n    raise NotImplementedError('no step')\n\n"
                        "FusedDecoder.step = _broken\n")
    return dest


def test_end_to_end_two_installs_of_the_same_code(tmp_path, capsys, monkeypatch):
    base, head = install_copy(tmp_path / "a"), install_copy(tmp_path / "b", broken_decoder=True)
    out_dir = tmp_path / "out"
    # A relative --out, as .ci/run passes it: the workers run in another folder, so the gate must hand them
    # absolute paths (a relative one once sent their reports into a temporary folder and crashed the gate).
    monkeypatch.chdir(tmp_path)
    code, out, err = run_ab(capsys, "--base-lib", str(base), "--head-lib", str(head), "--grid", "smoke",
                            "--cases", "fwd B2", "--pairs", "5",
                            "--out", "out", "--no-progress")
    assert code == 0, out + err
    summary = json.loads((out_dir / "ab.json").read_text())
    assert summary["pairs"] == 5 and summary["grid"] == "smoke"
    results = {r["name"]: r for r in summary["results"]}
    assert results and all(len(r["base"]) == 5 and len(r["head"]) == 5 for r in results.values())
    assert all(r["verdict"] in ("same", "slower", "faster") for r in results.values())
    # Ten worker processes ran, alternating, each loading its own install.
    for side, lib in (("base", base), ("head", head)):
        for i in range(1, 6):
            rep = json.loads((out_dir / f"{side}-{i}.json").read_text())
            assert rep["machine_info"]["fused_s2s_path"] == str((lib / "fused_s2s").resolve())
    assert "| case | base speedup | head speedup | head/base time |" in out and "ab: PASS" in out


def test_case_missing_from_head_is_reported_and_fails(tmp_path, capsys):
    base, head = install_copy(tmp_path / "a"), install_copy(tmp_path / "b", broken_decoder=True)
    code, out, err = run_ab(capsys, "--base-lib", str(base), "--head-lib", str(head), "--grid", "smoke",
                            "--cases", "greedy step B1", "--pairs", "5", "--out", str(tmp_path / "out"),
                            "--no-progress")
    assert code == 1, out + err
    assert "only in base" in out and "raised in the head build: NotImplementedError: no step" in out
    assert "ab: FAIL" in out and "missing from head" in out
