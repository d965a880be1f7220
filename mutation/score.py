"""The score of a cosmic-ray session per module, and every surviving mutant with its diff.

    python mutation/score.py SESSION

Score = killed / (killed + survived); a mutant that ran past the timeout counts as killed. Incompetent
mutants (the test command could not start) and pending ones are shown apart and left out of the score.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import MutationSpec, TestOutcome, WorkResult

COLUMNS = ("mutants", "killed", "timeout", "survived", "incompetent", "pending")


def outcome(result: WorkResult | None) -> str:
    if result is None:
        return "pending"
    if result.test_outcome == TestOutcome.SURVIVED:
        return "survived"
    if result.test_outcome == TestOutcome.KILLED:
        return "timeout" if result.output == "timeout" else "killed"
    return "incompetent"  # the test command failed to run, or cosmic-ray itself failed on this mutant


def changed_lines(diff: str | None) -> list[str]:
    return [line for line in (diff or "").splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def describe(mutation: MutationSpec) -> str:
    where = f"{mutation.module_path}:{mutation.start_pos[0]}"
    return f"{where} {mutation.definition_name} {mutation.operator_name.removeprefix('core/')} #{mutation.occurrence}"


def main(session: str) -> int:
    with use_db(session, WorkDB.Mode.open) as db:
        results = dict(db.results)
        items = db.work_items
    counts: dict[str, Counter[str]] = {}
    survivors: list[tuple[MutationSpec, WorkResult]] = []
    for item in items:
        result = results.get(item.job_id)
        mutation = item.mutations[0]
        kind = outcome(result)
        module = counts.setdefault(str(mutation.module_path), Counter())
        module["mutants"] += 1
        module[kind] += 1
        if kind == "survived" and result is not None:
            survivors.append((mutation, result))
    counts["total"] = sum(counts.values(), Counter())
    width = max(len(name) for name in counts)
    print(f"{'module':<{width}} " + " ".join(f"{c:>11}" for c in COLUMNS) + "       score")
    for name, c in counts.items():
        judged = c["killed"] + c["timeout"] + c["survived"]
        score = f"{100 * (c['killed'] + c['timeout']) / judged:10.1f}%" if judged else "          -"
        print(f"{name:<{width}} " + " ".join(f"{c[col]:>11}" for col in COLUMNS) + " " + score)
    print(f"\nsurviving mutants: {len(survivors)}")
    for mutation, result in sorted(survivors, key=lambda s: (str(s[0].module_path), s[0].start_pos)):
        print(f"\n{describe(mutation)}")
        for line in changed_lines(result.diff):
            print(f"    {line[0]} {line[1:].strip()}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).exists():
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1]))
