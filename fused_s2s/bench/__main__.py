"""`python -m fused_s2s.bench ...`: the fused-s2s-bench command."""
import sys

from .cli import main

sys.exit(main())
