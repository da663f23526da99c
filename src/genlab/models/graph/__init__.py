"""Graph models: GCN/GAT encoders with GAE/VGAE link predictors (gae.py) and a GraphRNN-S
generator of whole small graphs (graphrnn.py), and its molecule variant with atom types, bond
orders and a valence check (molgraphrnn.py)."""
