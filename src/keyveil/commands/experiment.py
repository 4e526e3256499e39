"""``keyveil experiment``: reproduce the result tables of RESULTS.md under ``results/`` (one sub-command each)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data import list_datasets
from . import OneLineHelpFormatter
from ._common import DeprecatedAlias, add_keyed_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="reproduce a result table under results/ (keyveil experiment -h lists them)",
                       formatter_class=OneLineHelpFormatter,
                       description="Reproduce one of the result tables of RESULTS.md: each experiment writes "
                                   "NAME.md and NAME.json (and its plots) under --output.")
    inner = p.add_subparsers(dest="experiment", metavar="NAME", required=True)
    a = inner.add_parser("privdl", help="PrivDL Table 1: plain, pre-trained, fine-tuned, keyed with and without the key")
    a.add_argument("--dataset", default="fashion-mnist", choices=list_datasets())
    a.add_argument("--data-dir")
    a.add_argument("--model", default="smallcnn")
    a.add_argument("--epochs", type=int, default=2, help="plain training epochs (default 2)")
    a.add_argument("--finetune-epochs", type=int, default=1)
    a.add_argument("--limit", type=int, help="training images (default: all)")
    a.add_argument("--test-limit", type=int, help="test images (default: all)")
    add_keyed_option(a)
    _run_options(a, batch_size=128)
    a.set_defaults(func=run_privdl_cmd)
    b = inner.add_parser("schemes", help="accuracy of one recipe on every scheme (and model), drop vs plain")
    b.add_argument("--datasets", nargs="+", choices=list_datasets(),
                   help="default: fashion-mnist att-faces (with --models: fashion-mnist, one dataset)")
    b.add_argument("--schemes", nargs="+", help="default: plain pixel etc le ele vit patch mix visualmixer "
                   "(with --models: plain pixel visualmixer-seed visualmixer, + patch mix for ViTs/Swins)")
    b.add_argument("--models", nargs="+", metavar="ARCH",
                   help="measure every scheme on each of these models instead of the small CNN (VisualMixer "
                   "Table II's shape): 'seeds' for the seeds' families (resnet18 mobilenet_v3_small "
                   "shufflenet_v2_x0_5 vgg11_bn vit_mini swin_t), smallcnn, or any torchvision classifier; "
                   "writes schemes-models.md/.json gathering every model measured in --output")
    b.add_argument("--test-limit", type=int, help="with --models: test images (default 1000)")
    b.add_argument("--weights", action="append", default=[], metavar="ARCH=PATH",
                   help="with --models: initialize ARCH from this state_dict file (repeatable)")
    b.add_argument("--frontier", default="results/frontier/frontier.json",
                   help="with --models: the frontier JSON whose re-identification figures go beside each scheme")
    b.add_argument("--gather", action="store_true",
                   help="train nothing: rebuild schemes-models.md/.json from the per-model files in --output "
                   "measured with the same recipe (--datasets/--limit/--test-limit/--epochs/--batch-size/--seed)")
    b.add_argument("--epochs", nargs="+", metavar="N|DATASET=N",
                   help="epochs for every dataset, or per dataset (default: fashion-mnist=2 att-faces=25)")
    b.add_argument("--limit", type=int, help="training images per dataset (default: fashion-mnist 10000, "
                   "others all)")
    _run_options(b, batch_size=64)
    b.set_defaults(func=run_schemes_cmd)
    f = inner.add_parser("frontier", help="privacy (face re-identification) vs accuracy drop for every scheme's strength")
    f.add_argument("--schemes", nargs="+", help="only the points of these schemes (default: all; plain is kept)")
    f.add_argument("--epochs", type=int, default=2, help="Fashion-MNIST training epochs (default 2)")
    f.add_argument("--limit", type=int, default=10000, help="Fashion-MNIST training images (default 10000)")
    f.add_argument("--test-limit", type=int, help="Fashion-MNIST test images (default: all 10000)")
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("-o", "--output", default="results")
    f.add_argument("--resume", action="store_true",
                   help="reuse the points of an earlier frontier.json in --output measured with the same recipe")
    f.add_argument("--quiet", action="store_true")
    f.add_argument("--variants", nargs="+", metavar="VARIANT",
                   help="only these re-identification attackers (e.g. glance ciphertext-only for cheaper repeats "
                   "over seeds; default: all)")
    f.add_argument("--gather", nargs="+", metavar="FOLDER",
                   help="measure nothing: join the frontier.json of these folders (one run per --seed) into "
                   "frontier-seeds.md/.json in --output: drops over the seeds, pooled re-identification rates "
                   "with 95 %% intervals, and the target per threat")
    f.set_defaults(func=run_frontier_cmd)
    d = inner.add_parser("distill", help="knowledge distillation: teacher/student on plain vs encrypted images")
    d.add_argument("--dataset", default="fashion-mnist", choices=list_datasets())
    d.add_argument("--scheme", default="visualmixer-seed",
                   help="the encryption compared with plain (default visualmixer-seed, the paper's setting)")
    d.add_argument("--limit", type=int, default=10000, help="training images (default 10000)")
    d.add_argument("--test-limit", type=int, help="test images (default: all)")
    d.add_argument("--teacher-epochs", type=int, default=2)
    d.add_argument("--student-epochs", type=int, default=2)
    d.add_argument("--temperature", type=float, default=4.0)
    d.add_argument("--alpha", type=float, default=0.9, help="weight of the distillation term (default 0.9)")
    _run_options(d, batch_size=64)
    d.set_defaults(func=run_distill_cmd)
    fl = inner.add_parser("federated", help="federated averaging (Flower FedAvg) on plain and encrypted client shards")
    fl.add_argument("--dataset", choices=list_datasets(), help="default fashion-mnist, else mnist5k")
    fl.add_argument("--clients", type=int, default=4, help="simulated clients (default 4)")
    fl.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    fl.add_argument("--local-epochs", type=int, default=1, help="local epochs per round (default 1)")
    fl.add_argument("--schemes", nargs="+", default=["plain", "visualmixer-seed", "pixel"],
                    help="client-side encryptions (default plain visualmixer-seed pixel; keyed ones share one key)")
    fl.add_argument("--no-centralized", action="store_true", help="skip the centralized baseline")
    fl.add_argument("--limit", type=int, default=8000, help="training images over all clients (default 8000)")
    fl.add_argument("--test-limit", type=int, help="test images (default: all)")
    _run_options(fl, batch_size=64)
    fl.set_defaults(func=run_federated_cmd)
    bl = inner.add_parser("baselines", help="plain / VisualMixer / DP-SGD / noise / InstaHide: accuracy and throughput")
    bl.add_argument("--dataset", default="fashion-mnist", choices=list_datasets())
    bl.add_argument("--models", nargs="+", default=None, help="architectures (default smallcnn mobilenet_v3_small "
                                                              "shufflenet_v2_x0_5)")
    bl.add_argument("--methods", nargs="+", default=None, help="methods (default all: plain visualmixer-seed "
                                                               "visualmixer dp-sgd noise instahide)")
    bl.add_argument("--limit", type=int, default=5000, help="training images (default 5000)")
    bl.add_argument("--test-limit", type=int, default=2000, help="test images (default 2000)")
    bl.add_argument("--epochs", type=int, default=2)
    bl.add_argument("--batch-size", type=int, default=64)
    bl.add_argument("--dp-epsilon", type=float, default=8.0, help="DP-SGD target epsilon (default 8)")
    bl.add_argument("--sigma", type=float, default=0.1, help="noise: std as a fraction of the range (default 0.1)")
    bl.add_argument("--instahide-k", type=int, default=4, help="InstaHide: images mixed per encoding (default 4)")
    bl.add_argument("--throughput-rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    bl.add_argument("--throughput-steps", type=int, default=8, help="training steps per method per round (default 8)")
    bl.add_argument("--seed", type=int, default=0)
    bl.add_argument("-o", "--output", default="results")
    bl.add_argument("--quiet", action="store_true")
    bl.set_defaults(func=run_baselines_cmd)
    dt = inner.add_parser("detection", help="object detection: plain, encrypted, keyed detector with and without the key")
    dt.add_argument("--limit", type=int, default=4000, help="training canvases (default 4000)")
    dt.add_argument("--test-limit", type=int, default=1000, help="held-out canvases (default 1000)")
    dt.add_argument("--train-count", dest="limit", type=int, action=DeprecatedAlias, new="--limit",
                    help=argparse.SUPPRESS)
    dt.add_argument("--test-count", dest="test_limit", type=int, action=DeprecatedAlias, new="--test-limit",
                    help=argparse.SUPPRESS)
    dt.add_argument("--epochs", type=int, default=8, help="detector training epochs per row (default 8)")
    dt.add_argument("--batch-size", type=int, default=16)
    dt.add_argument("--lr", type=float, default=2e-3)
    add_keyed_option(dt, what="keyed detector mode (default features)")
    dt.add_argument("--schemes", nargs="*", choices=("visualmixer", "visualmixer-frontier", "mix"),
                    help="trained encrypted rows (default all three; none given: only plain and the keyed rows)")
    dt.add_argument("--frontier-json", default="results/frontier/frontier.json",
                    help="the frontier results the privacy column is read from")
    dt.add_argument("--seed", type=int, default=0)
    dt.add_argument("-o", "--output", default="results")
    dt.add_argument("--quiet", action="store_true")
    dt.set_defaults(func=run_detection_cmd)
    op = inner.add_parser("optimizers", help="ST-Adam vs Adam per epoch on plain and VisualMixer images (curves and table)")
    op.add_argument("--dataset", default="fashion-mnist", choices=list_datasets())
    op.add_argument("--models", nargs="+", default=["smallcnn", "shufflenet_v2_x0_5"], metavar="ARCH",
                    help="architectures (default smallcnn shufflenet_v2_x0_5; any `keyveil train --model`)")
    op.add_argument("--scheme", default="visualmixer-seed",
                    help="the encryption compared with plain (default visualmixer-seed, the paper's setting)")
    op.add_argument("--lrs", nargs="+", type=float, default=[3e-4, 1e-3, 3e-3],
                    help="learning-rate grid searched for both optimizers (default 3e-4 1e-3 3e-3)")
    op.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default 0 1 2")
    op.add_argument("--epochs", type=int, default=5, help="default 5")
    op.add_argument("--limit", type=int, default=2000, help="training images (default 2000)")
    op.add_argument("--val-limit", type=int, default=500,
                    help="validation images held out from the training set for the search (default 500)")
    op.add_argument("--test-limit", type=int, default=1000, help="test images (default 1000)")
    op.add_argument("--batch-size", type=int, default=64)
    op.add_argument("-o", "--output", default="results/optimizers")
    op.add_argument("--quiet", action="store_true")
    op.set_defaults(func=run_optimizers_cmd)


def _run_options(p: argparse.ArgumentParser, *, batch_size: int) -> None:
    """The options every training experiment takes: batch size, seed, output folder, --quiet."""
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="results")
    p.add_argument("--quiet", action="store_true")


def _print_done(data: dict) -> None:
    print(f"\n{data['wall_s']:.0f} s wall, {data['cpu_s']:.0f} s CPU; wrote " + ", ".join(data["files"]))


def _log(s: str) -> None:
    print(s, flush=True)


def run_privdl_cmd(args: argparse.Namespace) -> int:
    from ..experiments import run_privdl

    data = run_privdl(dataset=args.dataset, data_dir=args.data_dir, arch=args.model, epochs=args.epochs,
                      finetune_epochs=args.finetune_epochs, batch_size=args.batch_size, limit=args.limit,
                      test_limit=args.test_limit, mode=args.keyed, seed=args.seed, out_dir=args.output,
                      progress=not args.quiet, log=_log)
    _print_done(data)
    return 0


def run_schemes_cmd(args: argparse.Namespace) -> int:
    from ..experiments import SCHEMES, run_schemes

    epochs: dict[str, int] | int | None = None
    for item in args.epochs or []:
        name, sep, n = item.rpartition("=")
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--epochs {item!r}: expected N or DATASET=N with N >= 1")
        if sep:
            epochs = {**(epochs if isinstance(epochs, dict) else {}), name: int(n)}
        else:
            epochs = int(n)
    if args.models or args.gather:
        return _schemes_by_model_cmd(args, epochs)
    extra = [o for o, v in (("--test-limit", args.test_limit), ("--weights", args.weights)) if v]
    if extra:
        raise ValueError(f"{', '.join(extra)} only apply with --models")
    data = run_schemes(datasets=args.datasets or ["fashion-mnist", "att-faces"], schemes=args.schemes or SCHEMES,
                       epochs=epochs,
                       limit=args.limit, batch_size=args.batch_size, seed=args.seed, out_dir=args.output,
                       progress=not args.quiet, log=_log)
    _print_done(data)
    return 0


def _schemes_by_model_cmd(args: argparse.Namespace, epochs: dict[str, int] | int | None) -> int:
    from ..engine import SEED_FAMILIES
    from ..experiments.schemes import run_schemes_by_model

    datasets = args.datasets or ["fashion-mnist"]
    if len(datasets) != 1:
        raise ValueError(f"--models measures one dataset at a time, got --datasets {' '.join(datasets)}")
    if isinstance(epochs, dict):
        raise ValueError("with --models, --epochs takes one number N (the CNNs' epochs; transformers may get 1.5 N)")
    models = [m for name in args.models or [] for m in (SEED_FAMILIES if name == "seeds" else (name,))]
    weights = {}
    for item in args.weights:
        arch, sep, path = item.partition("=")
        if not sep or not arch or not path:
            raise ValueError(f"--weights {item!r}: expected ARCH=PATH (e.g. resnet18=my_resnet18.pt)")
        weights[arch] = path
    for label, v in (("--limit", args.limit), ("--test-limit", args.test_limit), ("--batch-size", args.batch_size)):
        if v is not None and v < 1:
            raise ValueError(f"{label} must be >= 1, got {v}")
    data = run_schemes_by_model(models=models, dataset=datasets[0], schemes=args.schemes, epochs=epochs or 2,
                                limit=args.limit or 2000, test_limit=args.test_limit or 1000,
                                batch_size=args.batch_size, seed=args.seed, weights=weights, frontier=args.frontier,
                                out_dir=args.output, gather_only=args.gather, progress=not args.quiet, log=_log)
    run = data["this_run"]
    print(f"\n{run['wall_s']:.0f} s wall, {run['cpu_s']:.0f} s CPU; wrote " + ", ".join(data["files"]))
    return 0


def run_frontier_cmd(args: argparse.Namespace) -> int:
    from ..experiments import POINTS, run_frontier

    if args.gather:
        from ..experiments.frontier_summary import main_summary

        print(main_summary(args.gather, out=args.output))
        print(f"wrote {Path(args.output) / 'frontier-seeds.md'} and frontier-seeds.json")
        return 0

    known = sorted({p.scheme for p in POINTS})
    unknown = [s for s in args.schemes or [] if s not in known]
    if unknown:
        raise ValueError(f"--schemes {' '.join(unknown)}: the frontier sweeps {', '.join(known)}")
    points = [p for p in POINTS if not args.schemes or p.scheme in args.schemes]
    for label, v in (("--epochs", args.epochs), ("--limit", args.limit), ("--batch-size", args.batch_size)):
        if v is not None and v < 1:
            raise ValueError(f"{label} must be >= 1, got {v}")
    attack = None
    if args.variants:
        from ..attacks import Reidentify

        attack = Reidentify(variants=args.variants, cnn_epochs=30, adapted_draws=2, seed=args.seed)
    data = run_frontier(points=points, epochs=args.epochs, limit=args.limit, test_limit=args.test_limit, attack=attack,
                        batch_size=args.batch_size, seed=args.seed, out_dir=args.output, resume=args.resume,
                        progress=not args.quiet, log=_log)
    _print_done(data)
    return 0


def run_distill_cmd(args: argparse.Namespace) -> int:
    from ..experiments.distill import run_distill

    data = run_distill(dataset=args.dataset, scheme=args.scheme, limit=args.limit, test_limit=args.test_limit,
                       teacher_epochs=args.teacher_epochs, student_epochs=args.student_epochs,
                       batch_size=args.batch_size, temperature=args.temperature, alpha=args.alpha, seed=args.seed,
                       out_dir=args.output, progress=not args.quiet, log=_log)
    _print_done(data)
    return 0


def run_federated_cmd(args: argparse.Namespace) -> int:
    from ..experiments.federated import run_federated

    data = run_federated(dataset=args.dataset, clients=args.clients, rounds=args.rounds,
                         local_epochs=args.local_epochs, schemes=args.schemes, centralized=not args.no_centralized,
                         limit=args.limit, test_limit=args.test_limit, batch_size=args.batch_size, seed=args.seed,
                         out_dir=args.output, progress=not args.quiet, log=_log)
    _print_done(data)
    return 0


def run_baselines_cmd(args: argparse.Namespace) -> int:
    from ..experiments.baselines import METHODS, MODELS, run_baselines

    data = run_baselines(dataset=args.dataset, models=args.models or MODELS, methods=args.methods or METHODS,
                         limit=args.limit, test_limit=args.test_limit, epochs=args.epochs,
                         batch_size=args.batch_size, epsilon=args.dp_epsilon, sigma=args.sigma,
                         instahide_k=args.instahide_k, seed=args.seed, throughput_rounds=args.throughput_rounds,
                         throughput_steps=args.throughput_steps, out_dir=args.output,
                         progress=not args.quiet, log=_log)
    _print_done(data)
    return 0


def run_detection_cmd(args: argparse.Namespace) -> int:
    from ..experiments.detection import run_detection

    data = run_detection(train_count=args.limit, test_count=args.test_limit, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, mode=args.keyed,
                         schemes=None if args.schemes is None else tuple(args.schemes), frontier_json=args.frontier_json,
                         seed=args.seed, out_dir=args.output, progress=not args.quiet, log=_log)
    _print_done(data)
    return 0


def run_optimizers_cmd(args: argparse.Namespace) -> int:
    from ..engine import list_models
    from ..experiments.optimizers import run_optimizers
    from ..schemes import list_schemes

    bad = [m for m in args.models if m not in list_models()]
    if bad:
        raise ValueError(f"--models {' '.join(bad)}: unknown; see `keyveil train --help` for the model names")
    if args.scheme not in list_schemes():
        raise ValueError(f"--scheme {args.scheme!r}: unknown; see `keyveil schemes`")
    data = run_optimizers(dataset=args.dataset, models=args.models, scheme=args.scheme, lrs=args.lrs,
                          seeds=args.seeds, epochs=args.epochs, limit=args.limit, val_limit=args.val_limit,
                          test_limit=args.test_limit, batch_size=args.batch_size, out_dir=args.output,
                          progress=not args.quiet, log=_log)
    _print_done(data)
    return 0
