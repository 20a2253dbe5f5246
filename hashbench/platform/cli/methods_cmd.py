"""``hashbench methods``: list the registered methods, their parameters and citations."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("methods", help="list registered methods with parameters, defaults and search ranges",
                       description="List every registered method: id, code type, parameters with defaults "
                                   "and search ranges, data requirements and citation.")
    p.add_argument("method", nargs="?", help="show only this method")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from hashbench.platform.registry import get_method, list_methods

    ids = [args.method] if args.method else list_methods()
    described = [get_method(m).describe() for m in ids]
    if args.json:
        print(json.dumps(described, indent=2, default=str))
        return 0
    for d in described:
        print(f"{d['id']}  [{d['code_type']}, {d['distance']}]  {d['summary']}")
        req = d["requires"]
        print(f"    needs: labels{', masks' if req['masks'] else ''}"
              f"{'' if req['multi_label'] else ', single-label data'}; batch {d['batch_size']}, "
              f"epochs {d['epochs']}, sampler {d['sampler']}")
        for p in d["params"]:
            space = ""
            if p["search"] is not None:
                space = f"  search {p['search']}{' (log)' if p['log'] else ''}"
            print(f"    {p['name']:<18} = {p['default']!s:<10}{space}  {p['help']}")
        print(f"    cite: {d['citation']}")
    return 0
