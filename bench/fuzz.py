"""The long fuzzing run: the properties of tests/test_fuzz.py with many more examples each.

Runs pytest on tests/test_fuzz.py under Hypothesis profile "long" (GRANARY_FUZZ_PROFILE=long),
--examples N per property (GRANARY_FUZZ_EXAMPLES; default 20000), with this tree's sources.
Hypothesis prints the smallest failing input of any property that breaks; keep it as an
@example in tests/test_fuzz.py when fixing the bug.

    python3 bench/fuzz.py                         # 20000 examples per property (a few minutes per property)
    python3 bench/fuzz.py --examples 2000 -k resource_names
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=20000, help="examples per property (20000)")
    ap.add_argument("-k", dest="select", default="", help="only the properties whose name matches (pytest -k)")
    args = ap.parse_args()
    env = dict(os.environ, GRANARY_FUZZ_PROFILE="long", GRANARY_FUZZ_EXAMPLES=str(args.examples))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "0",
           "--hypothesis-show-statistics", str(ROOT / "tests" / "test_fuzz.py")]
    if args.select:
        cmd += ["-k", args.select]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
