"""What every benchmark shares: the machine's facts, outside load, the timing protocol.

The protocol (DESIGN.md, "Measuring speed"), written once here and used by every speed
benchmark:

- **alone** (the headline): each engine in turn runs a block of calls back to back
  after a pause, blocks alternate between the engines over several rounds, on the same
  inputs. That is how a user compares two engines: one at a time. The pause lets the
  previous engine's thread pool stop spinning, so no engine pays for another's.
- **interleaved** (second figure): one call of each engine per round. Every engine then
  runs right after another one's pool has spun, as on a busy server.
- **paced**: a pause before every call, as a camera at 10 fps gives (``pause`` 0.1 s):
  what waking the threads costs.
- **contended**: the alone protocol while a neighbour process busy-loops on one core for
  the whole run (:class:`BusyNeighbour`).

Each records how busy the CPUs were with work that was not ours (from /proc/stat and our
own rusage); reports are medians and ratios, never one absolute time.
"""

import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# the zoo (framedelta.converters.zoo), in the order the tables list it
MODELS = ["resnet18", "mobilenet_v2", "unet", "mobilenet_v3_small", "efficientnet_b0",
          "deeplabv3", "yolo", "fcn", "yolov8n"]


# trained models from wheels (framedelta.converters.zoo.trained): ONNX files converted
# directly, onnxruntime on the same file the reference; sides multiples of 32
TRAINED_MODELS = {"centerface": (352, 480), "ppocr_det": (352, 480)}


def trained_engines(name, n_threads, tmp, size=None):
    """(framedelta Model taking uint8 BGR frames, onnxruntime session of the same file,
    frame -> the session's input) for trained model ``name`` at ``size`` (h, w), or
    None after saying so when its wheel is absent."""
    import framedelta as fd
    from framedelta.converters.zoo.trained import (TRAINED, convert_trained, frame_input,
                                                   reference_session)
    if TRAINED[name].path() is None:
        print(f"{name} skipped: {TRAINED[name].missing}", file=sys.stderr)
        return None
    h, w = size or TRAINED_MODELS[name]
    path = Path(tmp) / f"{name}.h5"
    convert_trained(name, path, size=(h, w))
    sess = reference_session(name, (1, 3, h, w), n_threads)
    return fd.load(path, n_threads=n_threads), sess, lambda frame: frame_input(name, frame)


# zoo models that need another input size than the benchmark's (YOLOv8's neck concatenates
# maps of stride 8, 16 and 32: the size must be a multiple of 32)
ZOO_SIZES = {"yolov8n": (352, 480)}


def zoo_size(name, h, w):
    """(h, w) at which to run zoo model ``name`` for a benchmark at (h, w)."""
    return ZOO_SIZES.get(name, (h, w))


def zoo_model(name, h, w):
    """``ZOO[name]`` for (h, w) inputs: the detector's decoding grids are constants of
    the input size, so it is built for it."""
    from framedelta.converters.zoo import ZOO
    return ZOO[name](**({"img_size": (h, w)} if name == "yolo" else {}))


def read_clip(video, frames=0, without=None):
    """The first ``frames`` frames of ``video`` (0: all) as uint8 arrays. When the file
    is absent: None, after saying what the run leaves out (``without``), or, for a
    benchmark that needs the clip (``without`` None), an exit saying so."""
    from framedelta.scenes import video_frames
    if not Path(video).exists():
        if without is None:
            raise SystemExit(f"{video} is absent: this benchmark needs a fixed-camera clip")
        print(f"{video} is absent: {without}", file=sys.stderr)
        return None
    return list(video_frames(video, frames or None))


def as_outputs(y):
    """A model's outputs as a list of numpy arrays (several come back as a tuple or list)."""
    import numpy as np
    if isinstance(y, (tuple, list)):          # YOLOv8: (y, [p3, p4, p5])
        return [v for part in y for v in as_outputs(part)]
    return [np.asarray(y.detach().numpy() if hasattr(y, "detach") else y)]


def _cpu_jiffies():
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]          # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def _own_cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


class LoadMeter:
    """Outside load over an interval: CPU time used by other processes / CPU time there was.

    0.0 means the other processes used nothing; 0.5 on 2 cores means one core was taken.
    """

    def __enter__(self):
        self._busy0, self._total0 = _cpu_jiffies()
        self._own0 = _own_cpu_seconds()
        return self

    def __exit__(self, *exc):
        busy1, total1 = _cpu_jiffies()
        hz = os.sysconf("SC_CLK_TCK")
        busy = (busy1 - self._busy0) / hz
        total = (total1 - self._total0) / hz
        own = _own_cpu_seconds() - self._own0
        self.outside = max(0.0, busy - own) / total if total > 0 else 0.0
        return False


