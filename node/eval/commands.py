"""`ainode eval`: score the node's models and lesion graph on a held-out synthetic cohort."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from node.config import Settings

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate the models and lesion graph on a held-out synthetic cohort (synthetic figures, not clinical)"
    )
    p.add_argument("--cohort", type=Path, default=None, help="cohort folder written by `ainode synth` (default: synthesize one in memory)")
    p.add_argument("--patients", type=int, default=8, help="in-memory cohort: patients (default 8)")
    p.add_argument("--timepoints", type=int, default=2, help="in-memory cohort: studies per patient, 1-8 (default 2)")
    p.add_argument("--seed", type=int, default=None, help="in-memory cohort seed (default 9001, held out from training)")
    p.add_argument("--first-patient", type=int, default=1,
                   help="in-memory cohort: number of the first patient (default 1); with --seed 0, 10000 and up are the training code's validation patients, never trained on")
    p.add_argument("--cohort-version", type=int, choices=(1, 2, 3), default=None,
                   help="in-memory cohort: the synthetic cohort's version (default the newest, 3; 2 lets lymph nodes touch organs, 1 also lets lesions overlap and lung lesions fall in the heart)")
    p.add_argument("--slices", type=int, default=None, help="in-memory cohort: slices per study, centred on its coverage (quick look; default: whole coverage)")
    p.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    p.add_argument("--lesions", type=Path, default=None, metavar="CSV",
                   help="write one row per truth lesion to this CSV file: key-slice result (hit, box IoU < 0.5, missed) with best IoU and score, "
                        "whether the analyzer found it, Dice and signed RECIST errors (which lesions the figures lose)")
    p.add_argument("--backend", choices=("onnx", "triton"), default="onnx", help="onnx: in-process ONNX Runtime (default); triton: the running Triton")
    p.add_argument("--mask-cut", type=float, default=None,
                   help="cut the segmenter's probability here instead of at the mask_threshold its files carry (screen a cut for new "
                        "weights, then export it with `ainode train segmenter --segmenter-mask-cut`); the figures are then not the node's")
    p.add_argument("--froc-threshold", type=float, default=0.05, help="lowest detector score kept for the FROC (default 0.05)")
    p.add_argument("--walk-check", action="store_true",
                   help="instead of the full evaluation: walk the segmenter from truth-placed starts (each large lesion's key slice and last slice), no detector; per lesion kind Dice, long-axis error, lost walks (a few seconds: screens segmenter weights)")
    p.add_argument("--key-check", action="store_true",
                   help="instead of the full evaluation: the key-slice FROC alone (the detector on the truth lesions' key slices, "
                        "boxes from the segmenter, as the full evaluation scores them), with hits, boxes off and misses per lesion type "
                        "and size (a minute or two for 30 x 2: screens detector weights and the analyzer's key-slice fit)")
    p.add_argument("--walk-min-mm", type=float, default=None, help="--walk-check: lesions at least this long (default 25 mm)")
    p.add_argument("--walk-png", type=Path, default=None,
                   help="--walk-check: write the 12 worst walks as one PNG (widest slice, truth outlined green, walked mask red)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from node.cli import CommandError
    from node.eval import cohort as cohort_mod
    from node.eval.report import LABEL, REFERENCE, apply_targets, format_table, target_warnings
    from node.eval.runner import evaluate_cohort
    from node.inference.backend import InferenceError, OnnxBackend, ParameterOverride, open_backend
    from node.synth.lesions import COHORT_VERSION

    if args.walk_check and args.lesions is not None:
        raise CommandError("--lesions reports the full evaluation; --walk-check writes its per-lesion walks with --json")
    if args.key_check and (args.walk_check or args.lesions is not None):
        raise CommandError("--key-check is a check of its own: use it without --walk-check and --lesions")
    warnings = []
    if args.cohort is not None:
        folders = cohort_mod.study_folders(args.cohort)
        if not folders:
            raise CommandError(f"{args.cohort}: no studies with truth.json found; write one with `ainode synth --out DIR`")
        studies = (cohort_mod.read_study(f) for f in folders)
        total = len(folders)
        description = f"folder {args.cohort} ({total} studies)"
        warnings.append("a cohort folder is held out only if written with a seed training did not use (training uses cohort seed 0)")
    else:
        seed = cohort_mod.HELD_OUT_COHORT_SEED if args.seed is None else args.seed
        if seed == 0 and args.first_patient < 10_000:
            warnings.append("cohort seed 0, patients below 10000: the training patients; these figures are not held out")
        elif seed == 0 and args.first_patient < 20_000:
            warnings.append("cohort seed 0, patients from 10000: the training code's validation patients (for tuning), not the held-out cohort")
        elif seed == 0:
            warnings.append("cohort seed 0, patients from 20000: patients training never draws (for tuning), not the held-out cohort")
        studies = cohort_mod.synthetic_cohort(
            patients=args.patients, timepoints=args.timepoints, seed=seed, num_slices=args.slices, first_patient=args.first_patient,
            cohort_version=args.cohort_version,
        )
        total = args.patients * args.timepoints
        description = (
            f"in-memory synthetic cohort (version {args.cohort_version or COHORT_VERSION}), seed {seed}, patients {args.first_patient}..{args.first_patient + args.patients - 1} x {args.timepoints} timepoints, "
            "192x192 at 1.9-2.3 mm, 2-4 mm slices (held out: other seed and scan parameters than training)"
            + (f", {args.slices} slices per study" if args.slices else "")
        )
    if not getattr(args, "verbose", False):
        # One INFO line per study from the analyzer would break the progress bar.
        logging.getLogger("node.inference.analyzer").setLevel(logging.WARNING)
    if args.backend == "triton":
        backend = open_backend(replace(settings, inference_backend="triton"))
    else:
        backend = OnnxBackend(Path(settings.model_repository))
    if args.mask_cut is not None:
        if not 0.0 < args.mask_cut < 1.0:
            raise CommandError(f"--mask-cut: must be between 0 and 1, got {args.mask_cut:g}")
        try:
            own = backend.model_parameters("lesion_segmenter").get("mask_threshold", "none (the default)")
        except InferenceError as exc:
            raise CommandError(f"inference failed: {exc}") from exc
        warnings.append(f"the segmenter's probability is cut at {args.mask_cut:g} (--mask-cut), not at its own {own}: these are not the node's figures")
        backend = ParameterOverride(backend, {"lesion_segmenter": {"mask_threshold": f"{args.mask_cut:g}"}})
    if args.walk_check:
        if args.cohort is None and (args.seed is None or args.seed == cohort_mod.HELD_OUT_COHORT_SEED):
            warnings.append(
                "this is the held-out cohort: to choose between segmenters, walk other patients "
                "(--seed 0 --first-patient 10000 for the validation patients, 20000 and up for unseen ones)"
            )
        return _walk_check(args, studies, backend, description, warnings)
    if args.key_check:
        if args.cohort is None and (args.seed is None or args.seed == cohort_mod.HELD_OUT_COHORT_SEED):
            warnings.append(
                "this is the held-out cohort: to choose between detectors or fits, check other patients "
                "(--seed 0 --first-patient 20000 and up are patients training never draws)"
            )
        return _key_check(args, studies, backend, description, warnings, total, settings.detector_zoom)
    try:
        models = backend.model_versions()
        summary, scores = evaluate_cohort(studies, backend, settings, total=total, froc_threshold=args.froc_threshold)
    except InferenceError as exc:
        hint = " (start the stack with `ainode up`, or use --backend onnx)" if args.backend == "triton" else ""
        raise CommandError(f"inference failed: {exc}{hint}") from exc
    finally:
        backend.close()
    if any("untrained" in str(v).lower() or "placeholder" in str(v).lower() for v in models.values()):
        warnings.append("the models are UNTRAINED placeholders: these figures measure nothing learned")
    warnings += target_warnings(summary)
    result = {
        "label": LABEL,
        "cohort": {"description": description},
        "backend": args.backend,
        "models": models,
        "summary": summary,
        "targets": apply_targets(summary),
        "reference_different_data": REFERENCE,
        "warnings": warnings,
    }
    print(format_table(result))
    _write_json(args.json, result)
    if args.lesions is not None:
        _write_lesions(args.lesions, [row for s in scores for row in s.lesions])
        print(f"wrote {args.lesions}")
    return 0


def _write_json(path: Path | None, payload: dict) -> None:
    """``--json``: write ``payload`` there (nothing without a path)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path}")


