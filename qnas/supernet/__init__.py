"""Weight-sharing supernet with elastic kernel/expand/depth/width/resolution and switchable bit widths.

* :class:`Supernet` -- ``set_active(arch)``, ``extract(arch)`` -> the standalone Brevitas ``QuantNet``;
* :func:`train_supernet` / :class:`SupernetTrainConfig` / :class:`Phase` -- sandwich rule,
  progressive shrinking, in-place distillation, resumable checkpoints;
* :func:`recalibrate_bn` / :class:`SupernetEvaluator` -- inherited accuracy (the accuracy-source interface);
* :func:`calibrating_ranges` -- re-estimate a sub-network's batch-statistic activation ranges with its BN.
"""
from qnas.supernet.evaluate import SupernetEvaluator, preserved_act_ranges, preserved_bn_state, recalibrate_bn
from qnas.supernet.quantize import calibrating_ranges
from qnas.supernet.sampling import DIMENSIONS, Phase, full_space_largest, progressive_phases
from qnas.supernet.supernet import Supernet
from qnas.supernet.io import load_supernet
from qnas.supernet.train import SupernetTrainConfig, make_optimizer, sandwich_step, train_supernet

__all__ = [
    "Supernet", "load_supernet", "SupernetTrainConfig", "Phase", "DIMENSIONS", "progressive_phases", "full_space_largest",
    "train_supernet", "sandwich_step", "make_optimizer",
    "recalibrate_bn", "preserved_bn_state", "preserved_act_ranges", "calibrating_ranges", "SupernetEvaluator",
]


def __getattr__(name: str):  # deprecated names, kept importable for one release
    if name == "distill_loss":
        from qnas.supernet import train

        return train.distill_loss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
