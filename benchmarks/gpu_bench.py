"""bench_train.py over several pairs, written as two Markdown files: every configuration's row per pair, and the
rows of the README's speed table (reference against fast). Run by benchmarks/gpu_check.sh.

    python benchmarks/gpu_bench.py --pairs resnet32x4:resnet8x4,vgg13:vgg8 --table bench.md --summary rows.md -- \
        --configs reference,nosync,device_data,fast,fast_compile --steps 60
(everything after `--` goes to bench_train.py for every pair)
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import bench_train  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

SPEED_HEADER = ("| pair | device | reference img/s | fast img/s | fast / reference (median of the rounds' ratios) | "
                "convolutions, ms/step (reference → fast) | fast, convolutions alone / reference | "
                "peak memory (reference → fast) |\n|---|---|---:|---:|---:|---:|---:|---:|")


def speed_row(pair, results):
    """The README speed-table row of one pair from bench_train's results (reference against fast)."""
    by_name = {r["config"]: r for r in results if "failed" not in r}
    reference, fast = by_name.get("reference"), by_name.get("fast")
    teacher, student = pair.split(":")
    if reference is None or fast is None:
        failed = "; ".join(f"{r['config']}: {r['failed']}" for r in results if "failed" in r)
        return f"| {teacher} → {student} | - | failed: {failed or 'no reference or fast configuration'} |"
    conv = "-"
    alone = "-"
    if reference.get("conv_time") and fast.get("conv_time"):
        conv = f"{1000 * reference['conv_time'][0]:.0f} → {1000 * fast['conv_time'][0]:.0f}"
        alone = f"{reference['ms_per_step'] / (1000 * fast['conv_time'][0]):.2f}x"
    ratio = f"{fast['vs_reference']:.2f}x" if fast.get("vs_reference") else "-"
    memory = f"{reference['peak_mib']:.0f} → {fast['peak_mib']:.0f} MiB {fast['memory_kind']}"
    return (f"| {teacher} → {student} | {fast['device']} | {reference['images_per_s']:.0f} | "
            f"{fast['images_per_s']:.0f} | {ratio} | {conv} | {alone} | {memory} |")


def main(argv=None):
    """Benchmark each pair; write the per-configuration tables and the speed-table rows; 1 if anything failed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ours, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", required=True, help="comma list of teacher:student")
    p.add_argument("--table", required=True, help="Markdown file for every configuration's row, per pair")
    p.add_argument("--summary", required=True, help="Markdown file for the README speed-table rows")
    p.add_argument("--compile_pairs", default="",
                   help="comma list of pairs that also run fast_compile (compiling costs about a minute per pair)")
    opt = p.parse_args(ours)
    rows, failed = [], False
    with open(opt.table, "w") as table:
        for pair in opt.pairs.split(","):
            pair_argv = [*rest, "--pair", pair]
            if pair in opt.compile_pairs.split(",") and "--configs" in pair_argv:
                at = pair_argv.index("--configs") + 1
                pair_argv[at] += ",fast_compile"
            args = bench_train.parse_args(pair_argv)
            results = bench_train.measure_all(args, pair_argv)
            failed |= any("failed" in r for r in results)
            table.write(f"\n### {pair.replace(':', ' → ')} ({' '.join(rest)})\n\n{bench_train.HEADER}\n")
            for r in results:
                table.write((f"| {r['config']} | failed: {r['failed']} |" if "failed" in r else bench_train.row(r))
                            + "\n")
            table.flush()
            rows.append(speed_row(pair, results))
            print(rows[-1], flush=True)
            # rewritten after every pair: a stage stopped by its time limit keeps the pairs it finished
            with open(opt.summary, "w") as summary:
                summary.write(SPEED_HEADER + "\n" + "\n".join(rows) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
