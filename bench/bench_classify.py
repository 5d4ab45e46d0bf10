"""Benchmark the intake classifier: throughput, load time, size on disk, peak RSS.

    .venv/bin/python bench/bench_classify.py [--model DIR] [--data models/data/heldout]
                                             [--messages 5000] [--check]

Throughput is one process, ``Classifier.classify_many`` over the held-out (subject, new text)
pairs repeated to ``--messages``; quote/signature splitting happens before the clock starts,
as it does in the pipeline (parse owns it). ``--check`` exits 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from itertools import islice, cycle
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

TARGETS = {"messages_per_s": 1000.0, "load_s": 2.0, "size_mb": 30.0, "peak_rss_mb": 500.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "models" / "data" / "heldout")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    from inbox_bot.classify import Classifier, default_model_path
    import_s = time.perf_counter() - started
    from inbox_bot.training import directory_size, example_new_text, load_corpus

    model_dir = args.model or default_model_path()
    started = time.perf_counter()
    classifier = Classifier.load(model_dir)
    load_s = time.perf_counter() - started

    examples = load_corpus(args.data)
    if not examples:
        parser.error(f"no examples in {args.data}")
    pairs = [(ex.subject, example_new_text(ex)) for ex in examples]
    items = list(islice(cycle(pairs), args.messages))
    classifier.classify_many(items[:200])  # warm-up: first-call allocations are not throughput

    started = time.perf_counter()
    classifier.classify_many(items)
    elapsed = time.perf_counter() - started

    results = {
        "model": str(model_dir),
        "version": classifier.version,
        "messages": len(items),
        "distinct_messages": len(pairs),
        "messages_per_s": round(len(items) / elapsed, 1),
        "import_s": round(import_s, 3),
        "load_s": round(load_s, 3),
        "import_plus_load_s": round(import_s + load_s, 3),
        "size_mb": round(directory_size(Path(model_dir)) / 1e6, 2),
        # ru_maxrss is KiB on Linux
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key:<20} {value}")

    missed = [key for key, limit in TARGETS.items()
              if (results[key] < limit if key == "messages_per_s" else results[key] > limit)]
    if missed:
        print("targets missed: " + ", ".join(missed), file=sys.stderr)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
