"""Render the energy report's JSON document (:func:`deploy.energy.analysis.analyze`) as Markdown and self-contained
HTML with PNG plots, and write the whole folder atomically (:func:`write_report`)."""
from __future__ import annotations

import base64
import html
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sdt.atomic import default_mode, sweep_stale, temp_prefix, write_text
from sdt.errors import UserError

from .tiers import LABELS

REPORT_FILES = ("energy.json", "energy.md", "energy.html")


# ------------------------------------------------------------------------------------------------------- rendering

def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    x = float(x)
    if unit == "pJ":
        for div, u in ((1e9, "mJ"), (1e6, "µJ"), (1e3, "nJ")):
            if abs(x) >= div:
                return f"{x / div:.4g} {u}"
        return f"{x:.4g} pJ"
    if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3):
        return f"{x:.4g}"
    return f"{x:,.4g}" if abs(x) >= 1000 else f"{x:.4g}"


def _break_even_text(be: float | None) -> str:
    if be is None:
        return "n/a (no spike-driven energy)"
    if be <= 0:
        return f"none: loses even at rate 0 ({_fmt(be)})"
    if be > 1:
        return f"{_fmt(be)} (> 1: wins at any rate)"
    return _fmt(be)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def _sections(doc: Mapping[str, Any]) -> list[tuple[str, str, list[tuple[list[str], list[list[Any]]]], list[str]]]:
    """Report content as (title, paragraph, tables, images) — shared by Markdown and HTML."""
    meta, tiers, comp = doc["meta"], doc["tiers"], doc["comparison"]
    secs = []
    settings = [["checkpoint", meta.get("checkpoint", "-")], ["data", meta.get("data", "-")],
                ["executor", meta.get("mode", "float")], ["samples", doc["samples"]], ["T", doc["T"]],
                ["encoding", doc["encoding"]], ["mean firing rate (all LIF)", _fmt(doc["mean_firing_rate"])],
                ["byte widths", ", ".join(f"{k} {v}" for k, v in doc["counting"]["widths"].items())],
                ["SRAM cost", f"Horowitz 64-bit figures per {doc['counting']['access_bits']}-bit access"],
                ["static image convolved once", doc["counting"]["static_input_once"]]]
    secs.append(("Energy report (estimate)", doc["note"], [(["setting", "value"], settings)], []))
    rows = []
    for key, c in comp.items():
        be = c["break_even_rate"]
        rows.append([tiers[key]["title"], _fmt(c["snn_pj"], "pJ"), _fmt(c["ann_pj"], "pJ"), _fmt(c["ann_over_snn"]),
                     _break_even_text(be)])
    secs.append(("SNN vs equivalent ANN, per sample",
                 f"Break-even: the average firing rate at which the SNN's energy equals the ANN's, all spike-driven "
                 f"counts scaled with it (measured: {_fmt(doc['mean_firing_rate'])}). The ANN is the same "
                 "architecture with real-valued activations and vanilla self-attention, one pass.",
                 [(["tier", "SNN", "ANN", "ANN / SNN", "break-even rate"], rows)], ["energy_tiers.png"]))
    consts = {c["name"]: c for c in doc["constants"]}
    for key, t in tiers.items():
        lines = [[ln["label"], ln["quantity"], _fmt(ln["count_per_sample"]), _fmt(ln["pj_per_unit"]),
                  ln["constants"], _fmt(ln["energy_pj_per_sample"], "pJ")] for ln in t["lines"]]
        lines.append(["total", "", "", "", "", _fmt(t["total_pj_per_sample"], "pJ")])
        used = "; ".join(f"{n} = {consts[n]['value']} {consts[n]['unit']} ({consts[n]['source'].split(',')[0]})"
                         for n in t["constants"] if n in consts)
        text = f"{t['description']}. Constants: {used}."
        if t.get("access_bits"):
            text += f" SRAM figures applied per {t['access_bits']}-bit access."
        tables = [(["kind", "quantity", "count / sample", "pJ / unit", "constants", "energy / sample"], lines)]
        v = comp[key].get("variants")
        if v:
            tables.append((["sensitivity", "SNN", "ANN", "break-even rate"], [
                ["as above", _fmt(comp[key]["snn_pj"], "pJ"), _fmt(comp[key]["ann_pj"], "pJ"),
                 _break_even_text(comp[key]["break_even_rate"])],
                ["SNN accumulators in registers (no per-event SRAM read/write)",
                 _fmt(v["snn_without_accumulator_traffic_pj"], "pJ"), _fmt(comp[key]["ann_pj"], "pJ"),
                 _break_even_text(v["break_even_rate_without_accumulator_traffic"])],
                ["ANN without data reuse (Lemaire FNN: a weight and an input read per MAC)",
                 _fmt(comp[key]["snn_pj"], "pJ"), _fmt(v["ann_without_reuse_pj"], "pJ"),
                 _break_even_text(v["break_even_rate_ann_without_reuse"])],
                ["both", _fmt(v["snn_without_accumulator_traffic_pj"], "pJ"), _fmt(v["ann_without_reuse_pj"], "pJ"),
                 _break_even_text(v["break_even_rate_both"])]]))
        secs.append((f"Tier {t['title']}", text, tables, []))
    rows = []
    for key, o in doc["paper_omissions"].items():
        ranked = sorted(o["by_label_pj"].items(), key=lambda kv: -kv[1])
        parts = ", ".join(f"{lab} {_fmt(v, 'pJ')}" for lab, v in ranked)
        rows.append([tiers[key]["title"], _fmt(o["counted_kinds_pj"], "pJ"), _fmt(o["total_pj"], "pJ"),
                     f"{100 * o['share']:.1f} %" if o["share"] is not None else "n/a", parts])
    secs.append(("What the paper's formula leaves out",
                 "Energy of the operations the paper's formula does not count (neurons, BN/bias, pools, membrane "
                 "stream, memory), next to the kinds it counts (synaptic MAC/AC, SDSA mask/add), per sample.",
                 [(["tier", "kinds the paper counts", "left out", "share of total", "left out, by kind"], rows)],
                 []))
    rows = []
    for lc in doc["paper_vs_exact"]:
        parts = ", ".join(f"{k} {_fmt(v)}" for k, v in lc["parts"].items() if v)
        rows.append([lc["layer"], lc["kind"].upper(), _fmt(lc["rate_paper"]), _fmt(lc["paper"]), _fmt(lc["exact"]),
                     _fmt(lc["exact_eff"]), parts or "0", lc["explanation"]])
    secs.append(("Paper formula vs exact count, per layer and sample",
                 "paper = fr x T x FLOPs (first conv: FLOPs once); exact = every active input x its real fan-out; "
                 "eff = non-zero weights only (NeuroBench effective ops). The parts add up to paper - exact.",
                 [(["layer", "kind", "paper rate", "paper", "exact", "exact eff", "paper - exact", "why"], rows)],
                 ["paper_vs_exact.png"]))
    rows = []
    for a in doc["attention"]:
        for part in ("QKV", "f(Q,K,V)", "scale", "softmax"):
            rows.append([a["block"], part, _fmt(a["sdsa_exact_pj"][part], "pJ"), _fmt(a["sdsa_paper_pj"][part], "pJ"),
                         _fmt(a["vsa_pj"][part], "pJ")])
        rows.append([a["block"], "total (VSA / SDSA)", f"{_fmt(a['sdsa_exact_total_pj'], 'pJ')} "
                     f"({_fmt(a['vsa_over_sdsa_exact'])}x)", f"{_fmt(a['sdsa_paper_total_pj'], 'pJ')} "
                     f"({_fmt(a['vsa_over_sdsa_paper'])}x)", _fmt(a["vsa_total_pj"], "pJ")])
    if rows:
        secs.append(("SDSA vs vanilla self-attention (paper Table 1 terms, 45 nm FP32)",
                     "SDSA exact: the q/k/v convs and the AND / column sum / gate LIF / mask as executed; SDSA paper: "
                     "E_AC x T x R x FLOPs and E_AC x T x N x D x (R_KV + R_Q); VSA: 3ND^2 and 2N^2D MACs, h N^2 "
                     "scale multiplies, 2h N^2 softmax MACs, one pass.",
                     [(["block", "part", "SDSA exact", "SDSA paper", "vanilla"], rows)], ["attention.png"]))
    rows = [[r["name"], _fmt(r["firing_rate"]), " ".join(_fmt(v) for v in r["firing_rate_per_step"])]
            for r in doc["layers"] if "firing_rate" in r]
    secs.append(("Firing rates", "Spikes / (neurons x steps x samples) of every spike-producing node.",
                 [(["node", "rate", "per step"], rows)], ["firing_rates.png"]))
    rows = [[c["name"], c["value"], c["unit"], c["source"], c["note"]] for c in doc["constants"]]
    secs.append(("Constants", "All values are literature estimates; the tiers list which they use.",
                 [(["name", "value", "unit", "source", "note"], rows)], []))
    secs.append(("Not counted", "; ".join(doc["counting"]["not_counted"]) + ".", [], []))
    return secs


