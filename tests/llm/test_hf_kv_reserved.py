"""The reserved cache layer: the same keys and values as transformers' concatenating layer."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers.cache_utils import DynamicLayer  # noqa: E402

from debatelab.llm.hf_kv import ReservedLayer  # noqa: E402


def _steps(layer, chunks):
    outs = []
    for k, v in chunks:
        keys, values = layer.update(k, v)
        outs.append((keys.clone(), values.clone()))
    return outs


@pytest.mark.parametrize("capacity", [40, 3])  # room for all, and a layer that must grow twice
def test_reserved_layer_matches_dynamic_layer_through_updates_and_crop(capacity: int) -> None:
    gen = torch.Generator().manual_seed(0)
    chunks = [(torch.randn(2, 3, n, 4, generator=gen), torch.randn(2, 3, n, 4, generator=gen)) for n in (5, 1, 1, 7)]
    plain, reserved = DynamicLayer(), ReservedLayer(capacity)
    for (pk, pv), (rk, rv) in zip(_steps(plain, chunks), _steps(reserved, chunks)):
        assert torch.equal(pk, rk) and torch.equal(pv, rv)
    plain.crop(-7)
    reserved.crop(-7)
    assert reserved.get_seq_length() == plain.get_seq_length() == 7
    assert torch.equal(plain.keys, reserved.keys) and torch.equal(plain.values, reserved.values)
    more = (torch.randn(2, 3, 2, 4, generator=gen), torch.randn(2, 3, 2, 4, generator=gen))
    assert all(torch.equal(a, b) for a, b in zip(plain.update(*more), reserved.update(*more)))


def test_reserved_layer_writes_in_place_while_room_lasts() -> None:
    layer = ReservedLayer(10)
    layer.update(torch.ones(1, 1, 4, 2), torch.ones(1, 1, 4, 2))
    buffer = layer._keys.data_ptr()
    layer.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    assert layer._keys.data_ptr() == buffer and layer.keys.shape[-2] == 5
    layer.update(torch.zeros(1, 1, 6, 2), torch.zeros(1, 1, 6, 2))  # 11 > 10: it grows, keeping what it held
    assert layer.keys.shape[-2] == 11 and torch.equal(layer.keys[0, 0, :4], torch.ones(4, 2))


def test_legacy_positive_crop_keeps_transformers_error() -> None:
    layer = ReservedLayer(4)
    layer.update(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError):
        layer.crop(1)
