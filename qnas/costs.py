"""Hardware-independent cost counters of an arch as deployed."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from qnas.quant.plan import LayerSpec, NetworkPlan


@dataclass(frozen=True)
class Costs:
    macs: int
    params: int
    size_bits: int
    """Model size as deployed: sum of weights x their bit width (+ 32-bit biases)."""
    peak_activation_bytes: int
    """Largest live activation memory at any layer (input + output + kept residual), at their bit widths."""
    bitops: int
    """sum of MACs x w_bits x a_bits (the BitOps proxy of mixed-precision NAS papers)."""

    @property
    def size_kb(self) -> float:
        return self.size_bits / 8 / 1024

    @property
    def mmacs(self) -> float:
        return self.macs / 1e6

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size_kb"] = round(self.size_kb, 3)
        return d


def layer_size_bits(layer: LayerSpec) -> int:
    """Deployed size of a layer's weights at its bit width, float32 biases at 32 bits."""
    if layer.op == "fc":
        return layer.cin * layer.cout * layer.w_bits + layer.cout * 32
    if layer.bias:
        return (layer.params - layer.cout) * layer.w_bits + layer.cout * 32
    return layer.params * layer.w_bits


def count_costs(plan: NetworkPlan) -> Costs:
    """MACs, parameters, deployed size, peak activation memory and BitOps of a plan."""
    layers = plan.layers()
    quantized = plan.quantized_layers()
    macs = sum(l.macs for l in quantized)
    params = sum(l.params for l in quantized)
    size_bits = sum(layer_size_bits(l) for l in quantized)
    bitops = sum(l.macs * l.w_bits * l.a_bits for l in quantized)

    # An activation is stored at the bit width of the layer that consumes it.
    def consumer_bits(i: int) -> int:
        for nxt in layers[i + 1:]:
            if nxt.weighted:
                return nxt.a_bits
        return 32

    peak = 0
    residual_keep = 0  # block input kept alive for the residual add
    in_residual = {l.name for b in plan.blocks if b.residual for l in b.all_layers}
    in_residual |= {f"{b.name}.add" for b in plan.blocks if b.residual}
    firsts = {b.first.name for b in plan.blocks}  # the layer reading a block's input
    for i, l in enumerate(layers):
        in_bits = l.a_bits if l.weighted else consumer_bits(i)
        live = l.in_elems * in_bits + l.out_elems * consumer_bits(i)
        if l.name in in_residual:
            if l.name in firsts:
                residual_keep = l.in_elems * l.a_bits  # that is this layer's own input: counted once
            else:
                live += residual_keep
        peak = max(peak, live)
    return Costs(macs, params, size_bits, peak // 8, bitops)