def render_markdown(doc: Mapping[str, Any]) -> str:
    parts = []
    for i, (title, text, tables, images) in enumerate(_sections(doc)):
        parts.append(("# " if i == 0 else "## ") + title)
        if text:
            parts.append(text)
        for headers, rows in tables:
            parts.append(_table(headers, rows))
        for img in images:
            parts.append(f"![{img}]({img})")
    return "\n\n".join(parts) + "\n"


def render_html(doc: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """Self-contained HTML: the PNGs are embedded as data URIs."""
    e = html.escape
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>SDT energy report (estimate)</title><style>",
           "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;"
           "margin:.5em 0}td,th{border:1px solid #bbb;padding:2px 6px;font-size:13px;text-align:left}"
           "th{background:#eee}img{max-width:100%}", "</style></head><body>"]
    for i, (title, text, tables, imgs) in enumerate(_sections(doc)):
        out.append(f"<h{1 if i == 0 else 2}>{e(title)}</h{1 if i == 0 else 2}>")
        if text:
            out.append(f"<p>{e(text)}</p>")
        for headers, rows in tables:
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows]
            out.append("</table>")
        for name in imgs:
            if name in images:
                data = base64.b64encode(images[name]).decode()
                out.append(f"<p><img alt='{e(name)}' src='data:image/png;base64,{data}'></p>")
    out.append("</body></html>")
    return "\n".join(out)


