"""The contract every export backend keeps, run for each backend in the registry: a new
backend is tested here without a new test."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qnas.errors import ExportError, QnasError
from qnas.exporters import Capabilities, Exporter, LayerReport, available_exporters, create_exporter

BACKENDS = available_exporters()


def test_the_four_builtin_backends_are_registered():
    assert {"onnx", "tensorrt", "coreml", "tflite"} <= set(BACKENDS)


def test_importing_exporters_loads_no_vendor_sdk():
    code = ("import sys, qnas.exporters, qnas.exporting; qnas.exporters.available_exporters(); "
            "print(sorted(m for m in ('coremltools', 'litert_torch', 'ai_edge_litert', 'tensorrt') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_importing_the_targets_table_loads_no_torch():
    code = ("import sys, qnas.exporters.targets as t; "
            "print(sorted(m for m in ('torch', 'brevitas', 'qnas.exporters.base') if m in sys.modules), "
            "t.DEFAULT_TARGET_PROFILES['tflite'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "edgetpu"]


def test_every_backend_has_a_default_target_entry():
    from qnas.exporters.targets import DEFAULT_TARGET_PROFILES

    assert set(BACKENDS) <= set(DEFAULT_TARGET_PROFILES)


def test_old_default_target_name_still_imports_with_a_warning():
    from qnas.exporters.targets import DEFAULT_TARGET_PROFILES

    with pytest.warns(DeprecationWarning, match="DEFAULT_TARGET_PROFILES"):
        from qnas.exporting import DEFAULT_TARGET
    assert DEFAULT_TARGET is DEFAULT_TARGET_PROFILES


@pytest.mark.parametrize("backend", BACKENDS)
def test_capabilities_are_declared(backend):
    assert isinstance(create_exporter(backend).capabilities, Capabilities)


def test_a_backend_must_declare_the_code_check_it_implements():
    class Undeclared(Exporter):
        def export_with_report(self, model, example_input, out, overwrite=False):
            return Path(out), None

        def verify(self, path, model, images, labels):
            raise NotImplementedError

    Undeclared()  # nothing claimed, nothing implemented: fine
    with pytest.raises(TypeError, match="check_codes"):
        class Hidden(Undeclared):
            def check_codes(self, path, model):
                raise NotImplementedError
    with pytest.raises(TypeError, match="check_codes"):
        class Claimed(Undeclared):
            capabilities = Capabilities(check_codes=True)


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
        files[name] = (exporter, *exporter.export_with_report(model, example, d / f"model{exporter.suffix}"))
    return files


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_writes_one_file_at_out_and_nothing_else(exported, backend):
    exporter, path, _ = exported[backend]
    assert isinstance(exporter, Exporter) and exporter.name == backend
    assert path.exists() and path.name == f"model{exporter.suffix}"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary files left behind"


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_returns_the_declared_report_and_no_hidden_state(exported, trained_digits_model, tmp_path, backend):
    exporter, path, report = exported[backend]
    _, arch, model = trained_digits_model
    if exporter.capabilities.layer_report:
        assert isinstance(report, LayerReport)
        lines = report.lines()
        assert lines and all(line and "\n" not in line for line in lines)
        assert isinstance(report.to_dict(), dict)
        names = {layer.name for layer in model.quant_layers()}
        assert any(name in line for line in lines for name in names), "the report names the model's layers"
    else:
        assert report is None
    before = dict(vars(exporter))
    example = torch.zeros(1, 1, arch.resolution, arch.resolution)
    again = exporter.export(model, example, tmp_path / f"m{exporter.suffix}")
    assert again == tmp_path / f"m{exporter.suffix}" and again.exists()
    assert vars(exporter) == before, "an export leaves no state on the exporter (reports are returned)"


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
    exporter, path, _ = exported[backend]
    _, arch, model = trained_digits_model
    test = digits_splits.test.at_resolution(arch.resolution)
    checked = False
    if exporter.runtime_available():
        report = exporter.verify(path, model, test.images, test.labels)
        assert report.n == len(test) and report.agreement >= 0.995
        checked = True
    if exporter.capabilities.check_codes:
        codes = exporter.check_codes(path, model)
        assert codes.ok and codes.tensors == len(model.quant_layers())
        checked = True
    else:
        with pytest.raises(ExportError, match="no code check"):
            exporter.check_codes(path, model)
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
    with pytest.raises(ExportError, match="unknown latency target"):
        export_model(tmp_path, "onnx", tmp_path / "m.onnx", target_profile="no-such-chip")
    assert not (tmp_path / "m.onnx").exists()


def test_export_model_refuses_nan_weights_in_one_line(trained_digits_model, tmp_path):
    import copy

    from qnas.exporting import export_model
    from qnas.model_io import save_model

    space, arch, model = trained_digits_model
    broken = copy.deepcopy(model)
    with torch.no_grad():
        next(p for n, p in broken.named_parameters() if n.endswith("weight")).view(-1)[0] = float("nan")
    save_model(tmp_path / "model.pt", broken, space, arch, {"data": {"data": "digits", "split_seed": 0}})
    with pytest.raises(ExportError, match="holds NaN or Inf values") as e:
        export_model(tmp_path, "onnx", tmp_path / "m.onnx")
    assert "\n" not in str(e.value) and not (tmp_path / "m.onnx").exists()


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
