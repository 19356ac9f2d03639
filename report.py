"""Compare finished runs: a leaderboard per dataset and setting, a domain table, cost plots and recommendations.

Usage: python report.py --runs runs/ [more folders ...] --out report/

Runs are grouped into *settings* (dataset with its own options, protocol, weights, resolution, and the training
data used); numbers are only ever averaged over seeds within one setting and one training configuration.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import textwrap
import zipfile
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import ttest_rel  # noqa: E402
from sklearn.metrics import cohen_kappa_score  # noqa: E402

from errors import UserError, run_cli  # noqa: E402
from transferability import agreement  # noqa: E402

DOMAINS = ("natural", "texture", "remote sensing", "plant", "astronomy", "medical")
RUN_FILES = ("metrics.json", "log.txt", "split.csv", "best.pt")
REQUIRED = (
    "dataset",
    "dataset_options",
    "dataset_fingerprint",
    "domain",
    "model",
    "weights",
    "seed",
    "protocol",
    "image_size",
    "default_image_size",
    "n_train",
    "n_val",
    "n_test",
    "top1",
    "top5",
    "balanced_accuracy",
    "macro_f1",
    "nll",
    "brier",
    "ece",
    "ece_temperature_scaled",
    "params",
    "gflops",
    "latency_ms_batch1",
    "throughput_images_per_s",
    "train_seconds",
    "peak_memory_mb",
    "config",
    "finished",
)
# (column, heading, decimals); every one is averaged over seeds
METRICS = (
    ("top1", "top-1 %", 2),
    ("top5", "top-5 %", 2),
    ("balanced_accuracy", "balanced %", 2),
    ("macro_f1", "macro-F1 %", 2),
    ("nll", "NLL", 4),
    ("brier", "Brier", 4),
    ("ece", "ECE", 4),
    ("ece_temperature_scaled", "ECE after T", 4),
    ("gflops", "GFLOPs", 3),
    ("latency_ms_batch1", "latency ms", 1),
    ("throughput_images_per_s", "img/s", 0),
    ("train_seconds", "train s", 0),
    ("peak_memory_mb", "peak MB", 0),
)
SHOWN = ("top1", "balanced_accuracy", "macro_f1", "ece", "gflops", "latency_ms_batch1")  # in the terminal
# Settings: what makes two runs answer different questions. Config keys that only say where or how fast a run
# happened are ignored; every other config difference makes a separate row.
SETTING_DEFAULTS = {"train_fraction": 1.0, "shots": None, "finetune": "full"}  # absent from older runs
NOT_CONFIGURATION = {"seed", "out", "data", "results", "workers", "device", "download", "compile", "eval_only", "cache"}
NOT_CONFIGURATION |= {"resume", "model", "weights", "protocol", "image_size", *SETTING_DEFAULTS}
PREDICTORS = {"logme": "LogME", "knn": "kNN", "linear": "linear probe", "leep": "LEEP"}  # rank.py's scores
ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare finished runs: per-dataset leaderboards with statistical ties, the average rank per "
        "domain, accuracy-versus-cost plots with the Pareto front, error consistency between backbones, and a "
        "recommendation per dataset. Unfinished or unreadable runs are listed and skipped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--runs", type=Path, nargs="+", default=[Path("runs")], help="folders holding run folders (searched deeply)"
    )
    parser.add_argument("--out", type=Path, default=Path("report"), help="folder the report is written to")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap used for single-seed ties")
    parser.add_argument(
        "--rankings",
        type=Path,
        nargs="+",
        default=[],
        help="CSVs written by rank.py: their predicted ranking is shown beside the measured one",
    )
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ reading
def find_runs(folders: list[Path]) -> tuple[list[dict], list[tuple[str, str]]]:
    """Every finished run under `folders`, and (folder, reason) for everything that looked like a run but isn't."""
    runs, skipped = [], []
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"--runs {folder} is not a folder. Pass the folders your runs were written to.")
        found = 0
        for path, subfolders, files in os.walk(folder):
            if not any(name in files for name in RUN_FILES):
                continue
            subfolders.clear()  # a run folder holds no other runs
            found += 1
            run, reason = read_run(Path(path))
            if run is None:
                skipped.append((path, reason))
            else:
                runs.append(run)
        if not found:
            skipped.append((str(folder), "holds no runs"))
    return runs, skipped


