"""The user SDK: subclass `ModelManager`, Ember does the rest. See `ember.sdk.model`."""

from ember.sdk.model import ModelManager, TrainConfig

__all__ = ["ModelManager", "TrainConfig"]
