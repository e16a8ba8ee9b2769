"""The baseline gate of ``llamactl load``: is a load run slower than an earlier one, beyond the noise?

Per (cell, load) two figures are compared, oriented so that higher is better: output tok/s
(new/old) and end-to-end latency p90 (old/new). Below ``warn_below`` is WARN, below ``fail_below``
is a REGRESSION (exit 6), as in :mod:`llamactl.report.gate` (one number per load: no noise band).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamactl.core.errors import BadInput
from llamactl.report import gate, runs
from llamactl.report.history import History

OUTPUT_TPS, E2E_P90 = "output tok/s", "e2e p90 s"


def baseline(spec: str, profile: str, machine_id: str, history: History) -> tuple[str, dict[str, Any]]:
    """``--baseline last|RUN_ID|FILE`` -> (label, the load run). Raises BadInput when it names no load run."""
    spec = spec.strip()
    if spec == "last":
        found = history.last_run(profile, runs.LOAD, machine_id)
        if found is None:
            raise BadInput(f"--baseline last: no earlier load run of {profile} on this machine",
                           hint="run `llamactl load` once without --baseline first")
        return f"run {found[0]}", found[1]
    if spec.isdigit():
        data = history.get(int(spec))
        if runs.kind_of(data) != runs.LOAD:
            raise BadInput(f"--baseline {spec}: history run {spec} is a {runs.kind_of(data)} run, not a load run")
        return f"run {spec}", data
    path = Path(spec).expanduser()
    if not path.is_file():
        raise BadInput(f"--baseline {spec!r}: not 'last', a history run id, or a load JSON file")
    loaded = runs.load(path)
    if len(loaded) != 1 or loaded[0]["kind"] != runs.LOAD:
        raise BadInput(f"--baseline {spec}: not a single load run")
    return f"file {path.name}", loaded[0]


def compare(current: dict[str, Any], ref: dict[str, Any], label: str, th: gate.Thresholds) -> list[gate.Verdict]:
    """Verdicts per (cell, load) found in both runs; a load missing from the baseline is ``no baseline``."""
    index = {(c.get("cell"), lv.get("level")): lv for c in ref.get("cells") or [] for lv in c.get("levels") or []}
    out: list[gate.Verdict] = []
    for c in current.get("cells") or []:
        for lv in c.get("levels") or []:
            old = index.get((c.get("cell"), lv.get("level")))
            if old is None:
                out.append(gate.Verdict(c["cell"], lv["level"], OUTPUT_TPS, gate.NO_BASELINE, f"{label} has no such load"))
                continue
            for metric, new_v, old_v, higher in (
                    (OUTPUT_TPS, lv.get("output_tok_per_s"), old.get("output_tok_per_s"), True),
                    (E2E_P90, (lv.get("e2e_s") or {}).get("p90"), (old.get("e2e_s") or {}).get("p90"), False)):
                if not new_v or not old_v:
                    out.append(gate.Verdict(c["cell"], lv["level"], metric, gate.NO_BASELINE, f"{label}: no {metric}"))
                    continue
                ratio = new_v / old_v if higher else old_v / new_v
                verdict = gate.OK if ratio >= th.warn_below else gate.WARN if ratio >= th.fail_below else gate.REGRESSION
                if verdict == gate.OK and ratio > 1 / th.warn_below:
                    verdict = gate.FASTER
                out.append(gate.Verdict(c["cell"], lv["level"], metric, verdict, label, old_v, new_v, ratio, n=(1, 1)))
    return out
