"""Compile every shipped Triton kernel × config × dtype for sm_80 and sm_90 (no GPU needed) and print the
resource table: kernel, config, dtype, arch, registers, shared memory, spills. Exits 1 on any compile error or
spill. Run without TRITON_INTERPRET (the interpreter replaces the kernels):

    python scripts/triton_aot_check.py [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("triton_aot_check: unset TRITON_INTERPRET: the interpreter replaces the kernels it compiles")

from fused_s2s.triton.aot import check, format_table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    results = check()
    print(format_table(results))
    bad = [r for r in results if r.error or r.spills != 0]
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.row() for r in results], f, indent=1)
    print(f"\n{len(results)} compiles, {len(bad)} failed or spilled")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
