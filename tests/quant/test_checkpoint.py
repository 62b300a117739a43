import pickle

import pytest
import torch

from qnas.errors import CheckpointError
from qnas.model_io import load_model, save_model
from qnas.quant.build import build_model
from qnas.quant.checkpoint import load_checkpoint, save_checkpoint
from qnas.space import SearchSpace


def test_model_round_trip_gives_identical_outputs(tmp_path):
    space = SearchSpace()
    arch = space.sample(3)
    torch.manual_seed(0)
    model = build_model(space, arch)
    x = torch.randn(8, 1, arch.resolution, arch.resolution)
    model.train()
    model(x)  # collect activation statistics so the state is not the initial one
    model.eval()
    with torch.no_grad():
        ref = model(x)
    path = save_model(tmp_path / "model.pt", model, space, arch, {"note": "x"})
    loaded = load_model(tmp_path)  # a run directory works too
    assert loaded.arch == arch and loaded.meta["note"] == "x"
    with torch.no_grad():
        assert torch.equal(loaded.model(x), ref)
    assert not list(tmp_path.glob(".*.tmp")), "no temp file left behind"
    assert path.exists()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "m.pt"
    p.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="not a readable qnas checkpoint"):
        load_checkpoint(p)


class Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_checkpoint_is_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pt"
    torch.save({"format": "qnas-checkpoint", "payload": Evil()}, p)
    with pytest.raises(CheckpointError):
        load_checkpoint(p)
    assert not (tmp_path / "PWNED").exists()
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "plain.pkl")
    assert not (tmp_path / "PWNED").exists()


def test_foreign_and_missing_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a qnas checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no model.pt"):
        load_model(tmp_path)


def test_checkpoint_of_another_arch_is_rejected(tmp_path):
    space = SearchSpace()
    a, b = space.uniform(8, 8, largest=True), space.uniform(8, 8, largest=False)
    save_checkpoint(tmp_path / "m.pt", build_model(space, a), {"space": space.to_dict(), "arch": b.to_dict()})
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(tmp_path / "m.pt")


def test_save_does_not_overwrite_unless_asked(tmp_path):
    space = SearchSpace()
    model = build_model(space, space.sample(0))
    p = tmp_path / "m.pt"
    p.write_text("precious")
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(p, model, {}, overwrite=False)
    assert p.read_text() == "precious"
