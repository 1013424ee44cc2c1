"""binsight command line: get data, train and cache models, count and reconcile bins.

    python train.py download --n 500 --out data/abid
    python train.py prepare --data ../shared/abid-sample
    python train.py --help
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import DEFAULT_SAMPLE_SIZE, DOWNLOAD_HINT, MAX_COUNT, find_data_dir

if TYPE_CHECKING:
    from core.evaluation.metrics import SplitFigures
    from core.store.records import Experiment


def data_dir(arg: str | None) -> Path:
    """The --data folder, else the default one; a clear exit if there is none."""
    found = Path(arg) if arg else find_data_dir()
    if found is None:
        sys.exit(f"No data folder found. Set ABID_DATA, pass --data DIR, or download some photos:\n  {DOWNLOAD_HINT}")
    return found


def cmd_download(args: argparse.Namespace) -> None:
    from core.data.download import download, first_ids

    ids = args.ids or first_ids(args.n, start=args.start)
    report = download(ids, Path(args.out), base_url=args.base_url, workers=args.workers)
    print(report.summary())
    if report.missing:
        print(f"  not in the bucket (ABID's ids have gaps): {', '.join(report.missing[:20])}")
    for image_id, reason in list(report.failed.items())[:20]:
        print(f"  {image_id}: {reason}")
    if report.failed:
        sys.exit(1)


def cmd_prepare(args: argparse.Namespace) -> None:
    from core.data.dataset import prepare_dataset

    dataset = prepare_dataset(data_dir(args.data), image_size=args.size, max_count=args.max_count,
                              store_root=args.store, recheck=args.recheck)
    print(json.dumps(dataset.summary(), indent=2))
    for row in dataset.collection.skipped.head(20).itertuples():
        print(f"skipped {row.path}: {row.reason}")
    if args.export_split:
        dataset.table[["image_id", "split"]].to_csv(args.export_split, index=False)
        print(f"split of {len(dataset.table)} photos -> {args.export_split}")


def recheck_if_asked(args: argparse.Namespace, root: Path) -> None:
    """--recheck: stat every photo of `root` and re-read the changed ones first, so the training's
    own load sees files rewritten in place too (see `core.data.index`)."""
    if args.recheck:
        from core.data.dataset import recheck_collection

        recheck_collection(root, args.store)


def recounts_if_asked(args: argparse.Namespace, store) -> Path | None:
    """--with-recounts: the store's recounts collection, brought up to date (None without the flag)."""
    if not args.with_recounts:
        return None
    from core.reconcile.recount_labels import write_recounts_collection

    folder = write_recounts_collection(store)
    if folder is None:
        print("--with-recounts: no photo has been recounted to a number yet; training on the data alone",
              file=sys.stderr)
    return folder


def curation_if_asked(args: argparse.Namespace, store, root: Path) -> Path | None:
    """--curated: the data's curation file (the Suspect-labels decisions), brought up to date."""
    if not args.curated:
        return None
    from core.reconcile.suspects import write_curation

    found = write_curation(store, root)
    if found is None:
        print(f"--curated: no label of {root} has been reviewed yet; training on the labels as they are",
              file=sys.stderr)
    return found


