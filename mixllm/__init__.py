"""mixllm: a contextual-bandit LLM router (MixLLM, NAACL 2025) with its own nightly MLOps pipeline.

Importing the package does no work: heavy modules (torch, sentence-transformers, MLflow, GX) are imported by the
stage modules that need them, so `mixllm --help` stays fast.
"""

__version__ = "0.1.0"
