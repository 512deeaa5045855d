"""Push the digits to the learner nodes of a running local stack (`ember up`), one part per node.

    python examples/digits/push_data.py [--home ~/.ember] [--alpha 0.5] [--seed 0]

Each node's mldata gets its own Dirichlet(alpha) label-skewed part of scikit-learn's digits
under the data tag `digits` (Arrow Flight `do_put`); the stratified 20% test part stays here.
The node list and each node's Flight URL and token come from `<home>/nodes/<node>/mldata.json`,
which the stack writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ember.devices.partition import partition_digits
from ember.devices.publish import put_table
from ember.settings import ember_home


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None, help="Ember home of the stack (default: $EMBER_HOME or ~/.ember)")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller: more label skew)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="digits")
    args = parser.parse_args(argv)
    home = (args.home or ember_home()).expanduser()
    files = sorted((home / "nodes").glob("*/mldata.json"))
    if not files:
        raise SystemExit(f"no node with an mldata under {home / 'nodes'}: start the stack with `ember up` first")
    nodes = {json.loads(f.read_text())["node"]: json.loads(f.read_text()) for f in files}
    split = partition_digits(sorted(nodes), scheme="dirichlet", alpha=args.alpha, seed=args.seed)
    for node, info in nodes.items():
        rows = put_table(split.nodes[node], args.tag, info["url"], info["token"])
        labels = sorted(set(split.nodes[node].column("label").to_pylist()))
        print(f"{node}: {rows} rows under tag {args.tag!r} (labels {labels})")


if __name__ == "__main__":
    main()
