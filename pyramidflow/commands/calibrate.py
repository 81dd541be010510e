"""``pyramidflow calibrate``: per-level spectra of real latents and the stage ends they imply."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="measure how much of the latents' energy each pyramid level keeps; print calibrated stage ends",
        description="Read clean latents from a latent cache (pyramidflow cache-latents), measure per level "
        "and token group the share of energy in the Haar low band and the effective gain c_eff "
        "(docs/maths.md section 4, (4.2)), the relative loudness rho of the clean signal at each level, "
        "and print the nominal and calibrated stage windows (natural and global) with the stage_ends "
        "to put in a config.",
    )
    p.add_argument("--cache", required=True, help="a latent cache folder")
    p.add_argument("--stages", type=int, default=3, help="pyramid stages (levels measured: stages - 1)")
    p.add_argument("--pyramid", choices=("causal", "spatiotemporal", "spatial"), default="causal",
                   help="how a level lowers the latent: causal first frame (Wan, default), 2x2x2, or 2x2")
    p.add_argument("--max-items", type=int, default=256, help="clips read at most (default 256)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def compute(args: argparse.Namespace) -> dict:
    from dataclasses import asdict

    from pyramidflow.data.latent_cache import LatentCacheDataset
    from pyramidflow.pyramid import HaarTransform, PyramidSchedule
    from pyramidflow.pyramid.calibration import calibrated_stage_ends, measure_levels

    if args.stages < 2:
        raise ValueError(f"--stages must be >= 2 (one stage has no level to calibrate), got {args.stages}")
    if args.max_items < 1:
        raise ValueError(f"--max-items must be >= 1, got {args.max_items}")
    transform = HaarTransform(temporal=args.pyramid != "spatial", causal_first_frame=args.pyramid == "causal")
    cache = LatentCacheDataset(args.cache)
    count = min(len(cache), args.max_items)
    stats = measure_levels((cache[i]["latents"] for i in range(count)), transform, args.stages - 1)
    nominal = PyramidSchedule(args.stages, gain=transform.gain)
    ends = calibrated_stage_ends(nominal, [s.rho for s in stats])
    calibrated = PyramidSchedule(args.stages, stage_ends=ends, gain=transform.gain)
    return {
        "cache": str(args.cache), "clips": count, "pyramid": args.pyramid,
        "groups": ["first frame (2x2)", "other frames (2x2x2)"] if args.pyramid == "causal" else ["all"],
        "levels": [asdict(s) for s in stats],
        "nominal": {"stage_ends": list(nominal.stage_ends), "windows": nominal.windows,
                    "global_windows": nominal.global_windows()},
        "calibrated": {"stage_ends": ends, "windows": calibrated.windows,
                       "global_windows": calibrated.global_windows()},
    }


def run(args: argparse.Namespace) -> int:
    result = compute(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['cache']}: {result['clips']} clips, {result['pyramid']} pyramid")
    print("level  group                  low-band share   c_eff   exact c   rho after")
    for lv in result["levels"]:
        for g, name in enumerate(result["groups"]):
            rho = f"{lv['rho']:.4f}" if g == 0 else ""
            print(f"{lv['level']}->{lv['level'] + 1:<3} {name:<22} {lv['low_share'][g]:>14.4f} "
                  f"{lv['gain'][g]:>7.4f} {lv['exact_gain'][g]:>9.4f}   {rho}")
    for key in ("nominal", "calibrated"):
        part = result[key]
        windows = ", ".join(f"[{a:.4f}, {b:.4f}]" for a, b in part["windows"])
        glob = ", ".join(f"[{a:.4f}, {b:.4f}]" for a, b in part["global_windows"])
        print(f"{key:>10}: natural windows {windows}; global {glob}")
    print("config: pyramid.stage_ends: [" + ", ".join(f"{e:.4f}" for e in result["calibrated"]["stage_ends"])
          + "]")
    return 0
