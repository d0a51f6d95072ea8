"""Dense speed: framedelta vs PyTorch eager vs onnxruntime, side by side in one run.

    python benchmarks/dense.py                 # every zoo model at 1x3x360x480
    python benchmarks/dense.py --rounds 30 --models unet --update-readme

For each model: convert it to framedelta, export it to ONNX (TorchScript exporter),
then time framedelta dense, PyTorch eager (default and channels_last) and onnxruntime
(CPUExecutionProvider, intra_op_num_threads = ours) on the same input, interleaved run
by run. Reports medians and ratios to onnxruntime, with the outside load, to
benchmarks/results/dense.json and (with --update-readme) the table in
benchmarks/README.md. Needs the bench extra: pip install -e ".[bench]".
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (MODELS, ROOT, as_outputs, interleaved, machine_facts,  # noqa: E402
                    median_ms, onnxruntime_session, replace_section, write_json, zoo_model)


def build_engines(name, shape, n_threads, tmp):
    import torch

    import framedelta as fd
    net = zoo_model(name, *shape[2:])
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    path = Path(tmp) / f"{name}.h5"
    fd.convert(net, x, path)
    model = fd.load(path, n_threads=n_threads)
    sess = onnxruntime_session(net, x, Path(tmp) / f"{name}.onnx", n_threads)
    xn = x.numpy()
    net_cl = zoo_model(name, *shape[2:]).to(memory_format=torch.channels_last)
    net_cl.load_state_dict(net.state_dict())
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def torch_run(m, inp):
        def run():
            with torch.no_grad():
                return m(inp)
        return run

    engines = {
        "framedelta": lambda: model.run(xn),
        "onnxruntime": lambda: sess.run(None, {"x": xn}),
        "torch": torch_run(net, x),
        "torch_channels_last": torch_run(net_cl, x_cl),
    }
    # the comparison is only meaningful if they compute the same thing
    with torch.no_grad():
        refs = as_outputs(net(x))
    for engine in ("framedelta", "onnxruntime"):
        ys = as_outputs(engines[engine]())
        if len(ys) != len(refs):
            raise RuntimeError(f"{name}: {engine} has {len(ys)} outputs, torch {len(refs)}")
        err = max(float(np.abs(y - ref).max() / (1 + np.abs(ref).max()))
                  for y, ref in zip(ys, refs))
        if err > 1e-3:
            raise RuntimeError(f"{name}: {engine} differs from torch by {err:.2e}")
    return engines


def table(results):
    lines = ["| model | framedelta ms | onnxruntime ms | torch ms | torch channels_last ms "
             "| framedelta / onnxruntime | outside load |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        m = r["median_ms"]
        lines.append(f"| {r['model']} | {m['framedelta']:.1f} | {m['onnxruntime']:.1f} | "
                     f"{m['torch']:.1f} | {m['torch_channels_last']:.1f} | "
                     f"{r['ratio_to_onnxruntime']['framedelta']:.2f} | "
                     f"{r['outside_load_median']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--shape", default="1,3,360,480")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))

    import torch
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            engines = build_engines(name, shape, args.threads, tmp)
            times, loads = interleaved(engines, args.rounds)
            med = {k: median_ms(v) for k, v in times.items()}
            ratios = {k: med[k] / med["onnxruntime"] for k in med}
            results.append({"model": name, "shape": shape, "rounds": args.rounds,
                            "times_ms": {k: [1e3 * t for t in v] for k, v in times.items()},
                            "median_ms": med, "ratio_to_onnxruntime": ratios,
                            "outside_load": loads,
                            "outside_load_median": statistics.median(loads)})
            print(f"{name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items())
                  + f"; framedelta/onnxruntime {ratios['framedelta']:.2f}; "
                  f"outside load {statistics.median(loads):.2f}", flush=True)
    facts = machine_facts(args.threads)
    out = write_json("dense", {"benchmark": "dense", "machine": facts, "results": results})
    text = table(results)
    print(text)
    print(f"wrote {out}")
    if args.update_readme:
        note = (f"Measured with `python benchmarks/dense.py --rounds {args.rounds}` on "
                f"{facts['cpu_model']}, {args.threads} threads, input {args.shape}, commit "
                f"{(facts['git_commit'] or '?')[:10]}; medians of interleaved runs; outside "
                "load is the share of CPU time other processes took during the runs.\n\n")
        replace_section(ROOT / "benchmarks" / "README.md", "dense-table", note + text)


if __name__ == "__main__":
    main()
