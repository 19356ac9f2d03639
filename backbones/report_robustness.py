"""The report's robustness and mistakes, per setting: how each backbone holds up under corruption (seeds and ties
as the accuracy leaderboard has them), accuracy against severity per corruption family, invariance curves, the
confusions that make up each backbone's mistakes, and the classes the backbones disagree on.

The robustness numbers are robustness.py's (robustness.json in each run's folder); the mistakes are read from the
runs' own test outputs.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402
from scipy.stats import ttest_rel  # noqa: E402

from backbones.record import FAMILIES, INVARIANCE  # noqa: E402
from backbones.runcheck import check_analysis, read_json  # noqa: E402
from backbones.runfolder import RunFolder  # noqa: E402
from backbones.runtable import markdown_table, md, mean_std, number, test_outputs, write_csv  # noqa: E402
from backbones.statistics import seed_board, tie_columns  # noqa: E402

CLEAN_AMOUNT = {"scale": 1.0, "shift": 0, "rotation": 0, "hflip": 0, "resolution": 1.0}  # the untransformed images
SHOWN_CONFUSIONS = 3
SHOWN_DISAGREEMENTS = 5


def read_analyses(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per run with a corruption analysis, of the request most of them share (like with like); and a
    line for each analysis left out, and why."""
    rows, left_out = [], []
    for run in runs.itertuples():
        path = RunFolder(Path(run.folder)).robustness
        if not path.exists():
            continue
        found, problem = read_json(path)
        problem = problem or check_analysis(found, run._asdict())
        if problem:
            left_out.append(f"{path}: {problem}")
            continue
        rows.append(
            {
                "label": run.label,
                "seed": run.seed,
                "request": json.dumps(found["request"], sort_keys=True),
                "clean": float(found["clean"]["top1"]),
                "corrupted": found["mean_corruption_top1"],
                "drop": None if found["relative_drop"] is None else 100 * found["relative_drop"],
                "analysis": found,
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame, left_out
    common = frame["request"].value_counts().index[0]
    for row in frame[frame["request"] != common].itertuples():
        left_out.append(f"{row.analysis['run']}: analysed with other corruptions, severities or seed than the rest")
    return frame[frame["request"] == common].reset_index(drop=True), left_out


def per_image_one_seed(best: pd.Series, other: pd.Series) -> tuple[str, float]:
    """The one-seed tie test on mean corruption top-1: a paired t-test over the shared seed's test images, each
    scored by its share of corrupted copies classified right."""
    a = np.asarray(best["analysis"]["image_corruption_top1"])
    b = np.asarray(other["analysis"]["image_corruption_top1"])
    if len(a) != len(b):
        return "not tested: different test images", math.nan
    p = 1.0 if np.array_equal(a, b) else float(ttest_rel(a, b).pvalue)
    return f"paired t-test, {len(a)} test images", p


def robustness_board(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per backbone: clean and mean corruption top-1 and the relative drop over seeds, ranked and tied on
    mean corruption top-1 as the accuracy leaderboard is on top-1 (`seed_board`)."""
    return seed_board(frame, ["clean", "corrupted", "drop"], "corrupted", per_image_one_seed)


def board_markdown(board: pd.DataFrame) -> str:
    return markdown_table(
        {
            "rank": board["rank"].tolist(),
            "backbone": board["backbone"].tolist(),
            "seeds": [f"{s} ({n})" for s, n in zip(board["seeds"], board["n_seeds"], strict=True)],
            "clean top-1 %": mean_std(board, "clean", 2),
            "mean corruption top-1 %": mean_std(board, "corrupted", 2),
            "relative drop %": mean_std(board, "drop", 1),
            **tie_columns(board, "tied with most robust"),
        }
    )


def robustness_sentence(accuracy_board: pd.DataFrame, board: pd.DataFrame) -> str:
    """What the recommendation adds: whether the most accurate backbone is also the most robust one."""
    accurate = accuracy_board.iloc[0]["backbone"]
    robust = board.iloc[0]
    if accurate not in set(board["backbone"]):
        return f" Under corruption, **{md(robust['backbone'])}** holds up best ({robust['corrupted_mean']:.2f}% top-1)."
    mine = board.set_index("backbone").loc[accurate]
    keeps = (
        f" Under corruption it keeps {mine['corrupted_mean']:.2f}% top-1 on average (a relative drop of "
        f"{mine['drop_mean']:.1f}%)."
    )
    if len(board) == 1:
        return keeps
    if robust["backbone"] == accurate:
        return (
            f" It is also the most robust to corruption: {mine['corrupted_mean']:.2f}% mean corruption top-1, a "
            f"relative drop of {mine['drop_mean']:.1f}%."
        )
    if robust["corrupted_mean"] <= mine["corrupted_mean"]:  # ranked first on its seed count alone
        return keeps
    tied = bool(mine["tied_with_best"]) and not math.isnan(mine["p_value"])
    return (
        f" But it is not the most robust: under corruption **{md(robust['backbone'])}** keeps "
        f"{robust['corrupted_mean']:.2f}% top-1 on average (a relative drop of {robust['drop_mean']:.1f}%), against "
        f"{mine['corrupted_mean']:.2f}% ({mine['drop_mean']:.1f}%) for {md(accurate)}"
        + (" (statistically tied)" if tied else "")
        + "; if your images will be noisier, blurrier or darker than the test set's, weigh that."
    )


def curve(analyses: list[dict], points) -> tuple[list, list]:
    """(x, mean over seeds of y) for the points each analysis gives (`points(analysis)`: {x: y})."""
    values = [points(a) for a in analyses]
    xs = sorted(set.intersection(*(set(v) for v in values)))
    return xs, [float(np.mean([v[x] for v in values])) for x in xs]


def save_panels(figure, axes, title: str, path: Path) -> None:
    """A row of top-1 panels sharing their y axis: labelled once, the legend on the last, saved and closed."""
    axes[0][0].set_ylabel("test top-1 (%)")
    axes[0][-1].legend(fontsize=7)
    figure.suptitle(textwrap.fill(title, 120), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def family_points(analysis: dict, family: str) -> dict:
    points = {0: analysis["clean"]["top1"]}
    rows = [c["severities"] for c in analysis["corruptions"].values() if c["family"] == family]
    for severity in {row["severity"] for group in rows for row in group}:
        points[severity] = float(np.mean([r["top1"] for group in rows for r in group if r["severity"] == severity]))
    return points


def plot_severity(frame: pd.DataFrame, title: str, path: Path) -> None:
    """Top-1 against severity (0: clean), averaged over each family's corruptions and over seeds."""
    present = {corruption["family"] for a in frame["analysis"] for corruption in a["corruptions"].values()}
    families = [f for f in FAMILIES if f in present]
    figure, axes = plt.subplots(1, len(families), figsize=(3.3 * len(families) + 1, 3.6), sharey=True, squeeze=False)
    for axis, family in zip(axes[0], families, strict=True):
        for label, rows in frame.groupby("label", sort=False):
            xs, ys = curve(list(rows["analysis"]), lambda a, f=family: family_points(a, f))
            axis.plot(xs, ys, "o-", label=label, markersize=3)
        axis.set(title=family, xlabel="severity (0: clean)", xticks=range(6))
        axis.grid(alpha=0.3)
    save_panels(figure, axes, title, path)


def plot_invariance(frame: pd.DataFrame, title: str, path: Path) -> bool:
    """Top-1 against each transformation's amount (the clean images included), one line per backbone."""
    names = [n for n in CLEAN_AMOUNT if all(n in a["invariance"] for a in frame["analysis"])]
    if not names:
        return False
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1, 3.6), sharey=True, squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        for label, rows in frame.groupby("label", sort=False):

            def points(analysis: dict, name: str = name) -> dict:
                found = {p["amount"]: p["top1"] for p in analysis["invariance"][name]["amounts"]}
                return {CLEAN_AMOUNT[name]: analysis["clean"]["top1"], **found}

            xs, ys = curve(list(rows["analysis"]), points)
            axis.plot(xs, ys, "o-", label=label, markersize=3)
        unit = INVARIANCE[name][0]
        axis.set_title(name, fontsize=9)
        axis.set_xlabel(textwrap.fill(unit, 34), fontsize=7)
        if name == "scale":  # zooming in and out by the same factor sit symmetrically about 1
            axis.set_xscale("log", base=2)
            axis.set_xticks(xs, [f"{x:g}" for x in xs], minor=False)
            axis.xaxis.set_minor_locator(NullLocator())
        axis.grid(alpha=0.3)
    save_panels(figure, axes, title, path)
    return True


def mistakes(runs: pd.DataFrame) -> str:
    """Each backbone's most frequent confusions over its seeds, and the classes on which the backbones' per-class
    accuracies differ most (read from the runs' test outputs)."""
    confusions, per_class, classes = {}, {}, None
    for label, rows in runs.groupby("label", sort=False):
        counts, hits, totals = Counter(), 0, 0
        for folder, names in zip(rows["folder"], rows["classes"], strict=True):
            saved = test_outputs(folder)
            if saved is None:
                continue
            labels, predicted = saved[1], saved[0].argmax(1)
            classes = classes or names
            wrong = labels != predicted
            counts.update(zip(labels[wrong].tolist(), predicted[wrong].tolist(), strict=True))
            size = len(classes)
            hits = hits + np.bincount(labels[~wrong], minlength=size)
            totals = totals + np.bincount(labels, minlength=size)
        if isinstance(totals, np.ndarray):
            confusions[label] = counts
            per_class[label] = np.where(totals > 0, 100 * hits / np.maximum(totals, 1), np.nan)
    if not confusions:
        return ""
    lines = []
    for label, counts in confusions.items():
        total = sum(counts.values())
        top = counts.most_common(SHOWN_CONFUSIONS)
        pairs = ", ".join(f"{md(classes[t])} → {md(classes[p])} ({n}, {100 * n / total:.0f}%)" for (t, p), n in top)
        lines.append(f"- **{md(label)}**: {pairs or 'no mistakes'}")
    text = "Most frequent confusions (true → predicted: count over seeds, share of the backbone's mistakes):\n\n"
    text += "\n".join(lines)
    if len(per_class) >= 2:
        accuracy = pd.DataFrame(per_class, index=classes)
        spread = (accuracy.max(axis=1) - accuracy.min(axis=1)).dropna().sort_values(ascending=False)
        shown = spread[spread > 0].index[:SHOWN_DISAGREEMENTS]
        if len(shown):
            columns = {"class": list(shown), "spread": [number(spread[c], 1) for c in shown]}
            columns.update({label: [number(accuracy.loc[c, label], 1) for c in shown] for label in accuracy.columns})
            text += (
                "\n\nClasses the backbones disagree on most (per-class test accuracy %, pooled over seeds; spread = "
                f"best less worst):\n\n{markdown_table(columns)}"
            )
    return text


def robustness_section(runs: pd.DataFrame, accuracy_board: pd.DataFrame, folder: Path, title: str) -> tuple[str, str]:
    """(the setting's robustness and mistakes markdown, the sentence its recommendation gains); files in `folder`."""
    parts, sentence = [], ""
    frame, left_out = read_analyses(runs)
    if not frame.empty and frame["corrupted"].notna().all():
        board = robustness_board(frame)
        write_csv(board.drop(columns="rank_score"), folder / "robustness.csv")
        request = json.loads(frame["request"].iloc[0])
        count = len(request["corruptions"]) * len(request["severities"])
        plot_severity(frame, title, folder / "robustness.png")
        parts.append(
            f"### Robustness to corruption\n\n{board_markdown(board)}\n\nrobustness.py on each run's own test split: "
            f"{len(request['corruptions'])} ImageNet-C corruptions at severities "
            f"{', '.join(map(str, request['severities']))} ({count} corrupted copies of every test image, seed "
            f"{request['seed']}). Mean corruption top-1 averages them; the relative drop is (clean − corrupted) / "
            "clean. Ranked and tied as the accuracy leaderboard is, on mean corruption top-1.\n\n"
            f"![top-1 against severity]({folder.name}/robustness.png)"
        )
        sentence = robustness_sentence(accuracy_board, board)
        if plot_invariance(frame, title, folder / "invariance.png"):
            parts.append(
                "### Invariance\n\nTop-1 on the test images zoomed, shifted, rotated, mirrored or seen at a lower "
                "resolution (the clean images are the point at no change; the mean probability of the true class is "
                f"in each run's {RunFolder(Path()).robustness.name}).\n\n![invariance]({folder.name}/invariance.png)"
            )
    if left_out:
        parts.append("Robustness analyses left out:\n\n" + "\n".join(f"- {md(line)}" for line in left_out))
    found = mistakes(runs)
    if found:
        parts.append(f"### Mistakes\n\n{found}")
    return "\n\n".join(parts), sentence