def make_plots(doc: Mapping[str, Any]) -> dict[str, bytes]:
    """The report's PNGs (Agg backend), by file name."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(fig: Any) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        return buf.getvalue()

    out: dict[str, bytes] = {}
    rows = [r for r in doc["layers"] if "firing_rate" in r]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(rows)), 4))
    ax.bar(range(len(rows)), [r["firing_rate"] for r in rows], color="#4c72b0")
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("firing rate")
    ax.set_title("Firing rate per spike node (mean over samples and steps)")
    out["firing_rates.png"] = png(fig)

    keys = list(doc["tiers"])
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 4.2))
    colors = dict(zip(LABELS, plt.cm.tab20(np.linspace(0, 1, len(LABELS)))))
    for ax, key in zip(np.atleast_1d(axes), keys):
        stacks = {"SNN": doc["tiers"][key]["by_label"], "ANN": doc["ann"]["tiers"][key]["by_label"]}
        for i, (who, by) in enumerate(stacks.items()):
            bottom = 0.0
            for lab in LABELS:
                v = by.get(lab, 0.0) / 1e6
                if v > 0:
                    ax.bar(i, v, bottom=bottom, color=colors[lab], label=lab)
                    bottom += v
        ax.set_xticks([0, 1], ["SNN", "ANN"])
        ax.set_title(doc["tiers"][key]["title"], fontsize=8)
        ax.set_ylabel("µJ per sample (estimate)")
    handles = {}
    for ax in np.atleast_1d(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=6, fontsize=7)
    fig.subplots_adjust(bottom=0.22, wspace=0.45)
    out["energy_tiers.png"] = png(fig)

    cmp_ = [c for c in doc["paper_vs_exact"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(cmp_)), 4))
    x = np.arange(len(cmp_))
    ax.bar(x - 0.2, [c["paper"] for c in cmp_], 0.4, label="paper formula")
    ax.bar(x + 0.2, [c["exact"] for c in cmp_], 0.4, label="exact")
    if any(c["paper"] > 0 or c["exact"] > 0 for c in cmp_):
        ax.set_yscale("log")
    ax.set_xticks(x, [c["layer"] for c in cmp_], rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("synaptic ops per sample")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Paper formula vs exact count per synaptic layer")
    out["paper_vs_exact.png"] = png(fig)

    if doc["attention"]:
        parts = ["QKV", "f(Q,K,V)", "scale", "softmax"]
        fig, ax = plt.subplots(figsize=(7, 4))
        x = np.arange(len(parts))
        a = doc["attention"][0]
        for j, (k, lab) in enumerate((("sdsa_exact_pj", "SDSA exact"), ("sdsa_paper_pj", "SDSA paper"),
                                      ("vsa_pj", "vanilla attention"))):
            vals = [sum(b[k][p] for b in doc["attention"]) for p in parts]
            xs = x + (j - 1) * 0.27
            ax.bar(xs, [v if v > 0 else np.nan for v in vals], 0.27, label=lab, color=f"C{j}")
            for xi, v in zip(xs, vals):
                if v <= 0:  # SDSA has no scale and no softmax: mark the zero instead of drawing a bar
                    ax.annotate("0", (xi, 0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                                color=f"C{j}")
        ax.set_yscale("log")
        ax.set_xticks(x, parts)
        ax.set_ylabel("pJ per sample, all blocks (45 nm FP32)")
        ax.set_title(f"SDSA vs vanilla self-attention ({len(doc['attention'])} block(s), N={a['tokens']}, "
                     f"D={a['dim']})")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        out["attention.png"] = png(fig)
    return out


# ------------------------------------------------------------------------------------------------------- writing

def write_report(doc: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write energy.json, energy.md, energy.html and the PNGs into ``out_dir`` as a whole: everything is built in a
    temporary folder beside it and renamed into place, so a failure leaves no partial report. An existing
    ``out_dir`` is replaced only if it is empty or an earlier energy report."""
    target = Path(out_dir)
    if target.exists():
        if not target.is_dir():
            raise UserError(f"{target} exists and is not a folder; choose another -o")
        entries = {p.name for p in target.iterdir()}
        if entries and "energy.json" not in entries:
            raise UserError(f"{target} is not empty and holds no energy report; choose another -o")
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(target)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target), dir=parent))
    except OSError as e:
        raise UserError(f"cannot write {target}: {e.strerror or e}; choose a writable -o") from None
    try:
        os.chmod(tmp, default_mode(directory=True))  # mkdtemp makes it 0700; the report folder is an ordinary one
        images = make_plots(doc)
        for name, data in images.items():
            (tmp / name).write_bytes(data)
        write_text(tmp / "energy.json", json.dumps(doc, indent=1, sort_keys=False, allow_nan=False) + "\n")
        write_text(tmp / "energy.md", render_markdown(doc))
        write_text(tmp / "energy.html", render_html(doc, images))
        old = None
        if target.exists():  # move the earlier report aside; put it back if the swap fails
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(target) + "old.", dir=parent))
            os.replace(target, old / "report")
        try:
            os.replace(tmp, target)
        except OSError:
            if old is not None:
                os.replace(old / "report", target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


__all__ = ["render_markdown", "render_html", "make_plots", "write_report", "REPORT_FILES"]
