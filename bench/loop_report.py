"""The closed-loop benchmark's bars and report (bench/loop.py): verdicts from the recorded days and nights,
the BENCHMARKS.md section, bench/results/loop.json and the utility-per-day plot."""

from __future__ import annotations

import fcntl
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from loop_world import REFERENCE, ROOT, SCENARIOS

MARKERS = ("<!-- loop:start -->", "<!-- loop:end -->")
GAP_BAR, DRIFT_BAR, OPE_BAR = 0.70, 0.80, 0.9
# "Receives traffic on the queries where it is best": at least this share of those queries routed to it (a few
# exploratory picks do not count).
NEW_MODEL_MIN_SHARE = 0.10


# ------------------------------------------------------------------------------------------------ bars -------
def bars(loop: Any) -> dict[str, Any]:
    name = loop.scenario.name
    out: dict[str, Any] = {}
    if name == "stationary":
        out["gap"] = gap_bar(loop)
    if name == "drift":
        out["drift"] = drift_bar(loop)
    if name == "new_model":
        out["new_model"] = new_model_bar(loop)
    out["ope"] = ope_bar(loop)
    return out


def gap_bar(loop: Any) -> dict[str, Any]:
    """Share of the seed -> full-information utility gap the served router closes on the days after 7 nights
    (pooled, paired on the same queries; a bootstrap over queries gives the spread), and the same for the
    champion of night 7 on the held-out test files (no in-sample advantage for the full-information router there)."""
    after = [d for d in loop.days if d["day"] >= 8]
    if not after:
        return {"pass": None, "why": f"needs >= 8 days (7 nights), ran {len(loop.days)}"}
    u = {k: np.concatenate([d["util_per_query"][k] for d in after]) for k in ("served", "seed", "full")}
    closed = _closure(u["served"], u["seed"], u["full"])
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(500):
        i = rng.integers(0, len(u["served"]), len(u["served"]))
        boots.append(_closure(u["served"][i], u["seed"][i], u["full"][i]))
    night7 = next((n for n in loop.nights if n["night"] == 7), None)
    test = None
    if night7:
        t = night7["test"]
        test = (t["champion"]["utility"] - t["seed"]["utility"]) / (t["full"]["utility"] - t["seed"]["utility"])
    return {"pass": bool(closed >= GAP_BAR), "closed": closed, "ci90": [float(np.nanpercentile(boots, 5)),
            float(np.nanpercentile(boots, 95))], "days": [d["day"] for d in after],
            "served": float(u["served"].mean()), "seed": float(u["seed"].mean()), "full": float(u["full"].mean()),
            "test_closed_night7": test}


def _closure(served: np.ndarray, seed: np.ndarray, full: np.ndarray) -> float:
    gap = full.mean() - seed.mean()
    return float((served.mean() - seed.mean()) / gap) if abs(gap) > 1e-12 else float("nan")


def drift_bar(loop: Any) -> dict[str, Any]:
    """The failing model's share: the day before the drift -> the day after the first night of the drift (>= 80%
    fall), and within the drift day itself (first half -> second half: online learning)."""
    k = loop.scenario.change_day
    by = {d["day"]: d for d in loop.days}
    if k - 1 not in by or k + 1 not in by:
        return {"pass": None, "why": f"needs days {k - 1}..{k + 1}, ran {len(loop.days)}"}
    m = loop.failing
    before = by[k - 1]["share"].get(m, 0.0)
    after = by[k + 1]["share"].get(m, 0.0)
    fall = (before - after) / before if before > 0 else float("nan")
    w = by[k]["failing"]
    return {"pass": bool(fall >= DRIFT_BAR and w["second_half"] < w["first_half"]), "model": m,
            "share_before": before, "share_drift_day_first_half": w["first_half"],
            "share_drift_day_second_half": w["second_half"], "share_after_first_night": after, "fall": fall,
            "online_fall": bool(w["second_half"] < w["first_half"])}


