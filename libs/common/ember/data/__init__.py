"""The client side of a node's data plane: the Flight client, the learner-side loader, their errors.

The mldata service (`ember.mldata`) serves this protocol; the learner actor and the CLI reach it
through this package, so neither depends on the service's code.
"""
