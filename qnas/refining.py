"""Refining a search's best candidates: a few epochs of QAT for the most accurate archs in budget.

A briefly trained supernet ranks archs but does not reach the accuracies they will have once
finished (the demo's inherited accuracies lie 50-80 points below). Refining gives the
``top`` most accurate records within the budget ``epochs`` epochs of QAT, each starting from the
weights the accuracy source gave it (the supernet's extraction, a candidate's trained state, else
scratch), and scores them again on validation (last epoch, not the best one: no selection on the
validation set). The search then chooses among the refined candidates, and the accuracy it reports
for them is one finishing confirms (the demo: within about 2 points of 20 finishing epochs).

Entries go to ``RUN/refined.json`` (``{uid: entry}``) as each finishes, so a resumed search
reuses them, and each refined model to ``RUN/refined/UID.pt``: finishing the chosen arch
(:func:`qnas.finishing.finish_qat`, ``qnas finish``) goes on from those weights rather than
starting again from the supernet's.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from tqdm.auto import tqdm

from qnas.arch import Arch
from qnas.errors import ConfigError

if TYPE_CHECKING:
    from qnas.data import Splits
    from qnas.rundir import RunDir
    from qnas.space import SearchSpace
    from qnas.strategies import Budget

__all__ = ["REFINED_DIR", "REFINED_FILE", "refine_candidates", "refine_targets"]

REFINED_FILE = "refined.json"
#: the refined models, ``UID.pt`` each
REFINED_DIR = "refined"


def refine_targets(records: Sequence[dict[str, Any]], budget: "Budget", top: int) -> list[dict[str, Any]]:
    """The ``top`` most accurate records within ``budget`` (ties: the faster first), one per arch."""
    seen: set[str] = set()
    ok = []
    for r in sorted((r for r in records if budget.ok(r)), key=lambda r: (-r["val_acc"], r["latency_ms"])):
        if r["uid"] not in seen:
            seen.add(r["uid"])
            ok.append(r)
    return ok[:top]


def _start_model(space: "SearchSpace", arch: Arch, evaluator: Any, seed: int):
    """The weights the accuracy source gave ``arch`` (and where they came from)."""
    import torch

    from qnas.quant.build import build_model
    from qnas.quant.checkpoint import load_state

    if hasattr(evaluator, "extract"):  # a supernet: its subnet, BN re-estimated as when it was scored
        return evaluator.extract(arch), "supernet"
    state = evaluator.state(arch) if hasattr(evaluator, "state") else None
    torch.manual_seed(seed)
    model = build_model(space, arch)
    if state is not None:
        return load_state(model, state, arch.uid), "candidate"
    return model, "scratch"


def refine_candidates(space: "SearchSpace", records: Sequence[dict[str, Any]], splits: "Splits", budget: "Budget",
                      *, top: int, epochs: int, evaluator: Any = None, seed: int = 0, batch_size: int = 64,
                      lr: float = 2e-3, threads: int | None = None, torch_device: str = "cpu", amp: str = "off",
                      run: "RunDir | None" = None, progress: bool = True,
                      log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Refine the ``top`` most accurate records within ``budget`` by ``epochs`` epochs of QAT each.

    Returns ``{uid: {"uid", "val_acc" (the search's), "refined_val_acc", "epochs", "start",
    "seconds"}}``; with ``run`` also kept in ``RUN/refined.json`` (entries of the same ``epochs``
    are reused)."""
    from qnas._torch_utils import torch_threads
    from qnas.data import ResizedSplits
    from qnas.quant.configs import QATConfig
    from qnas.quant.qat import qat
    from qnas.quant.train import evaluate

    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ConfigError(f"refine_top must be an integer >= 0, got {top!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"refine_epochs must be an integer >= 1, got {epochs!r}")
    done: dict[str, dict[str, Any]] = {}
    if run is not None and run.file(REFINED_FILE).is_file():
        from qnas.jsonfile import read_json

        saved = read_json(run.file(REFINED_FILE), "refined candidates", "delete it to refine again")
        if not isinstance(saved, dict):
            raise ConfigError(f"{run.file(REFINED_FILE)} is not a JSON object of refined candidates; "
                              "delete it to refine again")
        done = {k: v for k, v in saved.items() if isinstance(v, dict) and v.get("epochs") == epochs}
    targets = refine_targets(records, budget, top)
    data = ResizedSplits(splits)
    out: dict[str, dict[str, Any]] = {}
    for rec in tqdm(targets, desc=f"refine ({epochs} QAT epochs)", disable=not progress, unit="arch"):
        if rec["uid"] in done:
            out[rec["uid"]] = done[rec["uid"]]
            continue
        arch = Arch.from_dict(rec["arch"])
        t0 = time.perf_counter()
        with torch_threads(threads):
            model, start = _start_model(space, arch, evaluator, seed)
            cfg = QATConfig(epochs=epochs, lr=lr, seed=seed, keep_best=False, progress=False,
                            desc=f"refine {arch.uid}", torch_device=torch_device, amp=amp)
            qat(model, data("train", arch.resolution).loader(batch_size, True, seed), None, cfg)
            acc = evaluate(model, data("val", arch.resolution).loader(512, False))
        out[rec["uid"]] = {"uid": rec["uid"], "val_acc": rec["val_acc"], "refined_val_acc": float(acc),
                           "epochs": epochs, "start": start, "seconds": round(time.perf_counter() - t0, 2)}
        if run is not None:
            from qnas.quant.checkpoint import save_checkpoint

            run.file(REFINED_DIR).mkdir(exist_ok=True)
            save_checkpoint(run.file(REFINED_DIR) / f"{arch.uid}.pt", model,
                            {"arch": arch.to_dict(), "refined": out[rec["uid"]]})
        if log:
            log(f"refined {arch.uid}: {100 * rec['val_acc']:.1f} % -> {100 * acc:.1f} % ({start} weights)")
        if run is not None:
            run.write_json(REFINED_FILE, {**done, **out})
    return out