def cmd_classical(args: argparse.Namespace) -> None:
    import time

    from core.classical import ClassicalConfig, results_table, suite_experiments, train_classical
    from core.store.database import Store

    def json_arg(flag: str, text: str | None):
        try:
            return None if text is None else json.loads(text)
        except json.JSONDecodeError as err:
            sys.exit(f"{flag} must be JSON ({err}): {text!r}")

    store, root, started = Store(args.store), data_dir(args.data), time.perf_counter()
    recheck_if_asked(args, root)
    options = {"folds": args.folds, "selection": args.selection, "image_size": args.image_size, "cv": args.cv,
               "train_limit": args.train_limit}
    try:
        if args.suite:
            configs = [config.with_overrides(options) for config in suite_experiments(args.suite)]
        else:
            configs = [ClassicalConfig.from_dict({
                "features": args.features, "model": args.model, "pca": args.pca, "name": args.name,
                "feature_params": json_arg("--feature-params", args.feature_params),
                "grid": json_arg("--grid", args.grid), **options})]
        recounts, curation = recounts_if_asked(args, store), curation_if_asked(args, store, root)
        ids = [train_classical(root, config, store, n_jobs=args.jobs, progress=not args.quiet, recounts=recounts,
                               curation=curation) for config in configs]
    except ValueError as err:
        sys.exit(str(err))
    table = results_table(store, ids)
    print(table.drop(columns=["id"]).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    for exp_id in ids:
        exp = store.experiment(exp_id)
        print(f"{exp.name} ({exp_id}), calibration: {exp.calibration.method}")
        print_figures(exp)
    print(f"wall time {time.perf_counter() - started:.0f} s")


def counter_for(name: str, store_root: Path | None, data: Path | None = None, prior: str = "uniform"):
    """A counter for --model from the --store (default store when None), under --prior, or a clear exit.

    `best` is chosen on validation among the models trained on the data in use
    (`core.store.database.data_in_use`: `data` if models were trained on it, else the default data folder,
    else the newest model's data); the choice and its rule are said on stderr."""
    from core.counting.service import ModelNotFound, load_counter
    from core.store.database import Store, best_rule, data_in_use

    store = Store(store_root)
    trained_on = data_in_use(store.experiments("finished"), data)
    try:
        counter = load_counter(name, store, data_root=trained_on, prior=prior)
    except ModelNotFound as err:
        sys.exit(str(err))
    if name == "best":
        members = f" of {counter.exp.recipe_notes}" if counter.exp.family == "ensemble" else ""
        print(f"model: {counter.name}{members} ({counter.exp_id}); {best_rule(trained_on)}", file=sys.stderr)
    return counter


def cmd_count(args: argparse.Namespace) -> None:
    counter = counter_for(args.model, args.store, prior=args.prior)
    print(f"probabilities under the {args.prior} prior; the count is the most probable one", file=sys.stderr)
    results = counter.count_batch(args.images)
    if batch := next((r.batch for r in results if not isinstance(r, Exception) and r.batch is not None), None):
        print(batch.summary(counter.exp.count_label), file=sys.stderr)
    for path, result in zip(args.images, results, strict=True):
        if isinstance(result, Exception):
            print(f"{path}: cannot count: {result}")
        else:
            probs = ", ".join(f"{counter.exp.count_label(k)}: {p:.1%}" for k, p in enumerate(result.probs))
            print(f"{path}: {counter.exp.count_label(result.count)} items (confidence {result.confidence:.1%}, "
                  f"expected {result.expected:.2f}; {probs})")


def cmd_export(args: argparse.Namespace) -> None:
    from core.cnn.onnx_export import export_ensemble, export_experiment
    from core.counting.service import ModelNotFound, model_folders, resolve_experiment
    from core.store.database import Store

    store = Store(args.store)
    try:
        exp = resolve_experiment(store, args.model)
        if exp.family == "ensemble":
            members = [store.experiment(member_id) for member_id in exp.members]
            manifest = export_ensemble(exp, [(m, model_folders(store, m)) for m in members], args.out)
        else:
            manifest = export_experiment(exp, model_folders(store, exp), args.out)
    except (ModelNotFound, ValueError, KeyError) as err:
        sys.exit(str(err))
    written = json.loads(manifest.read_text())
    what = f"{len(written['members'])} members' ONNX graphs" if "members" in written else \
        f"{len(written['graphs'])} ONNX graph{'s' if len(written['graphs']) > 1 else ''}"
    print(f"{exp.name} ({exp.id}): {what}, calibration and manifest -> {manifest.parent}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from core.counting.service import evaluate_folder
    from core.store.database import Store

    root = data_dir(args.data)
    try:
        counter = counter_for(args.model, args.store, root, args.prior)
        report = evaluate_folder(counter, root, Store(args.store))
    except ValueError as err:
        sys.exit(str(err))
    if report.batch is not None:
        print(report.batch.summary(counter.exp.count_label), file=sys.stderr)
    print(json.dumps(report.to_dict(), indent=2))


def cmd_screen(args: argparse.Namespace) -> None:
    from core.analysis.screening import markdown, parse_run, screen, screening_table
    from core.counting.service import ModelNotFound
    from core.evaluation.metrics import verdict
    from core.store.database import Store

    store = Store(args.store, create=False)
    try:
        runs = [screen(store, experiments, args.split, label)
                for label, experiments in (parse_run(text, store) for text in args.runs)]
    except (ModelNotFound, ValueError) as err:
        sys.exit(str(err))
    table = screening_table(runs, per_source=not args.overall_only)
    print(markdown(table))
    for run in runs[1:] if args.paired else []:
        comparison, _, photos = run.versus(runs[0])
        print(f"\n{run.label} against {runs[0].label}, paired on {photos} photos of 0..5 items:")
        for metric in comparison:
            print(f"- {verdict(comparison, run.label, runs[0].label, metric)}")
    if args.csv:
        table.to_csv(args.csv, index=False)


def cmd_learning_curve(args: argparse.Namespace) -> None:
    from core.analysis.learning_curve import ANCHORS, fits_table, learning_curve, train_learning_curve
    from core.analysis.screening import markdown
    from core.store.database import Store

    store, root = Store(args.store), data_dir(args.data)
    try:
        shares = [float(s) for s in args.fractions.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
        ids = train_learning_curve(root, args.preset, store, shares, seeds, args.sources.split(","),
                                   progress=not args.quiet)
        recounts = recounts_if_asked(args, store)
        if recounts is not None:
            train_learning_curve(root, args.preset, store, (1.0,), recounts=recounts, progress=not args.quiet)
    except ValueError as err:
        sys.exit(str(err))
    curve = learning_curve(store, store.experiment(ids[0]))
    print(f"{args.preset} on {root}: validation photos, each point scored on the same ones\n")
    print(markdown(curve.table()))
    print("\nEach share against the one before it, paired on the same photos of 0..5 items:")
    for step in curve.steps:
        print(f"- {step.verdict}")
    print("\nAccuracy on the paper's task against log(training photos), carried out to ABID's size:\n")
    print(markdown(fits_table(curve)))
    print("\nAnchors: " + "; ".join(f"{a.label}: {a.accuracy:.3f} at {a.photos:,} photos" for a in ANCHORS))
    for point in curve.with_recounts:
        fit = curve.fit(point.train_source, "all")
        expected = f" (the curve: {fit.at(point.photos):.3f} at that many photos)" if fit else ""
        print(f"With {point.experiment.recounted_photos:,} recounted photos ({point.photos:,} training photos): "
              f"accuracy {point.accuracy():.3f}{expected}")


def cmd_ensemble(args: argparse.Namespace) -> None:
    from core.store.database import Store, best_rule, selection_score
    from core.training.ensemble import build_ensemble, member_line, run_name

    store, root = Store(args.store), data_dir(args.data)
    try:
        exp = store.experiment(build_ensemble(store, root, args.max_rounds))
    except ValueError as err:
        sys.exit(str(err))
    members = {m: store.experiment(m) for m in exp.members}
    print(f"{exp.name} ({exp.id}): {member_line(exp.members, {i: run_name(e) for i, e in members.items()})}")
    for member_id, weight in exp.members.items():
        print(f"  x{weight} {run_name(members[member_id])} ({member_id}): validation balanced accuracy "
              f"{selection_score(members[member_id]):.3f}")
    val, test = exp.val_metrics, exp.metrics
    assert val is not None and test is not None  # build_ensemble records both
    print(f"validation balanced accuracy, cross-fitted (chosen on one half, scored on the other): "
          f"{val.balanced_accuracy:.3f}; test: {test.balanced_accuracy:.3f}, accuracy on the paper's task "
          f"{test.paper_task.accuracy if test.paper_task else float('nan'):.3f}, ECE {test.ece:.3f}")
    chosen = store.best(root)
    print(f"best is {'now this ensemble' if chosen == exp.id else f'still {chosen}'}: {best_rule(root)}")


def cmd_reconcile(args: argparse.Namespace) -> None:
    from core.reconcile.inventory import RECONCILE_PRIOR, budget_size, check_threshold, records_from_folder, totals_line

    if args.budget is not None:
        try:
            budget_size(args.budget, 0)
        except ValueError as err:
            sys.exit(f"--budget: {err}")
    try:
        check_threshold(args.threshold)
    except ValueError as err:
        sys.exit(f"--threshold: {err}")
    root = data_dir(args.data)
    counter = counter_for(args.model, args.store, root, RECONCILE_PRIOR)
    if args.simulate_errors is not None:
        return simulate_audit(counter, args)
    records, images = records_from_folder(root, args.records)
    from core.reconcile.batches import BatchSink, batch_settings, finish_batch, resume_or_open, write_batch_report
    from core.reconcile.stream import reconcile_into, records_digest, skipped_records
    from core.store.database import Store

    store = Store(args.store)
    settings = {**batch_settings(counter, args.prior_wrong, args.threshold, args.budget),  # what the batch keeps
                "precision": counter.precision}
    # the batch is the one place judged bins go, chunk by chunk: an interrupted run resumes where it stopped
    batch_id, stored = resume_or_open(store, model=counter.exp_id, model_name=counter.name,
                                      data_root=str(root.resolve()),
                                      settings={**settings, "records": records_digest(records)})
    if stored:
        print(f"resuming: {len(stored)} of {len(records)} bins already judged (batch {batch_id})")
    if repeated := int(records["image"].duplicated().sum()):
        print(f"{repeated} records name a bin named before: the first record of each bin is judged")
    reconcile_into(BatchSink(store, batch_id, images), counter, records, images, skipped_records(records, stored),
                   prior_wrong=args.prior_wrong, progress=True)
    totals = finish_batch(store, batch_id)
    write_batch_report(store, batch_id, args.out, settings={"model": counter.exp_id, "model_name": counter.name,
                                                            **settings})
    print(f"{totals_line(totals)} -> {args.out}")
    print(f"model {counter.name} ({counter.exp_id}, counting in {counter.served_by}); {settings['rule']}")
    print(f"batch: {batch_id}")


def cmd_recount_export(args: argparse.Namespace) -> None:
    from core.reconcile.recounts import adjustments
    from core.store.database import Store

    try:
        table = adjustments(Store(args.store), args.batch)
    except KeyError as err:
        sys.exit(str(err.args[0]))
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"{len(table)} adjustments of batch {args.batch} -> {args.out}")
    else:
        table.to_csv(sys.stdout, index=False)


def cmd_recount_import(args: argparse.Namespace) -> None:
    import getpass

    from core.reconcile.recounts import import_recounts
    from core.store.database import Store

    try:
        report = import_recounts(Store(args.store), Path(args.file), who=args.who or getpass.getuser(),
                                 name=Path(args.file).name)
    except (OSError, ValueError) as err:
        sys.exit(f"{args.file}: {err}")
    for line in report.lines(Path(args.file).name):
        print(line)
    if report.refused:
        sys.exit(1)


def cmd_store_backup(args: argparse.Namespace) -> None:
    from core.store.database import Store

    store = Store(args.store)
    target = store.backup(args.file)
    print(f"{store.path} -> {target} (consistent copy; restore: stop the dashboard and training, then copy it "
          f"back over {store.path} and delete {store.path.name}-wal and {store.path.name}-shm)")


def simulate_audit(counter, args: argparse.Namespace) -> None:
    """What a recount budget buys on a labelled folder, and on which photos (`core.reconcile.inventory`)."""
    from core.reconcile.inventory import audit_folder, audit_table
    from core.store.database import Store

    if args.records:
        sys.exit("--simulate-errors uses the folder's own labels as the true counts; leave out --records")
    if not 0 <= args.simulate_errors <= 1:
        sys.exit(f"--simulate-errors is a share of records in [0, 1], got {args.simulate_errors}")
    root = data_dir(args.data)
    try:
        audit = audit_folder(counter, root, Store(args.store), args.simulate_errors, args.prior_wrong, args.seed,
                             args.threshold)
    except ValueError as err:
        sys.exit(str(err))
    curve = audit.curve
    print(f"audit value of {counter.name} ({counter.exp_id}) on {curve.n} labelled photos in {root}, scope: "
          f"{audit.scope} ({audit.left_out} left out: unreadable, or a count above {counter.num_classes - 1}); "
          f"{curve.wrong} records ({args.simulate_errors:.0%} asked) moved by 1 or 2 items, seed {args.seed}")
    print(audit_table(curve).to_string(index=False, formatters={"wrong records caught": "{:.0%}".format}))
    print(f"ROC AUC {curve.roc_auc:.3f}, average precision {curve.average_precision:.3f}")
    print(f"P(mismatch) >= {args.threshold:.2f} with a prior share of wrong records of {args.prior_wrong:.0%} flags "
          f"{curve.flagged} of {curve.n} bins ({curve.flagged / curve.n:.0%}); "
          f"{curve.flagged_precision:.0%} of them are wrong records, {curve.flagged_recall:.0%} of the wrong "
          "records are flagged")


def parse_overrides(pairs: list[str] | None) -> dict:
    """`field=value` pairs; values are JSON where they parse (numbers, lists, objects), else text."""
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"--set expects FIELD=VALUE, got {pair!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def cmd_cnn(args: argparse.Namespace) -> None:
    import os

    from core.cnn import train_cnn
    from core.store.database import Store

    store, root = Store(args.store), data_dir(args.data)
    recheck_if_asked(args, root)
    exp_id = train_cnn(root, args.preset, store, parse_overrides(args.set), progress=not args.quiet,
                       cv=args.cv, recounts=recounts_if_asked(args, store),
                       curation=curation_if_asked(args, store, root))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    exp = store.experiment(exp_id)
    print(f"{exp_id}: {exp.model} ({exp.weights}) on {exp.device}")
    trained = f"best epoch {exp.best_epoch}" if exp.best_epoch else f"{exp.folds} folds"
    print(f"  {exp.train_seconds or 0:.0f} s training, {trained}, {exp.image_size} px, "
          f"calibration: {exp.calibration.method}")
    print_figures(exp)


def figures_line(label: str, m: SplitFigures) -> str:
    """Accuracy, balanced accuracy and RMSE with their 95% intervals, on one line."""
    from core.evaluation.metrics import headline_text

    accuracy, balanced, rmse = headline_text(m)
    ece = "" if m.ece is None else f"  ECE {m.ece:.3f}"
    return f"  {label:<12} n={m.n!s:<5} accuracy {accuracy}  balanced {balanced}  RMSE {rmse}{ece}"


def print_figures(exp: Experiment) -> None:
    """Selection figures (validation or out-of-fold) and test figures, with intervals, and per-count accuracy."""
    for label, m in (("validation", exp.val_metrics), ("out-of-fold", exp.cv_metrics), ("test", exp.metrics)):
        if m:
            print(figures_line(label, m))
    for label, m in (("out-of-fold", exp.cv_metrics), ("test", exp.metrics)):
        if m is not None and m.paper_task is not None:
            top = (exp.num_classes or 0) - 1 - int(exp.open_top)
            print(figures_line(f"{label}, the paper's task (answer among 0..{top})", m.paper_task))
    m = exp.cv_metrics or exp.metrics
    if m is None:
        return
    per_class = ", ".join(f"{exp.count_label(c)}: {'-' if a is None else f'{a:.2f}'}"
                          for c, a in enumerate(m.per_class_accuracy))
    print(f"  {'out-of-fold' if exp.cv_metrics else 'test'} accuracy per count: {per_class}")
    if m.open_class and exp.num_classes:
        recall = "-" if m.open_class.recall is None else f"{m.open_class.recall:.2f}"
        print(f"  (the product's figures above are on bins of 0..{exp.num_classes - 2} items, its answer "
              f"\"more than {exp.num_classes - 2}\" counting as wrong there; {m.open_class.n} bins of more: "
              f"recall of \"more than {exp.num_classes - 2}\" {recall})")


def cmd_lr_find(args: argparse.Namespace) -> None:
    import os

    from core.cnn import find_lr
    from core.store.database import Store

    store, root = Store(args.store), data_dir(args.data)
    recheck_if_asked(args, root)
    exp_id = find_lr(root, args.preset, store, parse_overrides(args.set), progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        curve = store.lr_curves(exp_id)[0]
        print(f"{exp_id}: {len(curve['lrs'])} steps from {curve['lrs'][0]:.1e} to {curve['lrs'][-1]:.1e}, "
              f"suggested lr {curve['suggested']:.2e}")


def cmd_suite(args: argparse.Namespace) -> None:
    import os

    from core.config import DEFAULT_DATA, INCOMPLETE
    from core.store.database import Store
    from core.training.suite import run_default_suite

    root = Path(args.data) if args.data else find_data_dir()
    resume = not args.data and not os.environ.get("ABID_DATA") and (DEFAULT_DATA / INCOMPLETE).exists()
    if root is None or resume:
        root = fetch_default_sample(args.sample_size, args.base_url)
        if root is None:
            return
    print(f"data: {root}")
    recheck_if_asked(args, root)
    run_default_suite(root, store=Store(args.store),
                      cnn_overrides=json.loads(args.cnn_overrides) if args.cnn_overrides else None,
                      classical_overrides=json.loads(args.classical_overrides) if args.classical_overrides else None)


DATA_HELP = "data folder (default: ABID_DATA, data/abid, ../shared/abid-sample)"


def shared_flags() -> dict[str, argparse.ArgumentParser]:
    """Parent parsers of the flags several commands share, each declared once."""
    from core.evaluation.priors import DEFAULT_PRIOR, PRIORS

    def parent() -> argparse.ArgumentParser:
        return argparse.ArgumentParser(add_help=False)

    flags = {name: parent() for name in ("data", "store", "recheck", "quiet", "model", "cv", "prior", "labels")}
    flags["data"].add_argument("--data", help=DATA_HELP)
    flags["store"].add_argument("--store", type=Path, metavar="DIR",
                                help="experiment store: database, models, image caches "
                                     "(default: BINSIGHT_STORE, else models/)")
    flags["recheck"].add_argument("--recheck", action="store_true",
                                  help="stat every photo, not only those in folders changed since the last load: "
                                       "sees files rewritten in place (without a rename)")
    flags["quiet"].add_argument("--quiet", action="store_true", help="no progress bars")
    flags["model"].add_argument("--model", default="best", help="experiment id or name, or 'best'")
    flags["cv"].add_argument("--cv", type=int, nargs="?", const=5, default=0, metavar="K",
                             help="cross-validate: K models on K folds of train+val (K defaults to 5), "
                                  "served as an ensemble")
    flags["prior"].add_argument("--prior", choices=PRIORS, default=DEFAULT_PRIOR,
                                help="the prior the probabilities shown are under: every count alike, ABID's natural "
                                     "count mix, or the mix of the photos given, estimated from them (EM pulled toward "
                                     "ABID's mix; every count alike where too few photos or an unsteady estimate, "
                                     "said on stderr); the count "
                                     f"is the most probable one (default {DEFAULT_PRIOR})")
    flags["labels"].add_argument("--with-recounts", action="store_true",
                                 help="add the photos people recounted (the store's recounts collection); a recount "
                                      "overrides the data's label of the same photo")
    flags["labels"].add_argument("--curated", action="store_true",
                                 help="train on the labels as reviewed on the Suspect-labels page (relabelled, "
                                      "excluded); validation and test figures keep every photo's original label")
    return flags


def presets_epilog() -> str:
    """One line per CNN preset (name and notes) for --help."""
    from core.cnn.recipes import PRESETS

    width = max(map(len, PRESETS))
    return "presets:\n" + "\n".join(f"  {name:<{width}}  {recipe.notes}" for name, recipe in PRESETS.items())


def fetch_default_sample(n: int, base_url: str) -> Path | None:
    """No data folder: fetch (or resume) a sample from ABID's bucket into data/abid; None, after one
    line saying so, when no photo could be fetched (offline), so `make run` still starts the dashboard."""
    from core.config import DEFAULT_DATA
    from core.data.download import fetch_sample

    report = fetch_sample(DEFAULT_DATA, n, base_url)
    if not (report.downloaded or report.skipped):
        reason = next(iter(report.failed.values()), "no bin found")
        reason = reason if len(reason) <= 100 else reason[:100] + "..."  # one readable line
        print(f"No photos could be fetched from {base_url} ({reason}); train later with: {DOWNLOAD_HINT}")
        return None
    print(f"no data folder, so fetched a sample of ABID into {DEFAULT_DATA}: {report.summary()}"
          + ("; run again to fetch the rest" if report.failed else ""))
    return DEFAULT_DATA


def cmd_gc(args: argparse.Namespace) -> None:
    from core.store.database import Store
    from core.training.cleanup import collect_garbage

    report = collect_garbage(Store(args.store), dry_run=args.dry_run)
    for path, size in report:
        print(f"{'would remove' if args.dry_run else 'removed'} {path} ({size / 1e6:.1f} MB)")
    total = sum(size for _, size in report)
    print(f"{'would free' if args.dry_run else 'freed'} {total / 1e6:.1f} MB in {len(report)} caches "
          "no experiment uses")


# `train.py --help` lists the commands by job, in the README's order.
COMMAND_GROUPS = {
    "data": ("download", "prepare"),
    "training": ("suite", "cnn", "lr-find", "classical", "ensemble", "screen", "learning-curve"),
    "counting and reconciliation": ("count", "evaluate", "reconcile", "export"),
    "recounts": ("recount",),
    "store": ("store", "gc"),
}


def grouped_commands(helps: dict[str, str]) -> str:
    """The commands under their job's heading, each with its one-line help."""
    if sorted(helps) != sorted(c for group in COMMAND_GROUPS.values() for c in group):
        raise ValueError(f"COMMAND_GROUPS and the commands differ: {sorted(helps)}")
    width = max(map(len, helps)) + 2
    groups = (f"  {group}:\n" + "\n".join(f"    {c:<{width}}{helps[c]}" for c in commands)
              for group, commands in COMMAND_GROUPS.items())
    return "commands, by job:\n" + "\n".join(groups)


def build_parser() -> argparse.ArgumentParser:
    from core.analysis.screening import SPLITS as SCREEN_SPLITS
    from core.cnn.recipes import PRESETS
    from core.data.download import DEFAULT_BASE_URL
    from core.reconcile.inventory import MISMATCH_THRESHOLD, PRIOR_WRONG
    from core.training.ensemble import MAX_ROUNDS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of the commands below")
    helps: dict[str, str] = {}

    def command(name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        """A subcommand, listed under its group (`COMMAND_GROUPS`) by `grouped_commands`."""
        helps[name] = help
        kwargs.setdefault("description", help[:1].upper() + help[1:] + ".")
        return sub.add_parser(name, **kwargs)
    flags = shared_flags()
    prior = flags["prior"]
    data, store, recheck, quiet, model, cv, labels = (flags[name] for name in ("data", "store", "recheck", "quiet",
                                                                              "model", "cv", "labels"))

    p = command("download", "fetch photos and metadata from ABID's public bucket")
    p.add_argument("--n", type=int, default=100, help="how many bins, counting up from --start")
    p.add_argument("--start", type=int, default=1)
    p.add_argument("--ids", nargs="*", help="explicit ABID ids instead of --n")
    p.add_argument("--out", default="data/abid")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL)
    p.add_argument("--workers", type=int, default=8)
    p.set_defaults(func=cmd_download)

    p = command("prepare", "load a collection, build its image cache and split",
                       parents=[data, store, recheck])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--max-count", type=int, default=MAX_COUNT)
    p.add_argument("--export-split", metavar="FILE.csv", help="write image_id,split of every usable photo")
    p.set_defaults(func=cmd_prepare)

    p = command("classical",
                       "train a classical model (HOG / blobs / raw pixels, PCA, SVM family) or a suite",
                       description="Cross-validated grid search on the train split, one test evaluation; "
                                   "a configuration already trained on the same data is served from the store.",
                       parents=[data, cv, quiet, store, recheck, labels])
    p.add_argument("--suite", help="a suite from core/classical/suites.py: paper-classical (Tables I and II), "
                                    "default, cnn-features")
    p.add_argument("--features", default="hog",
                   help="raw, hog, blobs or cnn (a frozen ImageNet network's features) (default: hog)")
    p.add_argument("--feature-params", help='JSON, e.g. \'{"size": 64, "edges": "sobel"}\'')
    p.add_argument("--pca", type=int, help="add a randomized PCA with at most this many components (e.g. 1000)")
    p.add_argument("--model", default="svc",
                   help="logreg, tree, linearsvc, nusvc, svc (RBF), svc-poly, svc-linear, sgd-rbf")
    p.add_argument("--grid",
                   help='JSON dict or list of dicts of value lists, e.g. \'{"C": [1, 10], "gamma": ["scale"]}\'')
    p.add_argument("--folds", type=int, help="cross-validation folds (default: 10, fewer if a class is smaller)")
    p.add_argument("--train-limit", type=int, metavar="N",
                   help="fit on at most N training photos, stratified by count (a kernel SVM's time grows with N^2)")
    p.add_argument("--selection", choices=["balanced", "paper"],
                   help="best CV balanced accuracy (default), or the paper's: best accuracy with no class at zero")
    p.add_argument("--image-size", type=int, help="image cache resolution the features read (default: 128)")
    p.add_argument("--name", help="experiment name (default: <features>-<model>)")
    p.add_argument("--jobs", type=int, default=2, help="parallel processes for features and the search")
    p.set_defaults(func=cmd_classical)

    p = command("suite", "train the default experiments the store lacks (LR sweep, PCA+SVM, HOG+SVM, CNN quick-frozen)",
                       parents=[data, store, recheck])
    p.add_argument("--cnn-overrides", help='JSON recipe overrides for the CNN, e.g. \'{"batch_size": 16}\'')
    p.add_argument("--classical-overrides",
                   help='JSON overrides of the classical settings (and n_jobs), e.g. \'{"folds": 5}\'')
    p.add_argument("--sample-size", type=int, default=DEFAULT_SAMPLE_SIZE,
                   help="with no data folder: how many ABID bins to fetch first (spread over the id range)")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help="where to fetch them from")
    p.set_defaults(func=cmd_suite)

    p = command("gc", "remove image caches no experiment uses, and report what that frees",
                       parents=[store])
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.set_defaults(func=cmd_gc)

    p = command("count", "count the items in photos", parents=[model, prior, store])
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_count)

    p = command("export", "write a CNN model as ONNX (every fold of an ensemble), its calibration "
                                      "and a manifest, for serving outside binsight", parents=[model, store])
    p.add_argument("--out", required=True, help="folder to write model.onnx (or fold-K/model.onnx), "
                                                "calibration.json and manifest.json into")
    p.set_defaults(func=cmd_export)

    p = command("evaluate", "score a model on a labelled collection in any supported layout "
                                        "(prints JSON)", parents=[model, data, prior, store])
    p.set_defaults(func=cmd_evaluate)

    p = command("screen", "levers side by side: runs' figures on one split, overall and per source, "
                                      "as a markdown table", parents=[store])
    p.add_argument("runs", nargs="+", metavar="[LABEL=]RUN[+RUN...]",
                   help="an experiment id or name; several joined by + are scored as their mean (an ensemble)")
    p.add_argument("--split", choices=SCREEN_SPLITS, default="val",
                   help="val (single runs), oof (cross-validated runs) or test (report it once)")
    p.add_argument("--overall-only", action="store_true", help="leave out the per-source columns")
    p.add_argument("--paired", action="store_true",
                   help="also compare each run with the first, paired on the same photos (bootstrap intervals)")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.set_defaults(func=cmd_screen)

    p = command("ensemble", "mix finished models into one, chosen greedily on validation (Caruana et al. 2004) "
                            "and recalibrated; `best` serves it where it wins", parents=[data, store])
    p.add_argument("--max-rounds", type=int, default=MAX_ROUNDS,
                   help="most models added, with replacement (default: %(default)s)")
    p.set_defaults(func=cmd_ensemble)

    p = command("learning-curve", "what more photos buy: a preset trained on nested shares of the training split, "
                                  "scored on the same validation photos, fitted and extrapolated to ABID's size",
                parents=[data, quiet, store, recheck])
    p.add_argument("--preset", default="quick-frozen", choices=PRESETS, metavar="PRESET",
                   help="recipe from core/cnn/recipes.py (default: quick-frozen, what make run trains)")
    p.add_argument("--fractions", default="0.125,0.25,0.5,1",
                   help="shares of the training split (default: %(default)s)")
    p.add_argument("--seeds", default="0", help="seeds of each point, comma-separated (default: 0)")
    p.add_argument("--sources", default="all",
                   help="what each curve trains on, comma-separated: all, natural (224 px natural mix), originals")
    p.add_argument("--with-recounts", action="store_true",
                   help="also train the whole split with the photos people recounted, and place it beside the curve")
    p.set_defaults(func=cmd_learning_curve)

    p = command("reconcile", "flag bins whose photo disagrees with the recorded quantity",
                       description="The --data folder's photos; its own labels are the recorded quantities "
                                   "unless --records.", parents=[model, data, store])
    p.add_argument("--records", help="CSV with columns image,recorded_quantity (image = path relative to --data)")
    p.add_argument("--out", default="report.csv", help=".csv (the rows) or .json (settings, totals and rows)")
    p.add_argument("--threshold", type=float, default=MISMATCH_THRESHOLD,
                   help=f"flag bins with P(mismatch) at or above this (default {MISMATCH_THRESHOLD})")
    p.add_argument("--budget", help="instead of --threshold, flag exactly the N riskiest bins (50) or a share (10%%)")
    p.add_argument("--prior-wrong", type=float, default=PRIOR_WRONG,
                   help=f"share of records assumed wrong before a photo is seen (default {PRIOR_WRONG})")
    p.add_argument("--simulate-errors", type=float, metavar="RATE",
                   help="on a labelled --data folder: move this share of its labels by 1 or 2 and print what "
                        "recounting the riskiest 10/20/30/50%% of bins catches (no report written; on the "
                        "model's own collection, its test split only)")
    p.add_argument("--seed", type=int, default=0, help="seed of --simulate-errors")
    p.set_defaults(func=cmd_reconcile)

    p = command("recount", "recount outcomes out (adjustments for the warehouse system) and in")
    recount = p.add_subparsers(dest="recount_command", required=True)
    q = recount.add_parser("export", help="CSV of the bins whose recount differs from their record: "
                                          "batch,image,recorded,recounted,adjustment,who,when", parents=[store])
    q.add_argument("--batch", required=True, help="the batch id `train.py reconcile` printed")
    q.add_argument("--out", metavar="FILE.csv", help="where to write it (default: standard output)")
    q.set_defaults(func=cmd_recount_export)
    q = recount.add_parser("import", help="record recounts made elsewhere: a CSV of batch,image,recounted "
                                          "(optional note, who); every bad row is reported and refused",
                           parents=[store])
    q.add_argument("file", metavar="FILE.csv")
    q.add_argument("--who", help="who counted, for rows without a who column (default: your user name)")
    q.set_defaults(func=cmd_recount_import)

    p = command("store", "look after the experiment store")
    store_sub = p.add_subparsers(dest="store_command", required=True)
    q = store_sub.add_parser("backup", help="a consistent copy of the store's database, safe while the dashboard "
                                            "and training run (SQLite's online backup API)", parents=[store])
    q.add_argument("file", metavar="FILE")
    q.set_defaults(func=cmd_store_backup)

    for name, func, help_, extra in (
        ("cnn", cmd_cnn, "train a CNN (transfer learning) with a preset recipe; resumes an interrupted run",
         [cv, labels]),
        ("lr-find", cmd_lr_find, "learning-rate finder sweep for a preset's first phase", []),
    ):
        p = command(name, help_, description=f"{help_[:1].upper()}{help_[1:]}. Runs under `torchrun` too.",
                           epilog=presets_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
                           parents=[data, *extra, quiet, store, recheck])
        p.add_argument("--preset", default="quick", choices=PRESETS, metavar="PRESET",
                       help="recipe from core/cnn/recipes.py, listed below (default: quick)")
        p.add_argument("--set", nargs="*", metavar="FIELD=VALUE",
                       help="override recipe fields, values in JSON, e.g. batch_size=64 "
                            '\'phases=[{"epochs": 3, "image_size": 128}]\'')
        p.set_defaults(func=func)
    parser.epilog = grouped_commands(helps)
    return parser


def main(argv: list[str] | None = None) -> None:
    from core.data.collection import DataError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DataError as err:
        sys.exit(f"{err}\nTo get photos from ABID's public bucket: {DOWNLOAD_HINT}")


if __name__ == "__main__":
    main()