def machine_facts(n_threads):
    facts = {"python": platform.python_version(), "threads": n_threads,
             "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            facts["cpu_model"] = next(line.split(":", 1)[1].strip() for line in f
                                      if line.startswith("model name"))
    except (OSError, StopIteration):
        facts["cpu_model"] = platform.processor()
    try:
        facts["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        facts["git_dirty"] = bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        facts["git_commit"] = None
    versions = {}
    for mod in ("numpy", "scipy", "torch", "onnxruntime", "framedelta"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    facts["versions"] = versions
    return facts


def onnxruntime_session(net, example, path, n_threads):
    """``net`` exported to ONNX at ``path`` (TorchScript exporter, opset 17, input "x")
    and an onnxruntime CPU session on ``n_threads`` threads, sequential."""
    import onnxruntime as ort
    import torch
    torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=17,
                      input_names=["x"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = n_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def interleaved(engines, rounds, warmup=2):
    """Time each engine once per round, round-robin; returns per-engine times and load.

    ``engines``: {name: zero-argument callable}. Returns ({name: [seconds]}, [outside
    load per round]).
    """
    for _ in range(warmup):
        for fn in engines.values():
            fn()
    times = {name: [] for name in engines}
    loads = []
    for _ in range(rounds):
        with LoadMeter() as meter:
            for name, fn in engines.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        loads.append(meter.outside)
    return times, loads


def alone(engines, rounds=4, block=8, pause=0.3, warmup=1):
    """Each engine alone: per round, each engine in turn (the order rotated every round)
    waits ``pause`` seconds, makes ``warmup`` untimed calls, then ``block`` timed calls
    back to back. Returns ({name: [seconds]}, [outside load per block])."""
    names = list(engines)
    times = {name: [] for name in names}
    loads = []
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = engines[name]
            time.sleep(pause)
            for _ in range(warmup):
                fn()
            with LoadMeter() as meter:
                for _ in range(block):
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
            loads.append(meter.outside)
    return times, loads


def paced(engines, calls=12, pause=0.1):
    """Camera-like pacing: every call after a ``pause`` (0.1 s: 10 fps), the engines
    interleaved call by call (each pause is long enough for any pool to fall asleep).
    Returns ({name: [seconds]}, [outside load per round])."""
    times = {name: [] for name in engines}
    loads = []
    for _ in range(calls):
        with LoadMeter() as meter:
            for name, fn in engines.items():
                time.sleep(pause)
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        loads.append(meter.outside)
    return times, loads


def _busy_loop(stop):
    x = 0
    while not stop.is_set():
        for _ in range(10000):
            x += 1


class BusyNeighbour:
    """A process that busy-loops on one core (the last one) for as long as the block
    lasts: a camera server always has neighbours (decoders, other services).

        with BusyNeighbour():
            times, loads = alone(engines)
    """

    def __enter__(self):
        ctx = multiprocessing.get_context("fork")
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_busy_loop, args=(self._stop,), daemon=True)
        self._proc.start()
        try:
            os.sched_setaffinity(self._proc.pid, {max(os.sched_getaffinity(0))})
        except (AttributeError, OSError):
            pass
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
        return False


PROTOCOLS = ("alone", "interleaved", "paced", "contended")


def measure(engines, protocol, rounds=4, block=8):
    """``engines`` timed under one of :data:`PROTOCOLS`; ({name: [s]}, [load])."""
    if protocol == "alone":
        return alone(engines, rounds=rounds, block=block)
    if protocol == "interleaved":
        return interleaved(engines, rounds * block // 2)
    if protocol == "paced":
        return paced(engines, calls=max(6, rounds * 3))
    if protocol == "contended":
        with BusyNeighbour():
            return alone(engines, rounds=rounds, block=block)
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def geomean(values):
    values = list(values)
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def median_ms(values):
    return 1e3 * statistics.median(values)


def write_json(name, payload):
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def replace_section(readme, marker, text):
    """Replace the text between <!-- marker --> and <!-- /marker --> in ``readme``."""
    begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    body = readme.read_text() if readme.exists() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in body and end in body:
        head, rest = body.split(begin, 1)
        body = head + block + rest.split(end, 1)[1]
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    readme.write_text(body)