def read_run(folder: Path) -> tuple[dict | None, str]:
    """One run's metrics, or None and why it cannot be used."""
    path = folder / "metrics.json"
    if not path.exists():
        return None, "no metrics.json: the run did not finish (killed or failed; see its log.txt)"
    try:
        run = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"metrics.json cannot be read ({err})"
    if not isinstance(run, dict):
        return None, "metrics.json does not hold a run's metrics"
    missing = [field for field in REQUIRED if field not in run]
    if missing:
        return None, f"written by an older version: metrics.json lacks {', '.join(missing)}"
    if run.get("eval_only"):
        return None, "an --eval-only evaluation of a checkpoint, not a fine-tuning run"
    problem = malformed(run)
    if problem:
        return None, f"metrics.json is malformed: {problem}"
    if (folder / "test_outputs.npz").exists():
        try:
            labels, _ = correct_vector(str(folder))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            return None, f"test_outputs.npz cannot be read ({type(err).__name__}: {err})"
        if len(labels) != run["n_test"]:
            return None, f"test_outputs.npz holds {len(labels)} test images, metrics.json says {run['n_test']}"
    run["folder"] = str(folder)
    return run, ""


OPTIONAL_NUMBERS = {"top5", "ece_temperature_scaled"}  # None where not applicable


def malformed(run: dict) -> str:
    """What in a run's metrics is not of the type this report reads ('' if nothing)."""
    for column, _, _ in METRICS:
        value = run[column]
        if value is None and column in OPTIONAL_NUMBERS:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{column} is {value!r}, not a number"
    for field, kind in (("config", dict), ("dataset_options", dict), ("image_size", list), ("seed", int)):
        if not isinstance(run[field], kind):
            return f"{field} is {run[field]!r}, not a {kind.__name__}"
    if len(run["image_size"]) != 2:
        return f"image_size is {run['image_size']!r}, not [height, width]"
    return ""


def dataset_label(name: str, options: dict, domain: str, data: str | Path) -> str:
    """The data a run saw: the dataset, its own options (BreakHis -mag), and for your own folder, the folder."""
    return (
        name
        + (f" {Path(data).name}" if domain == "custom" else "")
        + "".join(f" {key}={value}" for key, value in sorted(options.items()))
    )


def setting_of(run: dict, label: str) -> dict:
    """What a number answers: runs in different settings are never averaged or ranked together. `label` names the
    data (`dataset_labels`)."""
    size = "x".join(map(str, run["image_size"]))
    setting = {
        "dataset": label,
        "domain": run["domain"],
        "protocol": run["protocol"],
        "weights": run["weights"],
        "resolution": size + (" (default)" if run["image_size"] == run["default_image_size"] else ""),
    }
    for key, default in SETTING_DEFAULTS.items():
        if run["config"].get(key, default) != default:
            setting[key] = run["config"][key]
    return setting


def dataset_labels(runs: list[dict]) -> list[str]:
    """A readable name for each run's data, one per dataset fingerprint: where different data share a name (two
    folders both called 'photos', a partial copy of a benchmark), each gets its fingerprint's first digits."""
    names = [
        dataset_label(run["dataset"], run["dataset_options"], run["domain"], run.get("data") or run["config"]["data"])
        for run in runs
    ]
    fingerprints = defaultdict(set)
    for name, run in zip(names, runs, strict=True):
        fingerprints[name].add(run["dataset_fingerprint"])
    return [
        name + (f" #{run['dataset_fingerprint'][:6]}" if len(fingerprints[name]) > 1 else "")
        for name, run in zip(names, runs, strict=True)
    ]


def runs_table(runs: list[dict]) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """One row per run with its setting, configuration and metrics; of repeated runs, only the newest is kept."""
    rows = []
    for run, label in zip(runs, dataset_labels(runs), strict=True):
        setting = setting_of(run, label)
        configuration = {k: v for k, v in run["config"].items() if k not in NOT_CONFIGURATION}
        rows.append(
            {
                "setting": json.dumps(setting, sort_keys=True),
                **setting,
                "model": run["model"],
                "configuration": json.dumps(configuration, sort_keys=True),
                "seed": run["seed"],
                "params": run["params"],
                "dataset_fingerprint": run["dataset_fingerprint"],
                "n_train": run["n_train"],
                **{column: math.nan if run[column] is None else float(run[column]) for column, _, _ in METRICS},
                "finished": run["finished"],
                "folder": run["folder"],
            }
        )
    table = pd.DataFrame(rows).sort_values(["finished", "folder"], ascending=False)
    key = ["setting", "model", "configuration", "seed"]
    repeated = table.duplicated(key, keep="first")
    newest = table.drop_duplicates(key).set_index(key)["folder"]
    skipped = [
        (
            row.folder,
            f"repeats {newest[tuple(getattr(row, k) for k in key)]} (same setting, configuration and seed); "
            "the newer run is used",
        )
        for row in table[repeated].itertuples()
    ]
    table = table[~repeated].copy()
    table["label"] = table.apply(lambda row: row_label(row, table), axis=1)
    return table.sort_values(["setting", "label", "seed"]).reset_index(drop=True), skipped