def new_model_bar(loop: Any) -> dict[str, Any]:
    k = loop.scenario.change_day
    seen = [d for d in loop.days if k + 1 <= d["day"] <= k + 2 and d.get("new_model")]
    if not seen:
        return {"pass": None, "why": f"needs days {k + 1}..{k + 2}, ran {len(loop.days)}"}
    shares = {d["day"]: d["new_model"] for d in seen}
    # Where it is best: the queries the full-information router sends it to (tens a day); the queries where its
    # world utility is strictly the highest are reported too, but are a handful a day (1-2 of 150 in a run).
    ok = any(max(s.get("share_where_full_router_picks_it") or 0, s["share_where_best"] or 0) >= NEW_MODEL_MIN_SHARE
             for s in shares.values())
    return {"pass": bool(ok), "model": loop.scenario.new_model, "by_day": shares, "min_share": NEW_MODEL_MIN_SHARE}


def ope_bar(loop: Any) -> dict[str, Any]:
    """The DR estimate of the champion as served (its online state at decision time, greedy: see
    Loop.ope_estimate) on each day's labelled logged decisions, with its 95% CI, against the true value of that
    same policy on the same queries (the world table is full-information). A day without an estimate (effective
    sample size below --ope-min-ess) is not a day within the interval: the bar counts days within out of ALL days
    run. The registered champion's estimate (no online state) is counted beside it, for the record."""
    rows = [{"day": d["day"], **d["ope"]} for d in loop.days if d.get("ope")]
    if not rows:
        return {"pass": None, "why": "no OPE estimates (mixllm.ope not available, or no labelled decisions)"}
    estimated = [r for r in rows if r.get("within_ci") is not None]
    within = sum(bool(r["within_ci"]) for r in estimated)
    days = len(loop.days)
    verdict = None if days < 10 else bool(within >= OPE_BAR * days)
    reg = [r["registered"] for r in rows if r.get("registered", {}).get("within_ci") is not None]
    return {"pass": verdict, "within": int(within), "with_estimate": len(estimated), "of": days, "days": rows,
            "registered_within": sum(bool(r["within_ci"]) for r in reg), "registered_with_estimate": len(reg),
            **({"why": f"needs 10 days, ran {days}"} if verdict is None else {})}


# ------------------------------------------------------------------------------------------- reporting -------
def render(doc: dict[str, Any]) -> str:
    lines = [f"Run {doc['finished']} on {doc['machine']}, by `bench/loop.py`. World: the bundled RouterBench train "
             "files (true quality and cost of every LLM on every query); the test files are held out. Utility = "
             "quality - cost / wtp at the wtp the service routes at; quality and cost relative to "
             f"`{REFERENCE}` on the same queries.",
             "", "OPE target (since 2026-12-03 12:00 UTC): the champion as served, i.e. the registered version plus "
             "the online corrections it had when it decided, run greedily (its choice on each decision is the "
             "best-scoring eligible candidate of the decision's trace). It overlaps the logging policy wherever the "
             "service did not explore: explored decisions get weight 0, the others 1 / propensity, and DR's reward "
             "model (the served predicted quality - cost / wtp) covers the explored ones; rewards are users' "
             "debiased thumbs, the truth is the world's quality of that policy's choices on the same queries. The "
             "registered champion without online state (what the gates compare) barely overlaps what was served "
             "(ESS 2-6 a day), so it is shown beside it but is not the bar.", ""]
    for name in SCENARIOS:
        s = doc["scenarios"].get(name)
        if s:
            lines += _render_scenario(s)
    lines += _render_curve(ROOT / "bench" / "results" / "loop_curve.json")
    return "\n".join(lines)


