"""Compare finished runs: a leaderboard per dataset and setting, a domain table, cost plots and recommendations.

Usage: python report.py --runs runs/ [more folders ...] --out report/

Runs are grouped into *settings* (dataset with its own options, protocol, weights, resolution, and the training
data used); numbers are only ever averaged over seeds within one setting and one training configuration.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402
from scipy.special import softmax  # noqa: E402
from sklearn.metrics import cohen_kappa_score  # noqa: E402

from backbones.errors import HelpFormatter, UserError, run_cli  # noqa: E402
from backbones.flags import add_out, add_runs, frozen  # noqa: E402
from backbones.metrics import calibration_bins  # noqa: E402
from backbones.record import METRICS, RANKING_SCORES, SETTING_DEFAULTS  # noqa: E402
from backbones.report_html import write_html  # noqa: E402
from backbones.report_race import race_sections  # noqa: E402
from backbones.report_robustness import robustness_section  # noqa: E402
from backbones.runtable import (  # noqa: E402
    correct_vector,
    describe,
    finished_runs,
    markdown_table,
    md,
    mean_std,
    number,
    read_rankings,
    row_label,
    runs_table,
    test_outputs,
    write_csv,
)
from backbones.statistics import (  # noqa: E402
    ALPHA,
    BOOTSTRAP_RESAMPLES,
    bootstrap_p_value,
    seed_board,
    tie_columns,
)
from backbones.transferability import agreement  # noqa: E402

DOMAINS = ("natural", "texture", "remote sensing", "plant", "astronomy", "medical")
SHOWN = ("top1", "balanced_accuracy", "macro_f1", "ece", "gflops", "latency_ms_batch1")  # in the terminal


@dataclass(frozen=True)
class ReportConfig:
    runs: tuple[Path, ...]
    out: Path
    seed: int
    rankings: tuple[Path, ...]


def parse_args(argv: list[str] | None = None) -> ReportConfig:
    parser = argparse.ArgumentParser(
        description="Compare finished runs: per-dataset leaderboards with statistical ties, the average rank per "
        "domain, accuracy-versus-cost plots with the Pareto front, error consistency between backbones, and a "
        "recommendation per dataset. Unfinished or unreadable runs are listed and skipped.",
        formatter_class=HelpFormatter,
    )
    add_runs(parser)
    add_out(parser, Path("report"), "folder the report is written to")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap used for single-seed ties")
    parser.add_argument(
        "--rankings",
        type=Path,
        nargs="+",
        default=[],
        help="CSVs written by rank.py: their predicted ranking is shown beside the measured one",
    )
    return frozen(ReportConfig, parser.parse_args(argv))


# ------------------------------------------------------------------------------------------------ reading
def bootstrap_one_seed(seed: int):
    """The one-seed tie test of the accuracy leaderboard: a paired bootstrap over the shared seed's test images."""

    def test(best: pd.Series, other: pd.Series) -> tuple[str, float]:
        saved_a, saved_b = correct_vector(best["folder"]), correct_vector(other["folder"])
        if saved_a is not None and saved_b is not None and np.array_equal(saved_a[0], saved_b[0]):
            p = bootstrap_p_value(saved_a[1], saved_b[1], BOOTSTRAP_RESAMPLES, seed)
            return f"bootstrap, {len(saved_a[0])} test images", p
        return "not tested: the seed's test outputs are missing or differ", math.nan

    return test


