"""The RPC fuzz tests at scale: 10,000 cases per test, and the status codes each RPC answered.

    .venv/bin/python bench/fuzz_rpcs.py [--cases 10000]

Runs the RPC properties of ``tests/test_fuzzing.py`` (well-formed random requests, out-of-range
``Timestamp`` values, undecodable request bodies for every method) against a real server on a
generated workspace, with ``ENDCAP_FUZZ_EXAMPLES`` cases per test, and prints the count of every
status code per RPC. Any ``INTERNAL`` or ``UNKNOWN`` fails the run (exit status 1).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RPC_TESTS = "recommend or similar_items or record_events or model_info or undecodable"
PYTEST = ["-m", "pytest", "tests/test_fuzzing.py", "-q", "-s", "-p", "no:cacheprovider", "-k", RPC_TESTS]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases per test (default 10000)")
    args = parser.parse_args()
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, *PYTEST],
        cwd=ROOT,
        env={**os.environ, "ENDCAP_FUZZ_EXAMPLES": str(args.cases), "OPENBLAS_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    cases = re.search(r"^fuzz cases per entry point: (.*)$", run.stdout, re.MULTILINE)
    codes = re.findall(r"^status codes for (\w+): (.*)$", run.stdout, re.MULTILINE)
    print(f"{args.cases} cases per test, {seconds:.0f} s")
    if cases:
        print(f"cases per test: {cases.group(1)}")
    print(f"{'RPC':<14} status codes (every case, raw-byte and timestamp cases included)")
    for rpc, counts in codes:
        print(f"{rpc:<14} {counts}")
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    print(summary)
    if run.returncode != 0:
        print(run.stdout[-5000:], run.stderr[-3000:], sep="\n", file=sys.stderr)
    return 0 if run.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
