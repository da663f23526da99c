"""Bytes on the wire: a Flower client mod that measures each message a client receives and
each reply it sends (their serialised protobuf size: model arrays, configs, and under SecAgg+
the key exchange, shares and masked vectors), appended as one JSON line per message to
`RUN/clients/client-K/traffic.jsonl`. The server sums the files after each round."""

from __future__ import annotations

import json
from pathlib import Path


def message_bytes(content) -> int:
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(content).ByteSize()


def traffic_mod(run_dir: str | Path | None = None):
    """The mod (first in the ClientApp's mods, so it sees what really travels)."""

    def mod(msg, context, call_next):
        reply = call_next(msg, context)
        folder = Path(run_dir or context.run_config["run-dir"]) / "clients" / \
            f"client-{int(context.node_config['partition-id'])}"
        folder.mkdir(parents=True, exist_ok=True)
        up = message_bytes(reply.content) if reply.has_content() else 0
        with open(folder / "traffic.jsonl", "a") as f:  # one short line per append: whole lines only
            f.write(json.dumps({"type": msg.metadata.message_type, "down": message_bytes(msg.content),
                                "up": up}) + "\n")
        return reply

    return mod


def read_totals(run_dir: Path) -> dict[str, int]:
    down = up = 0
    for path in sorted(Path(run_dir).glob("clients/client-*/traffic.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line being written right now
                continue
            down, up = down + rec["down"], up + rec["up"]
    return {"down": down, "up": up}