def leaderboard(runs: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One row per backbone (and configuration): mean and std over seeds of every metric, ranked on top-1 less one
    standard error (fewer GFLOPs first at equal scores), tied with the best or not (`seed_board`)."""
    board = seed_board(runs, [c for c, _, _ in METRICS], "top1", bootstrap_one_seed(seed), tiebreak="gflops")
    params = runs.groupby("label", sort=False)["params"].first()
    board.insert(4, "params_m", params.reindex(board["backbone"]).to_numpy() / 1e6)
    return board


def error_consistency(runs: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Cohen's kappa between two backbones' correct/incorrect vectors on the same test images, mean over seeds.

    0 means their mistakes agree only as often as their accuracies imply by chance; 1 means they fail on exactly
    the same images. Undefined (blank) when a backbone gets every image right or every image wrong.
    """
    vectors = defaultdict(dict)
    for row in runs.itertuples():
        saved = correct_vector(row.folder)
        if saved is not None:
            vectors[row.label][row.seed] = saved
    kappa = pd.DataFrame(np.nan, index=labels, columns=labels)
    for a in labels:
        for b in labels:
            values = []
            for seed in set(vectors[a]) & set(vectors[b]):
                (labels_a, correct_a), (labels_b, correct_b) = vectors[a][seed], vectors[b][seed]
                if not np.array_equal(labels_a, labels_b):
                    continue
                if correct_a.all() or (~correct_a).all() or correct_b.all() or (~correct_b).all():
                    continue
                values.append(cohen_kappa_score(correct_a, correct_b))
            if values:
                kappa.loc[a, b] = float(np.mean(values))
    return kappa


def pareto_front(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Which points no other point beats on both cost (lower) and accuracy (higher)."""
    dominated = [
        bool(np.any((cost <= c) & (accuracy >= a) & ((cost < c) | (accuracy > a))))
        for c, a in zip(cost, accuracy, strict=True)
    ]
    return ~np.array(dominated)


def domain_tables(
    boards: dict[str, pd.DataFrame], settings: dict[str, dict], default_size: dict[str, bool]
) -> dict[str, pd.DataFrame]:
    """Average rank per domain and overall, one table per group of settings that differ only in the dataset (each
    dataset at its own default resolution counts as one resolution, 'default')."""
    groups: dict[str, dict[str, pd.DataFrame]] = defaultdict(dict)
    for key, board in boards.items():
        setting = settings[key]
        group = {k: v for k, v in setting.items() if k not in ("dataset", "domain", "resolution")}
        group["resolution"] = "default" if default_size[key] else setting["resolution"]
        groups[describe(group)][setting["dataset"]] = board.assign(domain=setting["domain"])
    tables = {}
    for name, members in groups.items():
        ranks = pd.concat(
            [board[["backbone", "rank", "domain"]].assign(dataset=dataset) for dataset, board in members.items()]
        )
        order = [d for d in DOMAINS if d in set(ranks["domain"])] + sorted(set(ranks["domain"]) - set(DOMAINS))
        table = ranks.pivot_table(index="backbone", columns="domain", values="rank", aggfunc="mean")[order]
        table["overall"] = ranks.groupby("backbone")["rank"].mean()
        table["datasets"] = ranks.groupby("backbone")["dataset"].nunique()
        tables[name] = table.sort_values("overall").reset_index()
    return tables


def predicted_ranking(
    board: pd.DataFrame, setting: dict, runs: pd.DataFrame, rankings: pd.DataFrame
) -> tuple[pd.DataFrame, str]:
    """The leaderboard with each score's predicted rank beside the measured one, and how well each predicted: only
    from a ranking of the same data, weights, resolution and training subset."""
    if rankings.empty or setting.get("finetune", "full") != "full" or setting["protocol"] != "val":
        return board, ""
    height, width = runs["image_size"].iloc[0]
    size = f"{height}x{width}"  # as rank.py writes it
    shots = setting.get("shots", SETTING_DEFAULTS["shots"])
    match = rankings[
        (rankings["dataset_fingerprint"] == runs["dataset_fingerprint"].iloc[0])
        & (rankings["weights"] == setting["weights"])
        & (rankings["resolution"] == size)
        & np.isclose(rankings["train_fraction"], setting.get("train_fraction", SETTING_DEFAULTS["train_fraction"]))
        & (rankings["shots"].isna() if shots is None else rankings["shots"] == shots)
    ]
    probed = match["probe_images"].fillna(math.inf)  # one sample size per comparison: the largest, all images first
    match = match[probed == probed.max()].set_index("backbone")
    if match.empty:
        return board, ""
    measured = board.set_index("backbone")["top1_mean"]
    lines = []
    for column, heading, _, _ in RANKING_SCORES:
        ranks = match[column].reindex(board["backbone"]).rank(ascending=False, method="min")  # among these rows
        board[f"{column}_predicted_rank"] = ranks.to_numpy()
        result = agreement(match[column], measured)
        if result:
            lines.append(
                f"{heading}: Kendall's tau {result['kendall_tau']:+.2f} over {result['backbones']} backbones, first "
                f"pick {md(result['pick'])}, regret {result['regret']:.2f} top-1 points."
            )
    sample = "" if probed.max() == math.inf else f" from a sample of {probed.max():.0f} training images"
    return board, f"Predicted by rank.py{sample} before fine-tuning: " + " ".join(lines) if lines else ""


# ----------------------------------------------------------------------------------------------- writing
def slug(setting: dict) -> str:
    """A folder name for a setting: readable, and one to one (a short hash of the whole setting follows the text,
    so 'my photos' and 'my_photos' never share a folder)."""
    text = re.sub(r"[^A-Za-z0-9.=]+", "-", "-".join(str(v) for k, v in setting.items() if k != "domain")).strip("-")
    digest = hashlib.sha1(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:8]
    return f"{text[:80]}-{digest}"


def leaderboard_markdown(board: pd.DataFrame, metrics: tuple = METRICS) -> str:
    columns = {
        "rank": board["rank"].tolist(),
        "backbone": board["backbone"].tolist(),
        "seeds": [f"{seeds} ({n})" for seeds, n in zip(board["seeds"], board["n_seeds"], strict=True)],
    }
    for column, heading, decimals in metrics:
        if board[f"{column}_mean"].notna().any():  # top-5 with five classes or fewer has no value at all
            columns[heading] = mean_std(board, column, decimals)
    columns["params M"] = [number(v, 1) for v in board["params_m"]]
    for column, heading, _, _ in RANKING_SCORES:
        if f"{column}_predicted_rank" in board:
            columns[f"{heading} rank"] = [number(v, 0) for v in board[f"{column}_predicted_rank"]]
    columns.update(tie_columns(board, "tied with best"))
    return markdown_table(columns)


def recommendation(board: pd.DataFrame) -> str:
    best = board.iloc[0]
    tied = board[board["tied_with_best"]]
    cheapest = tied.sort_values(["gflops_mean", "latency_ms_batch1_mean"]).iloc[0]
    calibrated = board.sort_values("ece_mean").iloc[0]
    text = f"**{md(best['backbone'])}** is the most accurate ({best['top1_mean']:.2f}% top-1 over seed(s) "
    text += f"{best['seeds']})."
    if len(tied) > 1:
        others = ", ".join(map(md, tied["backbone"].iloc[1:]))
        text += f" Statistically tied with it (α = {ALPHA}): {others}."
        if cheapest["backbone"] != best["backbone"]:
            text += (
                f" The cheapest of the tied is **{md(cheapest['backbone'])}**: {cheapest['gflops_mean']:.3f} GFLOPs "
                f"and {cheapest['latency_ms_batch1_mean']:.1f} ms at batch 1, against {best['gflops_mean']:.3f} GFLOPs "
                f"and {best['latency_ms_batch1_mean']:.1f} ms, for {cheapest['top1_mean']:.2f}% top-1."
            )
        else:
            text += " It is also the cheapest of them in GFLOPs."
    elif board["p_value"].iloc[1:].notna().any():
        text += " No other backbone is statistically tied with it."
    untested = board.loc[board["p_value"].isna() & (board["tie_test"] != "best"), "backbone"].tolist()
    if untested:
        text += f" Not tested against it (no seed, or no test outputs, in common): {', '.join(map(md, untested))}."
    text += (
        f" Best calibrated: **{md(calibrated['backbone'])}** (ECE {calibrated['ece_mean']:.4f}"
        + (
            f", {calibrated['ece_temperature_scaled_mean']:.4f} after temperature scaling"
            if not math.isnan(calibrated["ece_temperature_scaled_mean"])
            else ""
        )
        + f"; {calibrated['top1_mean']:.2f}% top-1)."
    )
    return text


def plot_cost(board: pd.DataFrame, title: str, path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axis, column, heading in zip(
        axes, ("gflops", "latency_ms_batch1"), ("GFLOPs per image", "latency, batch 1 (ms)"), strict=True
    ):
        cost, accuracy = board[f"{column}_mean"].to_numpy(), board["top1_mean"].to_numpy()
        error = board["top1_std"].fillna(0).to_numpy()
        front = pareto_front(cost, accuracy)
        axis.errorbar(cost, accuracy, yerr=error, fmt="o", color="tab:gray", alpha=0.7, label="backbone (± std)")
        order = np.argsort(cost[front])
        axis.plot(cost[front][order], accuracy[front][order], "o-", color="tab:red", label="Pareto front")
        for label, x, y in zip(board["backbone"], cost, accuracy, strict=True):
            axis.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if cost.max() > 10 * cost.min():
            readable_log_scale(axis, "x")
        axis.set_xlabel(heading)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test top-1 (%)")
    axes[0].legend(fontsize=8)
    figure.suptitle(textwrap.fill(title, 120), fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def readable_log_scale(axes, which: str) -> None:
    """A log scale on the `which` ('x' or 'y') axis of `axes`, labelled in plain numbers at 1, 2 and 5 of each
    decade (0.05, 0.1, 0.2 ...), not as powers of ten with one label per decade."""
    (axes.set_xscale if which == "x" else axes.set_yscale)("log")
    axis = axes.xaxis if which == "x" else axes.yaxis
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def learning_curves(table: pd.DataFrame, out: Path) -> list[str]:
    """Top-1 against the number of images trained on, one line per backbone with a ± std band
    over seeds, for every group of settings that differ only in --train-fraction / --shots."""
    sizes = ("train_fraction", "shots")
    curve_of = table["setting"].map(lambda key: {k: v for k, v in json.loads(key).items() if k not in sizes})
    table = table.assign(curve=curve_of.map(lambda setting: json.dumps(setting, sort_keys=True)))
    sections = []
    for key, runs in table.groupby("curve"):
        if runs["setting"].nunique() < 2:
            continue
        title = describe(json.loads(key))
        figure, axis = plt.subplots(figsize=(7.5, 4.8))
        for label, rows in runs.groupby("label"):
            points = rows.groupby("setting").agg(used=("n_train", "mean"), top1=("top1", "mean"), std=("top1", "std"))
            points = points.sort_values("used")
            band = points["std"].fillna(0)
            axis.plot(points["used"], points["top1"], "o-", label=label)
            axis.fill_between(points["used"], points["top1"] - band, points["top1"] + band, alpha=0.2)
        readable_log_scale(axis, "x")
        axis.set_xlabel("training images (validation not counted)")
        axis.set_ylabel("test top-1 (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        axis.set_title(textwrap.fill(title, 80), fontsize=9)
        figure.tight_layout()
        name = f"learning-curve-{slug(json.loads(key))}.png"
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        sections.append(f"## Learning curves ({md(title)})\n\n![learning curves]({name})")
    return sections


def calibration_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per backbone, the test images of all its seeds pooled into ECE's equal-width confidence bins: how many fall
    in each, their mean confidence and their accuracy (the reliability diagram of the row)."""
    rows = []
    for label, group in runs.groupby("label", sort=False):
        saved = [outputs for outputs in map(test_outputs, group["folder"]) if outputs is not None]
        if not saved:
            continue
        logits = np.concatenate([logits for logits, _ in saved]).astype(np.float64)
        labels = np.concatenate([labels for _, labels in saved])
        count, confidence, accuracy = calibration_bins(softmax(logits, axis=1), labels)
        for index in np.flatnonzero(count):
            rows.append(
                {"backbone": label, "bin": int(index), "images": int(count[index]),
                 "confidence": float(confidence[index]), "accuracy": float(accuracy[index])}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=["backbone", "bin", "images", "confidence", "accuracy"])


def plot_calibration(table: pd.DataFrame, title: str, path: Path) -> None:
    """Accuracy against confidence per backbone, seeds pooled; below the diagonal is overconfident. Sparse bins
    are noisy, so each marker's area shows how many images it holds."""
    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfectly calibrated")
    for label, rows in table.groupby("backbone", sort=False):  # a marker's area is its bin's share of images
        (line,) = axis.plot(rows["confidence"], rows["accuracy"], "-", linewidth=0.8, label=label)
        axis.scatter(rows["confidence"], rows["accuracy"], s=6 + 200 * rows["images"] / rows["images"].sum(),
                     color=line.get_color())  # fmt: skip
    axis.set(xlabel="confidence (top-1 softmax probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    axis.set_title(textwrap.fill(title, 60), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_kappa(kappa: pd.DataFrame, title: str, path: Path) -> None:
    size = 4 + 0.6 * len(kappa)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(kappa.to_numpy(dtype=float), vmin=-1, vmax=1, cmap="coolwarm")
    axis.set_xticks(range(len(kappa)), kappa.columns, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(kappa)), kappa.index, fontsize=8)
    for i in range(len(kappa)):
        for j in range(len(kappa)):
            axis.text(j, i, number(kappa.iat[i, j], 2), ha="center", va="center", fontsize=8)
    figure.colorbar(image, label="Cohen's kappa on correct/incorrect")
    axis.set_title(textwrap.fill(title, 60), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_training(runs: pd.DataFrame, title: str, path: Path) -> None:
    """Each run's training loss and selection top-1 per epoch, one colour per row of the leaderboard (its seeds
    share it), a dotted line where the SGD phase starts."""
    figure, (loss_axis, top1_axis) = plt.subplots(1, 2, figsize=(11, 4))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {label: palette[i % len(palette)] for i, label in enumerate(sorted(runs["label"].unique()))}
    for row in runs.itertuples():
        history = pd.DataFrame(row.history)
        if history.empty:
            continue
        selected = next(c for c in history.columns if c.endswith("_top1") and c != "train_top1")
        first = row.label not in [line.get_label() for line in loss_axis.lines]
        loss_axis.plot(history["epoch"], history["train_loss"], color=colours[row.label], label=row.label if first
                       else None, linewidth=1)  # fmt: skip
        top1_axis.plot(history["epoch"], history[selected], color=colours[row.label], linewidth=1)
        switch = history.loc[history["phase"] == "sgd", "epoch"]
        if not switch.empty:
            top1_axis.axvline(switch.iloc[0] - 0.5, color=colours[row.label], linestyle=":", linewidth=0.8)
        top1_axis.set_ylabel(f"{selected.removesuffix('_top1')} top-1 %")
    loss_axis.set(xlabel="epoch", ylabel="training loss")
    readable_log_scale(loss_axis, "y")
    top1_axis.set(xlabel="epoch")
    for axis in (loss_axis, top1_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axis.legend(fontsize=7)
    figure.suptitle(textwrap.fill(title, 90), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


REPORT_SUFFIXES = (".md", ".html", ".csv", ".png")  # all a report writes


def prepare_out(out: Path) -> Path:
    """A fresh folder beside `out` to build the report in (leftovers of a killed report there are removed), after
    checking that `out` is new or holds an earlier report and nothing else: it is replaced whole at the end."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"--out {out} is a file or a symbolic link, not a folder. Choose a new or empty folder.")
    if out.exists():
        foreign = [
            Path(root, name) for root, _, names in os.walk(out) for name in names if not name.endswith(REPORT_SUFFIXES)
        ]
        if foreign or (any(out.iterdir()) and not (out / "report.md").exists()):
            example = f" (e.g. {foreign[0]})" if foreign else " (no report.md)"
            raise UserError(
                f"--out {out} exists and does not hold only an earlier report{example}; the new report replaces the "
                "folder whole, which would delete your files. Choose a new or empty folder for --out."
            )
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for leftover in parent.glob(f".{out.name}.building-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=parent))
    except OSError as err:
        raise UserError(
            f"--out {out}: the report cannot be written in {parent} ({err.strerror or err}). Choose an --out in a "
            "writable place."
        ) from err


def swap_in(building: Path, out: Path) -> None:
    """Put the finished report at `out`, the earlier one (if any) out of the way first: a report killed at any
    moment leaves the earlier report or none, and its leftovers are removed by the next one."""
    earlier = building.with_name(building.name + "-earlier")  # matches prepare_out's leftovers
    if out.exists():
        out.rename(earlier)
    building.rename(out)
    shutil.rmtree(earlier, ignore_errors=True)


def write_setting(runs: pd.DataFrame, setting: dict, rankings: pd.DataFrame, seed: int, out: Path,
                  sections: list[str]) -> pd.DataFrame:  # fmt: skip
    """One setting's leaderboard, plots and section of report.md (appended to `sections`); returns the board."""
    board, predicted = predicted_ranking(leaderboard(runs, seed), setting, runs, rankings)
    folder = out / slug(setting)
    folder.mkdir()
    title = describe(setting)
    write_csv(board, folder / "leaderboard.csv")
    markdown = leaderboard_markdown(board)
    (folder / "leaderboard.md").write_text(f"# {md(title)}\n\n{markdown}\n")
    plot_cost(board, title, folder / "cost.png")
    plots = [("accuracy against cost", "cost.png")]
    calibration = calibration_table(runs)
    if not calibration.empty:
        write_csv(calibration, folder / "calibration.csv")
        plot_calibration(calibration, title, folder / "calibration.png")
        plots.append(("calibration", "calibration.png"))
    if len(board) > 1:  # agreement needs two backbones
        kappa = error_consistency(runs, board["backbone"].tolist())
        write_csv(kappa, folder / "error_consistency.csv", index=True)
        plot_kappa(kappa, title, folder / "error_consistency.png")
        plots.append(("error consistency", "error_consistency.png"))
    plot_training(runs, title, folder / "training.png")
    plots.append(("training curves", "training.png"))
    robustness, robust_advice = robustness_section(runs, board, folder, title)
    advice = recommendation(board) + robust_advice
    sections.append(
        f"## {md(title)}\n\n{markdown}\n\nMean ± sample std over seeds (their number in brackets). Ranked by mean "
        "top-1 less one standard error (the pooled seed-to-seed std over the root of the row's seed count), so "
        "fewer seeds rank lower at equal means. Ties with the best: a paired t-test over seeds where the two share "
        "two or more, otherwise a paired bootstrap over the shared seed's test images "
        f"({BOOTSTRAP_RESAMPLES:,} resamples); tied when p ≥ {ALPHA}; 'untested' where no seed (or no test "
        f"outputs) are shared.\n\n{advice}\n\n"
        + (f"{predicted}\n\n" if predicted else "")
        + "\n".join(f"![{alt}]({folder.name}/{name})" for alt, name in plots)
        + (f"\n\n{robustness}" if robustness else "")
    )
    print(f"\n{title}\n{leaderboard_markdown(board, tuple(m for m in METRICS if m[0] in SHOWN))}\n{advice}")
    if predicted:
        print(predicted)
    return board


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    runs, skipped = finished_runs(config.runs)
    rankings = read_rankings(config.rankings)
    building = prepare_out(config.out)
    try:
        write_report(runs, skipped, rankings, config, building)
        swap_in(building, config.out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    print(f"\nReport written to {config.out / 'report.md'} and {config.out / 'index.html'} (one self-contained page)")


def printable(text: object) -> str:
    """A name as the terminal should show it: as it is, or quoted when it holds control characters."""
    return str(text) if str(text).isprintable() else repr(str(text))


def at_best_learning_rate(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Where a backbone ran at several learning rates and otherwise one configuration (sweep.py --lr-grid), only
    the rate with the best mean validation top-1 stays: each backbone is compared at its own best rate, chosen
    on the validation split. Under --protocol paper runs select on the test set, so nothing is chosen there."""
    kept, notes = [], []
    for (_, model), rows in table.groupby(["setting", "model"], sort=False):
        configurations = {c: json.loads(c) for c in rows["configuration"].unique()}
        others = {
            json.dumps({k: v for k, v in c.items() if k != "lr"}, sort_keys=True) for c in configurations.values()
        }
        chosen_on_validation = rows["protocol"].iloc[0] == "val" and rows["selection_top1"].notna().all()
        if len(configurations) < 2 or len(others) > 1 or not chosen_on_validation:
            kept.append(rows)
            continue
        means = rows.groupby("configuration")["selection_top1"].mean().sort_values(ascending=False, kind="stable")
        kept.append(rows[rows["configuration"] == means.index[0]])
        rates = [f"{configurations[c]['lr']:g} ({means[c]:.2f}%)" for c in means.index]
        notes.append(f"{md(model)} ({md(rows['dataset'].iloc[0])}): lr {rates[0]}, over {', '.join(rates[1:])}")
    table = pd.concat(kept).reset_index(drop=True) if kept else table
    table["label"] = table.apply(lambda row: row_label(row, table), axis=1)
    return table, notes


def write_report(runs: list[dict], skipped: list, rankings: pd.DataFrame, config: ReportConfig, out: Path) -> None:
    """Every file of the report, into the fresh folder `out`."""
    table, repeats = runs_table(runs)
    table, rates = at_best_learning_rate(table)
    skipped += repeats
    sections = [f"# Backbone comparison\n\n{len(table)} runs from {md(', '.join(map(str, config.runs)))}."]
    boards, settings, default_size = {}, {}, {}
    for key, runs_of_setting in table.groupby("setting", sort=True):
        setting = json.loads(key)
        boards[key], settings[key] = (
            write_setting(runs_of_setting, setting, rankings, config.seed, out, sections),
            setting,
        )
        default_size[key] = bool(runs_of_setting["default_size"].iloc[0])
    write_csv(pd.concat(board.assign(**settings[key]) for key, board in boards.items()), out / "leaderboard.csv")
    sections += learning_curves(table, out)
    for name, domains in domain_tables(boards, settings, default_size).items():
        columns = {"backbone": domains["backbone"].tolist()}
        columns.update(
            {c: [number(v, 2) for v in domains[c]] for c in domains.columns if c not in ("backbone", "datasets")}
        )
        columns["datasets"] = domains["datasets"].tolist()
        text = markdown_table(columns)
        sections.append(f"## Average rank per domain ({md(name)})\n\n{text}")
        write_csv(domains, out / f"domains-{slug({'group': name})}.csv")
        print(f"\nAverage rank per domain ({name})\n{text}")
    if rates:
        sections.append(
            "## Learning rates chosen on validation\n\nEach backbone below ran at several learning rates; it is "
            "compared at the one with the best mean validation top-1 (in brackets, each rate's):\n\n"
            + "\n".join(f"- {note}" for note in rates)
        )
    sections += race_sections(config.runs, out)
    if skipped:
        listing = "\n".join(f"- {md(path)}: {md(reason)}" for path, reason in skipped)
        sections.append(f"## Skipped\n\n{listing}")
        print(f"\nSkipped {len(skipped)}:\n" + "\n".join(f"- {printable(path)}: {reason}" for path, reason in skipped))
    markdown = "\n\n".join(sections) + "\n"
    (out / "report.md").write_text(markdown)
    write_html(markdown, out)


if __name__ == "__main__":
    run_cli(main)