def _render_curve(path: Path) -> list[str]:
    """The offline learning curve (bench/loop_offline_curve.py), when it has been run."""
    if not path.is_file():
        return []
    c = json.loads(path.read_text(encoding="utf-8"))
    names = {"residual": "logged, residual (default)", "residual_s20": "logged, residual s=20",
             "ips": "logged, ips", "uniform": "uniform log, residual", "full_rows": "N full-information rows"}
    lines = ["### offline learning curve (`bench/loop_offline_curve.py`)", "",
             f"Seed router: {c['seed_queries']} full-information train queries; validation: {c['val_queries']} other "
             f"train queries (settings are judged there), test split for the record. Logged decisions: the seed's "
             f"policy (softmax 0.02, max share 0.1) or uniform choices on the remaining {c['pool_queries']} train "
             "queries (resampled beyond that), 30% rated with 10% noise, debiased; N = labelled decisions. Gap = "
             f"full information on seed + pool minus seed: val {c['gap']['val']:+.4f} (seed "
             f"{c['seed_utility']['val']:.4f}), test {c['gap']['test']:+.4f} (seed {c['seed_utility']['test']:.4f}). "
             f"Run {c.get('finished', '')}, {c.get('seconds', 0) / 60:.0f} min.", "",
             "| N labels | training rows | val: utility - seed [90% CI] | val: gap closed | test: utility - seed | "
             "test: gap closed |", "| --- " * 6 + "|"]
    for r in c["rows"]:
        v, t = r["val"], r["test"]
        lines.append(f"| {r['labels']} | {names.get(r['treatment'], r['treatment'])} | {v['diff']:+.4f} "
                     f"[{v['ci90'][0]:+.4f}, {v['ci90'][1]:+.4f}] | {v['gap_closed']:.0%} | {t['diff']:+.4f} | "
                     f"{t['gap_closed']:.0%} |")
    return lines + [""]


def _render_scenario(s: dict[str, Any]) -> list[str]:
    c = s["config"]
    nights = [n["seconds"] for n in s["nights"]]
    lines = [f"### {s['scenario']}", "",
             f"{c['days']} days{'' if s.get('complete', True) else ' planned, ' + str(len(s['days'])) + ' run'}"
             f" x {c['queries_per_day']} queries, seed {c['seed_share']:.0%} of {c['world_queries']}"
             f" world queries, feedback on {c['feedback_share']:.0%} with {c['noise']:.0%} label noise, wtp "
             f"{c['wtp']}, router {c['router']}, held-out {c['max_test_queries_per_task'] or 'all'} queries per "
             f"task; {c.get('exploration') or 'exploration: not configured'}. Night: "
             f"{np.mean(nights):.0f} s mean ({min(nights):.0f}-{max(nights):.0f}), run {s['total_s'] / 60:.1f} min"
             f" (measured {s['finished']}).", ""]
    for key, bar in s["bars"].items():
        verdict = "n/a" if bar.get("pass") is None else ("PASS" if bar["pass"] else "FAIL")
        detail = {k: v for k, v in bar.items() if k not in ("pass", "days", "by_day")}
        lines.append(f"- **{key}: {verdict}** {json.dumps(rounded(detail))}")
        if "by_day" in bar:
            lines.append(f"  by day: {json.dumps(rounded(bar['by_day']))}")
    lines += ["", "| day | served by | utility served / seed / full | regret | quality | cost | labelled | explored "
              "| OPE of the champion as served (online state, greedy): DR [95% CI] vs its true value on the same "
              "queries | registered champion (no online state): DR vs truth "
              "| champion on test: utility (seed / full) | top models |",
              "| --- " * 12 + "|"]
    nights = {n["night"]: n for n in s["nights"]}
    for d in s["days"]:
        t = nights.get(d["day"] - 1, {}).get("test")
        tt = f"{t['champion']['utility']:.4f} ({t['seed']['utility']:.4f} / {t['full']['utility']:.4f})" if t else "-"
        o = d.get("ope")
        truth = o.get("truth", o.get("realised")) if o else None  # runs before 2026-12-03: all day's queries
        ot = "-" if not o else (f"no estimate, truth {truth:.3f} (n {o['n']}, ESS {o['ess']:.1f})"
                                if o.get("estimate") is None else
                                f"{o['estimate']:.3f} [{o['low']:.3f}, {o['high']:.3f}] vs {truth:.3f} "
                                f"{'in' if o['within_ci'] else 'OUT'} (n {o['n']}, ESS {o['ess']:.0f})")
        rg = (o or {}).get("registered")
        rt = "-" if not rg else (f"no estimate (ESS {rg['ess']:.1f})" if rg.get("estimate") is None else
                                 f"{rg['estimate']:.3f} [{rg['low']:.3f}, {rg['high']:.3f}] vs {rg['truth']:.3f} "
                                 f"{'in' if rg['within_ci'] else 'OUT'} (ESS {rg['ess']:.0f})")
        top = ", ".join(f"{m.split('/')[-1]} {v:.0%}" for m, v in list(d["share"].items())[:3])
        lines.append(f"| {d['day']} | v{'+'.join(d['versions'])} | {d['served']['utility']:.4f} / "
                     f"{d['seed']['utility']:.4f} / {d['full']['utility']:.4f} | {d['regret']:+.4f} | "
                     f"{d['served']['relative_quality']:.1%} | {d['served']['relative_cost']:.1%} | "
                     f"{d['labelled_share']:.0%} | {d.get('explored_share', 0):.1%} | {ot} | {rt} | {tt} | {top} |")
    gates = [f"night {n['night']}{_built(n)}: "
             f"{'promoted' if n['promoted'] else 'not promoted (' + n['gate_reason'][:120] + ')'}" for n in s["nights"]]
    lines += ["", "Nights: " + "; ".join(gates), ""]
    return lines


