"""Search strategies behind one ask/tell contract (see :mod:`qnas.strategies.base`)."""
from qnas.strategies.base import (Budget, RandomSearch, Strategy, StrategyContext, create_strategy, register_strategy,
                                  strategy_names)

__all__ = ["Budget", "RandomSearch", "Strategy", "StrategyContext", "create_strategy", "register_strategy", "strategy_names"]
