"""The design card's folders install as qnas.quant / qnas.exporters / qnas.calib_data,
never as generic top-level packages, in both editable and wheel installs."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = {"qnas.quant": "quant", "qnas.exporters": "exporters", "qnas.calib_data": "calib_data"}
PROBE = ("import importlib, importlib.util, json; "
         "mods = {m: importlib.import_module(m).__file__ for m in %r}; "
         "mods['top_level'] = [n for n in ('quant', 'exporters', 'calib_data') if importlib.util.find_spec(n)]; "
         "from importlib import metadata; mods['direct_url'] = metadata.distribution('qnas').read_text('direct_url.json'); "
         "print(json.dumps(mods))")


def _probe(cwd: Path, env_extra: dict | None = None) -> dict:
    import os

    env = {**os.environ, **(env_extra or {})}
    out = subprocess.run([sys.executable, "-c", PROBE % list(SUBPACKAGES)], cwd=cwd, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_installed_package_maps_the_folders(tmp_path):
    found = _probe(tmp_path)
    direct = found["direct_url"]
    editable = bool(direct and json.loads(direct).get("dir_info", {}).get("editable"))  # run outside the repo so the source tree is not on sys.path by accident
    assert found["top_level"] == [], "generic top-level names must not be importable"
    for mod, folder in SUBPACKAGES.items():
        path = Path(found[mod])
        if editable:
            assert path == REPO / folder / "__init__.py"
        else:
            assert path.parts[-3:] == ("qnas", folder, "__init__.py")


def test_wheel_install_imports_the_subpackages(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(REPO)], check=True, capture_output=True)
    (wheel,) = wheels.glob("qnas-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.split("/")[0] in ("quant", "exporters", "calib_data")]
    for folder in SUBPACKAGES.values():
        assert f"qnas/{folder}/__init__.py" in names
    assert any(n.startswith("qnas/latency/profiles/") and n.endswith(".json") for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    found = _probe(tmp_path, {"PYTHONPATH": str(target)})
    assert found["top_level"] == []
    for mod, folder in SUBPACKAGES.items():
        assert Path(found[mod]) == target / "qnas" / folder / "__init__.py"
