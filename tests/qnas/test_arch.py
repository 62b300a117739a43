"""Arch / Block: JSON round trips, hashing, uid, parsing errors."""
from __future__ import annotations

import dataclasses
import json

import pytest

from qnas.arch import Arch, Block
from qnas.errors import ArchError, ConfigError, QnasError
from qnas.space import SearchSpace

# ---------------------------------------------------------------- errors
def test_error_hierarchy():
    assert issubclass(ArchError, QnasError)
    assert issubclass(ConfigError, QnasError)
    assert not issubclass(ArchError, ConfigError)


# ---------------------------------------------------------------- round trips
def test_json_round_trip_many(archs):
    for a in archs:
        text = a.to_json()
        b = Arch.from_json(text)
        assert b == a
        assert hash(b) == hash(a)
        assert b.to_json() == text
        assert b.uid == a.uid
        # to_dict / from_dict path too, through a real JSON encode
        assert Arch.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_json_round_trip_with_skips(skip_archs):
    assert any(b.is_skip for a in skip_archs for b in a.blocks()), "skip space should sample some skips"
    for a in skip_archs:
        assert Arch.from_json(a.to_json()) == a


def test_uid_is_short_and_distinguishes_archs(archs):
    uids = {a.uid for a in archs}
    assert len(uids) == len(set(archs))
    assert all(len(u) == 12 and all(c in "0123456789abcdef" for c in u) for u in uids)


def test_describe_mentions_resolution_and_ops(space, skip_space):
    a = space.uniform(8, 4)
    s = a.describe()
    assert s.startswith(f"r{a.resolution} ")
    assert "k7e6:w888a444" in s
    assert s.count("|") == len(a.stages)
    u = skip_space.uniform()
    b = dataclasses.replace(u, stages=(u.stages[0], (u.stages[1][0], Block.skip()) + u.stages[1][2:]) + u.stages[2:])
    assert "skip" in b.describe()


# ---------------------------------------------------------------- hashing
def test_arch_hashable_and_equal_hash_equal(archs):
    for a in archs[:50]:
        twin = Arch.from_dict(a.to_dict())
        assert twin == a and twin is not a
        assert hash(twin) == hash(a)
        assert twin in {a}
        assert {a: 1}[twin] == 1
    s = set(archs)
    assert len(s) <= len(archs)
    assert len(s) > len(archs) // 2  # the space is huge; random samples are essentially distinct
    assert all(Arch.from_json(a.to_json()) in s for a in archs)
    assert len(s | {Arch.from_json(a.to_json()) for a in archs}) == len(s)


def test_arch_and_block_frozen(space):
    a = space.uniform()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.resolution = 12  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.stages[0][0].kernel = 5  # type: ignore[misc]


def test_arch_helpers(space):
    a = space.uniform()
    assert a.depths == tuple(max(s.depths) for s in space.config.stages)
    assert len(a.blocks()) == sum(a.depths)
    assert Block.skip().is_skip and Block.skip().op == "skip"
    assert Block(3, 6, (8, 8, 8), (8, 8, 8)).op == "k3_e6"


# ---------------------------------------------------------------- Arch parsing errors
@pytest.mark.parametrize("text", ["", "{", "{not json}", "[1, 2", "resolution: 16"])
def test_from_json_invalid_json(text):
    with pytest.raises(ArchError) as ei:
        Arch.from_json(text)
    assert "JSON" in str(ei.value)


def _good() -> dict:
    return SearchSpace().uniform(8, 4).to_dict()


def _set(d: dict, path, value) -> dict:
    obj = d
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value
    return d


@pytest.mark.parametrize("path, value, word", [
    (("resolution",), "16", "resolution"),
    (("resolution",), 16.0, "resolution"),
    (("resolution",), True, "resolution"),
    (("width",), "1.0", "width"),
    (("width",), True, "width"),
    (("width",), None, "width"),
    (("stages",), {"0": []}, "stages"),
    (("stages", 0), "k3e6", "stages[0]"),
    (("stages", 0, 0), [3, 6], "stages[0][0]"),
    (("stages", 1, 0, "k"), "3", "k"),
    (("stages", 1, 0, "e"), 4.0, "e"),
    (("stages", 0, 0, "w"), 8, "w"),
    (("stages", 0, 0, "w"), ["8", 8, 8], "w"),
    (("stages", 0, 0, "a"), None, "a"),
    (("stem",), [8], "stem"),
    (("head",), [8, 8, 8], "head"),
    (("head",), "88", "head"),
])
def test_from_json_wrong_field_types(path, value, word):
    d = _set(_good(), path, value)
    with pytest.raises(ArchError) as ei:
        Arch.from_json(json.dumps(d))
    assert word in str(ei.value)


@pytest.mark.parametrize("missing", ["resolution", "width", "stages"])
def test_from_json_missing_field(missing):
    d = _good()
    del d[missing]
    with pytest.raises(ArchError) as ei:
        Arch.from_json(json.dumps(d))
    assert missing in str(ei.value)


def test_from_json_block_missing_field():
    d = _good()
    del d["stages"][0][0]["w"]
    with pytest.raises(ArchError, match="w"):
        Arch.from_json(json.dumps(d))


@pytest.mark.parametrize("text", ["[]", "null", "3", '"arch"'])
def test_from_json_not_an_object(text):
    with pytest.raises(ArchError):
        Arch.from_json(text)


def test_from_json_defaults_stem_head():
    d = _good()
    del d["stem"], d["head"]
    a = Arch.from_json(json.dumps(d))
    assert a.stem_bits == (8, 8) and a.head_bits == (8, 8)


def test_from_json_int_width_equals_float_width():
    d = _good()
    d["width"] = 1
    a = Arch.from_json(json.dumps(d))
    assert isinstance(a.width, float)
    assert a == SearchSpace().uniform(8, 4)


