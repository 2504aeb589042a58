"""GPU check: the four committed ONNX models on a CUDA GPU, FP32 and FP16, against the CPU reference.

The TensorRT plans (deploy/build_tensorrt.sh) are FP16; before building them on a GPU host, this
tells whether the models keep their answers in FP16. Each ONNX graph runs on the GPU through a
small torch interpreter (onnx_torch.py), in FP32 and in FP16, inside the node's own Analyzer, on
three validation studies of the synthetic cohort (512x512); the reference is ONNX Runtime on the
CPU (what the CPU Triton variant runs). Prints and writes $OUT/gpu_check.json (default
/tmp/out): per study the lesions found by each, how many the GPU finds again (same key slice, box
IoU >= 0.9), the largest score, long-axis and embedding differences, and the detector's
throughput. Needs torch with CUDA, onnx, onnxruntime, scipy and pydicom; run from the repository
root: `PYTHONPATH=. python3 deploy/gpu_check/gpu_check.py`. SMALL=1 uses the small preset and
one study; NOFP16=1 runs the second GPU pass in FP32 too (a CPU-only smoke run).
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.getcwd())
from onnx_torch import Runner

from node.eval.metrics import iou
from node.inference import preprocess as pp
from node.inference.analyzer import Analyzer
from node.inference.backend import MODEL_NAMES, OnnxBackend
from node.synth.phantom import synthesize_study

OUT = Path(os.environ.get("OUT", "/tmp/out"))
OUT.mkdir(parents=True, exist_ok=True)
REPO = Path("triton_models")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = bool(os.environ.get("SMALL"))
report = {
    "device": torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu",
    "torch": torch.__version__,
    "numpy": np.__version__,
}
print(report, flush=True)


class TorchBackend:
    def __init__(self, dtype, reference):
        self.runners = {
            n: Runner(str(REPO / "onnx" / f"{n}.onnx"), DEV, dtype) for n in MODEL_NAMES
        }
        self.reference = reference  # the CPU backend: versions and the segmenter's mask cut
        self.versions = reference.model_versions()

    def infer(self, model, inputs):
        with torch.no_grad():
            out = self.runners[model](
                **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
            )
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    def model_versions(self):
        return self.versions

    def model_parameters(self, model):
        return self.reference.model_parameters(model)  # the segmenter's mask cut travels in the ONNX file

    def close(self):
        pass


cpu = OnnxBackend(REPO, threads=8)
backends = {
    "onnxruntime_cpu_fp32": cpu,
    "cuda_fp32": TorchBackend(torch.float32, cpu),
    "cuda_fp16": TorchBackend(torch.float32 if os.environ.get("NOFP16") else torch.float16, cpu),
}

# Raw tensor parity on real inputs: one detector batch, segmenter and embedder crops.
study = synthesize_study(10001, 0, small=SMALL)  # a validation patient, full-size preset
vol = study.to_volume()

canvas = pp.make_canvas(vol.pixels, vol.spacing)
det_in = pp.detector_inputs(
    canvas, np.arange(canvas.pixels.shape[0] // 2 - 8, canvas.pixels.shape[0] // 2 + 8)
)
ref = cpu.infer("lesion_detector", {"image": det_in})
tensors = {}
for name in ("cuda_fp32", "cuda_fp16"):
    out = backends[name].infer("lesion_detector", {"image": det_in})
    tensors[name] = {k: float(np.abs(out[k] - ref[k]).max()) for k in out}
report["detector_max_abs_diff_vs_cpu"] = tensors
print(tensors, flush=True)

# Whole analyses, three validation studies.
studies = [study] + [synthesize_study(p, 0, small=SMALL) for p in (10004, 10007)][
    : 0 if SMALL else 2
]
report["studies"] = []
for s in studies:
    v = s.to_volume()
    row = {"shape": list(v.pixels.shape), "truth_lesions": len(s.lesions)}
    results = {}
    for name, be in backends.items():
        Analyzer(be).analyze(
            v
        ) if name != "onnxruntime_cpu_fp32" else None  # warm-up (cuDNN autotune)
        t = time.perf_counter()
        a = Analyzer(be).analyze(v)
        dt = time.perf_counter() - t
        results[name] = a
        row[name] = {
            "seconds": round(dt, 3),
            "lesions": len(a.lesions),
            "timings": {k: round(x, 3) for k, x in a.timings.items()},
        }
    refl = results["onnxruntime_cpu_fp32"].lesions
    for name in ("cuda_fp32", "cuda_fp16"):
        les = results[name].lesions
        matched = 0
        d_long = []
        d_score = []
        d_emb = []
        same_type = 0
        for r in refl:
            best = max(
                les,
                key=lambda lesion: (
                    iou(lesion.box, np.array([r.box]))[0] if lesion.key_slice == r.key_slice else -1
                ),
                default=None,
            )
            if (
                best is None
                or best.key_slice != r.key_slice
                or iou(best.box, np.array([r.box]))[0] < 0.9
            ):
                continue
            matched += 1
            same_type += best.lesion_type == r.lesion_type
            d_score.append(abs(best.score - r.score))
            if best.recist and r.recist:
                d_long.append(abs(best.recist.long_axis_mm - r.recist.long_axis_mm))
            d_emb.append(float(np.linalg.norm(best.embedding - r.embedding)))
        row[name]["same_lesions_as_cpu"] = (
            f"{matched}/{len(refl)} (box IoU >= 0.9 on the same key slice)"
        )
        row[name]["same_type"] = same_type
        row[name]["max_score_diff"] = max(d_score, default=None)
        row[name]["max_long_axis_diff_mm"] = max(d_long, default=None)
        row[name]["max_embedding_distance"] = max(d_emb, default=None)
    row["bps_max_abs_diff_fp16"] = float(
        np.abs(
            results["cuda_fp16"].body_part_scores - results["onnxruntime_cpu_fp32"].body_part_scores
        ).max()
    )
    report["studies"].append(row)
    print(json.dumps(row), flush=True)

# Throughput of the detector alone (the bulk of the work), batch 32.
x = torch.from_numpy(pp.detector_inputs(canvas, np.arange(32))).to(DEV)
for name in ("cuda_fp32", "cuda_fp16"):
    r = backends[name].runners["lesion_detector"]
    with torch.no_grad():
        for _ in range(3):
            r(image=x)
        torch.cuda.synchronize() if DEV == "cuda" else None
        t = time.perf_counter()
        for _ in range(10):
            r(image=x)
        torch.cuda.synchronize() if DEV == "cuda" else None
    report[f"detector_{name}_slices_per_s"] = round(320 / (time.perf_counter() - t), 1)
t = time.perf_counter()
cpu.infer("lesion_detector", {"image": x.cpu().numpy()})
report["detector_onnxruntime_cpu_8threads_slices_per_s"] = round(32 / (time.perf_counter() - t), 1)
(OUT / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
