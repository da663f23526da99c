"""Federated training with Flower (`genlab federate FED.yaml`): K clients, each training the
run's model with genlab's engine on its own shard, a server aggregating with Flower's
strategies (FedAvg, FedProx, FedAdam), optionally through SecAgg+ and with client-level DP.

    config.py     the federation file's settings (FederationConfig)
    partition.py  iid, Dirichlet label skew, k classes per client, by speaker
    client.py     the ClientApp side: a Trainer on one shard, one local round per message
    server.py     the ServerApp side: strategy, rounds, checkpoints, the run directory
    traffic.py    bytes each client receives and sends
    launch.py     prepare the run directory; run in Flower's simulation or as real processes
    app.py        the same components for Flower's `flwr run` app layout
"""

from genlab.federated.launch import federate

__all__ = ["federate"]
