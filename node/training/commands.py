"""`ainode train [MODEL|all]`: train, export to ONNX, write Triton configs and model cards."""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import os
import platform
import re
import sys
from pathlib import Path

from node.config import Settings
from node.inference.backend import DEFAULT_MASK_THRESHOLD, RUNTIME_PARAMETERS
from node.training.datasets import LARGE_LESION_MM, SEGMENTER_LARGE_LESIONS, SMALL_LESION_MM

logger = logging.getLogger(__name__)

MODELS = ("body_part_regressor", "lesion_detector", "lesion_segmenter", "lesion_embedder")
ALIASES = {"ssbr": "body_part_regressor", "detector": "lesion_detector", "segmenter": "lesion_segmenter", "embedder": "lesion_embedder"}



def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train the lesion models (needs the `train` extra: torch, onnx)")
    p.add_argument("model", nargs="?", default="all", help=f"all, or one or more (comma-separated) of {', '.join(MODELS)} (aliases: {', '.join(ALIASES)})")
    p.add_argument("--patients", type=int, default=None, help="synthetic training patients (default 160; the segmenter's recipe: 240)")
    p.add_argument("--val-patients", type=int, default=12, help="synthetic validation patients (default 12)")
    p.add_argument("--cohort-seed", type=int, default=0)
    p.add_argument("--cohort-version", type=int, choices=(1, 2, 3), default=None,
                   help="synthetic cohort version (node.synth.lesions.COHORT_VERSION, default the newest: 3, lymph nodes in fat, but for "
                        "the segmenter's recipe: 1; 2: lesions kept apart and lung lesions out of the heart; 1: neither; older versions "
                        "reproduce older models)")
    p.add_argument("--medium-every", type=int, default=None,
                   help="synthetic cohort: every N-th patient at 256x256, 1.5-1.8 mm, 1.25-3 mm slices, the rest at 128x128, 3.3 mm, 5 mm slices "
                        "(default: 1 for the detector, 3 for the other models; 0: none)")
    p.add_argument("--seed", type=int, default=None, help="torch / numpy seed, set afresh for each model (default 0; the body-part regressor's recipe: 1)")
    p.add_argument("--deeplesion", type=Path, default=None, help="train on a DeepLesion download (DL_info.csv + Images_png/) instead")
    p.add_argument("--max-series", type=int, default=None, help="DeepLesion: at most this many series")
    p.add_argument("--out", type=Path, default=None, help="model repository to write (default: settings.model_repository)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per lane (default: the cores shared among the lanes; 1 per lane reproduces the committed weights)")
    p.add_argument("--jobs", type=int, default=2,
                   help="lanes of models trained side by side, each in a process of its own (default 2: the body-part regressor, embedder "
                        "and detector in one, the segmenter in the other; 1: one model after another)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply epochs/steps (0.2 for a quick smoke run)")
    p.add_argument("--detector-epochs", type=int, default=24, help="detector epochs (default 24)")
    p.add_argument("--detector-per-lesion", type=int, default=5, help="detector windows per lesion (default 5)")
    p.add_argument("--detector-small-lesions", type=int, default=1,
                   help=f"detector: windows per lesion under {SMALL_LESION_MM:g} mm, as a multiple of the others' (default 1, the committed recipe; "
                        "3 found more lesions per volume but fewer on their key slices: see the detector's card)")
    p.add_argument("--detector-large-lesions", type=int, default=1,
                   help=f"detector: windows per lesion of {LARGE_LESION_MM:g} mm or more, as a multiple of the others' (default 1)")
    p.add_argument("--detector-negatives", type=int, default=6, help="detector windows without a lesion per study (default 6)")
    p.add_argument("--detector-head", choices=("typed", "objectness"), default="typed",
                   help="detector heatmap: typed (one per lesion type, CenterNet's) or objectness (one type-blind heatmap "
                        "and a type classifier, on the same output tensors; default typed)")
    p.add_argument("--detector-fine-stem", action="store_true",
                   help="detector: one convolution at the canvas's 2 mm pixels before the first downsampling (about a third more "
                        "detector compute; default off, the committed recipe)")
    p.add_argument("--segmenter-epochs", type=int, default=20, help="segmenter epochs (default 20)")
    p.add_argument("--segmenter-large-lesions", type=int, default=SEGMENTER_LARGE_LESIONS,
                   help=f"segmenter: crops per lesion of {LARGE_LESION_MM:g} mm or more, as a multiple of the others' (default {SEGMENTER_LARGE_LESIONS}: "
                        "large lesions are few in the cohort, and at 1 large kidney masses were cut down to their necrotic core; see the segmenter's card)")
    p.add_argument("--segmenter-size-jitter", type=_pair, default=(0.8, 1.25), metavar="LOW,HIGH",
                   help="segmenter: a training crop's box side is the lesion's times a factor drawn from LOW..HIGH, as a "
                        "detector's box is too small or too large (default 0.8,1.25; the detector's boxes were 0.46-0.55x the lesion at the "
                        "5th percentile on unseen patients: 0.5,1.3 was tried, see the segmenter's card)")
    p.add_argument("--segmenter-centre-jitter", type=float, default=0.08,
                   help="segmenter: a training crop's centre moves by a normal offset of this times the lesion's size, "
                        "each axis (default 0.08; the detector's centres were 0.09 of the lesion's size off at the median: 0.12 was tried)")
    p.add_argument("--segmenter-mask-cut", type=_probability, default=None,
                   help="segmenter: where the analyzer cuts its probability, exported with the weights (ONNX metadata mask_threshold, Triton "
                        "parameter ainode_mask_threshold) and used for the validation figures (default 0.35, the committed weights' cut, chosen "
                        "with `ainode eval --walk-check --mask-cut`; choose it again for new weights)")
    p.add_argument("--ssbr-consistency", type=float, default=None, metavar="WEIGHT",
                   help="body-part regressor: weight of the term that gives two crops of the same slices one score "
                        "(default 1.0; 0 leaves it out, the seed's losses alone)")
    p.add_argument("--ssbr-steps", type=int, default=3000, help="body-part regressor steps (default 3000)")
    p.add_argument("--embedder-timepoints", type=int, default=5, help="embedder: studies per training patient (default 5: each lesion seen at five sizes and poses, and same-lesion pairs over up to four intervals for the track term)")
    p.add_argument("--embedder-steps", type=int, default=400, help="embedder triplet steps before refinement (default 400)")
    p.add_argument("--embedder-refine-steps", type=int, default=200, help="embedder steps after pseudo-label refinement (default 200)")
    p.add_argument("--embedder-refine-rounds", type=int, default=1,
                   help="embedder: rounds of relabelling by the embedding and fine-tuning (default 1)")
    p.add_argument("--embedder-classifier-weight", type=float, default=1.0, help="embedder: weight of the type head's loss (default 1.0)")
    p.add_argument("--embedder-track-weight", type=float, default=1.0,
                   help="embedder: weight of the same-lesion-over-time term where the data has lesion tracks (default 1.0; 0: the seed's losses only)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    from node.cli import CommandError

    try:
        import torch  # noqa: F401

        from node.training import export
    except ImportError as exc:
        raise CommandError(f"training needs torch and onnx: `make install-train` ({exc.name} missing)") from exc
    names = [ALIASES.get(n, n) for n in args.model.split(",") if n]
    unknown = [n for n in names if n != "all" and n not in MODELS]
    if unknown or not names:
        raise CommandError(f"unknown model {args.model!r}: use all or one or more (comma-separated) of {', '.join(MODELS)}")
    wanted = MODELS if "all" in names else tuple(m for m in MODELS if m in names)
    out = Path(args.out or settings.model_repository)
    ssbr_onnx = out / "onnx" / "body_part_regressor.onnx"
    if "lesion_embedder" in wanted and "body_part_regressor" not in wanted and not ssbr_onnx.is_file():
        raise CommandError(
            f"the embedder's z cue comes from the body-part regressor, read from {ssbr_onnx}, which is missing: "
            f"train both (`ainode train ssbr,embedder --out {out}`), or copy a model repository there first "
            f"(`cp -r triton_models {out}`)"
        )
    if args.deeplesion is not None:
        _deeplesion_series(args)  # a folder without enough series fails here, before any lane starts
    lanes = _lanes(wanted, args.jobs)
    threads = args.threads or max(1, (os.cpu_count() or 2) // len(lanes))
    command = "ainode train " + " ".join(sys.argv[sys.argv.index("train") + 1 :] if "train" in sys.argv else [args.model])
    if len(lanes) == 1:
        _train(args, lanes[0], out, threads=threads, command=command)
    else:
        _train_in_lanes(args, lanes, out, threads=threads, command=command)
    export.write_triton_configs(out, *_exported(out))
    for line in compare_with_committed(out, wanted, settings.model_repository):
        print(line, flush=True)
    return 0


# Trained alone or in lanes, with one torch thread each, the command gives the same weights on
# the same machine (same CPU, same library versions). Across CPUs it does not: oneDNN, MKL,
# numpy's SIMD loops and ONNX Runtime's MLAS pick their kernels by the instruction set, so the
# sums round differently and training drifts into other, equally good weights (triton_models/
# README.md, "Reproducing the weights"). So each run says how it compares with the committed set.
COMPARED = {
    "body_part_regressor": ("median_r_slice_index", "min_r_slice_index", "final_loss"),
    "lesion_detector": ("val_key_slice_sensitivity_at_0.3", "val_false_positives_per_key_slice_at_0.3", "final_loss"),
    "lesion_segmenter": ("val_key_slice_dice_mean", "val_long_axis_abs_err_mm_median", "val_short_axis_abs_err_mm_median"),
    "lesion_embedder": ("test_type_acc_knn_on_embedding", "test_type_acc_classifier_head", "final_loss"),
}


def compare_with_committed(out: Path, wanted: tuple[str, ...], committed: Path) -> list[str]:
    """Lines comparing each trained model's card with the committed repository's: the same
    weights (digest), or other weights and their validation figures side by side."""
    from node.training.export import version_digest

    if out.resolve() == committed.resolve():
        return []
    lines = [f"against the committed models in {committed}:"]
    for name in wanted:
        try:
            new = json.loads((out / "cards" / f"{name}.json").read_text())
            old = json.loads((committed / "cards" / f"{name}.json").read_text())
        except (OSError, ValueError):
            lines.append(f"  {name}: no card to compare with")
            continue
        digest_new, digest_old = version_digest(new["version"]), version_digest(old["version"])
        if digest_new == digest_old:
            lines.append(f"  {name}: the same weights ({digest_new})")
            continue
        figures = ", ".join(
            f"{k} {old['figures'][k]:.3g} -> {new['figures'][k]:.3g}"
            for k in COMPARED.get(name, ()) if k in old["figures"] and k in new["figures"]
        )
        lines.append(f"  {name}: other weights ({digest_old} -> {digest_new}); validation {figures or 'figures not comparable'}")
    return lines


# `ainode train all` on 2 cores: two processes of one torch thread each, which these small
# networks use better than one process of two threads. The embedder reads the body-part
# regressor's ONNX (its z cue), so the two share a lane; the segmenter, the longest, has its own.
LANES = (("body_part_regressor", "lesion_embedder", "lesion_detector"), ("lesion_segmenter",))
PROGRESS_EVERY_S = 60.0


def _lanes(wanted: tuple[str, ...], jobs: int) -> list[tuple[str, ...]]:
    """The wanted models in at most ``jobs`` lanes, each in training order."""
    if jobs <= 1:
        return [wanted]
    lanes = [tuple(m for m in lane if m in wanted) for lane in LANES]
    return [lane for lane in lanes if lane] or [wanted]


def _train_in_lanes(args: argparse.Namespace, lanes: list[tuple[str, ...]], out: Path, *, threads: int, command: str) -> None:
    """Each lane in a process of its own, its output in a log file; a line per lane every minute."""
    import multiprocessing
    import multiprocessing.connection
    import tempfile
    import time

    from node.cli import CommandError

    logs = Path(tempfile.mkdtemp(prefix="ainode-train-"))
    context = multiprocessing.get_context("spawn")  # torch's thread pools do not survive a fork
    started = time.monotonic()
    processes = []
    for i, lane in enumerate(lanes, 1):
        log = logs / f"lane{i}.log"
        process = context.Process(target=_lane_main, args=(args, lane, out, threads, command, log), name=f"lane{i}")
        process.start()
        processes.append((lane, log, process))
        print(f"lane {i}: {', '.join(lane)} ({threads} torch thread{'s' if threads > 1 else ''}; log {log})", flush=True)
    try:
        while alive := [p.sentinel for _, _, p in processes if p.is_alive()]:
            multiprocessing.connection.wait(alive, timeout=PROGRESS_EVERY_S)  # a minute, or sooner when a lane ends
            minutes = (time.monotonic() - started) / 60
            for i, (_, log, process) in enumerate(processes, 1):
                state = _last_progress(log) if process.is_alive() else f"finished (exit {process.exitcode})"
                print(f"[{minutes:5.1f} min] lane {i}: {state}", flush=True)
    except KeyboardInterrupt:
        for _, _, process in processes:
            process.terminate()
        raise
    for i, (lane, log, process) in enumerate(processes, 1):
        for line in _model_lines(log):
            print(line, flush=True)
        if process.exitcode != 0:
            tail = "\n".join(log.read_text(errors="replace").replace("\r", "\n").splitlines()[-15:])
            raise CommandError(f"lane {i} ({', '.join(lane)}) failed (exit {process.exitcode}); its log is {log}:\n{tail}")
    print(f"all lanes done in {(time.monotonic() - started) / 60:.1f} min", flush=True)


def _lane_main(args: argparse.Namespace, lane: tuple[str, ...], out: Path, threads: int, command: str, log: Path) -> None:
    """A lane's process: its output to ``log``, then the models in turn."""
    import logging as _logging

    with open(log, "w", buffering=1) as stream:
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        sys.stdout = sys.stderr = stream
        _logging.basicConfig(level=_logging.INFO, stream=stream, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        try:
            _train(args, lane, out, threads=threads, command=command)
        except Exception:
            import traceback

            traceback.print_exc()
            raise SystemExit(1) from None


def _last_progress(log: Path) -> str:
    """The newest line or progress-bar state in a lane's log."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, log.stat().st_size - 4096))
            text = f.read().decode(errors="replace")
    except OSError:
        return "starting"
    pieces = [p.strip() for p in text.replace("\r", "\n").split("\n") if p.strip()]
    return pieces[-1][:160] if pieces else "starting"


def _summary(model_name: str, result) -> str:
    """The line printed as a model finishes; a lane's log is read back for it (``_model_lines``)."""
    return f"{model_name}: {result.seconds:.0f} s, " + ", ".join(f"{k}={v:.3g}" for k, v in result.figures.items())


SUMMARY = re.compile(rf"^({'|'.join(MODELS)}): \d+ s, ")  # ``_summary``'s start, not a "<model>: synthetic cohort" progress bar


def _model_lines(log: Path) -> list[str]:
    """The one-line summaries the lane printed as each model finished."""
    text = log.read_text(errors="replace").replace("\r", "\n")
    return [line for line in text.splitlines() if SUMMARY.match(line)]


def _deeplesion_series(args: argparse.Namespace) -> list:
    from node.cli import CommandError
    from node.training import datasets

    series = sorted(datasets.deeplesion_series(args.deeplesion))[: args.max_series]
    if len(series) < 4:
        raise CommandError(f"{args.deeplesion}: found {len(series)} usable series; need at least 4")
    return series


def _train(args: argparse.Namespace, wanted: tuple[str, ...], out: Path, *, threads: int, command: str) -> None:
    """Train, export and card each wanted model in turn, in this process."""
    import torch

    from node.training import datasets, export, train

    torch.set_num_threads(max(1, threads))
    if args.deeplesion is not None:
        series = _deeplesion_series(args)
        n_val = max(1, len(series) // 10)

        def studies(model_name: str, timepoints: int = 1, medium_every: int | None = None):  # DeepLesion's studies are what they are
            return datasets.deeplesion_studies(args.deeplesion, series=series[:-n_val])

        validation_studies = list(datasets.deeplesion_studies(args.deeplesion, series=series[-n_val:]))

        def validation(model_name: str) -> list:
            return validation_studies

        def describe(model_name: str, medium_every: int) -> str:
            return f"DeepLesion at {args.deeplesion}: {len(series) - n_val} training series, {n_val} validation series"
    else:
        from tqdm import tqdm

        def studies(model_name: str, timepoints: int = 1, medium_every: int = DEFAULT_MEDIUM_EVERY):
            # A fresh pass each time: every trainer reads the cohort once, so memory stays flat.
            patients = _recipe(args, "patients", model_name)
            return tqdm(
                datasets.synthetic_studies(
                    range(patients), cohort_seed=args.cohort_seed, medium_every=medium_every, timepoints=timepoints,
                    cohort_version=_recipe(args, "cohort_version", model_name),
                ),
                total=patients * timepoints, desc=f"{model_name}: synthetic cohort", leave=False,
            )

        drawn: dict[int, list] = {}  # validation studies by cohort version, drawn once

        def validation(model_name: str) -> list:
            version = _recipe(args, "cohort_version", model_name)
            if version not in drawn:
                drawn[version] = list(datasets.synthetic_studies(
                    range(10_000, 10_000 + args.val_patients), cohort_seed=args.cohort_seed, cohort_version=version,
                ))
            return drawn[version]

        def describe(model_name: str, medium_every: int) -> str:
            patients = _recipe(args, "patients", model_name)
            val_lesions = sum(len(s.lesions) for s in validation(model_name))
            return (
                f"synthetic cohort (node.synth) version {_recipe(args, 'cohort_version', model_name)}, cohort seed {args.cohort_seed}: "
                f"patients 0..{patients - 1} for training, patients 10000..{10_000 + args.val_patients - 1} for validation "
                f"({val_lesions} lesions); {_medium_text(medium_every)}, every third validation patient at 256x256"
            )
    scale = max(0.05, args.scale)

    for model_name in wanted:
        medium = _medium_every(args, model_name)
        seed = _recipe(args, "seed", model_name)
        rng = train.seed_everything(seed)  # per model: `train all` gives what each model's own command gives
        if model_name == "body_part_regressor":
            result = train.train_body_part_regressor(
                studies(model_name, medium_every=medium), rng=rng, steps=int(args.ssbr_steps * scale),
                consistency_weight=train.SSBR_CONSISTENCY if args.ssbr_consistency is None else args.ssbr_consistency,
            )
        elif model_name == "lesion_detector":
            result = train.train_lesion_detector(
                studies(model_name, medium_every=medium), rng=rng, epochs=max(1, int(args.detector_epochs * scale)),
                validation=validation(model_name), per_lesion=args.detector_per_lesion, negatives=args.detector_negatives,
                head=args.detector_head, fine_stem=args.detector_fine_stem, small_lesions=args.detector_small_lesions,
                large_lesions=args.detector_large_lesions,
            )
        elif model_name == "lesion_segmenter":
            result = train.train_lesion_segmenter(
                studies(model_name, medium_every=medium), rng=rng, epochs=max(1, int(args.segmenter_epochs * scale)),
                validation=validation(model_name), large_lesions=args.segmenter_large_lesions,
                jitter=train.CropJitter(size=args.segmenter_size_jitter, centre=args.segmenter_centre_jitter),
                mask_cut=_recipe(args, "segmenter_mask_cut", model_name),
            )
        else:
            ssbr = _ssbr_from_onnx(out)
            result = train.train_lesion_embedder(
                itertools.chain(studies(model_name, timepoints=max(1, args.embedder_timepoints), medium_every=medium), validation(model_name)),
                ssbr=ssbr, rng=rng, steps=int(args.embedder_steps * scale),
                refine_steps=int(args.embedder_refine_steps * scale), refine_rounds=args.embedder_refine_rounds,
                classifier_weight=args.embedder_classifier_weight,
                track_weight=args.embedder_track_weight,
            )
        path = out / "onnx" / f"{model_name}.onnx"
        data = describe(model_name, medium)
        metadata = {"version": f"{dt.date.today():%Y%m%d}-seed{seed}", "trained_on": data[:200]}
        if model_name == "lesion_segmenter":
            metadata["mask_threshold"] = f"{_recipe(args, 'segmenter_mask_cut', model_name):g}"
        export.export_onnx(result.model, model_name, path, metadata=metadata)
        _write_card(
            out, result, data_text=data, command=command, version=_version(path), path=path,
            parameters={k: metadata[k] for k in RUNTIME_PARAMETERS if k in metadata},
        )
        print(_summary(model_name, result), flush=True)


# The committed weights' recipes where they differ from the common default (each card's command):
# the body-part regressor trained with seed 1, the segmenter on 240 patients of cohort version 1
# with its probability cut at 0.35. An option given on the command line applies to every model.
RECIPES: dict[str, dict[str, object]] = {
    "seed": {"body_part_regressor": 1},
    "patients": {"lesion_segmenter": 240},
    "cohort_version": {"lesion_segmenter": 1},
    "segmenter_mask_cut": {"lesion_segmenter": 0.35},
}
RECIPE_DEFAULTS: dict[str, object] = {"seed": 0, "patients": 160, "cohort_version": None, "segmenter_mask_cut": DEFAULT_MASK_THRESHOLD}


def _recipe(args: argparse.Namespace, option: str, model_name: str):
    """The option as given, else the model's committed recipe, else the common default."""
    given = getattr(args, option)
    if given is not None:
        return given
    value = RECIPES[option].get(model_name, RECIPE_DEFAULTS[option])
    if option == "cohort_version" and value is None:
        from node.synth.lesions import COHORT_VERSION

        return COHORT_VERSION
    return value


DEFAULT_MEDIUM_EVERY = 3


def _probability(text: str) -> float:
    """A number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def _pair(text: str) -> tuple[float, float]:
    """``LOW,HIGH`` -> (LOW, HIGH), LOW <= HIGH, both positive."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {text!r}") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= HIGH, got {text!r}")
    return (low, high)
# The detector learns from 256x256 studies only: on the 128x128 preset (3.3 mm pixels, 5 mm
# slices) lung vessels and small nodules blur alike, and unseen 192x192 patients drew twice the
# false positives (triton_models/cards/lesion_detector.md).
MEDIUM_EVERY = {"lesion_detector": 1}


def _medium_every(args: argparse.Namespace, model_name: str) -> int:
    if args.medium_every is not None:
        return args.medium_every
    return MEDIUM_EVERY.get(model_name, DEFAULT_MEDIUM_EVERY)


def _medium_text(medium_every: int) -> str:
    if medium_every == 1:
        return "every training patient at 256x256"
    if medium_every:
        return f"small preset, every {medium_every}-th training patient at 256x256"
    return "small preset, no training patient at 256x256"


def _version(path: Path) -> str:
    """One exported model's version, read from its file alone (another lane may be writing its own)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}.get("version", "unknown")


def _exported(out: Path) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Each exported model's version and runtime parameters, read once, for the Triton configs."""
    from node.inference.backend import OnnxBackend

    backend = OnnxBackend(out)
    versions = backend.model_versions()
    return versions, {name: backend.model_parameters(name) for name in versions}


def _ssbr_from_onnx(out: Path):
    import numpy as np

    from node.inference import preprocess as pp
    from node.inference.backend import OnnxBackend

    backend = OnnxBackend(out)

    def scores(study) -> np.ndarray:
        canvas = pp.make_canvas(study.pixels, study.spacing)
        s = backend.infer("body_part_regressor", {"image": pp.ssbr_inputs(canvas)})["score"][:, 0]
        return canvas.per_slice(s, study.pixels.shape[0])

    return scores


FLIP_NOTE = (
    "exported flip-averaged (`node.training.export.flip_average`, version suffix `+flip`): the graph runs the network on "
    "the image and on its left-right mirror and averages the answers; the validation figures below are the network's own"
)


def _write_card(out: Path, result, *, data_text: str, command: str, version: str, path: Path, parameters: dict[str, str]) -> None:
    from node.training.export import FLIP_AVERAGED

    cards = out / "cards"
    cards.mkdir(parents=True, exist_ok=True)
    params = sum(p.numel() for p in result.model.parameters())
    figures = "\n".join(f"| {k} | {v:.4g} |" for k, v in result.figures.items())
    trained_with = _trained_with()
    flip = f"\n- {FLIP_NOTE}" if result.name in FLIP_AVERAGED else ""
    if parameters:
        flip += "\n- exported with it (ONNX metadata, Triton config `ainode_<key>`): " + ", ".join(f"{k} {v}" for k, v in parameters.items())
    text = f"""# {result.name}

- version: `{version}`
- file: `onnx/{path.name}` ({path.stat().st_size / 1024:.0f} kB, {params:,} parameters)
- data: {data_text}
- command: `{command}`
- trained in {result.seconds:.0f} s on {trained_with['machine']} ({trained_with['cpu_capability']} kernels, torch {trained_with['torch']}, {trained_with['threads']} torch thread(s); {result.samples} training samples){flip}
- figures are **synthetic-cohort numbers**, never clinical ones.

| figure | value |
|---|---|
{figures}
"""
    (cards / f"{result.name}.md").write_text(text)
    (cards / f"{result.name}.json").write_text(
        json.dumps({"version": version, "data": data_text, "command": command, "seconds": round(result.seconds, 1),
                    "parameters": params, **({"runtime": parameters} if parameters else {}), "trained_with": trained_with,
                    "figures": result.figures}, indent=2) + "\n"
    )


def _trained_with() -> dict[str, object]:
    """What the weights' last bits depend on besides the command: the CPU's kernels, torch, threads."""
    import torch

    return {"machine": platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
