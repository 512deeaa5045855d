"""Which Flower strategies a job may name, and validation of their parameters.

Strategies are Flower's own classes from `flwr.serverapp.strategy`; parameters are checked
against each class's constructor signature, so a typo is refused at submit, naming the field.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

STRATEGIES = ("FedAvg", "FedProx", "FedAdam", "FedYogi", "FedAdagrad", "FedMedian", "FedTrimmedAvg", "Krum", "FedAvgM", "MultiKrum", "Bulyan", "QFedAvg")
# Parameters Ember sets from the job spec itself (fractions, minimums), not from strategy_params.
RESERVED = ("fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes", "min_available_nodes")


@lru_cache(maxsize=None)
def strategy_class(name: str) -> type:
    import flwr.serverapp.strategy as strategies

    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return getattr(strategies, name)


def validate_strategy(name: str, params: dict[str, Any]) -> None:
    """Raise ValueError naming the bad strategy or parameter."""
    cls = strategy_class(name)
    signature = inspect.signature(cls)  # the constructor's parameters, without `self`
    accepted = set(signature.parameters)
    for key, value in params.items():
        if key in RESERVED:
            raise ValueError(f"{key}: set through the job spec (training.fraction_*, learners.min), not here")
        if key not in accepted:
            raise ValueError(f"{key}: {name} has no parameter {key!r} (accepts: {', '.join(sorted(accepted - set(RESERVED)))})")
        if not isinstance(value, (int, float, str, bool)) or value is None:
            raise ValueError(f"{key}: must be a number, string or boolean")
    try:
        signature.bind_partial(**params)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
