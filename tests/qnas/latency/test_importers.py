"""Importers of published latency tables: APQ's '(cin, cout, hw, k, stride, pad, groups)-WxAy' dict,
nn-Meter kernel CSVs and generic per-layer CSVs (qnas.latency.importers)."""
from __future__ import annotations

import json

import pytest

from qnas.errors import LatencyTableError
from qnas.latency.base import inherit_weightless_bits
from qnas.latency.importers import conv_op, import_table, import_table_file, parse_bits
from qnas.latency.table import TableLatencyModel, load_table
from qnas.space import SearchSpace


def apq_key(cin, cout, hw, k, stride, groups, w, a, pad=None) -> str:
    """A key exactly as APQ's utils/latency_predictor.py formats it: '{}-W{}A{}'.format(tuple, w, a)."""
    return "{}-W{}A{}".format((cin, cout, hw, k, stride, k // 2 if pad is None else pad, groups), w, a)


def apq_dict_for(space, archs):
    """An APQ-style dict covering the block convs of ``archs`` (not the stem or classifier: APQ's
    'head'/'tail'), each with a latency and an energy, as the BitFusion file has."""
    d, i = {}, 0
    for arch in archs:
        for l in space.plan(arch).layers():
            if l.op in ("conv", "dwconv", "pwconv") and l.name != "stem":
                key = apq_key(l.cin, l.cout, l.hw_in, l.k, l.stride, l.groups, l.w_bits, l.a_bits)
                if key not in d:
                    i += 1
                    d[key] = {"energy": 1.0 + i, "latency": 0.001 * i}
    d["head"] = {"energy": 9.9, "latency": 0.25}
    d["tail"] = {"energy": 9.9, "latency": 0.125}
    return d


def apq_predict(d, space, arch, what="latency") -> float:
    """APQ's predictor (``type='latency'`` or ``'energy'``): head + tail + the conv entries of the blocks."""
    ans = d["head"][what] + d["tail"][what]
    for l in space.plan(arch).layers():
        if l.op in ("conv", "dwconv", "pwconv") and l.name != "stem":
            ans += d[apq_key(l.cin, l.cout, l.hw_in, l.k, l.stride, l.groups, l.w_bits, l.a_bits)][what]
    return ans


def test_conv_op_convention():
    assert conv_op(96, 96, 3, 96) == "dwconv" and conv_op(16, 96, 1, 1) == "pwconv"
    assert conv_op(3, 32, 3, 1) == "conv" and conv_op(32, 64, 3, 4) is None and conv_op(32, 64, 3, 32) is None


def test_apq_import_reproduces_apq_sums(tmp_path):
    space = SearchSpace()
    archs = [space.sample(i) for i in range(6)]
    d = apq_dict_for(space, archs)
    d[apq_key(32, 64, 8, 3, 1, 4, 8, 8)] = {"energy": 1, "latency": 1}  # grouped: no qnas op
    d[apq_key(16, 16, 8, 3, 1, 1, 8, 8, pad=0)] = {"energy": 1, "latency": 1}  # unpadded: not a qnas conv
    d["(16, 48, 8, 1, 1, 0, 1)-w6a6"] = {"energy": 1, "latency": 0.5}  # lower-case spelling, W6/A6 kept
    src = tmp_path / "BitFusion_new.b1.dict"
    src.write_text(json.dumps(d))
    res = import_table_file(src, "apq", tmp_path / "bf.json", device="bitfusion")
    t = res.table
    assert t.target == "bitfusion" and t.source == str(tmp_path / "bf.json")
    assert res.skipped and sum(res.skipped.values()) == 2
    assert t.lookup(("pwconv", 16, 48, 8, 1, 1, 1, 6, 6)) == 0.5
    assert t.defaults["stem"] == 0.25 and t.defaults["head"] == 0.125 and t.defaults["add"] == 0.0
    model = TableLatencyModel(load_table(tmp_path / "bf.json"))
    assert model.has_energy, "APQ's energy values are imported (column mj)"
    for arch in archs:
        assert model.predict(space.plan(arch)) == pytest.approx(apq_predict(d, space, arch), rel=1e-12)
        assert model.predict_energy(space.plan(arch)) == pytest.approx(apq_predict(d, space, arch, "energy"),
                                                                       rel=1e-12)
    assert model.target == "bitfusion"
    text = "\n".join(res.lines())
    assert "W6A6 1" in text and "skipped 1 row(s): padding" in text
    with pytest.raises(LatencyTableError, match="already exists"):
        import_table_file(src, "apq", tmp_path / "bf.json")
    import_table_file(src, "apq", tmp_path / "bf.json", overwrite=True)
    assert import_table(src, "apq").table.target == "BitFusion_new.b1", "default device: the source's name"


@pytest.mark.parametrize("text, fragment", [
    ("[1, 2]", "JSON object"),
    ("{", "not valid JSON"),
    ('{"(1, 2)-W8A8": {"latency": 1}}', "no row could be imported"),
    ('{"(16, 48, 8, 1, 1, 0, 1)-W8A8": {"latency": "fast"}}', "not a number"),
    ('{"(16, 48, 8, 1, 1, 0, 1)-W8A8": {"latency": -1}}', "finite and >= 0"),
])
def test_apq_bad_files(tmp_path, text, fragment):
    src = tmp_path / "t.dict"
    src.write_text(text)
    with pytest.raises(LatencyTableError, match=fragment) as e:
        import_table(src, "apq")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out.json").exists()


def test_nnmeter_csv(tmp_path):
    conv = tmp_path / "Data_conv-bn-relu_1.csv"
    conv.write_text("model_path,HW,CIN,COUT,KERNEL_SIZE,STRIDES,feature_0,feature_1,latency\n"
                    "m0.pb,16,3,32,3,2,0.1,0.2,0.5\n"
                    "m1.pb,8,32,64,1,1,0.1,0.2,0.25\n"
                    "m2.pb,8,32,64,1,1,0.1,0.2,0.35\n")
    res = import_table(conv, "nnmeter", bits="8,8", device="pixel4-cpu")
    t = res.table
    assert t.lookup(("conv", 3, 32, 16, 3, 2, 1, 8, 8)) == 0.5
    assert t.lookup(("pwconv", 32, 64, 8, 1, 1, 1, 8, 8)) == pytest.approx(0.3), "a repeated key keeps its median"
    assert res.merged == 1 and t.target == "pixel4-cpu"
    dw = tmp_path / "Data_dwconv-bn-relu_3.csv"
    dw.write_text("model_path,HW,CIN,COUT,KERNEL_SIZE,STRIDES,feature_0,feature_1,latency\nm,16,32,32,5,1,0,0,0.2\n")
    assert import_table(dw, "nnmeter").table.lookup(("dwconv", 32, 32, 16, 5, 1, 32, 32, 32)) == 0.2
    mixed = tmp_path / "kernels.csv"
    mixed.write_text("kernel,model_path,HW,CIN,COUT,latency\nfc,m,,1280,1000,0.1\nglobal-avgpool,m,7,1280,,0.01\n"
                     "add,m,14,96,,0.02\nmaxpool,m,14,96,,0.03\n")
    res = import_table(mixed, "nnmeter", unit="ms")
    assert res.table.lookup(("fc", 1280, 1000, 1, 1, 1, 1, 32, 32)) == 0.1
    assert res.table.lookup(("pool", 1280, 1280, 7, 1, 1, 1, 32, 32)) == 0.01
    assert res.table.lookup(("add", 96, 96, 14, 1, 1, 1, 32, 32)) == 0.02
    assert res.skipped == {"nn-Meter kernel 'maxpool' has no qnas op": 1}
    nameless = tmp_path / "lat.csv"
    nameless.write_text("model_path,HW,CIN,COUT,KERNEL_SIZE,STRIDES,latency\nm,8,8,8,3,1,0.1\n")
    with pytest.raises(LatencyTableError, match="--kernel"):
        import_table(nameless, "nnmeter")
    assert len(import_table(nameless, "nnmeter", kernel="conv-bn-relu").table) == 1


def test_generic_csv(tmp_path):
    src = tmp_path / "mine.csv"
    src.write_text("# measured on my board\nType,In_Channels,Out_Channels,Input_Size,Kernel_Size,Stride,W_Bits,"
                   "A_Bits,Latency_us\n"
                   ",16,48,8,1,1,4,8,120\n"
                   ",48,48,8,3,2,4,8,80\n"
                   "dwconv,48,48,8,5,1,4,8,90\n"
                   "add,48,48,4,,,8,8,5\n"
                   "lstm,8,8,1,1,1,8,8,1\n")
    t = import_table(src, "csv").table
    assert t.lookup(("pwconv", 16, 48, 8, 1, 1, 1, 4, 8)) == pytest.approx(0.12)
    # neither op nor groups: groups 1, so a k3 conv (a dwconv row names its op or its groups)
    assert t.lookup(("conv", 48, 48, 8, 3, 2, 1, 4, 8)) == pytest.approx(0.08)
    assert t.lookup(("dwconv", 48, 48, 8, 5, 1, 48, 4, 8)) == pytest.approx(0.09)
    assert t.lookup(("add", 48, 48, 4, 1, 1, 1, 8, 8)) == pytest.approx(0.005)
    # qnas' own CSV imports unchanged
    own = tmp_path / "own.csv"
    own.write_text("op,cin,cout,hw,k,stride,groups,w_bits,a_bits,ms\npwconv,16,48,8,1,1,1,8,8,0.05\n")
    assert import_table(own, "csv").table.lookup(("pwconv", 16, 48, 8, 1, 1, 1, 8, 8)) == 0.05
    nobits = tmp_path / "nobits.csv"
    nobits.write_text("cin,cout,hw,k,ms\n16,48,8,1,0.05\n")
    assert import_table(nobits, "csv", bits="w8a4").table.lookup(("pwconv", 16, 48, 8, 1, 1, 1, 8, 4)) == 0.05
    with pytest.raises(LatencyTableError, match="lacks column"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        import_table(tmp_path / "bad.csv", "csv")


def test_bits_and_options():
    assert parse_bits("8,8") == (8, 8) and parse_bits("w4a8") == (4, 8) and parse_bits(None) == (32, 32)
    assert parse_bits("4/8") == (4, 8) and parse_bits("W2A4") == (2, 4)
    with pytest.raises(LatencyTableError, match="W,A"):
        parse_bits("eight")
    with pytest.raises(LatencyTableError, match="unknown table format"):
        import_table("x", "onnx")
    with pytest.raises(LatencyTableError, match="carry the bits"):
        import_table("x", "apq", bits="8,8")


def test_imported_table_prices_every_layer_of_an_arch_it_covers(tmp_path):
    space = SearchSpace()
    arch = space.sample(7)
    layers = inherit_weightless_bits(space.plan(arch).layers())
    rows = ["op,cin,cout,hw,k,stride,groups,w_bits,a_bits,ms"] + [
        ",".join(str(v) for v in l.key()) + ",0.01" for l in layers]
    (tmp_path / "arch.csv").write_text("\n".join(rows) + "\n")
    t = import_table_file(tmp_path / "arch.csv", "csv", tmp_path / "arch.json").table
    assert TableLatencyModel(t).predict(space.plan(arch)) == pytest.approx(0.01 * len(layers))
