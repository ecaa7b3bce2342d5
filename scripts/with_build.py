"""Run a Python module against one installed build of fused_s2s rather than the editable one.

    python scripts/with_build.py LIB_DIR -m pytest tests/...

LIB_DIR holds a `pip install --target LIB_DIR .` build (scripts/sanitize.sh makes one). Editable-install
finders are taken out of sys.meta_path and LIB_DIR goes first on sys.path, so `import fused_s2s` loads that
build; it is checked before the module runs. The checkout stays on sys.path after it, for `tests.utils`.
"""
from __future__ import annotations

import importlib
import runpy
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        sys.exit("usage: python scripts/with_build.py LIB_DIR -m MODULE [ARGS...]")
    lib = Path(sys.argv[1]).resolve()
    module = sys.argv[3]
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not type(f).__module__.startswith(("_editable_skbc_", "__editable___"))]
    repo = Path(__file__).resolve().parent.parent
    sys.path[:] = [str(lib), str(repo)] + [p for p in sys.path if Path(p or ".").resolve() != repo]
    importlib.invalidate_caches()
    import fused_s2s

    where = Path(fused_s2s.__file__).resolve()
    if lib not in where.parents:
        sys.exit(f"with_build: fused_s2s loads from {where}, not from {lib}")
    print(f"with_build: fused_s2s from {where.parent}", flush=True)
    sys.argv = [module] + sys.argv[4:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
