"""Where candidate evaluations run: in this process (default) or fanned out
over Ray tasks (``--executor ray``), with identical results.

Each Ray task asks the scheduler for ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs. By default a
search whose torch device is CUDA asks for one GPU per task (so Ray runs as many evaluations at once as
the cluster has GPUs, and each on its own GPU) and a CPU search for none; inside a task the evaluator
is pointed at the GPU Ray assigned (:func:`assigned_cuda_device`)."""
from __future__ import annotations

import copy
import math
import os
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterator, Sequence

from qnas.errors import ConfigError


class Executor(ABC):
    name = ""

    @abstractmethod
    def map(self, fn: Callable[[Any], dict], items: Sequence[Any]) -> list[dict]:
        """``[fn(x) for x in items]``, in order."""

    def imap(self, fn: Callable[[Any], dict], items: Sequence[Any]) -> Iterator[tuple[int, dict]]:
        """``(i, fn(items[i]))`` as each evaluation finishes (any order), so a search records each one
        at once and a kill loses at most the evaluations still running."""
        yield from enumerate(self.map(fn, items))

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class InProcessExecutor(Executor):
    name = "local"

    def map(self, fn: Callable[[Any], dict], items: Sequence[Any]) -> list[dict]:
        return [fn(x) for x in items]

    def imap(self, fn: Callable[[Any], dict], items: Sequence[Any]) -> Iterator[tuple[int, dict]]:
        for i, x in enumerate(items):
            yield i, fn(x)


# ---- torch devices and Ray resources ---------------------------------------------------------
def is_cuda_torch_device(torch_device: Any) -> bool:
    """Whether a torch device (a name such as ``cuda``/``cuda:1``/``auto``, or a ``torch.device``) is a CUDA
    GPU; ``auto`` is one where this process sees CUDA (as :func:`~qnas.quant.torch_device.resolve_torch_device`
    decides)."""
    if torch_device is None:
        return False
    text = str(torch_device).strip().lower()
    if text == "auto":
        try:
            import torch

            return bool(torch.cuda.is_available())
        except ImportError:  # pragma: no cover - torch is a dependency
            return False
    return text == "cuda" or text.startswith("cuda:")


def _resource(value: Any, name: str, flag: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} ({flag}) must be a number >= 0, got {value!r}")
    if value > 1 and not float(value).is_integer():
        raise ConfigError(f"{name} ({flag}) above 1 must be a whole number, got {value!r}; Ray shares one "
                          "device only in fractions (e.g. 0.5: two tasks per GPU)")
    return float(value)


def ray_task_resources(torch_device: Any = "cpu", gpus_per_task: float | None = None,
                       cpus_per_task: float | None = None) -> dict[str, float]:
    """The Ray resources each evaluation task requests: ``{"num_cpus": ..., "num_gpus": ...}``.

    ``gpus_per_task`` None: 1 when ``torch_device`` is a CUDA GPU, else 0 (a fraction such as 0.5 lets two
    tasks share one GPU). ``cpus_per_task`` None: 1. A one-line :class:`ConfigError` for a negative or
    non-number count, and for GPUs requested by a search that trains on a known non-CUDA torch device
    (``torch_device`` None: not known, e.g. a custom evaluator)."""
    cuda = is_cuda_torch_device(torch_device)
    gpus = (1.0 if cuda else 0.0) if gpus_per_task is None else _resource(
        gpus_per_task, "gpus_per_task", "--ray-gpus-per-task")
    cpus = 1.0 if cpus_per_task is None else _resource(cpus_per_task, "cpus_per_task", "--ray-cpus-per-task")
    if gpus > 0 and not cuda and torch_device is not None:
        raise ConfigError(f"--ray-gpus-per-task {gpus:g} needs a CUDA torch device (--torch-device cuda), got "
                          f"{str(torch_device)!r}; the tasks would hold GPUs they do not use")
    if gpus == 0 and cpus == 0:
        raise ConfigError("a Ray task must request some CPU or GPU (--ray-cpus-per-task and "
                          "--ray-gpus-per-task are both 0)")
    return {"num_cpus": cpus, "num_gpus": gpus}


def assigned_cuda_device(gpu_ids: Sequence[Any], visible: str | None = None) -> str | None:
    """The torch device of the first GPU Ray assigned to this task (``ray.get_gpu_ids()``), or None.

    Ray sets ``CUDA_VISIBLE_DEVICES`` (``visible``) to the assigned GPUs, so that GPU is ``cuda:0`` here;
    where the variable lists more (``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES``), it is the assigned
    id's position in it; unset, the id itself."""
    if not gpu_ids:
        return None
    first = str(gpu_ids[0]).strip()
    listed = [v.strip() for v in (visible or "").split(",") if v.strip()]
    if listed:
        return f"cuda:{listed.index(first)}" if first in listed else "cuda:0"
    return f"cuda:{first}" if first.isdigit() else "cuda:0"


