"""The contract every export backend keeps (run for each registered backend)."""
import subprocess
import sys

import pytest
import torch

from qnas.errors import ExportError, QnasError
from qnas.exporters import Exporter, available_exporters, create_exporter

BACKENDS = ["onnx", "tensorrt", "coreml", "tflite"]


def test_all_four_backends_are_registered():
    assert set(BACKENDS) <= set(available_exporters())


def test_importing_exporters_loads_no_vendor_sdk():
    code = ("import sys, qnas.exporters, qnas.exporting; "
            "print(sorted(m for m in ('coremltools', 'litert_torch', 'ai_edge_litert', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def exported(trained_digits_model, tmp_path_factory):
    """Each backend's export of the shared mixed-precision digits model."""
    _, arch, model = trained_digits_model
    root = tmp_path_factory.mktemp("contract")
    example = torch.zeros(1, 1, arch.resolution, arch.resolution)
    files = {}
    for name in BACKENDS:
        exporter = create_exporter(name)
        d = root / name
        d.mkdir()
        files[name] = (exporter, exporter.export(model, example, d / f"model{exporter.suffix}"))
    return files


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_writes_one_file_at_out_and_nothing_else(exported, backend):
    exporter, path = exported[backend]
    assert isinstance(exporter, Exporter) and exporter.name == backend
    assert path.exists() and path.name == f"model{exporter.suffix}"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary files left behind"


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_never_overwrites_without_being_asked(trained_digits_model, tmp_path, backend):
    _, arch, model = trained_digits_model
    exporter = create_exporter(backend)
    out = tmp_path / f"mine{exporter.suffix}"
    out.write_text("user file")
    with pytest.raises(QnasError, match="already exists"):
        exporter.export(model, torch.zeros(1, 1, arch.resolution, arch.resolution), out)
    assert out.read_text() == "user file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@pytest.mark.parametrize("backend", BACKENDS)
def test_exported_file_is_verified_where_a_runtime_exists_else_its_codes_are_checked(
        exported, trained_digits_model, digits_splits, backend):
    exporter, path = exported[backend]
    _, arch, model = trained_digits_model
    test = digits_splits.test.at_resolution(arch.resolution)
    checked = False
    if exporter.runtime_available():
        report = exporter.verify(path, model, test.images, test.labels)
        assert report.n == len(test) and report.agreement >= 0.995
        checked = True
    if type(exporter).check_codes is not Exporter.check_codes:
        codes = exporter.check_codes(path, model)
        assert codes.ok and codes.tensors >= 2 + 3 * len(model.plan.blocks)
        checked = True
    assert checked, f"{backend} can neither run nor read back its file here"


@pytest.mark.parametrize("backend", ["coreml", "tflite"])
def test_missing_sdk_names_the_extra_to_install(monkeypatch, trained_digits_model, tmp_path, backend):
    _, arch, model = trained_digits_model
    for mod in ("coremltools", "litert_torch", "ai_edge_litert"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import mod` raise ImportError
    exporter = create_exporter(backend)
    with pytest.raises(ExportError, match=rf'pip install "qnas\[{backend}\]"'):
        exporter.export(model, torch.zeros(1, 1, arch.resolution, arch.resolution), tmp_path / f"m{exporter.suffix}")
    assert list(tmp_path.iterdir()) == []


def test_export_model_refuses_what_the_target_cannot_run_and_writes_nothing(trained_digits_model, tmp_path):
    from qnas.exporting import export_model
    from qnas.model_io import save_model

    space, arch, model = trained_digits_model
    save_model(tmp_path / "model.pt", model, space, arch, {"data": {"data": "digits", "split_seed": 0}})
    out = tmp_path / "m.tflite"
    with pytest.raises(ExportError, match="edgetpu cannot run .* --allow-upcast"):
        export_model(tmp_path, "tflite", out)
    assert not out.exists()
    with pytest.raises(ExportError, match="unknown device"):
        export_model(tmp_path, "onnx", tmp_path / "m.onnx", target_profile="no-such-chip")
    assert not (tmp_path / "m.onnx").exists()


def test_export_model_with_upcast_reports_mapping_parity_and_latency(trained_digits_model, tmp_path):
    from qnas.exporting import export_model
    from qnas.model_io import save_model

    space, arch, model = trained_digits_model
    save_model(tmp_path / "model.pt", model, space, arch, {"data": {"data": "digits", "split_seed": 0}})
    result = export_model(tmp_path, "onnx", tmp_path / "m.onnx", target_profile="hexagon-htp", allow_upcast=True)
    assert result.precision is not None and result.precision.target == "hexagon-htp"
    assert 0 < len(result.precision.mapped) < len(result.precision.layers)
    assert result.parity is not None and result.parity.agreement >= 0.995
    assert result.latency_ms and result.latency_ms > 0 and result.predicted_latency_ms > 0
    text = "\n".join(result.lines())
    assert "precision map on hexagon-htp" in text and "identical predictions" in text
    assert result.to_dict()["precision"]["mapped"] == len(result.precision.mapped)
