#!/usr/bin/env python3
"""Compares Autobahn|Testsuite results (reports/index.json) with the golden
file: every case must have the expected behaviour and close behaviour, and
no case may be FAILED. --bless rewrites the golden file from the results
(keeping its exclude-cases and their reasons)."""

import json
import sys
from collections import Counter


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    results_path, golden_path = sys.argv[1], sys.argv[2]
    bless = "--bless" in sys.argv[3:]
    with open(results_path) as f:
        index = json.load(f)
    if len(index) != 1:
        print(f"expected one agent in {results_path}, found {list(index)}")
        return 2
    (agent, cases), = index.items()
    got = {case: [r["behavior"], r["behaviorClose"]] for case, r in cases.items()}
    with open(golden_path) as f:
        golden = json.load(f)

    counts = Counter(b for b, _ in got.values())
    print(f"{agent}: {len(got)} cases: " + ", ".join(f"{n} {b}" for b, n in sorted(counts.items())))
    failed = sorted((c for c, (b, bc) in got.items() if "FAILED" in (b, bc)), key=case_key)
    for c in failed:
        print(f"FAILED {c}: {got[c]} ({cases[c].get('reportfile')})")

    if bless:
        golden["cases"] = {c: got[c] for c in sorted(got, key=case_key)}
        with open(golden_path, "w") as f:
            json.dump(golden, f, indent=1)
            f.write("\n")
        print(f"wrote {golden_path}")
        return 1 if failed else 0

    expected = golden["cases"]
    missing = sorted(set(expected) - set(got), key=case_key)
    extra = sorted(set(got) - set(expected), key=case_key)
    changed = sorted((c for c in expected if c in got and got[c] != expected[c]), key=case_key)
    for c in missing:
        print(f"missing {c} (expected {expected[c]})")
    for c in extra:
        print(f"new case {c}: {got[c]}")
    for c in changed:
        print(f"changed {c}: expected {expected[c]}, got {got[c]}")
    ok = not (failed or missing or extra or changed)
    print("autobahn: matches expected.json" if ok else "autobahn: DIFFERS from expected.json")
    return 0 if ok else 1


def self_test() -> int:
    """The comparison fails on a FAILED case, a changed, missing or new case,
    and passes on identical results."""
    import os
    import tempfile

    def run(results: dict, golden_cases: dict) -> int:
        with tempfile.TemporaryDirectory() as d:
            r, g = os.path.join(d, "index.json"), os.path.join(d, "expected.json")
            with open(r, "w") as f:
                json.dump({"agent": {c: {"behavior": b, "behaviorClose": bc, "reportfile": "x"}
                                     for c, (b, bc) in results.items()}}, f)
            with open(g, "w") as f:
                json.dump({"exclude-cases": [], "cases": golden_cases}, f)
            argv = sys.argv
            sys.argv = ["compare.py", r, g]
            try:
                return main()
            finally:
                sys.argv = argv

    good = {"1.1.1": ["OK", "OK"], "6.4.3": ["NON-STRICT", "OK"]}
    checks = [
        ("identical results pass", run(good, good), 0),
        ("a FAILED case fails", run({**good, "2.1": ["FAILED", "OK"]}, {**good, "2.1": ["FAILED", "OK"]}), 1),
        ("a changed case fails", run({**good, "1.1.1": ["OK", "UNCLEAN"]}, good), 1),
        ("a missing case fails", run({"1.1.1": ["OK", "OK"]}, good), 1),
        ("a new case fails", run({**good, "7.1.1": ["OK", "OK"]}, good), 1),
    ]
    bad = [name for name, got, want in checks if got != want]
    print("self-test: " + ("ok" if not bad else "FAILED: " + ", ".join(bad)))
    return 1 if bad else 0


def case_key(case: str):
    return [int(p) for p in case.split(".")]


if __name__ == "__main__":
    sys.exit(main())