def _built(night: dict[str, Any]) -> str:
    """How a night's candidate was built, when it was not a plain retrain (newcomers, probation)."""
    parts = [night["candidate"]] if night.get("candidate") not in (None, "retrained") else []
    if night.get("probation"):
        parts.append(f"on probation: {night['probation']}")
    return f" ({'; '.join(parts)})" if parts else ""


def rounded(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v) for v in x]
    return x


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in SCENARIOS if n in doc["scenarios"]]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        days = doc["scenarios"][name]["days"]
        x = [d["day"] for d in days]
        for key, style in (("served", "o-"), ("seed", "s--"), ("full", "^:")):
            ax.plot(x, [d[key]["utility"] for d in days], style, label={"served": "served (loop)",
                    "seed": "seed router (frozen)", "full": "full-information router"}[key])
        k = doc["scenarios"][name].get("change_day")
        if name != "stationary" and k:
            ax.axvline(k - 0.5, color="grey", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("day")
        ax.set_ylabel("utility (quality - cost / wtp)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def publish(result: dict[str, Any], out: Path, write_md: bool) -> dict[str, Any]:
    """Merge this scenario into loop.json (under a lock: scenarios may run side by side), redraw, rewrite."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".loop.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = out / "loop.json"
        doc = json.loads(path.read_text()) if path.is_file() else {"scenarios": {}}
        slim = {**result, "days": [{k: v for k, v in d.items() if k != "util_per_query"} for d in result["days"]]}
        doc["scenarios"][result["scenario"]] = slim
        doc.update(finished=result["finished"], machine=result["machine"])
        path.write_text(json.dumps(rounded(doc), indent=1), encoding="utf-8")
        plot(doc, out / "loop.png")
        if write_md:
            _write_section(ROOT / "BENCHMARKS.md", render(doc) + "\n![utility per day](bench/results/loop.png)\n")
    return doc


def _write_section(path: Path, body: str) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = MARKERS
    if start not in text:
        text = text.rstrip("\n") + f"\n\n## Closed loop (`bench/loop.py`)\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}", encoding="utf-8")


