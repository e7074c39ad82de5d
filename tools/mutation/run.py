"""Run mutmut over the core modules, one scratch copy per module, and print the scores.

Usage (from the repository root; ``make mutation`` runs every target with two workers,
``MUTATION_CHILDREN=1 make mutation`` with one)::

    .venv/bin/python tools/mutation/run.py                 # every target in targets.toml
    .venv/bin/python tools/mutation/run.py --children 2    # two mutants at a time
    .venv/bin/python tools/mutation/run.py math kv_cache   # some targets
    .venv/bin/python tools/mutation/run.py --report        # scores of finished runs only
    .venv/bin/python tools/mutation/run.py --resume math   # go on from an interrupted run
    .venv/bin/python tools/mutation/run.py --collect math  # score an interrupted run as it is
    .venv/bin/python tools/mutation/run.py train_loop --only "attnkit.train.loop.x__step*"

``--only GLOB`` (repeatable) runs only the mutants whose names match, in its own scratch copy
``runs/mutation/<name>.only/`` (a full run's results stay): a quick check of the tests written
for some functions while working. Its score covers those mutants only; a module's score comes
from a full run.

Each target gets ``runs/mutation/<name>/``: a copy of ``src/`` and ``tests/`` taken when the run
starts, a pyproject.toml that tells mutmut which file to mutate and which tests to run, and
after the run ``summary.json`` (counts) and ``survivors.txt`` (``mutmut show`` of each mutant
that no test killed). The score is killed / (killed + survived + timeouts-that-were-not-kills +
no-tests): a mutant that no selected test reaches counts against the module.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
TARGETS = Path(__file__).with_name("targets.toml")
RUNS = ROOT / "runs" / "mutation"
#: The pytest settings of the project (markers, timeout) that every scratch copy keeps.
PYTEST_SETTINGS = """
[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-ra --strict-markers"
timeout = 600
markers = ["slow: longer tests (still run in CI)", "cuda: needs a CUDA device"]
"""


def load_targets() -> tuple[list[str], dict[str, dict[str, object]]]:
    config = tomllib.loads(TARGETS.read_text())
    return list(config["defaults"]["pytest_args"]), dict(config["modules"])


def timeout_multiplier() -> float:
    """mutmut ends a mutant after 2 x multiplier x (its tests' clean CPU time + 1 s) of CPU."""
    return float(tomllib.loads(TARGETS.read_text())["defaults"].get("timeout_multiplier", 15.0))


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(name: str, target: dict[str, object], pytest_args: list[str],
            resume: bool = False, work: Path | None = None) -> Path:
    """A fresh scratch copy for one target, with the mutmut config that selects it."""
    work = work or scratch(name)
    if resume and (work / "mutants").is_dir():
        return work  # mutmut keeps each verdict: the run goes on where it stopped
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    tests = [str(t) for t in target["tests"]]  # type: ignore[attr-defined]
    # a target may add pytest options, e.g. a per-test timeout where a mutant can loop forever
    pytest_args = pytest_args + [str(a) for a in target.get("pytest_args", [])]  # type: ignore[attr-defined]
    present = [t for t in tests if (work / t.split("::")[0]).exists()]
    missing = sorted(set(tests) - set(present))
    if missing:
        print(f"[{name}] tests not found, left out: {missing}", flush=True)
    (work / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f"only_mutate = {toml_list([str(target['path'])])}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(present)}\n"
        f"pytest_add_cli_args = {toml_list(pytest_args)}\n"
        f"timeout_multiplier = {timeout_multiplier()}\n"
        + PYTEST_SETTINGS)
    return work


# mutmut hands each mutant its tests as a set: a fixed hash seed keeps their order, and so the
# verdict of a mutant that crashes the worker in one test and fails another, from run to run.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYPOTHESIS_PROFILE": "mutation",
       "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
MUTMUT = [sys.executable, "-m", "mutmut"]


def scratch(name: str, only: list[str] | None = None) -> Path:
    """A target's scratch copy: ``runs/mutation/<name>/``, or ``<name>.only/`` for ``--only``."""
    return RUNS / f"{name}.only" if only else RUNS / name


def run_one(name: str, target: dict[str, object], pytest_args: list[str],
            children: int, resume: bool, only: list[str] | None = None) -> dict[str, object]:
    work = prepare(name, target, pytest_args, resume, scratch(name, only))
    start = time.monotonic()
    with open(work / "mutmut.log", "a" if resume else "w") as log:
        code = subprocess.call([*MUTMUT, "run", "--max-children", str(children), *(only or [])],
                               cwd=work, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    return collect(name, target, time.monotonic() - start, code, children, only)


def collect(name: str, target: dict[str, object], elapsed: float | None = None,
            code: int | None = None, children: int | None = None,
            only: list[str] | None = None) -> dict[str, object]:
    """Counts, score and survivors of a run, finished or not (unrun mutants count as not
    killed, under "not_checked"). ``only``: the globs of a partial run (``--only``)."""
    work = scratch(name, only)
    subprocess.call([*MUTMUT, "export-cicd-stats"], cwd=work, env=ENV,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    previous = work / "summary.json"
    if elapsed is None and previous.exists():
        elapsed = json.loads(previous.read_text()).get("seconds")
    if elapsed is None:  # a run whose driver was stopped: from its config to its last output
        elapsed = (work / "mutmut.log").stat().st_mtime - (work / "pyproject.toml").stat().st_mtime
    if children is None and previous.exists():
        children = json.loads(previous.read_text()).get("children")
    summary = summarize(name, target, work, elapsed or 0.0, code, children, only)
    write_survivors(work, only)
    return summary


def summarize(name: str, target: dict[str, object], work: Path, elapsed: float,
              code: int | None, children: int | None = None,
              only: list[str] | None = None) -> dict[str, object]:
    stats_file = work / "mutants" / "mutmut-cicd-stats.json"
    counts = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    if only:  # the stats count every mutant; a partial run scores the matching ones
        counts = partial_counts(work, only)
    killed = int(counts.get("killed", 0))
    timeouts = int(counts.get("timeout", 0))  # hypothesis hunting a failure past the limit
    not_killed = sum(int(counts.get(k, 0)) for k in ("survived", "no_tests", "suspicious",
                                                        "segfault"))
    total = killed + timeouts + not_killed  # mutants with a verdict (all, if the run finished)
    summary = {"name": name, "path": target["path"], "exit_code": code, "only": only,
               "seconds": round(elapsed), "children": children, "counts": counts,
               "score": round(100 * (killed + timeouts) / total, 1) if total else None}
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def mutant_statuses(work: Path) -> dict[str, str]:
    """Each mutant's status as ``mutmut results --all true`` prints it (``killed``, ...)."""
    listing = subprocess.run([*MUTMUT, "results", "--all", "true"], cwd=work, env=ENV,
                             capture_output=True, text=True).stdout
    return {name.strip(): status.strip() for name, _, status in
            (line.rpartition(":") for line in listing.splitlines() if ":" in line)}


def partial_counts(work: Path, only: list[str]) -> dict[str, int]:
    """Counts of the mutants matching ``only`` (under mutmut's names for the statuses)."""
    keys = {"killed": "killed", "timeout": "timeout", "survived": "survived",
            "no tests": "no_tests", "suspicious": "suspicious", "segfault": "segfault"}
    counts = {"total": 0}
    for name, status in mutant_statuses(work).items():
        if any(fnmatch.fnmatchcase(name, glob) for glob in only):
            counts["total"] += 1
            key = keys.get(status, "not_checked")
            counts[key] = counts.get(key, 0) + 1
    return counts


def write_survivors(work: Path, only: list[str] | None = None) -> None:
    listing = subprocess.run([*MUTMUT, "results"], cwd=work, env=ENV, capture_output=True,
                             text=True).stdout
    # the mutants no test caught; not the ones an interrupted run never reached
    names = [line.split(":")[0].strip() for line in listing.splitlines()
             if line.strip().endswith((": survived", ": no tests", ": suspicious"))]
    if only:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, glob) for glob in only)]
    with open(work / "survivors.txt", "w") as out:
        for mutant in names:
            shown = subprocess.run([*MUTMUT, "show", mutant], cwd=work, env=ENV,
                                   capture_output=True, text=True).stdout
            out.write(f"## {mutant}\n{shown}\n")


def report() -> None:
    """A markdown table of every run under runs/mutation/ (a run cut short shows fewer checked
    mutants than it has: its score covers the checked ones only)."""
    print("| module | mutants | checked | killed | timeout | survived | no tests | score "
          "(of checked) | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for summary_file in sorted(RUNS.glob("*/summary.json")):
        s = json.loads(summary_file.read_text())
        c = s["counts"]
        checked = sum(int(c.get(k, 0)) for k in ("killed", "timeout", "survived", "no_tests",
                                                  "suspicious", "segfault"))
        path = s["path"] + (f" (only {' '.join(s['only'])})" if s.get("only") else "")
        print(f"| {path} | {c.get('total', checked)} | {checked} | {c.get('killed', 0)} | "
              f"{c.get('timeout', 0)} | {c.get('survived', 0)} | {c.get('no_tests', 0)} | "
              f"{s['score']}% | {s['seconds'] / 60:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="targets from targets.toml (default: all)")
    parser.add_argument("--children", type=int, default=1,
                        help="parallel mutant workers (default 1, for a machine shared with "
                             "other work; make mutation passes MUTATION_CHILDREN, 2)")
    parser.add_argument("--report", action="store_true", help="only print finished scores")
    parser.add_argument("--resume", action="store_true",
                        help="keep the scratch copies and go on from the verdicts they hold")
    parser.add_argument("--collect", action="store_true",
                        help="score the named runs as they are (e.g. interrupted), run nothing")
    parser.add_argument("--only", action="append", metavar="GLOB",
                        help="only the mutants whose names match (mutmut's names, e.g. "
                             "'attnkit.train.loop.x__step*'), in runs/mutation/NAME.only/; a "
                             "partial check while working, not a module's score")
    args = parser.parse_args()
    if args.report:
        report()
        return
    pytest_args, targets = load_targets()
    unknown = sorted(set(args.names) - set(targets))
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {sorted(targets)}")
    start = time.monotonic()
    names = args.names or list(targets)
    for name in names:
        if args.collect:
            summary = collect(name, targets[name], only=args.only)
        else:
            summary = run_one(name, targets[name], pytest_args, args.children, args.resume,
                              args.only)
        print(json.dumps(summary), flush=True)
    report()
    if not args.collect:
        print(f"{len(names)} targets in {(time.monotonic() - start) / 60:.1f} minutes with "
              f"{args.children} worker(s)")


if __name__ == "__main__":
    main()