def row_label(row: pd.Series, table: pd.DataFrame) -> str:
    """The backbone's name, plus the configuration values that tell its rows apart within the setting."""
    same = table[(table["setting"] == row["setting"]) & (table["model"] == row["model"])]
    configurations = [json.loads(c) for c in same["configuration"].unique()]
    if len(configurations) == 1:
        return row["model"]
    own = json.loads(row["configuration"])
    differing = sorted(k for k in own if any(c.get(k) != own[k] for c in configurations))
    return f"{row['model']} ({', '.join(f'{k}={own[k]}' for k in differing)})"


@functools.cache  # each run's outputs serve every tie test and every kappa pair it is in
def correct_vector(folder: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, whether each test image was classified correctly) from a run's saved test logits."""
    path = Path(folder) / "test_outputs.npz"
    if not path.exists():
        return None
    with np.load(path) as saved:
        labels = saved["labels"]
        return labels, saved["logits"].argmax(axis=1) == labels


# ----------------------------------------------------------------------------------------------- statistics
def bootstrap_p_value(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int, seed: int) -> float:
    """Two-sided p-value that a and b are equally accurate, by a paired bootstrap over the test images.

    Resampling n images with replacement only changes how many of the images that a alone gets right (and b alone
    gets right) are drawn, so the resampled accuracy difference is drawn exactly from a multinomial on those counts.
    """
    n = len(correct_a)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(correct_b & ~correct_a))
    draws = np.random.default_rng(seed).multinomial(n, [only_a / n, only_b / n, 1 - (only_a + only_b) / n], resamples)
    difference = draws[:, 0] - draws[:, 1]
    return float(min(1.0, 2 * min(np.mean(difference <= 0), np.mean(difference >= 0))))


def paired_t_p_value(top1_a: list[float], top1_b: list[float]) -> float:
    """Two-sided paired t-test p-value over seeds; a constant difference is decided without the test."""
    differences = np.subtract(top1_a, top1_b)
    if np.allclose(differences, differences[0]):
        return 1.0 if np.isclose(differences[0], 0) else 0.0
    return float(ttest_rel(top1_a, top1_b).pvalue)


def tie_with_best(best: pd.DataFrame, other: pd.DataFrame, seed: int) -> tuple[str, float]:
    """(how the tie was tested, p-value) between the best row's runs and another row's, paired by seed."""
    common = sorted(set(best["seed"]) & set(other["seed"]))
    if len(common) >= 2:
        a = best.set_index("seed").loc[common, "top1"].tolist()
        b = other.set_index("seed").loc[common, "top1"].tolist()
        return f"paired t-test, {len(common)} seeds", paired_t_p_value(a, b)
    if len(common) == 1:
        saved_a = correct_vector(best.set_index("seed").loc[common[0], "folder"])
        saved_b = correct_vector(other.set_index("seed").loc[common[0], "folder"])
        if saved_a is not None and saved_b is not None and np.array_equal(saved_a[0], saved_b[0]):
            p = bootstrap_p_value(saved_a[1], saved_b[1], BOOTSTRAP_RESAMPLES, seed)
            return f"bootstrap, {len(saved_a[0])} test images", p
        return "not tested: the seed's test outputs are missing or differ", math.nan
    return "not tested: no seed in common", math.nan


def pooled_seed_std(top1: pd.Series, labels: pd.Series) -> float:
    """The seed-to-seed standard deviation of top-1, pooled over every row with two or more seeds (NaN if none)."""
    groups = [values for _, values in top1.groupby(labels) if len(values) >= 2]
    freedom = sum(len(values) - 1 for values in groups)
    if not freedom:
        return math.nan
    return math.sqrt(sum(values.var(ddof=1) * (len(values) - 1) for values in groups) / freedom)


