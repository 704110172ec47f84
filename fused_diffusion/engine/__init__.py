"""The engine: fd.Sampler (sampler.py) over a graph cache (cache.py), whole-loop capture and replay (capture.py) and
the watch that keys and invalidates graphs by every module the loop calls (watch.py)."""
from .capture import records_own_cuda_graphs
from .sampler import Sampler
from .watch import LoopWatch, graph_key

__all__ = ["LoopWatch", "Sampler", "graph_key", "records_own_cuda_graphs"]
