"""Every hostile input of :mod:`tests.robustness.cases` is refused with exit 2 and one line, before any work,
leaving nothing behind and no user file changed (issue 14, item 6).

The bulk runs in this process (``qnas.cli.main``, output captured at the file-descriptor level); a sample
runs through the installed entry point to show that it behaves the same. ``bench/robustness_sweep.py``
runs the same cases and counts them.
"""
from __future__ import annotations

import pytest

from .cases import ENTRY_POINT_SAMPLE as THROUGH_ENTRY_POINT
from .cases import all_cases
from .sweep import Outcome, run_case, warm_up

ALL = all_cases()
CASES = ALL
BY_ID = {c.id: c for c in ALL}


@pytest.fixture(scope="module", autouse=True)
def _imported():
    warm_up()  # the time limit is for the work a case does, not for importing torch


def assert_refused_cleanly(o: Outcome) -> None:
    assert not o.raised, o.describe()
    assert o.code == 2, o.describe()
    assert len(o.error_lines) == 1, o.describe()
    assert o.error_lines[0].startswith("qnas") and "error" in o.error_lines[0], o.describe()
    assert "Traceback" not in o.stderr and "Traceback" not in o.stdout, o.describe()
    assert not o.stdout.strip(), o.describe()  # no report, no "measuring ..." line: no work began
    assert not o.new, o.describe()
    assert not o.changed, o.describe()
    assert o.seconds <= o.limit_s, o.describe()


def test_there_are_hundreds_of_cases_in_every_category():
    categories = {c.category for c in ALL}
    assert {"numbers", "files", "data", "outputs", "names", "resume", "misc", "progress"} <= categories
    assert len(CASES) >= 300
    assert set(THROUGH_ENTRY_POINT) <= {c.id for c in CASES}


@pytest.fixture(scope="module")
def case_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")  # one directory per case under it (cheaper than tmp_path)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.id for c in CASES])
def test_refused_with_one_line_and_nothing_written(index, case_root):
    assert_refused_cleanly(run_case(CASES[index], case_root / f"{index:04d}"))


@pytest.mark.parametrize("case_id", THROUGH_ENTRY_POINT)
def test_the_entry_point_refuses_the_same_way(case_id, tmp_path):
    case = BY_ID[case_id]
    real = run_case(case, tmp_path / "real", subprocess=True)
    assert_refused_cleanly(real)
    here = run_case(case, tmp_path / "here")
    assert_refused_cleanly(here)
    assert (real.error_lines[0].replace(str(tmp_path / "real"), "DIR")
            == here.error_lines[0].replace(str(tmp_path / "here"), "DIR"))


def test_the_sweep_sees_what_it_must(tmp_path):
    """The judge itself: a command that succeeds, writes a file and prints two lines is not clean."""
    from .cases import Case

    o = run_case(Case("self/latency-show", "self", ("latency", "show", "cpu-ort")), tmp_path / "a")
    assert o.code == 0 and "exit 0" in o.problems() and "0 stderr lines" in o.problems()
    o = run_case(Case("self/calib-build", "self", ("calib", "build", "--from", "digits", "--n", "20",
                                                  "--out", "{new_npz}")), tmp_path / "b")
    assert o.new == ["calib.npz"] and not o.clean
