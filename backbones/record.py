"""The run record, defined once: what a finished run's `metrics.json` must hold, which of it the results table
carries, the scores a comparison averages, what rank.py's table holds, and which configuration keys only say where
or how a run happened.
The writer (`finetune.py`), `report.py`, `rank.py` and the tests all read it from here."""

from __future__ import annotations

# the results table, one row a finished run
RESULT_COLUMNS = (
    "finished",
    "dataset",
    "model",
    "weights",
    "protocol",
    "seed",
    "image_size",
    "num_classes",
    "n_train",
    "n_val",
    "n_test",
    "train_fraction",
    "shots",
    "finetune",
    "bs",
    "lr",
    "sgd_lr",
    "weight_decay",
    "max_epochs",
    "patience",
    "sgd_patience",
    "top1",
    "top5",
    "balanced_accuracy",
    "macro_f1",
    "nll",
    "ece",
    "epochs",
    "train_seconds",
    "params",
    "gflops",
    "latency_ms_batch1",
    "device",
    "out",
)

# the version of a run's metrics.json, config.json and robustness.json, written in each as "schema": raised only
# when a field changes meaning or goes away. A reader refuses a newer schema (it cannot know what the fields mean)
# and reads every older one.
SCHEMA = 1

# fields added to metrics.json after its first release, with what a run written before stands for: a metric added
# later goes here, never into REQUIRED, so that no finished run is orphaned by it
ADDED_LATER = {"ece_temperature_scaled": None, "peak_memory_mb": None, "best_selection_top1": None}

# what report.py needs of a metrics.json (a run without one of these is listed as unreadable and skipped)
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
    "params",
    "gflops",
    "latency_ms_batch1",
    "throughput_images_per_s",
    "train_seconds",
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

# rank.py's table, one row per backbone and setting: its scores, each the higher the better (column, name, unit,
# decimals), and the columns that identify a row (a later table's row with the same key replaces an earlier one)
RANKING_SCORES = (
    ("logme", "LogME", "", 4),
    ("knn", "kNN", " top-1 %", 2),
    ("linear", "linear probe", " top-1 %", 2),
    ("leep", "LEEP", "", 4),
)
RANKING_KEY = ("dataset_fingerprint", "weights", "resolution", "train_fraction", "shots", "probe_images", "backbone")
RANKING_ADDED_LATER = {"probe_images": float("nan")}  # blank: from every training image (all a ranking had before)
RANKING_TEXT = ("dataset_fingerprint", "weights", "resolution", "backbone")  # read as text: a hash of digits stays one

# What each key of a run's configuration (a run flag, by its argparse name) says about the run, declared once.
#   where:   where its files are or how it was computed, not what it measured: resuming may change it, comparisons
#            ignore it
#   run:     which run it is within a comparison: its backbone, seed, or a column of its setting
#   setting: the question its numbers answer; runs of different settings are never averaged or ranked together
#   split:   which images went to which split (a checkpoint evaluated, or a run resumed, must agree on it)
# Every other key is training configuration: two runs that differ in one are different configurations.
ROLES: dict[str, frozenset[str]] = {
    **dict.fromkeys(
        (
            "resume",
            "workers",
            "cache",
            "device",
            "results",
            "download",
            "data",
            "out",
            "log_every",
            "config",
            "tensorboard",
        ),
        frozenset({"where"}),
    ),
    **dict.fromkeys(("model", "weights", "image_size", "compile", "eval_only"), frozenset({"run"})),
    **dict.fromkeys(("seed", "protocol"), frozenset({"run", "split"})),
    **dict.fromkeys(("train_fraction", "shots"), frozenset({"setting", "split"})),
    "finetune": frozenset({"setting"}),
    **dict.fromkeys(("val_fraction", "test_size"), frozenset({"split"})),
}
SETTING_DEFAULTS = {"train_fraction": 1.0, "shots": None, "finetune": "full"}  # what runs that predate the flag ran


def keys_with(*roles: str) -> frozenset[str]:
    """The configuration keys that play any of `roles`."""
    return frozenset(key for key, played in ROLES.items() if played & set(roles))


WHERE_AND_HOW = keys_with("where")
SPLIT_FLAGS = keys_with("split")
NOT_CONFIGURATION = keys_with("where", "run", "setting")


def config_differences(saved: dict, now: dict) -> list[str]:
    """'KEY X there, Y now' for every configuration key whose value differs, those saying only where or how a run
    happened left out: what makes a saved run another run than the one asked for now."""
    return [
        f"{key} {saved.get(key)!r} there, {now.get(key)!r} now"
        for key in sorted(set(saved) | set(now))
        if key not in WHERE_AND_HOW and saved.get(key) != now.get(key)
    ]


# robustness.py's analysis of a run, beside its metrics.json
FAMILIES = ("noise", "blur", "weather", "digital")  # ImageNet-C's groups of corruptions, in its order
# Invariance, after Vishniakov et al. (ICML 2024), on whole images: each transformation's unit and amounts. The
# clean images are amount 1 (scale, resolution) or 0 (shift, rotation, hflip).
INVARIANCE = {
    "scale": ("zoom factor, cropped or padded (black) back to size", (0.5, 0.75, 1.25, 1.5, 2.0)),
    "shift": ("pixels in both axes (4 to 64 at 224 px, scaled to the run's size), black fill", (4, 8, 16, 32, 64)),
    "rotation": ("degrees anticlockwise, black corners", (5, 10, 15, 30, 45, 90)),
    "hflip": ("0: as is, 1: mirrored left to right", (1,)),
    "resolution": ("share of the side kept: resized down, then back up", (0.75, 0.5, 0.375, 0.25)),
}
