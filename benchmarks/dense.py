"""Dense speed: framedelta vs onnxruntime vs PyTorch eager, side by side in one run.

    python benchmarks/dense.py                         # zoo + trained models, 1 and 2 threads
    python benchmarks/dense.py --models unet centerface --threads 2 --protocols alone
    python benchmarks/dense.py --update-readme

For each model: the zoo's (random weights, 1x3x360x480) are converted from PyTorch and
exported to ONNX (TorchScript exporter); the trained ones (CenterFace, PP-OCRv4 det, at
their own size) are converted from the ONNX file onnxruntime runs. Each is timed under
the protocols of benchmarks/common.py (DESIGN.md, "Measuring speed"):

- ``alone`` (the headline): each engine alone in alternating blocks, a pause between;
- ``interleaved``: one call of each engine per round;
- ``contended``: alone, beside a process busy-looping on one core the whole time;
- ``paced``: a 0.1 s pause before every call (a 10 fps camera).

onnxruntime runs with its default options (intra_op_num_threads = ours). Reports
medians, the ratio framedelta / onnxruntime per protocol and thread count, the geometric
mean over the models, and the contended / alone slowdown of each engine, to
benchmarks/results/dense.json and (--update-readme) the `dense-table` section of
benchmarks/README.md. Needs the bench extra (pip install -e ".[bench]"); the trained
models need their wheels (README, test command).
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (MODELS, PROTOCOLS, ROOT, TRAINED_MODELS, as_outputs,  # noqa: E402
                    geomean, machine_facts, measure, median_ms, onnxruntime_session,
                    replace_section, trained_engines, write_json, zoo_model, zoo_size)

ALL_MODELS = MODELS + list(TRAINED_MODELS)


def zoo_engines(name, shape, n_threads, tmp):
    import torch

    import framedelta as fd
    shape = shape[:2] + zoo_size(name, *shape[2:])
    net = zoo_model(name, *shape[2:])
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    path = Path(tmp) / f"{name}.h5"
    fd.convert(net, x, path)
    model = fd.load(path, n_threads=n_threads)
    sess = onnxruntime_session(net, x, Path(tmp) / f"{name}.onnx", n_threads)
    xn = x.numpy()

    def torch_run():
        with torch.no_grad():
            return net(x)

    engines = {"framedelta": lambda: model.run(xn),
               "onnxruntime": lambda: sess.run(None, {"x": xn}),
               "torch": torch_run}
    # the comparison is only meaningful if they compute the same thing
    with torch.no_grad():
        refs = as_outputs(net(x))
    check(name, engines, refs, ("framedelta", "onnxruntime"))
    return engines


def onnx_engines(name, n_threads, tmp):
    """A trained model: framedelta on the converted ONNX file, onnxruntime on the file."""
    built = trained_engines(name, n_threads, tmp)
    if built is None:
        return None
    model, sess, feed = built
    h, w = model.input_shape[2:]
    frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    x = feed(frame)
    xn = np.ascontiguousarray(x, np.float32)
    iname = sess.get_inputs()[0].name
    engines = {"framedelta": lambda: model.run(xn),
               "onnxruntime": lambda: sess.run(None, {iname: xn})}
    check(name, engines, as_outputs(engines["onnxruntime"]()), ("framedelta",))
    return engines


def check(name, engines, refs, which):
    for engine in which:
        ys = as_outputs(engines[engine]())
        if len(ys) != len(refs):
            raise RuntimeError(f"{name}: {engine} has {len(ys)} outputs, reference {len(refs)}")
        err = max(float(np.abs(y - ref).max() / (1 + np.abs(ref).max()))
                  for y, ref in zip(ys, refs))
        if err > 1e-3:
            raise RuntimeError(f"{name}: {engine} differs from the reference by {err:.2e}")


def table(results, threads, protocols):
    head = ["model", "threads"]
    for p in protocols:
        head += [f"{p}: framedelta ms", "onnxruntime ms", "ratio"]
    if "contended" in protocols and "alone" in protocols:
        head += ["slowdown framedelta", "slowdown onnxruntime"]
    head += ["torch ms (alone)", "load (alone)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for nt in threads:
        for r in [r for r in results if r["threads"] == nt]:
            cells = [r["model"], str(nt)]
            for p in protocols:
                m = r["protocols"][p]["median_ms"]
                cells += [f"{m['framedelta']:.1f}", f"{m['onnxruntime']:.1f}",
                          f"**{r['protocols'][p]['ratio']:.2f}**" if p == "alone"
                          else f"{r['protocols'][p]['ratio']:.2f}"]
            if "contended" in protocols and "alone" in protocols:
                s = r["slowdown"]
                cells += [f"{s['framedelta']:.2f}", f"{s['onnxruntime']:.2f}"]
            t = r["protocols"].get("alone", {}).get("median_ms", {}).get("torch")
            # outside load of the headline (the contended runs' neighbour counts as load)
            load = r["protocols"].get("alone", next(iter(r["protocols"].values())))
            cells += ["" if t is None else f"{t:.1f}", f"{load['outside_load_median']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        rs = [r for r in results if r["threads"] == nt]
        cells = ["geometric mean", str(nt)]
        for p in protocols:
            cells += ["", "", f"**{geomean(r['protocols'][p]['ratio'] for r in rs):.2f}**"]
        if "contended" in protocols and "alone" in protocols:
            cells += [f"{geomean(r['slowdown']['framedelta'] for r in rs):.2f}",
                      f"{geomean(r['slowdown']['onnxruntime'] for r in rs):.2f}"]
        cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=ALL_MODELS, choices=ALL_MODELS)
    p.add_argument("--shape", default="1,3,360,480", help="the zoo models' input")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--protocols", nargs="+", default=["alone", "interleaved", "contended"],
                   choices=PROTOCOLS)
    p.add_argument("--rounds", type=int, default=4, help="blocks per engine (alone)")
    p.add_argument("--block", type=int, default=6, help="calls per block (alone)")
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))

    import torch
    results, failed = [], []
    facts = machine_facts(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for nt in args.threads:
            torch.set_num_threads(nt)
            for name in args.models:
                try:
                    engines = (onnx_engines(name, nt, tmp) if name in TRAINED_MODELS
                               else zoo_engines(name, shape, nt, tmp))
                except Exception as e:       # one model that fails never stops the run
                    print(f"{name} ({nt} threads) left out: {type(e).__name__}: {e}",
                          file=sys.stderr, flush=True)
                    failed.append({"model": name, "threads": nt, "error": str(e)})
                    continue
                if engines is None:
                    continue
                r = {"model": name, "threads": nt, "protocols": {}}
                for proto in args.protocols:
                    # torch is timed alone only (it is the slowest and not the target)
                    eng = engines if proto == "alone" else {
                        k: v for k, v in engines.items() if k != "torch"}
                    times, loads = measure(eng, proto, rounds=args.rounds, block=args.block)
                    med = {k: median_ms(v) for k, v in times.items()}
                    r["protocols"][proto] = {
                        "times_ms": {k: [1e3 * t for t in v] for k, v in times.items()},
                        "median_ms": med, "ratio": med["framedelta"] / med["onnxruntime"],
                        "outside_load_median": statistics.median(loads)}
                if "contended" in r["protocols"] and "alone" in r["protocols"]:
                    a, c = r["protocols"]["alone"], r["protocols"]["contended"]
                    r["slowdown"] = {k: c["median_ms"][k] / a["median_ms"][k]
                                     for k in ("framedelta", "onnxruntime")}
                results.append(r)
                write_json("dense", {"benchmark": "dense", "machine": facts, "partial": True,
                                     "results": results, "failed": failed})
                print(f"{name} ({nt} threads): " + "; ".join(
                    f"{k} {v['median_ms']['framedelta']:.1f} / {v['median_ms']['onnxruntime']:.1f}"
                    f" ms = {v['ratio']:.2f}" for k, v in r["protocols"].items()), flush=True)
    out = write_json("dense", {"benchmark": "dense", "machine": facts, "results": results,
                               "failed": failed, "protocols": args.protocols})
    text = table(results, args.threads, args.protocols)
    print(text)
    print(f"wrote {out}")
    if args.update_readme:
        cmd = " ".join(["python benchmarks/dense.py"] + (argv if argv is not None
                                                         else sys.argv[1:]))
        note = (f"Measured with `{cmd}` on {facts['cpu_model']}, commit "
                f"{(facts['git_commit'] or '?')[:10]}; zoo models at {args.shape} (random "
                "weights; YOLOv8n at 352x480, a multiple of its stride 32), trained models "
                "at their own size (352x480). Medians; ratio = framedelta / "
                f"onnxruntime. alone: {args.rounds} blocks of {args.block} calls per engine, "
                "0.3 s apart; interleaved: one call each per round; contended: alone beside "
                "a process busy-looping on one core (slowdown = contended / alone); load: "
                "the share of CPU time other processes took (0.5 = one core).\n\n")
        replace_section(ROOT / "benchmarks" / "README.md", "dense-table", note + text)


if __name__ == "__main__":
    main()