def _write_lesions(path: Path, rows: list[dict[str, object]]) -> None:
    """The per-lesion report as CSV (``node.eval.runner.LESION_COLUMNS``; empty cells for none)."""
    import csv

    from node.eval.runner import LESION_COLUMNS

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LESION_COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if row[k] is None else row[k] for k in LESION_COLUMNS} for row in rows)


def _key_check(
    args: argparse.Namespace, studies, backend, description: str, warnings: list[str], total: int | None, zoom: float
) -> int:
    """``--key-check``: the key-slice FROC alone, as a table (and JSON with ``--json``)."""
    from node.cli import CommandError
    from node.eval.report import LABEL, zoom_line
    from node.eval.runner import key_slice_check
    from node.inference.backend import InferenceError

    try:
        models = backend.model_versions()
        summary = key_slice_check(studies, backend, froc_threshold=args.froc_threshold, total=total, zoom=zoom)
    except InferenceError as exc:
        raise CommandError(f"inference failed: {exc}") from exc
    finally:
        backend.close()
    froc = summary["froc"]
    if not froc.get("lesions"):
        raise CommandError("no analysable study with a lesion in the cohort: add patients")
    print(f"key-slice check ({LABEL}): {description}")
    print(f"criterion: {summary['criterion']}")
    print(zoom_line(summary["detector_zoom"]).strip())
    rates = "  ".join(f"{r}: {v:.3f}" for r, v in froc["sensitivity"].items())
    print(f"sensitivity at FPs per image  {rates}")
    print(f"any score: {froc['max_sensitivity']:.3f}; {froc['lesions']} lesions on {froc['images']} key images, "
          f"{summary['candidates_per_image']:.2f} candidates per key image")
    print(f"{'':14s} {'lesions':>7s} {'hit':>5s} {'box IoU < 0.5':>13s} {'missed':>6s}")
    for table in ("by_size", "by_type"):
        for key, row in summary[table].items():
            print(f"{key:14s} {row['lesions']:7d} {row['hit']:5d} {row['box IoU < 0.5']:13d} {row['missed']:6d}")
    for warning in warnings:
        print(f"warning: {warning}")
    _write_json(args.json, {"label": LABEL, "cohort": {"description": description}, "models": models, "key_check": summary, "warnings": warnings})
    return 0


