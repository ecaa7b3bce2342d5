"""One measuring process of the A/B gate (`fused-s2s-bench ab`): load one build of fused_s2s, run the
selected grid once, write its report JSON.

    python -m <harness>.worker [--lib DIR] --json PATH [--quick] [--cases TEXT] ...

The gate runs this module from a copy of the invoking checkout's fused_s2s/bench (the harness), so both
builds are measured by the same benchmark code, as asv measures every revision with the current
benchmarks. `--lib DIR` is a folder holding an installed fused_s2s (`pip install --target DIR`): it goes
first on sys.path and any editable-install finder of fused_s2s is removed, so this process measures that
build and no other; without --lib, the fused_s2s this Python imports is measured. Importing fused_s2s
waits until the path is set, so nothing here imports it at module level.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Optional

from .options import add_grid_arguments, resolve_grid_arguments

# Module-name prefixes of the meta-path finders that editable installs put ahead of sys.path
# (scikit-build-core's redirect finder, setuptools' editable finder).
_EDITABLE_FINDER_MODULES = ("_editable_skbc_", "__editable___")


def use_lib(lib: Path) -> None:
    """Make `import fused_s2s` load the build installed in `lib`, and fail if it would load another."""
    if not (lib / "fused_s2s" / "__init__.py").is_file():
        raise SystemExit(f"worker: {lib} holds no installed fused_s2s (no fused_s2s/__init__.py)")
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not type(f).__module__.startswith(_EDITABLE_FINDER_MODULES)]
    sys.path.insert(0, str(lib))
    importlib.invalidate_caches()
    import fused_s2s

    where = Path(fused_s2s.__file__).resolve()
    if lib.resolve() not in where.parents:
        raise SystemExit(f"worker: asked to measure the build in {lib}, but fused_s2s loads from {where}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fused-s2s-bench worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lib", type=Path, default=None, help="folder holding the build to measure")
    parser.add_argument("--json", type=Path, required=True, help="where this process writes its report")
    add_grid_arguments(parser)
    args = parser.parse_args(argv)
    resolve_grid_arguments(parser, args)
    if args.lib is not None:
        use_lib(args.lib)
    from .report import run_grid

    report = run_grid(args, progress=False, keep_going=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
