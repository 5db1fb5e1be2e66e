"""One PNG per fault: answers per worker and errors over time, for every system and load side by side,
with the fault, the first answer from the standby, the primary's return and the switch back marked."""

from __future__ import annotations

from pathlib import Path

from bench.analysis import BIN_S, PRIMARY, STANDBY, Run, first_answer_from


def _series(run: Run) -> tuple[list[float], list[int], list[int], list[int]]:
    """Per bin of answer time: answers by the primary, by the standby, and what the client saw fail
    (a failed call; for streams, a broken stream counts once however many frames it took)."""
    n = int(run.end_at / BIN_S) + 2
    prim, stby, err = [0] * n, [0] * n, [0] * n
    for r in run.records:
        if r.done is None:
            continue
        i = min(n - 1, int(r.done / BIN_S))
        if r.error is not None:
            if not run.streams or r.error.startswith("FRAME_"):
                err[i] += 1
        elif r.backend == PRIMARY:
            prim[i] += 1
        elif r.backend == STANDBY:
            stby[i] += 1
    for t, _ in run.breaks:
        err[min(n - 1, int(t / BIN_S))] += 1
    return [i * BIN_S for i in range(n)], prim, stby, err


def draw(runs: dict[tuple[str, str], Run], title: str, path: Path, window: tuple[float, float] | None = None) -> Path:
    """`runs` keyed by (system, load); one panel each, in a grid of systems by loads."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = sorted({s for s, _ in runs}, key=["router", "nginx", "zero-hop", "direct"].index)
    loads = sorted({lo for _, lo in runs}, key=["unary", "stream"].index)
    fig, axes = plt.subplots(len(systems), len(loads), figsize=(6.5 * len(loads), 2.6 * len(systems)),
                             squeeze=False, sharex=True)
    for i, system in enumerate(systems):
        for j, load in enumerate(loads):
            ax = axes[i][j]
            run = runs.get((system, load))
            if run is None:
                ax.set_axis_off()
                continue
            t, prim, stby, err = _series(run)
            rate = 1 / BIN_S
            ax.bar(t, [v * rate for v in prim], width=BIN_S, align="edge", color="#3b75af", label="primary")
            ax.bar(t, [v * rate for v in stby], width=BIN_S, align="edge", bottom=[v * rate for v in prim],
                   color="#ef8636", label="standby")
            ax.bar(t, [v * rate for v in err], width=BIN_S, align="edge",
                   bottom=[(a + b) * rate for a, b in zip(prim, stby, strict=True)], color="#c53a32", label="errors")
            marks = [(run.fault_at, "black", "fault")]
            switch = first_answer_from(run.records, STANDBY, run.fault_at)
            if switch is not None:
                marks.append((switch, "#ef8636", "first standby answer"))
            if run.back_at is not None:
                marks.append((run.back_at, "grey", "primary back"))
            if run.ready_at is not None and run.ready_at != run.back_at:
                marks.append((run.ready_at, "purple", "primary ready"))
            if run.ready_at is not None:
                back = first_answer_from(run.records, PRIMARY, run.ready_at)
                if back is not None:
                    marks.append((back, "#3b75af", "first primary answer"))
            for x, color, label in marks:
                ax.axvline(x, color=color, linestyle="--", linewidth=1.2, label=label)
            ax.set_title(f"{system}, {load}", fontsize=10)
            ax.set_ylabel("frames/s")
            if window is not None:
                ax.set_xlim(*window)
            if i == len(systems) - 1:
                ax.set_xlabel("seconds since the load began")
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    for row in axes:
        for ax in row:
            h, lab = ax.get_legend_handles_labels()
            seen.update(zip(lab, h, strict=True))
    fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def draw_all(runs: dict[tuple[str, str, str], Run], out: Path, titles: dict[str, str]) -> list[Path]:
    """A timeline per fault (and one for the switch back, from the SIGKILL runs' second half)."""
    paths = []
    for fault in dict.fromkeys(f for _, _, f in runs):
        chosen = {(s, lo): r for (s, lo, f), r in runs.items() if f == fault}
        paths.append(draw(chosen, titles[fault], out / f"timeline-{fault}.png"))
        if fault == "sigkill":
            backs = [r.back_at for r in chosen.values() if r.back_at is not None]
            ends = [r.end_at for r in chosen.values()]
            if backs:
                paths.append(draw(chosen, titles["switch_back"], out / "timeline-switch_back.png",
                                  window=(min(backs) - 1, max(ends))))
    return paths
