"""Counting overhead of the energy counter: a counted run against an uncounted run of the same model (target <= 1.1x).

    python bench/energy.py                       # digits-size and CIFAR-size SDTs, CPU
    python bench/energy.py --threads 1 --budget 40 [--model 'digits 1-64 16x16'] [--malloc default]
    python bench/energy.py --threads 1 --budget 40 --checkpoint runs/demo/train-digits-*/model_best.pth.tar
    python bench/energy.py --threads 1 --budget 30 --integer      # sdt-energy --integer: the reference executor

Rows per model, times per batch over a report of ``--samples`` (200) samples: ``uncounted`` = the float graph executor
alone (``run_graph``, nothing recorded); ``counted`` = the same run with each of the counter's tensors counted as it is
made and the per-node counts built once per report (``EnergyCounter.tally``: what ``sdt-energy`` does);
``count only`` = the counter on already recorded tensors; ``model`` = the PyTorch forward for scale. Times are the
best median over several passes. The overhead ``ratio`` is the median over *interleaved pairs* (uncounted, counted)
run back to back, so that load from other processes on a shared machine hits both sides of each pair alike;
``count/unc`` = count only / uncounted, the counter's own share. Both sides run with glibc's allocator thresholds
pinned, as the CLIs run (``sdt/malloc.py``); ``--malloc default`` leaves glibc's own regime, whose page faults vary
with the heap's history by more than the counter costs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import sdt  # noqa: E402
from deploy.energy import EnergyCounter  # noqa: E402
from deploy.energy.run import count_float, count_integer, integer_population_map  # noqa: E402
from deploy.executor import Executor  # noqa: E402
from deploy.encoding import encode_input  # noqa: E402
from toolchain.pipeline import load  # noqa: E402
from export.run_graph import run_graph  # noqa: E402
from sdt.malloc import malloc_regime  # noqa: E402

MODELS = {
    # the digits preset (train.py): 1 block x 64 dims at 16x16, batch 32
    "digits 1-64 16x16": (dict(img_size_h=16, img_size_w=16, in_channels=1, num_classes=10, embed_dims=64,
                               num_heads=8, depths=1, T=4, pooling_stat="0011"), 32),
    # CIFAR-10 2-256 (official config shape) at 32x32, batch 8
    "cifar10 2-256 32x32": (dict(img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, embed_dims=256,
                                 num_heads=16, depths=2, T=4, pooling_stat="0011"), 8),
}


def _model(cfg: dict) -> sdt.SpikeDrivenTransformer:
    torch.manual_seed(0)
    m = sdt.create_model(**cfg)
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():  # weights that make every layer fire, as a trained model does
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.normal_(mod.weight, std=2.0 / mod.weight[0].numel() ** 0.5, generator=g)
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.bias.data = 0.5 + 0.3 * torch.randn(mod.num_features, generator=g)
    return m.eval()


def _checkpoint_case(path: str, samples: int) -> tuple[str, torch.nn.Module, list[torch.Tensor]]:
    """A trained checkpoint and the first ``samples`` test images of the data set it records, in batches of 32 (as
    ``sdt-energy`` reads them)."""
    from deploy.energy.run import take_batches
    from sdt.data import create_dataset
    from toolchain.pipeline import load

    src = load(path, strict=False)
    model, cfg, name = src.model, src.model_config, src.dataset
    if not name:
        raise SystemExit(f"{path} records no data set")
    ds = create_dataset(str(name), None, "test", img_size=cfg["img_size_h"], T=cfg["T"])
    return f"{name} checkpoint", model, list(take_batches(ds, samples, 32))


def _best_median(fns: dict[str, Callable[[], object]], passes: int, budget_s: float) -> dict[str, float]:
    per_block = budget_s / max(1, passes * len(fns))
    best: dict[str, float] = {}
    for _ in range(passes):
        for k, fn in fns.items():
            fn()  # warm-up
            times: list[float] = []
            start = time.perf_counter()
            while len(times) < 3 or (time.perf_counter() - start < per_block and len(times) < 50):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            best[k] = min(best.get(k, float("inf")), statistics.median(times))
    return best


def _paired_ratio(a: Callable[[], object], b: Callable[[], object], budget_s: float) -> float:
    """Median of t(b) / t(a) over back-to-back pairs (the order alternates to cancel cache effects)."""
    ratios: list[float] = []
    start = time.perf_counter()
    while len(ratios) < 6 or (time.perf_counter() - start < budget_s and len(ratios) < 200):
        first_a = len(ratios) % 2 == 0
        times = {}
        for k, fn in (("a", a), ("b", b)) if first_a else (("b", b), ("a", a)):
            t0 = time.perf_counter()
            fn()
            times[k] = time.perf_counter() - t0
        ratios.append(times["b"] / times["a"])
    return statistics.median(ratios)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--budget", type=float, default=40.0, help="seconds of timing per model")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--samples", type=int, default=200,
                   help="samples per report (sdt-energy in make demo: 200); the once-per-report work is shared by them")
    p.add_argument("--model", action="append", choices=list(MODELS), help="only these models (repeatable)")
    p.add_argument("--checkpoint", help="time this trained checkpoint on its data set's test images instead (a data "
                                        "set that needs no --data-dir, e.g. the make demo model)")
    p.add_argument("--integer", action="store_true",
                   help="time sdt-energy --integer: the quantised network on the reference executor, uncounted vs "
                        "counted (the 'model' column stays the float PyTorch forward)")
    p.add_argument("--malloc", choices=("pinned", "default"), default="pinned",
                   help="glibc allocator regime: pinned thresholds as the CLIs run (default; sdt/malloc.py) or "
                        "glibc's own, whose page faults vary from run to run")
    args = p.parse_args(argv)
    regime = malloc_regime(args.malloc)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU, "
          f"malloc {regime}")
    print(f"times per batch; a report of {args.samples} samples; "
          f"{'integer network, reference executor' if args.integer else 'float graph executor'}")
    print(f"{'model':24s} {'batch':>5s} {'model':>9s} {'uncounted':>10s} {'counted':>9s} {'count only':>10s} "
          f"{'count/unc':>9s} {'ratio':>6s}")
    worst = 0.0
    cases = [(name, _model(cfg), [torch.rand(batch, cfg["in_channels"], cfg["img_size_h"], cfg["img_size_w"])]
              * max(1, -(-args.samples // batch))) for name, (cfg, batch) in MODELS.items()
             if not args.checkpoint and (not args.model or name in args.model)]
    if args.checkpoint:
        cases.append(_checkpoint_case(args.checkpoint, args.samples))
    for name, model, xs in cases:
        x = xs[0]
        if args.integer:  # sdt-energy --integer: the quantised network on the reference executor
            src = load(model)  # the front door sdt-energy --integer uses
            net, graph = src.network()[0], src.graph()
            counter = EnergyCounter(graph)
            ex = Executor(net)
            mapping = integer_population_map(net, graph, counter.required)
            record = sorted(set(mapping.values()))

            def uncounted() -> None:
                for xb in xs:
                    ex.run(encode_input(net, xb))

            def counted() -> object:
                return count_integer(net, graph, counter, xs)

            def count_only(out=ex.run(encode_input(net, x), record=record).outputs) -> object:
                return counter.count({n: out[p] for n, p in mapping.items()})
        else:
            graph = load(model).graph()
            counter = EnergyCounter(graph)
            recorded = run_graph(graph, x, record=counter.required)[1]

            def uncounted() -> None:
                for xb in xs:
                    run_graph(graph, xb)

            def counted() -> object:
                return count_float(graph, counter, xs)

            def count_only() -> object:
                return counter.count(recorded)

        with torch.inference_mode():
            fns = {"model": lambda: model(x), "uncounted": uncounted, "counted": counted, "count only": count_only}
            t = _best_median(fns, args.passes, args.budget / 2)
            t["uncounted"] /= len(xs)
            t["counted"] /= len(xs)
            ratio = _paired_ratio(fns["uncounted"], fns["counted"], args.budget / 2)
        worst = max(worst, ratio)
        print(f"{name:24s} {len(x):5d} {t['model'] * 1e3:7.1f}ms {t['uncounted'] * 1e3:8.1f}ms "
              f"{t['counted'] * 1e3:7.1f}ms {t['count only'] * 1e3:8.1f}ms "
              f"{t['count only'] / t['uncounted']:9.3f} {ratio:6.3f}")
    print(f"worst counted / uncounted (median of pairs): {worst:.3f} (target <= 1.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
