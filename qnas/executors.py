"""Where candidate evaluations run: in this process (default) or fanned out
over Ray tasks (``--executor ray``), with identical results."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

from qnas.errors import ConfigError


class Executor(ABC):
    name = ""

    @abstractmethod
    def map(self, fn: Callable[[Any], dict], items: Sequence[Any]) -> list[dict]:
        """``[fn(x) for x in items]``, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class InProcessExecutor(Executor):
    name = "local"

    def map(self, fn: Callable[[Any], dict], items: Sequence[Any]) -> list[dict]:
        return [fn(x) for x in items]


class RayExecutor(Executor):
    """Ray tasks, one per candidate. Starts a local Ray runtime unless ``address`` names a cluster.

    The evaluator is shipped to the workers once (``ray.put``) and each task
    evaluates one arch; results come back in the order asked."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_task: float = 1.0):
        try:
            import ray
        except ModuleNotFoundError:
            raise ConfigError('--executor ray needs Ray: pip install "qnas[ray]"') from None
        self.ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, ignore_reinit_error=True)
        self._task = ray.remote(num_cpus=cpus_per_task)(_call)
        self._fn_ref: Any = None
        self._fn: Any = None

    def map(self, fn: Callable[[Any], dict], items: Sequence[Any]) -> list[dict]:
        if fn is not self._fn:
            self._fn, self._fn_ref = fn, self.ray.put(fn)
        return list(self.ray.get([self._task.remote(self._fn_ref, x) for x in items]))

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()


def _call(fn: Callable[[Any], dict], x: Any) -> dict:
    return fn(x)


EXECUTORS = {"local": InProcessExecutor, "ray": RayExecutor}


def create_executor(name: str, **kwargs: Any) -> Executor:
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; choose one of {sorted(EXECUTORS)}")
    return EXECUTORS[name](**kwargs)
