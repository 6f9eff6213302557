"""Hyper-parameter search over a training job's config with Optuna (see :mod:`enclap.tuning`).

    enclap-tune --space cfg/tune/clap_tiny.yaml [--storage sqlite:///runs/tune/study.db] [--study NAME] [--trials N]
    enclap-tune --space cfg/tune/clap_tiny.yaml --report      # the results table and the best config, without running

Rerun the same command to continue an interrupted search (a trial stopped by Ctrl-C / SIGTERM resumes
from its checkpoint); run it in several terminals or on several machines sharing ``--storage`` to search
in parallel. ``--trials`` is the study's total of finished trials (COMPLETE, PRUNED, or diverged).

Exit codes: 0 the study has its trials (or the rest are running in other processes), 2 a configuration,
data or storage error, 130 / 143 stopped by SIGINT / SIGTERM (rerun to resume).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from ..errors import ConfigError, EnclapError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enclap-tune",
        description="Hyper-parameter search with Optuna: trials run the training job of a search-space file "
        "(cfg/tune/*.yaml), pruned on its validation metric, stored in an Optuna storage. Rerun to resume.",
    )
    parser.add_argument("--space", required=True, help="search-space YAML (job, base config, metric, sampler, pruner, space)")
    parser.add_argument("--storage", help="Optuna RDB URL (default: the file's storage, else sqlite:///<output_dir>/study.db)")
    parser.add_argument("--study", help="study name (default: the file's study_name, else its file name)")
    parser.add_argument("--trials", type=int, help="finished trials the study should have in total (default: the file's trials)")
    parser.add_argument("--report", action="store_true", help="print the results table and the best config; run nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (see the module docstring)."""
    from .. import tuning

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        spec = tuning.apply_command_line(tuning.load_search_spec(args.space), storage=args.storage, study_name=args.study)
        if args.report:
            study = tuning.open_study(spec, create=False)
            files = tuning.write_reports(study, spec)
            print(files["markdown"].read_text(), end="")
            if "best_config" in files:
                print(f"\nbest config ({files['best_config']}):\n")
                print(files["best_config"].read_text(), end="")
            else:
                print("\nno trial has completed yet: no best config")
            return 0
        from . import quiet_model_loading

        quiet_model_loading()
        logging.getLogger("accelerate").setLevel(logging.WARNING)
        outcome = tuning.run_search(spec, trials=args.trials)
    except tuning.TrialInterrupted as err:
        print(f"enclap-tune: {err}; it is re-enqueued: rerun the same command to resume the search", file=sys.stderr)
        return {"SIGTERM": 143}.get(err.signal or "", 130)
    except KeyboardInterrupt:
        print("enclap-tune: aborted; the running trial is re-enqueued: rerun the same command to resume", file=sys.stderr)
        return 130
    except ConfigError as err:
        print(f"enclap-tune: configuration error: {err}", file=sys.stderr)
        return 2
    except EnclapError as err:
        print(f"enclap-tune: {err}", file=sys.stderr)
        return 2
    best = (f"best trial {outcome.best_trial}: {spec.metric}={outcome.best_value:.6g}" if outcome.best_trial is not None
            else "no trial completed")
    more = f" ({outcome.running_elsewhere} running in other processes)" if outcome.finished < outcome.target else ""
    print(f"enclap-tune: study {spec.study_name}: {outcome.finished} of {outcome.target} trials finished{more}; {best}")
    for name, path in outcome.files.items():
        print(f"  {name}: {path}")
    return 0


__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
