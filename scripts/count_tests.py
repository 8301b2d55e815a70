#!/usr/bin/python3
"""Counts test cases for scripts/test.

count_tests.py TESTLOG.json LABEL   -> one line per meson test: PASS/FAIL lines, where a
    Check suite counts its own cases (from "Checks: N, Failures: F, Errors: E").
count_tests.py --summary RESULTS    -> prints "N passed, N failed"; exit 1 if any failed.
"""
import json
import re
import sys

CHECK = re.compile(r"Checks: (\d+), Failures: (\d+), Errors: (\d+)")


def per_test(path, label):
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            t = json.loads(line)
            name = f"{label}:{t.get('name')}"
            ok = t.get("result") in ("OK", "EXPECTEDFAIL", "SKIP")
            m = CHECK.search(t.get("stdout", "") or "")
            if m:
                n, f_, e = map(int, m.groups())
                passed = n - f_ - e
                if not ok and passed == n:  # crashed or leaked after the suite ran
                    passed, f_ = n - 1, 1
                for i in range(passed):
                    print(f"PASS {name}#{i}")
                for i in range(n - passed):
                    print(f"FAIL {name}#{i}")
            elif t.get("result") == "SKIP":
                print(f"SKIP {name}")
            else:
                print(f"{'PASS' if ok else 'FAIL'} {name}")


def summary(path):
    p = f_ = s = 0
    failed = []
    with open(path) as fh:
        for line in fh:
            if line.startswith("PASS"):
                p += 1
            elif line.startswith("FAIL"):
                f_ += 1
                failed.append(line.strip())
            elif line.startswith("SKIP"):
                s += 1
    for line in failed[:50]:
        print(line)
    tail = f", {s} skipped" if s else ""
    print(f"{p} passed, {f_} failed{tail}")
    return 1 if f_ else 0


if __name__ == "__main__":
    if sys.argv[1] == "--summary":
        sys.exit(summary(sys.argv[2]))
    per_test(sys.argv[1], sys.argv[2])