def leaderboard(runs: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One row per backbone (and configuration): mean and std over seeds, rank, tie with the best.

    Rows are ranked by their mean top-1 less one standard error (the pooled seed-to-seed std over the root of the
    row's number of seeds), so one lucky seed does not outrank the mean of three; with equal seed counts this is
    the order of the means."""
    grouped = runs.groupby("label", sort=False)
    board = pd.DataFrame({"seeds": grouped["seed"].apply(lambda s: ",".join(map(str, sorted(s))))})
    board["n_seeds"] = grouped["seed"].nunique()
    board["params_m"] = grouped["params"].first() / 1e6
    for column, _, _ in METRICS:
        board[f"{column}_mean"] = grouped[column].mean()
        board[f"{column}_std"] = grouped[column].std(ddof=1)
    spread = pooled_seed_std(runs["top1"], runs["label"])
    board["rank_score"] = board["top1_mean"] - (0 if math.isnan(spread) else spread / np.sqrt(board["n_seeds"]))
    board = board.sort_values(["rank_score", "gflops_mean"], ascending=[False, True])
    board.insert(0, "rank", board["rank_score"].rank(method="min", ascending=False).astype(int))
    best = board.index[0]
    tests = {label: tie_with_best(grouped.get_group(best), grouped.get_group(label), seed) for label in board.index}
    board["tie_test"] = [("best" if label == best else tests[label][0]) for label in board.index]
    board["p_value"] = [math.nan if label == best else tests[label][1] for label in board.index]
    board["tied_with_best"] = [
        label == best or p >= ALPHA for label, p in zip(board.index, board["p_value"], strict=True)
    ]
    return board.rename_axis("backbone").reset_index()


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


def domain_tables(boards: dict[str, pd.DataFrame], settings: dict[str, dict]) -> dict[str, pd.DataFrame]:
    """Average rank per domain and overall, one table per group of settings that differ only in the dataset."""
    groups: dict[str, dict[str, pd.DataFrame]] = defaultdict(dict)
    for key, board in boards.items():
        setting = settings[key]
        group = {k: v for k, v in setting.items() if k not in ("dataset", "domain", "resolution")}
        default = setting["resolution"].endswith("(default)")
        group["resolution"] = "default" if default else setting["resolution"]
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


RANKING_KEY = ["dataset_fingerprint", "weights", "resolution", "train_fraction", "shots", "backbone"]


def read_rankings(paths: list[Path]) -> pd.DataFrame:
    """rank.py's tables, one row per (data, weights, resolution, training data size, backbone); a later file wins."""
    tables = []
    for path in paths:
        try:
            tables.append(pd.read_csv(path))
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise UserError(f"--rankings {path} cannot be read ({err}); pass CSVs written by rank.py.") from err
        if not {*RANKING_KEY, *PREDICTORS} <= set(tables[-1].columns):
            raise UserError(
                f"--rankings {path} is not a table written by this version of rank.py (it lacks some of the columns "
                f"{', '.join(RANKING_KEY)}); rerun rank.py to get one."
            )
    if not tables:
        return pd.DataFrame()
    return pd.concat(tables).drop_duplicates(RANKING_KEY, keep="last")


def predicted_ranking(
    board: pd.DataFrame, setting: dict, fingerprint: str, rankings: pd.DataFrame
) -> tuple[pd.DataFrame, str]:
    """The leaderboard with each score's predicted rank beside the measured one, and how well each predicted: only
    from a ranking of the same data, weights, resolution and training subset."""
    if rankings.empty or setting.get("finetune", "full") != "full" or setting["protocol"] != "val":
        return board, ""
    size = setting["resolution"].split(" ")[0]
    shots = setting.get("shots", SETTING_DEFAULTS["shots"])
    match = rankings[
        (rankings["dataset_fingerprint"] == fingerprint)
        & (rankings["weights"] == setting["weights"])
        & (rankings["resolution"] == size)
        & np.isclose(rankings["train_fraction"], setting.get("train_fraction", SETTING_DEFAULTS["train_fraction"]))
        & (rankings["shots"].isna() if shots is None else rankings["shots"] == shots)
    ].set_index("backbone")
    if match.empty:
        return board, ""
    measured = board.set_index("backbone")["top1_mean"]
    lines = []
    for column, heading in PREDICTORS.items():
        ranks = match[column].reindex(board["backbone"]).rank(ascending=False, method="min")  # among these rows
        board[f"{column}_predicted_rank"] = ranks.to_numpy()
        result = agreement(match[column], measured)
        if result:
            lines.append(
                f"{heading}: Kendall's tau {result['kendall_tau']:+.2f} over {result['backbones']} backbones, first "
                f"pick {result['pick']}, regret {result['regret']:.2f} top-1 points."
            )
    return board, "Predicted by rank.py before fine-tuning: " + " ".join(lines) if lines else ""


# ----------------------------------------------------------------------------------------------- writing
def describe(setting: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in setting.items())


def slug(setting: dict) -> str:
    text = "-".join(str(v) for k, v in setting.items() if k != "domain")
    return re.sub(r"[^A-Za-z0-9.=]+", "-", text).strip("-")


def number(value: float, decimals: int) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{decimals}f}"


def mean_std(board: pd.DataFrame, column: str, decimals: int) -> list[str]:
    return [
        number(mean, decimals) + (f" ± {number(std, decimals)}" if std > 0 else "")  # NaN (one seed) is not > 0
        if not math.isnan(mean)
        else ""
        for mean, std in zip(board[f"{column}_mean"], board[f"{column}_std"], strict=True)
    ]


def markdown_table(columns: dict[str, list]) -> str:
    headings = list(columns)
    lines = ["| " + " | ".join(headings) + " |", "|" + "|".join(" --- " for _ in headings) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in zip(*columns.values(), strict=True)]
    return "\n".join(lines)


def leaderboard_markdown(board: pd.DataFrame, metrics: tuple = METRICS) -> str:
    columns = {
        "rank": board["rank"].tolist(),
        "backbone": board["backbone"].tolist(),
        "seeds": [f"{seeds} ({n})" for seeds, n in zip(board["seeds"], board["n_seeds"], strict=True)],
    }
    for column, heading, decimals in metrics:
        columns[heading] = mean_std(board, column, decimals)
    columns["params M"] = [number(v, 1) for v in board["params_m"]]
    for column, heading in PREDICTORS.items():
        if f"{column}_predicted_rank" in board:
            columns[f"{heading} rank"] = [number(v, 0) for v in board[f"{column}_predicted_rank"]]
    columns["tied with best"] = [
        tie_word(test, tied, p)
        for test, tied, p in zip(board["tie_test"], board["tied_with_best"], board["p_value"], strict=True)
    ]
    columns["tie test"] = ["" if test == "best" else test for test in board["tie_test"]]
    return markdown_table(columns)


def tie_word(test: str, tied: bool, p: float) -> str:
    """'best', 'yes'/'no' with the p-value, or 'untested' where no test could be made (never read as 'no')."""
    if test == "best":
        return "best"
    if math.isnan(p):
        return "untested"
    return f"{'yes' if tied else 'no'} (p = {p:.3f})"


def recommendation(board: pd.DataFrame) -> str:
    best = board.iloc[0]
    tied = board[board["tied_with_best"]]
    cheapest = tied.sort_values(["gflops_mean", "latency_ms_batch1_mean"]).iloc[0]
    calibrated = board.sort_values("ece_mean").iloc[0]
    text = f"**{best['backbone']}** is the most accurate ({best['top1_mean']:.2f}% top-1 over seed(s) {best['seeds']})."
    if len(tied) > 1:
        others = ", ".join(tied["backbone"].iloc[1:])
        text += f" Statistically tied with it (α = {ALPHA}): {others}."
        if cheapest["backbone"] != best["backbone"]:
            text += (
                f" The cheapest of the tied is **{cheapest['backbone']}**: {cheapest['gflops_mean']:.3f} GFLOPs and "
                f"{cheapest['latency_ms_batch1_mean']:.1f} ms at batch 1, against {best['gflops_mean']:.3f} GFLOPs "
                f"and {best['latency_ms_batch1_mean']:.1f} ms, for {cheapest['top1_mean']:.2f}% top-1."
            )
        else:
            text += " It is also the cheapest of them in GFLOPs."
    elif board["p_value"].iloc[1:].notna().any():
        text += " No other backbone is statistically tied with it."
    untested = board.loc[board["p_value"].isna() & (board["tie_test"] != "best"), "backbone"].tolist()
    if untested:
        text += f" Not tested against it (no seed, or no test outputs, in common): {', '.join(untested)}."
    text += (
        f" Best calibrated: **{calibrated['backbone']}** (ECE {calibrated['ece_mean']:.4f}"
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
            axis.set_xscale("log")
        axis.set_xlabel(heading)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test top-1 (%)")
    axes[0].legend(fontsize=8)
    figure.suptitle(textwrap.fill(title, 120), fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


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
        axis.set_xscale("log")
        axis.set_xlabel("training images (validation not counted)")
        axis.set_ylabel("test top-1 (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        axis.set_title(textwrap.fill(title, 80), fontsize=9)
        figure.tight_layout()
        name = f"learning-curve-{slug(json.loads(key))}.png"
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        sections.append(f"## Learning curves ({title})\n\n![learning curves]({name})")
    return sections


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


def prepare_out(out: Path) -> None:
    """A new folder, or one holding an earlier report; anything else there belongs to the user and is refused."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "report.md").exists())):
        raise UserError(
            f"--out {out} exists and does not hold an earlier report (no report.md); writing there could overwrite "
            "your files. Choose a new or empty folder for --out."
        )
    out.mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs, skipped = find_runs(args.runs)
    if not runs:
        reasons = "; ".join(f"{path}: {reason}" for path, reason in skipped) or "nothing found"
        raise UserError(
            f"No finished runs under --runs {' '.join(map(str, args.runs))} ({reasons}). A finished run is a folder "
            "with the metrics.json that a dataset script writes at the end; point --runs at the folders given to "
            "--out (runs/ by default)."
        )
    rankings = read_rankings(args.rankings)
    prepare_out(args.out)
    table, repeats = runs_table(runs)
    skipped += repeats
    sections, boards, settings = (
        [f"# Backbone comparison\n\n{len(table)} runs from {', '.join(map(str, args.runs))}."],
        {},
        {},
    )
    all_boards = []
    for key, runs_of_setting in table.groupby("setting", sort=True):
        setting = json.loads(key)
        fingerprint = runs_of_setting["dataset_fingerprint"].iloc[0]
        board, predicted = predicted_ranking(leaderboard(runs_of_setting, args.seed), setting, fingerprint, rankings)
        boards[key], settings[key] = board, setting
        folder = args.out / slug(setting)
        folder.mkdir(exist_ok=True)
        title = describe(setting)
        board.to_csv(folder / "leaderboard.csv", index=False)
        all_boards.append(board.assign(**{k: v for k, v in setting.items()}))
        markdown = leaderboard_markdown(board)
        (folder / "leaderboard.md").write_text(f"# {title}\n\n{markdown}\n")
        plot_cost(board, title, folder / "cost.png")
        kappa = error_consistency(runs_of_setting, board["backbone"].tolist())
        kappa.to_csv(folder / "error_consistency.csv")
        plot_kappa(kappa, title, folder / "error_consistency.png")
        advice = recommendation(board)
        sections.append(
            f"## {title}\n\n{markdown}\n\nMean ± sample std over seeds (their number in brackets). Ranked by mean "
            "top-1 less one standard error (the pooled seed-to-seed std over the root of the row's seed count), so "
            "fewer seeds rank lower at equal means. Ties with the best: a paired t-test over seeds where the two share "
            "two or more, otherwise a paired bootstrap over the shared seed's test images "
            f"({BOOTSTRAP_RESAMPLES:,} resamples); tied when p ≥ {ALPHA}; 'untested' where no seed (or no test "
            f"outputs) are shared.\n\n{advice}\n\n{predicted}\n\n"
            f"![accuracy against cost]({folder.name}/cost.png)\n"
            f"![error consistency]({folder.name}/error_consistency.png)"
        )
        print(f"\n{title}\n{leaderboard_markdown(board, tuple(m for m in METRICS if m[0] in SHOWN))}\n{advice}")
        if predicted:
            print(predicted)
    pd.concat(all_boards).to_csv(args.out / "leaderboard.csv", index=False)
    sections += learning_curves(table, args.out)
    for name, domains in domain_tables(boards, settings).items():
        columns = {"backbone": domains["backbone"].tolist()}
        columns.update(
            {c: [number(v, 2) for v in domains[c]] for c in domains.columns if c not in ("backbone", "datasets")}
        )
        columns["datasets"] = domains["datasets"].tolist()
        text = markdown_table(columns)
        sections.append(f"## Average rank per domain ({name})\n\n{text}")
        domains.to_csv(args.out / f"domains-{slug({'group': name})}.csv", index=False)
        print(f"\nAverage rank per domain ({name})\n{text}")
    if skipped:
        listing = "\n".join(f"- {path}: {reason}" for path, reason in skipped)
        sections.append(f"## Skipped\n\n{listing}")
        print(f"\nSkipped {len(skipped)}:\n{listing}")
    (args.out / "report.md").write_text("\n\n".join(sections) + "\n")
    print(f"\nReport written to {args.out / 'report.md'}")


if __name__ == "__main__":
    run_cli(main)
