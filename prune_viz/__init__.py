"""prune_viz: see what token pruning does inside a Vision Transformer that segments images.

Layers are 1-based ("prune at layer L": block L runs in full, blocks L+1.. see only the kept
tokens). MACs: 1 multiply-add = 1 MAC; FLOPs = 2 x MACs.
"""

__version__ = "0.1.0"
