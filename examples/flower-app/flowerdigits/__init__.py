"""Digits with softmax regression in numpy, as a plain Flower app (no Ember imports)."""