def on_torch_device(fn: Any, torch_device: str) -> Any:
    """``fn`` (an evaluator) set to run on ``torch_device``: its own ``to_torch_device(name)`` if it has
    one, else a shallow copy whose CUDA ``torch_device`` (a name) / ``device`` (a ``torch.device``)
    attribute and CUDA ``supernet`` are moved there. Anything else is returned as is."""
    if hasattr(fn, "to_torch_device"):
        return fn.to_torch_device(torch_device)
    out = None
    name = getattr(fn, "torch_device", None)
    if isinstance(name, str) and (is_cuda_torch_device(name) or name.strip().lower() == "auto"):
        out = copy.copy(fn)
        out.torch_device = torch_device
    dev = getattr(fn, "device", None)
    if getattr(dev, "type", None) == "cuda" and str(dev) != torch_device:
        import torch

        out = out or copy.copy(fn)
        out.device = torch.device(torch_device)
    net = getattr(fn, "supernet", None)
    if net is not None and hasattr(net, "parameters"):
        p = next(iter(net.parameters()), None)
        if p is not None and p.device.type == "cuda" and str(p.device) != torch_device:
            net.to(torch_device)  # the task's own deserialized copy
    return fn if out is None else out


def evaluator_torch_device(fn: Any) -> str | None:
    """The torch device an evaluator trains/evaluates on, where it says: a ``torch_device`` name, a
    ``torch.device`` ``device`` attribute, or its ``supernet``'s parameters; else None."""
    name = getattr(fn, "torch_device", None)
    if name is not None:
        return str(name)
    dev = getattr(fn, "device", None)
    if getattr(dev, "type", None) in ("cpu", "cuda", "mps"):
        return str(dev)
    net = getattr(fn, "supernet", None)
    if net is not None and hasattr(net, "parameters"):
        p = next(iter(net.parameters()), None)
        if p is not None:
            return str(p.device)
    return None


class RayExecutor(Executor):
    """Ray tasks, one per candidate. Starts a local Ray runtime unless ``address`` names a cluster
    (``num_cpus``: the CPUs of that local runtime).

    The evaluator is shipped to the workers once (``ray.put``) and each task evaluates one arch; results
    come back in the order asked. Each task requests ``cpus_per_task`` CPUs (default 1) and
    ``gpus_per_task`` GPUs (default: 1 if the search's ``torch_device`` is CUDA, else 0; ``torch_device``
    None: the evaluator's own, see :func:`evaluator_torch_device`). A task given a GPU evaluates on it
    (``cuda:0`` of the task, :func:`assigned_cuda_device`)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_task: float | None = None,
                 gpus_per_task: float | None = None, torch_device: str | None = None):
        self.cpus_per_task, self.gpus_per_task, self.torch_device = cpus_per_task, gpus_per_task, torch_device
        ray_task_resources(torch_device, gpus_per_task, cpus_per_task)  # refuse bad counts before starting Ray
        try:
            import ray
        except ModuleNotFoundError:
            raise ConfigError('--executor ray needs Ray: pip install "qnas[ray]"') from None
        self.ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, ignore_reinit_error=True)
        self._task = ray.remote(_call)
        self._fn_ref: Any = None
        self._fn: Any = None
        self.task_options: dict[str, float] | None = None  # what the last map's tasks requested

    def resources_for(self, fn: Any) -> dict[str, float]:
        """The ``num_cpus``/``num_gpus`` each task evaluating ``fn`` requests."""
        torch_device = self.torch_device if self.torch_device is not None else evaluator_torch_device(fn)
        return ray_task_resources(torch_device, self.gpus_per_task, self.cpus_per_task)

    def map(self, fn: Callable[[Any], dict], items: Sequence[Any]) -> list[dict]:
        return list(self.ray.get(self._submit(fn, items)))

    def imap(self, fn: Callable[[Any], dict], items: Sequence[Any]) -> Iterator[tuple[int, dict]]:
        refs = self._submit(fn, items)
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=1)
            for ref in ready:
                yield index[ref], self.ray.get(ref)

    def _submit(self, fn: Callable[[Any], dict], items: Sequence[Any]) -> list[Any]:
        if fn is not self._fn:
            self._fn, self._fn_ref = fn, self.ray.put(fn)
            self.task_options = self.resources_for(fn)
        opts = self.task_options
        task = self._task.options(**opts)
        return [task.remote(self._fn_ref, x, opts["num_gpus"] > 0) for x in items]

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()


def _call(fn: Callable[[Any], dict], x: Any, on_gpu: bool = False) -> dict:
    """One Ray task: ``fn(x)``; with ``on_gpu``, on the GPU Ray assigned to the task."""
    if on_gpu:
        import ray

        device = assigned_cuda_device(ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        if device is not None:
            import torch

            if torch.cuda.is_available():
                torch.cuda.set_device(device)  # a bare "cuda" means this GPU, too
            fn = on_torch_device(fn, device)
    return fn(x)


EXECUTORS = {"local": InProcessExecutor, "ray": RayExecutor}


def create_executor(name: str, **kwargs: Any) -> Executor:
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; choose one of {sorted(EXECUTORS)}")
    return EXECUTORS[name](**kwargs)


def executor_from_config(cfg: Any) -> Executor:
    """The executor a search config asks for (``executor``, ``ray_address``, ``torch_device``, and, where
    the config has them, ``ray_gpus_per_task`` / ``ray_cpus_per_task``)."""
    if cfg.executor != "ray":
        return create_executor(cfg.executor)
    return create_executor("ray", address=getattr(cfg, "ray_address", None),
                           torch_device=getattr(cfg, "torch_device", None) or "cpu",
                           gpus_per_task=getattr(cfg, "ray_gpus_per_task", None),
                           cpus_per_task=getattr(cfg, "ray_cpus_per_task", None))
