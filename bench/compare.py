"""Compare two `make bench` runs goal by goal: each goal's value before and after, the
change, and whether the two runs can tell them apart (the change against both runs'
spreads, as bench/goals.py judges a single run).

Usage: python bench/compare.py BEFORE.json AFTER.json [--markdown]

Both files are bench/results.json from a full run, ideally on one machine one after the
other; the goals are read with this checkout's bench/goals.py, so a goal either run lacks
is listed as missing on that side rather than guessed.
"""
import argparse
import json
import sys

import goals


def load(path):
    with open(path) as f:
        results = json.load(f)
    return results, {g.name: g for g in goals.goals(results)}


def compare(before, after):
    """Rows of (name, before goal or None, after goal or None, relative change or None,
    whether the change lies within the runs' combined spread)."""
    rows = []
    names = list(before) + [n for n in after if n not in before]
    for name in names:
        b, a = before.get(name), after.get(name)
        if b is None or a is None or not b.value:
            rows.append((name, b, a, None, None))
            continue
        change = a.value / b.value - 1
        spreads = [g.spread for g in (b, a) if g.spread is not None]
        within = abs(change) <= sum(spreads) if spreads else None
        rows.append((name, b, a, change, within))
    return rows


def cell(goal):
    return "missing" if goal is None else f"{goal.value:.3g} {goal.verdict}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = p.parse_args()
    (rb, before), (ra, after) = load(args.before), load(args.after)
    for label, r in (("before", rb), ("after", ra)):
        m = r["machine"]
        print(f"{label}: {m.get('commit')} on {m.get('cpu')} ({m.get('nproc')} cores), "
              f"{m.get('date')}", file=sys.stderr)
    rows = compare(before, after)
    if args.markdown:
        print("| Goal | Wanted | Before | After | Change | Within spread |")
        print("| --- | --- | --- | --- | --- | --- |")
    for name, b, a, change, within in rows:
        wanted = (a or b).wanted
        ch = "" if change is None else f"{change:+.1%}"
        sp = {None: "n/a", True: "yes", False: "no"}[within]
        if args.markdown:
            print(f"| {name} | {wanted} | {cell(b)} | {cell(a)} | {ch} | {sp} |")
        else:
            print(f"{name}\n    wanted {wanted}: before {cell(b)}, after {cell(a)}, "
                  f"change {ch or 'n/a'}, within spread: {sp}")
    same = sum(1 for _, b, a, _, _ in rows if b and a and b.verdict == a.verdict)
    print(f"\n{same} of {len(rows)} goals have the same verdict before and after.",
          file=sys.stderr)


if __name__ == "__main__":
    main()
