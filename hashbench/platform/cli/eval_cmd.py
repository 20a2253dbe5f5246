"""``hashbench eval``: retrieval metrics of saved codes (a ``codes.npz``) under a named protocol."""

from __future__ import annotations

import json
import zipfile

REQUIRED = ("query_codes", "db_codes", "query_labels", "db_labels")


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate saved codes: mAP@k, P@k, P@H<=r, MAP@R under a named protocol",
                       description="Evaluate query codes against database codes from a .npz holding "
                                   "query_codes, db_codes, query_labels, db_labels (and bits for packed "
                                   "uint8 codes; distance for float codes). See docs/metrics.md.")
    p.add_argument("--codes", required=True, metavar="FILE.npz", help="the codes file")
    p.add_argument("--k", default="10,100,1000,all",
                   help="comma-separated cut-offs; 'all' = whole database, 'N-1' = all but the last rank "
                        "(DeepHash-pytorch's topK=-1)")
    p.add_argument("--convention", default="hits", choices=["hits", "min-k-r", "r"],
                   help="AP denominator: relevant items retrieved in the top k (hits), min(k, R), or R")
    p.add_argument("--ties", default="tie-aware", choices=["tie-aware", "index"],
                   help="order inside equal distances: expected over all orders, or database index")
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "fused", "faiss", "faiss-hnsw", "faiss-ivf"],
                   help="auto: faiss + numba kernels on CPU, fused Triton kernels on CUDA (docs/metrics.md)")
    p.add_argument("--distance", default=None, choices=["hamming", "l2", "cosine"],
                   help="default: the file's 'distance' entry, else hamming")
    p.add_argument("--exclude-no-hit", action="store_true",
                   help="drop queries without any relevant item from every metric (and, for mAP@k, those "
                        "without a hit in the top k)")
    p.add_argument("--same-set", action="store_true",
                   help="leave-one-out: retrieve the queries among themselves, each query's own item "
                        "excluded (db_codes/db_labels are then not needed)")
    p.add_argument("--radius", type=int, default=2, help="Hamming radius of P@H<=r (default 2)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def load_codes(path: str, required=REQUIRED) -> dict:
    """Read the arrays of a codes .npz (no pickles), naming what is missing."""
    import numpy as np

    from hashbench.platform.errors import HashbenchError

    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise HashbenchError(f"--codes: file not found: {path}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise HashbenchError(f"--codes: {path} is not a readable .npz file ({exc})") from None
    missing = [k for k in required if k not in data]
    if missing:
        raise HashbenchError(f"--codes: {path} lacks {', '.join(missing)}; a codes file holds "
                             f"{', '.join(required)} (and optionally bits, distance)")
    return data


def run(args) -> int:
    same_set = getattr(args, "same_set", False)
    data = load_codes(args.codes, REQUIRED[::2] if same_set else REQUIRED)
    if same_set:                  # the query set is the database
        data["db_codes"], data["db_labels"] = data["query_codes"], data["query_labels"]
    distance = args.distance or (str(data["distance"]) if "distance" in data else "hamming")
    bits = None
    if distance == "hamming" and "bits" in data and data["query_codes"].dtype.name == "uint8":
        bits_value = int(data["bits"])
        if data["query_codes"].shape[1] != bits_value:   # packed: fewer bytes than bits
            bits = bits_value
    ks = [k.strip() for k in args.k.split(",") if k.strip()]
    inputs = (data["query_codes"], data["db_codes"], data["query_labels"], data["db_labels"])
    options = dict(distance=distance, ks=ks, convention=args.convention, ties=args.ties,
                   exclude_no_hit=args.exclude_no_hit, engine=args.engine, device=args.device, bits=bits,
                   exclude_self=same_set, hamming_radius=args.radius if distance == "hamming" else None)
    # exact Hamming on the CPU: the same numbers without importing torch (cpu_eval.py says when)
    from hashbench.platform.evaluation.cpu_eval import evaluate_cpu, one_shot

    one_shot()                    # a fresh process: weigh numba's start-up (cpu_eval.py)
    res = evaluate_cpu(*inputs, **options)
    if res is None:
        from hashbench.platform.evaluation import evaluate

        res = evaluate(*inputs, **options)
    if args.json:
        print(json.dumps(res))
        return 0
    proto = res.pop("protocol")
    print(f"{args.codes}: {proto['n_queries']} queries x {proto['n_db']} database items, "
          f"{proto['distance']}, convention={proto['convention']}, ties={proto['ties']}, "
          f"no-hit={proto['no_hit']}, engine={proto['engine']} on {proto['device']}"
          + (", same set (own item excluded)" if proto.get("same_set") else ""))
    for key, value in res.items():
        print(f"  {key:<22} {value:.4f}" if isinstance(value, float) else f"  {key:<22} {value}")
    return 0
