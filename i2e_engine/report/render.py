"""The run report as one self-contained HTML page: plots as inline SVG (matplotlib, no
pyplot state), thumbnails as inline base64 JPEG, no script and nothing fetched, so it opens
offline in any browser.

Every number a reader (or a test) checks against the manifest is in an element with a stable
``id`` or ``data-`` attributes: ``#input-samples``, ``#kept-images``, ``#filtered-samples``,
``#rejected-samples``, ``#accounting[data-ok]``, funnel rows ``tr.stage[data-stage]
[data-rows-in][data-rows-out]`` and ``tr.drop[data-stage][data-kind][data-reason][data-rows]``,
``#annotation-drops tr[data-reason][data-rows]``, ``#stages tr[data-stage][data-rows]
[data-seconds]``, ``#top-entities tr[data-entity-id][data-image-count]``.
"""
from __future__ import annotations

import base64
import html
import io
import json
from typing import Iterable, Optional

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

from i2e_engine.images import decode_rgb
from i2e_engine.report.data import FUNNEL_STAGES, Histogram, ReportData, Sample, funnel

THUMB_SIDE = 160
THUMB_QUALITY = 70
MAX_TEXT = 240          # characters of an alt-text or detail shown under a thumbnail

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #eee}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.stage td{font-weight:600;background:#f4f6fa}tr.drop td:first-child{padding-left:28px}
.ok{color:#177a2c;font-weight:600}.bad{color:#b00020;font-weight:600}
dl.kv{display:grid;grid-template-columns:max-content max-content;gap:2px 16px}dl.kv dd{margin:0;text-align:right}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:10px}
.card{border:1px solid #ddd;border-radius:6px;padding:6px;font-size:12px;overflow:hidden;overflow-wrap:anywhere}
.card img{display:block;max-width:160px;max-height:160px;margin:0 auto 4px}
.noimg{height:60px;display:flex;align-items:center;justify-content:center;background:#f3f3f3;color:#888}
.muted{color:#777}.ent{color:#1a4f9c}figure{margin:8px 0}.plots{display:flex;flex-wrap:wrap;gap:12px 40px;align-items:flex-start}pre{background:#f6f6f6;padding:8px;overflow:auto}
"""


def thumbnail(data: Optional[bytes]) -> Optional[str]:
    """A ~160 px JPEG of ``data`` as a data URI, or None when it does not decode."""
    if not data:
        return None
    try:
        image = decode_rgb(data, min_side=THUMB_SIDE)
    except Exception:   # a broken image is part of what the report shows: no thumbnail, not a failure
        return None
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=THUMB_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "i2e"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _span(histograms: Iterable[Histogram]) -> tuple[float, float]:
    """The x range holding every non-empty bin, padded by one bin."""
    histograms = list(histograms)
    first = histograms[0]
    used = np.flatnonzero(sum(h.counts for h in histograms))
    if not used.size:
        return first.lo, first.hi
    width = (first.hi - first.lo) / first.bins
    return max(first.lo, first.lo + (used[0] - 1) * width), min(first.hi, first.lo + (used[-1] + 2) * width)


def score_plot(title: str, kept: Histogram, scored: Histogram, thresholds: dict[str, float]) -> str:
    figure = Figure(figsize=(5.6, 2.8))
    axes = figure.subplots()
    if scored.total:
        axes.stairs(scored.counts, scored.edges, fill=True, color="#c9d6ea",
                    label=f"scored, before filters ({scored.total})")
    axes.stairs(kept.counts, kept.edges, fill=True, color="#2f5d9e", label=f"kept ({kept.total})")
    colors = iter(("#d62728", "#ff7f0e", "#2ca02c", "#9467bd"))
    for name, value in thresholds.items():
        axes.axvline(value, color=next(colors), linestyle="--", linewidth=1.2, label=f"{name} = {value:.3g}")
    lo, hi = _span([kept, scored])
    axes.set_xlim(min([lo, *thresholds.values()]) - 0.01, max([hi, *thresholds.values()]) + 0.01)
    axes.set_title(title, fontsize=10)
    axes.set_ylabel("pairs")
    axes.legend(fontsize=7, frameon=False)
    return _svg(figure)


def frequency_plot(frequency: dict[int, int]) -> str:
    """Rank-frequency of entities on log-log axes: the long tail."""
    figure = Figure(figsize=(5.6, 2.8))
    axes = figure.subplots()
    ranks, counts, rank = [], [], 0
    for count, entities in sorted(frequency.items(), reverse=True):
        ranks += [rank + 1, rank + entities]
        counts += [count, count]
        rank += entities
    if ranks:
        axes.loglog(ranks, counts, color="#2f5d9e", marker=".", linewidth=1)
    axes.set_xlabel("entity rank")
    axes.set_ylabel("kept images")
    axes.set_title(f"images per entity ({rank} entities)", fontsize=10)
    return _svg(figure)


def stage_plot(stages: dict[str, dict]) -> str:
    figure = Figure(figsize=(5.6, 0.4 + 0.3 * max(1, len(stages))))
    axes = figure.subplots()
    names = list(stages)[::-1]
    axes.barh(names, [stages[n]["seconds"] for n in names], color="#2f5d9e")
    axes.set_xlabel("wall seconds, summed over shards")
    axes.set_title("time per stage", fontsize=10)
    return _svg(figure)


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def _card(sample: Sample, thumbs: dict[int, Optional[str]], key: Optional[int] = None) -> str:
    """One sample's card; ``thumbs[key]`` (default ``id(sample)``) is its thumbnail, None when
    its image does not decode; a sample missing from ``thumbs`` was left out for the page's size."""
    key = id(sample) if key is None else key
    image = thumbs.get(key)
    if image:
        picture = f'<img src="{image}" alt="">'
    elif not sample.image:
        picture = '<div class="noimg">no image</div>'
    elif key in thumbs:
        picture = '<div class="noimg">image does not decode</div>'
    else:
        picture = '<div class="noimg">left out (page size)</div>'
    lines = [picture]
    if sample.image_note and image:
        lines.append(f'<div class="muted">{_esc(sample.image_note)}</div>')
    if sample.alt_text:
        lines.append(f"<div>{_esc(_cut(sample.alt_text))}</div>")
    for entity in sample.entities:
        score = entity.get("image_entity_score")
        scores = (f" <span class='muted'>img {score:.3f} · link {entity['link_score']:.3f}</span>"
                  if score is not None else "")
        lines.append(f'<div class="ent">{_esc(entity.get("name", entity["entity_id"]))}{scores}</div>')
    if sample.detail:
        lines.append(f'<div class="muted">{_esc(_cut(sample.detail))}</div>')
    lines.append(f'<div class="muted">row {sample.row_in_shard} of …{_esc(sample.source_shard[-40:])}</div>')
    return (f'<div class="card" data-reason="{_esc(sample.reason)}" data-shard="{_esc(sample.source_shard)}" '
            f'data-row="{sample.row_in_shard}">' + "".join(lines) + "</div>")


def _summary(manifest: dict) -> str:
    counted = manifest["kept_images"] + manifest["filtered_samples"] + manifest["rejected_samples"]
    ok = counted == manifest["input_samples"]
    items = [("input samples", "input-samples", manifest["input_samples"]),
             ("kept images", "kept-images", manifest["kept_images"]),
             ("filtered samples", "filtered-samples", manifest["filtered_samples"]),
             ("rejected samples", "rejected-samples", manifest["rejected_samples"]),
             ("dropped annotations", "dropped-annotations", manifest["dropped_annotations"])]
    rows = "".join(f'<dt>{label}</dt><dd id="{key}" data-value="{value}">{value:,}</dd>' for label, key, value in items)
    check = (f'<p id="accounting" data-ok="{str(ok).lower()}" class="{"ok" if ok else "bad"}">'
             f'input {manifest["input_samples"]:,} = kept {manifest["kept_images"]:,} + filtered '
             f'{manifest["filtered_samples"]:,} + rejected {manifest["rejected_samples"]:,} '
             f'{"✓ every input row is accounted for" if ok else "✗ the counts do not add up"}</p>')
    tables = "".join(f'<tr data-table="{_esc(t)}" data-rows="{n}"><td>{_esc(t)}</td><td class="n">{n:,}</td></tr>'
                     for t, n in manifest["rows"].items())
    return (f'<div class="plots"><dl class="kv">{rows}</dl><table id="table-rows"><tr><th>table</th>'
            f'<th class="n">rows</th></tr>{tables}</table></div>{check}')


def _funnel(data: ReportData) -> str:
    manifest = data.manifest
    drops = manifest.get("sample_drops_by_reason")
    source = "manifest"
    if drops is None:   # a manifest from before the report: count the rejects table instead
        drops = [dict(zip(("stage", "kind", "reason"), key.split("/", 2)), rows=n)
                 for key, n in data.table_sample_drops.items()]
        source = "rejects table"
    stages = funnel(manifest["input_samples"], drops)
    rows = []
    for stage in stages:
        rows.append(f'<tr class="stage" data-stage="{_esc(stage["stage"])}" data-rows-in="{stage["rows_in"]}" '
                    f'data-rows-out="{stage["rows_out"]}"><td>{_esc(stage["stage"])}</td>'
                    f'<td class="n">{stage["rows_in"]:,}</td><td></td><td class="n">{stage["rows_out"]:,}</td></tr>')
        for kind in ("filtered", "rejected"):
            for reason, n in sorted(stage[kind].items(), key=lambda item: (-item[1], item[0])):
                rows.append(f'<tr class="drop" data-stage="{_esc(stage["stage"])}" data-kind="{kind}" '
                            f'data-reason="{_esc(reason)}" data-rows="{n}"><td>{_esc(reason)}</td><td></td>'
                            f'<td class="n">{n:,} {kind}</td><td></td></tr>')
    out = stages[-1]["rows_out"] if stages else manifest["input_samples"]
    ok = out == manifest["kept_images"]
    table_ok = data.table_sample_drops == {f'{d["stage"]}/{d["kind"]}/{d["reason"]}': d["rows"] for d in drops}
    return (f'<p class="muted">whole samples, stage by stage (from the {source}); rows out of the last stage '
            f'are the kept images</p><table id="funnel"><tr><th>stage / reason</th><th class="n">rows in</th>'
            f'<th class="n">dropped</th><th class="n">rows out</th></tr>{"".join(rows)}</table>'
            f'<p id="funnel-check" data-ok="{str(ok).lower()}" class="{"ok" if ok else "bad"}">rows out {out:,} '
            f'{"=" if ok else "≠"} kept images {manifest["kept_images"]:,}</p>'
            f'<p id="tables-check" data-ok="{str(table_ok).lower()}" class="{"ok" if table_ok else "bad"}">'
            f'the rejects table {"agrees" if table_ok else "does not agree"} with these counts</p>')


def _annotation_drops(drops: dict[str, int]) -> str:
    if not drops:
        return '<p class="muted">no annotation was dropped</p>'
    rows = []
    for key, n in sorted(drops.items(), key=lambda item: (-item[1], item[0])):
        stage, kind, reason = key.split("/", 2)
        rows.append(f'<tr data-stage="{_esc(stage)}" data-kind="{_esc(kind)}" data-reason="{_esc(reason)}" '
                    f'data-rows="{n}"><td>{_esc(stage)}</td><td>{_esc(reason)}</td><td>{_esc(kind)}</td>'
                    f'<td class="n">{n:,}</td></tr>')
    return ('<p class="muted">single (image, entity) pairs dropped from images that may be kept</p>'
            '<table id="annotation-drops"><tr><th>stage</th><th>reason</th><th>kind</th><th class="n">pairs</th></tr>'
            + "".join(rows) + "</table>")


def _thresholds(manifest: dict) -> tuple[dict[str, float], dict[str, float]]:
    config = manifest.get("config", {})
    link = {"nil threshold": config.get("link", {}).get("nil_threshold")}
    image = {"min score": config.get("filter", {}).get("min_score"),
             "image nil score": config.get("link", {}).get("image_nil_score"),
             "quantile cutoff": manifest.get("score_cutoff")}
    return ({k: v for k, v in link.items() if v is not None}, {k: v for k, v in image.items() if v is not None})


def _entities(data: ReportData) -> str:
    rows = "".join(f'<tr data-entity-id="{_esc(e)}" data-image-count="{c}"><td>{_esc(n)}</td>'
                   f'<td class="muted">{_esc(e)}</td><td class="n">{c:,}</td></tr>' for e, n, c in data.top_entities)
    return (f'<p><span id="entity-count" data-value="{data.entities}">{data.entities:,}</span> entities with kept '
            f'images</p><div class="plots"><figure id="plot-entity-frequency">{frequency_plot(data.entity_frequency)}'
            f'</figure><table id="top-entities"><tr><th>entity</th><th>id</th><th class="n">images</th></tr>{rows}'
            '</table></div>')


def _rate(rows_per_s: Optional[float]) -> str:
    return "" if rows_per_s is None else f"{rows_per_s:,.0f}"


def _stages(manifest: dict) -> str:
    stages = manifest.get("stages") or {}
    if not stages:
        return '<p class="muted">this manifest has no per-stage timings</p>'
    rows = "".join(
        f'<tr data-stage="{_esc(s)}" data-rows="{v["rows"]}" data-seconds="{v["seconds"]}"><td>{_esc(s)}</td>'
        f'<td class="n">{v["rows"]:,}</td><td class="n">{v["seconds"]:.2f}</td>'
        f'<td class="n">{_rate(v.get("rows_per_s"))}</td></tr>'
        for s, v in stages.items())
    return (f'<p>run wall time <span id="run-seconds">{manifest["seconds"]}</span> s on {_esc(manifest["runner"])}; '
            'stage seconds are summed over shards (parallel workers overlap)</p>'
            f'<table id="stages"><tr><th>stage</th><th class="n">rows</th><th class="n">seconds</th>'
            f'<th class="n">rows/s</th></tr>{rows}</table><figure id="plot-stages">{stage_plot(stages)}</figure>')


def _duplicates(data: ReportData, thumbs: dict[int, Optional[str]]) -> str:
    dup = data.duplicates
    if not dup["roles"]:
        return '<p class="muted">no duplicate clusters in this run</p>'
    rows = "".join(f'<tr data-key="{_esc(k)}" data-rows="{n}"><td>{_esc(k)}</td><td class="n">{n:,}</td></tr>'
                   for k, n in dup["roles"].items())
    cards = []
    for row in dup["samples"]:
        sample = Sample(row["source_shard"], row["row_in_shard"], reason=f'dedup/{row["method"]}',
                        alt_text=row["alt_text"], image=row["image"],
                        detail=f'cluster {row["cluster_id"]}, distance {row["distance"]}',
                        image_note="the survivor's image (this copy was dropped)")
        cards.append(_card(sample, thumbs, id(row)))
    distances = "".join(
        f'<tr data-method="{method}" data-distance="{low:.4g}" data-rows="{n}"><td>{method}</td>'
        f'<td class="n">{low:.4g}</td><td class="n">{n:,}</td></tr>'
        for method, histogram in dup["distances"].items()
        for low, n in zip(histogram.edges[:-1].tolist(), histogram.counts.tolist()) if n)
    return (f'<div class="plots"><table id="duplicate-roles"><tr><th>method/role</th><th class="n">rows</th></tr>'
            f'{rows}</table><table id="duplicate-distances"><tr><th>method</th><th class="n">distance from</th>'
            f'<th class="n">dropped copies</th></tr>{distances}</table></div>'
            '<p class="muted">distance to the survivor: Hamming bits of the perceptual hash (phash), '
            '1 - cosine similarity (semantic)</p>'
            f'<div class="grid" id="duplicate-samples">{"".join(cards)}</div>')


def _funnel_order(item: tuple[str, list]) -> tuple:
    stage = item[0].split("/", 1)[0]
    return (FUNNEL_STAGES.index(stage) if stage in FUNNEL_STAGES else len(FUNNEL_STAGES), item[0])


def render(data: ReportData, thumbs: dict[int, Optional[str]]) -> str:
    """The page; ``thumbs`` maps ``id()`` of each sample (or duplicate row) to its data URI."""
    manifest = data.manifest
    link_thresholds, image_thresholds = _thresholds(manifest)
    kept = "".join(_card(s, thumbs) for s in data.kept_samples)
    reasons = []
    for reason, samples in sorted(data.reject_samples.items(), key=_funnel_order):
        cards = "".join(_card(s, thumbs) for s in samples)
        reasons.append(f'<h3 data-reason="{_esc(reason)}">{_esc(reason)}</h3><div class="grid">{cards}</div>')
    versions = manifest.get("versions", {})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>i2e run {_esc(manifest["run_id"])}</title>
<style>{STYLE}</style></head><body>
<h1>I2E run report</h1>
<p class="muted">run <span id="run-id">{_esc(manifest["run_id"])}</span> · {_esc(manifest.get("started_utc", ""))} ·
{_esc(manifest.get("runner", ""))} · tables in <code>{_esc(data.out)}</code> · schema v{_esc(manifest.get("schema_version"))}</p>
<h2>Accounting</h2>{_summary(manifest)}
<h2>Funnel</h2>{_funnel(data)}
<h2>Dropped annotations</h2>{_annotation_drops(data.table_annotation_drops)}
<h2>Scores</h2><div class="plots">
<figure id="plot-link-scores">{score_plot("link score", data.link_scores, data.scored_link_scores, link_thresholds)}</figure>
<figure id="plot-image-entity-scores">{score_plot("image-entity score", data.image_entity_scores,
                                                  data.scored_image_entity_scores, image_thresholds)}</figure></div>
<h2>Entities</h2>{_entities(data)}
<h2>Kept samples</h2><p class="muted">{len(data.kept_samples)} kept images chosen by a hash of their row key</p>
<div class="grid" id="kept-samples">{kept}</div>
<h2>Dropped samples by reason</h2><div id="reject-samples">{"".join(reasons) or '<p class="muted">nothing dropped</p>'}</div>
<h2>Duplicate clusters</h2><div id="duplicates">{_duplicates(data, thumbs)}</div>
<h2>Time and throughput</h2>{_stages(manifest)}
<h2>Configuration and versions</h2>
<pre id="versions">{_esc(json.dumps(versions, indent=2, sort_keys=True))}</pre>
<pre id="config">{_esc(json.dumps(manifest.get("config", {}), indent=2, sort_keys=True))}</pre>
</body></html>
"""