def _walk_check(args: argparse.Namespace, studies, backend, description: str, warnings: list[str]) -> int:
    from node.cli import CommandError
    from node.eval.report import LABEL
    from node.eval.walkcheck import (
        WALK_CHECK_MIN_MM,
        format_walk_check,
        summarize,
        walk_check,
        walk_png,
    )
    from node.inference.backend import InferenceError

    min_mm = WALK_CHECK_MIN_MM if args.walk_min_mm is None else args.walk_min_mm
    try:
        models = backend.model_versions()
        tiles: list | None = [] if args.walk_png is not None else None
        rows = walk_check(studies, backend, min_mm=min_mm, tiles=tiles)
    except InferenceError as exc:
        raise CommandError(f"inference failed: {exc}") from exc
    finally:
        backend.close()
    if not rows:
        raise CommandError(f"no lesion of {min_mm:g} mm or more in the cohort: add patients or lower --walk-min-mm")
    summary = summarize(rows)
    print(f"{LABEL}\ncohort: {description}\nsegmenter: {models.get('lesion_segmenter', '?')}")
    for w in warnings:
        print(f"warning: {w}")
    print(format_walk_check(summary, min_mm))
    _write_json(args.json, {"label": LABEL, "cohort": {"description": description}, "models": models, "min_mm": min_mm, "summary": summary, "walks": rows})
    if args.walk_png is not None:
        args.walk_png.parent.mkdir(parents=True, exist_ok=True)
        args.walk_png.write_bytes(walk_png(rows, tiles or []))
        print(f"wrote {args.walk_png}")
    return 0
