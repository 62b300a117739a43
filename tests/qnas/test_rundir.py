"""resolve_arch: the one function that says which arch a run directory (model, arch file) stands for."""
import json

import pytest
import torch

from qnas.errors import CheckpointError, ConfigError, QnasError
from qnas.quant.checkpoint import save_checkpoint
from qnas.rundir import resolve_arch
from qnas.space import SearchSpace

SPACE = SearchSpace()
A, B, C = (SPACE.sample(i) for i in (1, 2, 3))


def _record(arch, acc, ms, size=10.0):
    return {"uid": arch.uid, "arch": arch.to_dict(), "val_acc": acc, "latency_ms": ms, "size_kb": size,
            "peak_act_kb": 1.0}


def _model(path, arch, space=SPACE, data=None):
    meta = {"arch": arch.to_dict(), "space": space.to_dict()}
    if data:
        meta["data"] = data
    save_checkpoint(path, torch.nn.Linear(1, 1), meta)


def _run(tmp_path, budget_ms=None):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"latency_budget_ms": budget_ms, "seed": 3}))
    # B is the most accurate, but only A fits a 1 ms budget
    (run / "front.json").write_text(json.dumps([_record(A, 0.8, 0.5), _record(B, 0.9, 2.0)]))
    return run


def test_run_directory_order_arch_json_then_model_then_front(tmp_path):
    run = _run(tmp_path, budget_ms=1.0)
    found = resolve_arch(run)
    assert found.arch == A and A.uid in found.note and found.run_dir == run and found.config["seed"] == 3
    _model(run / "model.pt", C)
    found = resolve_arch(run)
    assert found.arch == C and "model.pt" in found.note and found.model_path is None
    (run / "arch.json").write_text(json.dumps(B.to_dict()))
    assert resolve_arch(run).arch == B and resolve_arch(run).note == ""


def test_front_pick_is_the_most_accurate_within_the_budget(tmp_path):
    assert resolve_arch(_run(tmp_path)).arch == B  # no budget: the most accurate
    run = tmp_path / "run"
    (run / "config.json").write_text(json.dumps({"latency_budget_ms": 0.1}))
    with pytest.raises(ConfigError, match="meets the search's budgets"):
        resolve_arch(run)


def test_files_inline_json_and_records(tmp_path):
    f = tmp_path / "arch.json"
    f.write_text(json.dumps(A.to_dict()))
    assert resolve_arch(f).arch == A and resolve_arch(str(f)).run_dir is None
    record = tmp_path / "record.json"
    record.write_text(json.dumps(_record(B, 0.5, 1.0)))
    assert resolve_arch(record).arch == B  # a search record is unwrapped
    assert resolve_arch(C.to_json()).arch == C
    assert resolve_arch(C).arch == C and resolve_arch(C.to_dict()).arch == C
    model = tmp_path / "m.pt"
    _model(model, A, data={"data": "digits", "data_path": None, "split_seed": 5})
    found = resolve_arch(model)
    assert found.arch == A and found.model_path == model and found.config == {"data": "digits", "data_path": None,
                                                                               "seed": 5}


def test_space_explicit_then_recorded_then_default(tmp_path):
    small = SearchSpace.from_dict({**SPACE.to_dict(), "num_classes": 7})
    run = tmp_path / "run"
    run.mkdir()
    (run / "arch.json").write_text(json.dumps(A.to_dict()))
    assert resolve_arch(run).space.config.num_classes == SPACE.config.num_classes
    (run / "config.json").write_text(json.dumps({"space": small.to_dict()}))
    assert resolve_arch(run).space.config.num_classes == 7
    assert resolve_arch(run, SPACE).space.config.num_classes == SPACE.config.num_classes


def test_bad_sources_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="neither a run directory"):
        resolve_arch(tmp_path / "missing")
    with pytest.raises(ConfigError, match="arch.json, model.pt nor front.json"):
        resolve_arch(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read arch"):
        resolve_arch(tmp_path / "bad.json")
    with pytest.raises(QnasError, match="not valid JSON"):
        resolve_arch("{nope")
    save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(1, 1), {"val_acc": 0.5})
    with pytest.raises(CheckpointError, match="records no arch"):
        resolve_arch(tmp_path / "x.pt")
    bad = A.to_dict()
    bad["stages"][0][0]["w"] = [3, 8, 8]
    with pytest.raises(QnasError, match="w_bits"):
        resolve_arch(json.dumps(bad))
    assert resolve_arch(json.dumps(bad), validate=False).arch.stages[0][0].w_bits[0] == 3


class _Boom(Exception):
    pass


def test_a_run_that_fails_before_anything_worth_keeping_leaves_nothing(tmp_path):
    from qnas.rundir import RunDir

    for path, premade in ((tmp_path / "new", False), (tmp_path / "empty", True)):
        if premade:
            path.mkdir()
        run = RunDir(path)
        with pytest.raises(_Boom), run.removed_on_early_failure():
            run.write_json("config.json", {"seed": 0})
            raise _Boom()
        assert not path.exists() if not premade else not any(path.iterdir())
        RunDir(path).write_json("config.json", {"seed": 1})  # the corrected command is not refused


@pytest.mark.parametrize("keep", ["history", "supernet", "not fresh"])
def test_a_run_with_something_to_resume_is_kept_on_failure(tmp_path, keep):
    from qnas.rundir import RunDir

    path = tmp_path / "run"
    if keep == "not fresh":
        path.mkdir()
        (path / "mine.txt").write_text("user file")
    run = RunDir(path, overwrite=keep == "not fresh")
    with pytest.raises(_Boom), run.removed_on_early_failure():
        run.write_json("config.json", {"seed": 0})
        if keep == "history":
            run.append_history({"index": 0, "uid": "x"})
        elif keep == "supernet":
            run.file("supernet").mkdir()
        raise _Boom()
    assert (path / "config.json").is_file()
    if keep == "not fresh":
        assert (path / "mine.txt").read_text() == "user file"


def test_search_failing_at_its_first_evaluation_leaves_no_directory(tmp_path, monkeypatch):
    import qnas.evaluators
    from qnas.searching import search

    def failing(self, arch):
        raise _Boom("evaluation failed")

    monkeypatch.setattr(qnas.evaluators.TrainingEvaluator, "__call__", failing)
    with pytest.raises(_Boom):
        search(out=tmp_path / "run", n_candidates=2, batch=1, epochs=1, threads=1, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_second_writer_of_a_run_is_refused_naming_the_holder(tmp_path):
    import os

    from qnas.rundir import RunDir

    pytest.importorskip("fcntl")  # POSIX advisory locks; CI runs Linux
    run = RunDir(tmp_path / "run")
    with run.locked():
        with pytest.raises(ConfigError, match=rf"is in use by process {os.getpid()} on ") as e:
            with RunDir(tmp_path / "run", resume=True).locked():
                pass
        assert "\n" not in str(e.value)
    with RunDir(tmp_path / "run", resume=True).locked():  # released when the first writer is done
        pass


def test_concurrent_resumes_of_one_search_refuse_the_second(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("fcntl")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"n_candidates": 2, "epochs": 1, "threads": 1}))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from qnas.rundir import RunDir\n"
        f"with RunDir({str(run)!r}, resume=True).locked():\n"
        "    print('locked', flush=True); time.sleep(30)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = subprocess.run([sys.executable, "-m", "qnas", "search", "--resume", str(run), "--no-progress"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert f"in use by process {holder.pid}" in proc.stderr and proc.stderr.count("\n") == 1
        assert not (run / "history.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
