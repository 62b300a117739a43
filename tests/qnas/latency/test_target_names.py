"""The latency target is ``target`` in qnas.latency (it was ``device``, which read like the torch device).

The former names keep working for one release with a DeprecationWarning, and files written with the
old field names keep loading."""
from __future__ import annotations

import json
import warnings

import pytest

from qnas.errors import ConfigError, LatencyTableError, UnknownTargetError
from qnas.latency import TargetProfile, create_latency_model, load_profile
from qnas.latency.base import LatencyModel
from qnas.latency.table import TARGET_META_KEY, LatencyTable, TableLatencyModel, default_meta, load_table
from qnas.space import SearchSpace

KEY = ("fc", 8, 2, 1, 1, 1, 1, 8, 8)


def test_create_latency_model_takes_target_and_its_former_keyword():
    assert create_latency_model(target="edgetpu").target == "edgetpu"
    assert create_latency_model("edgetpu").target == "edgetpu"
    assert create_latency_model().target == "cpu-ort"
    with pytest.deprecated_call(match=r"device=.*target="):
        assert create_latency_model(device="edgetpu").target == "edgetpu"
    with pytest.raises(ConfigError, match="either target or"):
        create_latency_model("cpu-ort", device="edgetpu")


def test_former_module_names_warn_and_alias_the_new_ones():
    import qnas.latency
    import qnas.latency.measured
    import qnas.latency.profile

    with pytest.deprecated_call(match="TargetProfile"):
        assert qnas.latency.DeviceProfile is TargetProfile
    with pytest.deprecated_call(match="TargetProfile"):
        from qnas.latency.profile import DeviceProfile
    assert DeviceProfile is TargetProfile
    with pytest.deprecated_call(match="MEASURABLE_TARGETS"):
        assert qnas.latency.measured.MEASURABLE_DEVICES == qnas.latency.measured.MEASURABLE_TARGETS
    with pytest.raises(AttributeError):
        qnas.latency.profile.NoSuchName  # noqa: B018


def test_device_attribute_is_a_deprecated_alias_of_target():
    model = create_latency_model("hexagon-htp")
    assert model.target == "hexagon-htp" and "target='hexagon-htp'" in repr(model)
    with pytest.deprecated_call():
        assert model.device == "hexagon-htp"
    table = LatencyTable({KEY: 1.0}, meta={"device": "board-a"})
    assert table.target == "board-a" and "target='board-a'" in repr(table)
    with pytest.deprecated_call():
        assert table.device == "board-a"


def test_a_model_written_against_the_old_interface_still_works():
    with pytest.deprecated_call(match="rename that property to `target`"):
        class OldModel(LatencyModel):
            @property
            def device(self) -> str:
                return "old-board"

            def layer_ms(self, layer):
                return 1.0

    m = OldModel()  # not abstract: its `device` serves as `target`
    assert m.target == "old-board"


def test_new_models_name_target_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        class NewModel(LatencyModel):
            target = "new-board"

            def layer_ms(self, layer):
                return 1.0

        assert NewModel().target == "new-board"


def test_table_files_keep_the_device_field_and_read_a_target_field(tmp_path):
    assert TARGET_META_KEY == "device"  # see table.TARGET_META_KEY for why the file field keeps its name
    path = LatencyTable({KEY: 1.0}, meta=default_meta(target="cpu-ort")).save(tmp_path / "t.json")
    assert json.loads(path.read_text())["meta"]["device"] == "cpu-ort"
    assert load_table(path).target == "cpu-ort"
    # a hand-written table that calls the field "target"
    doc = {"schema": "qnas-latency-table", "version": 1, "meta": {"target": "my-board"},
           "entries": [dict(zip(("op", "cin", "cout", "hw", "k", "stride", "groups", "w_bits", "a_bits", "ms"),
                                KEY + (0.5,)))]}
    (tmp_path / "h.json").write_text(json.dumps(doc))
    hand = load_table(tmp_path / "h.json")
    assert hand.target == "my-board" and TableLatencyModel(hand).target == "my-board"
    with pytest.raises(LatencyTableError, match="latency target 'my-board'"):
        load_table(path).merge(hand)
    # a new table given a "target" meta field stores it under the file field
    assert LatencyTable({KEY: 1.0}, meta={"target": "x"}).meta["device"] == "x"
    with pytest.deprecated_call():
        assert default_meta(device="old")["device"] == "old"


def test_merge_takes_the_former_keyword():
    a = LatencyTable({KEY: 1.0}, meta={"device": "a"})
    b = LatencyTable({KEY: 2.0}, meta={"device": "b"})
    assert a.merge(b, allow_mixed_targets=True)[KEY] == 2.0
    with pytest.deprecated_call():
        assert a.merge(b, allow_mixed_devices=True)[KEY] == 2.0


def test_hybrid_files_write_target_and_read_the_former_device_field(tmp_path):
    from qnas.latency.hybrid import HybridLatencyModel

    space = SearchSpace()
    base = create_latency_model("cpu-ort")
    archs = [space.sample(s) for s in range(20)]
    hybrid = HybridLatencyModel(base, space).fit(archs, [1.2 * base.predict(space.plan(a)) for a in archs])
    d = hybrid.to_dict()
    assert d["base"] == {"kind": "analytic", "target": "cpu-ort"}
    old = dict(d, base={"kind": "analytic", "device": "cpu-ort"})  # written before the rename
    assert HybridLatencyModel.from_dict(old, base, space).target == "cpu-ort"
    with pytest.raises(LatencyTableError, match="latency target 'cpu-ort'.* of 'edgetpu'"):
        HybridLatencyModel.from_dict(old, create_latency_model("edgetpu"), space)


def test_evaluation_functions_take_target_and_the_former_keyword(tmp_path):
    from qnas.latency.evaluation import measure_latency_table, predict_latency

    arch = SearchSpace().sample(0)
    p = predict_latency(arch.to_json(), "edgetpu")
    assert p.target == "edgetpu" and "on edgetpu" in p.lines()[-1]
    with pytest.deprecated_call():
        assert p.device == "edgetpu"
    with pytest.deprecated_call():
        assert predict_latency(arch.to_json(), device="edgetpu").latency_ms == p.latency_ms
    with pytest.raises(UnknownTargetError, match="cannot measure latency target 'edgetpu'.*import the table"):
        measure_latency_table(tmp_path / "t.json", target="edgetpu")
    with pytest.deprecated_call(), pytest.raises(UnknownTargetError, match="latency target 'edgetpu'"):
        measure_latency_table(tmp_path / "t.json", device="edgetpu")


def test_messages_say_latency_target(tmp_path):
    with pytest.raises(UnknownTargetError, match="unknown latency target 'nope'; known latency targets: .*edgetpu"):
        load_profile("nope")
    with pytest.raises(UnknownTargetError, match="latency target profile file"):
        load_profile(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="latency target cpu-ort"):
        create_latency_model("cpu-ort", kind="table")
