"""Does bulk bf16 encoding (mixllm.embeddings, MIXLLM_ENCODER_BULK_PRECISION) move routing quality, or only the
seed? RouterBench train -> test, both conditions (labels / production = no task column), router seeds 0-2, each
precision in its own process (cache under $MIXLLM_HOME). Why this script: bench/quality.py runs seed 0 only, and its
production cell moved by -0.004 AIQ when bulk bf16 became the default; the k-means tags of the production condition
move by that much between seeds.

  for p in fp32 bf16; do MIXLLM_HOME=/tmp/bf MIXLLM_ENCODER_BULK_PRECISION=$p python bench/bulk_precision_seeds.py; done

Output of the 2026-12-03 run: bench/results/bulk_precision_seeds.txt (columns: precision, condition, seed, AIQ,
quality at 25% cost, seconds).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    import quality as Q

    from mixllm.catalogue import load_catalogue
    from mixllm.evaluation import evaluate
    from mixllm.router import MixLLMRouter, RouterConfig
    from mixllm.telemetry import go_offline

    go_offline()
    train, test = Q.load("routerbench")
    cat_name, ref = Q.DATASETS["routerbench"]
    cat = load_catalogue(cat_name)
    for cond in ("production", "labels"):
        tr, te = (train, test) if cond == "labels" else (train.assign(task=None), test.assign(task=None))
        for seed in (0, 1, 2):
            t = time.time()
            router = MixLLMRouter(RouterConfig(seed=seed, progress=False), cat).fit(tr)
            m = evaluate(router, te, reference=ref, baselines=(), train_log=tr, seed=seed).policies["router"].metrics
            print(os.environ.get("MIXLLM_ENCODER_BULK_PRECISION", "auto"), cond, seed, round(m["aiq"], 4),
                  round(m["quality_at_25pct_cost"], 4), round(time.time() - t), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
