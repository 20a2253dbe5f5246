#!/usr/bin/env bash
# Prepare here, on the CPU machine, the git-ignored inputs that the device calls of
# benchmarks/gpu_session*.sh carry, so device time goes to measurements. Run from the project root:
#   bash benchmarks/gpu_prepare.sh              each step is skipped when its output exists
#   FORCE=1 bash benchmarks/gpu_prepare.sh      redo every step (FORCE="pml oldc": only the steps named)
# Steps (names for FORCE):
#   bundle   .gpu/bundle.tar.xz: ../shared/tools/gpu-bundle (minutes), re-packed so that it and the tree fit
#            64 MiB: without ray/dashboard/client/build/* (the empty directories build/ and build/static/
#            stay: Ray's dashboard serves build/static, and without it ray.init waits a minute for a dashboard
#            that failed), tzdata, and what no import reads (*.pyi, dist-info RECORD and sboms, top-level
#            packages' tests/) and SQLAlchemy's compiled speed-ups (each has its pure-Python source beside it;
#            hashbench keeps Optuna in memory); identical files become hard links. An existing bundle is fixed
#            in place.
#   pml      .gpudata/pml: pytorch-metric-learning (gpu-bundle's pin) for call C, which runs without the
#            bundle; tqdm in .gpudata/pml/tqdm-fallback for a machine without it (gpu_common.sh adds it then)
#   busi256, chula32   .gpudata/NAME.tar.xz: prepared stores
#   bccd     .gpudata/src/bccd: the raw BCCD copy that call B prepares there
#   oldc     .gpudata/oldc: the tree before commit 5259925 (call C's "before")
# Then it prints each call's transfer (tree + carry) against the 64 MiB limit and fails if one is over.
# GPUDATA=dir writes the .gpudata steps elsewhere (for trying the script out).
set -euo pipefail
[ -f pyproject.toml ] && [ -d hashbench ] || { echo "gpu_prepare.sh: run it from the project root" >&2; exit 2; }
FORCE=${FORCE:-}
GPUDATA=${GPUDATA:-.gpudata}
DATASETS=${DATASETS:-../shared/datasets}
BUNDLE=.gpu/bundle.tar.xz
LIMIT=67108864   # bytes that may travel in one device call
PY=python3; [ -x .venv/bin/python ] && PY=$PWD/.venv/bin/python
TMPS=(); trap 'rm -rf "${TMPS[@]}"' EXIT
newtmp() { TMP=$(mktemp -d "/tmp/gpu_prepare_$1.XXXXXX"); TMPS+=("$TMP"); }   # newtmp NAME: a fresh $TMP
forced() { [ "$FORCE" = 1 ] || [[ " $FORCE " == *" $1 "* ]]; }
todo() {  # todo STEP PATH: true when STEP must run (PATH missing or STEP forced); says why not otherwise
  if [ -e "$2" ] && ! forced "$1"; then echo "[$1] $2 exists: skipped"; return 1; fi
  echo "[$1] making $2"
}
bytes() {  # bytes PATH...: total size of the files under the paths
  "$PY" -c 'import os, sys
t = 0
for p in sys.argv[1:]:
    if os.path.isfile(p): t += os.path.getsize(p)
    for d, _, fs in os.walk(p):
        t += sum(os.path.getsize(os.path.join(d, f)) for f in fs if os.path.isfile(os.path.join(d, f)))
print(t)' "$@"
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

# ---------------------------------------------------------------- bundle
bundle_problems() {  # what keeps $BUNDLE from being ready to travel (nothing when it is)
  xz -dc "$BUNDLE" | tar -t | awk '
    $0 == "./ray/dashboard/client/build/static/" { static = 1; next }
    $0 == "./ray/dashboard/client/build/"        { build = 1; next }
    index($0, "./ray/dashboard/client/build/") == 1 { extra++ }
    /^\.\/tzdata[-\/]/ { tz++ }
    /^\.\/sqlalchemy\/.*_cy\.cpython-[^\/]*\.so$/ { cy++ }
    /\.pyi$|\.dist-info\/RECORD$|\.dist-info\/sboms\/|^\.\/[^\/]+\/tests\// { unread++ }
    END {
      if (!build)  print "no ray/dashboard/client/build/"
      if (!static) print "no ray/dashboard/client/build/static/"
      if (extra)   print extra " entries under ray/dashboard/client/build/ besides static/"
      if (tz)      print tz " tzdata entries"
      if (unread)  print unread " entries no import reads"
      if (cy)      print cy " SQLAlchemy speed-ups"
    }'
}
repack_bundle() {
  newtmp bundle; local site=$TMP
  xz -dc "$BUNDLE" | tar -x -C "$site"
  [ -d "$site/ray/dashboard" ] || { echo "[bundle] $BUNDLE has no ray/dashboard: not a gpu-bundle archive?" >&2; exit 1; }
  rm -rf "$site/ray/dashboard/client/build" "$site"/tzdata "$site"/tzdata-*.dist-info "$site"/*.dist-info/sboms
  find "$site" \( -name '*.pyi' -o -path '*.dist-info/RECORD' \) -delete
  find "$site" -mindepth 2 -maxdepth 2 -type d -name tests -exec rm -rf {} +
  for so in "$site"/sqlalchemy/*/*_cy.cpython-*.so; do
    if [ -f "${so%%.cpython-*}.py" ]; then rm "$so"; fi
  done
  mkdir -p "$site/ray/dashboard/client/build/static"
  "$PY" - "$site" <<'EOF'
import hashlib, os, sys   # identical files (Ray's runtime-env agent vendors aiohttp...) become hard links
seen, saved = {}, 0
for d, dirs, files in sorted(os.walk(sys.argv[1])):
    for f in sorted(files):
        p = os.path.join(d, f)
        if os.path.islink(p) or os.path.getsize(p) == 0:
            continue
        st = os.stat(p)
        key = (st.st_size, st.st_mode, hashlib.sha256(open(p, "rb").read()).hexdigest())
        if key in seen:
            os.unlink(p); os.link(seen[key], p); saved += st.st_size
        else:
            seen[key] = p
print(f"[bundle] {saved} bytes of identical files made hard links")
EOF
  echo "[bundle] re-packing (xz -T2 -9e, a few minutes)"
  (cd "$site" && tar -cf - . | xz -T2 -9e) > "$BUNDLE.part"
  mv "$BUNDLE.part" "$BUNDLE"
}
if todo bundle "$BUNDLE"; then
  rm -f "$BUNDLE"
  ../shared/tools/gpu-bundle --out "$BUNDLE"
fi
problems=$(bundle_problems)
if [ -n "$problems" ]; then
  echo "[bundle] to fix: ${problems//$'\n'/; }"
  repack_bundle
  problems=$(bundle_problems)
  [ -z "$problems" ] || { echo "[bundle] still wrong after re-packing: $problems" >&2; exit 1; }
fi
echo "[bundle] $BUNDLE: $(bytes "$BUNDLE") bytes ($(mib "$(bytes "$BUNDLE")")), with empty build/ and build/static/, no tzdata"

# ---------------------------------------------------------------- pytorch-metric-learning
PML=$GPUDATA/pml
PML_VERSION=$(grep -o 'pytorch-metric-learning==[0-9][0-9.]*' ../shared/tools/gpu-bundle | cut -d= -f3)
[ -n "$PML_VERSION" ] || { echo "[pml] no pytorch-metric-learning==VERSION pin in ../shared/tools/gpu-bundle" >&2; exit 1; }
# the pin must satisfy pyproject.toml's requirement, or the GPU runs use a version the project does not allow
"$PY" - "$PML_VERSION" <<'EOF'
import sys, tomllib
from packaging.requirements import Requirement
reqs = [Requirement(r) for r in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]]
req = next(r for r in reqs if r.name == "pytorch-metric-learning")
if sys.argv[1] not in req.specifier:
    sys.exit(f"[pml] gpu-bundle pins pytorch-metric-learning=={sys.argv[1]}, pyproject.toml wants {req}")
EOF
if todo pml "$PML"; then
  newtmp wheels; wheels=$TMP
  # tqdm: imported by pytorch_metric_learning.utils.common_functions (so by .losses), pure Python
  TQDM_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("tqdm"))')
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$wheels" \
      "pytorch-metric-learning==$PML_VERSION" "tqdm==$TQDM_VERSION"
  rm -rf "$PML.part"
  "$PY" - "$wheels" "$PML.part" <<'EOF'
import glob, os, sys, zipfile
wheels, out = sys.argv[1:]
for whl in glob.glob(os.path.join(wheels, "*.whl")):
    dest = out if os.path.basename(whl).startswith("pytorch_metric_learning-") else os.path.join(out, "tqdm-fallback")
    zipfile.ZipFile(whl).extractall(dest)
EOF
  # in a fresh interpreter: the package imports from $PML.part (not the venv's copy) without scikit-learn
  # (blocked), and hashbench's triplet loss runs on it; at import it needs torch, numpy, scipy and tqdm, which
  # the GPU machine has (../shared/notes/stack.md), tqdm being also in tqdm-fallback
  "$PY" - "$PML.part" <<'EOF'
import importlib.abc, os, sys
pml = os.path.abspath(sys.argv[1])
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("sklearn", "faiss"):
            raise ImportError(f"{name} is blocked: the check proves it is not needed at import")
sys.meta_path.insert(0, Block())
before = set(sys.modules)
sys.path[:0] = [pml, os.getcwd()]
import pytorch_metric_learning, pytorch_metric_learning.losses, pytorch_metric_learning.distances
import torch
from hashbench.methods.constellation import TripletLoss
for m in (pytorch_metric_learning, pytorch_metric_learning.losses, sys.modules[type(TripletLoss(0.2).pml).__module__]):
    assert m.__file__.startswith(pml + os.sep), f"{m.__name__} came from {m.__file__}, not {pml}"
g = torch.Generator().manual_seed(0)
loss = TripletLoss(0.2)({"embedding": torch.randn(16, 8, generator=g)}, type("B", (), {"targets": torch.arange(16) % 4})())
assert torch.isfinite(loss["loss"]), loss
third = sorted({m.split(".")[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)
               - {"pytorch_metric_learning", "hashbench", "torch", "torchgen"})
print(f"[pml] pytorch_metric_learning {pytorch_metric_learning.__version__} from {sys.argv[1]}: import and "
      f"TripletLoss ok (loss {loss['loss'].item():.4f}); other modules the two loaded: "
      + " ".join(m for m in third if not m.startswith("_")))
EOF
  "$PY" -c 'import os, sys
fb = os.path.abspath(sys.argv[1]); sys.path.insert(0, fb); import tqdm
assert tqdm.__file__.startswith(fb + os.sep), tqdm.__file__
print(f"[pml] tqdm {tqdm.__version__} importable from {sys.argv[1]}")' "$PML.part/tqdm-fallback"
  rm -rf "$PML"; mv "$PML.part" "$PML"
fi
ls "$PML"/pytorch_metric_learning-"$PML_VERSION".dist-info >/dev/null \
  || { echo "[pml] $PML holds no pytorch_metric_learning $PML_VERSION: rerun with FORCE=pml" >&2; exit 1; }

# ---------------------------------------------------------------- prepared stores and raw copies
prepare_store() {  # prepare_store NAME PREPARE-ARGS...: $GPUDATA/NAME.tar.xz
  local name=$1 out=$GPUDATA/$1.tar.xz; shift
  todo "$name" "$out" || return 0
  newtmp "$name"; local data=$TMP
  HASHBENCH_DATA=$data "$PY" -m hashbench data prepare "$name" "$@"
  mkdir -p "$GPUDATA"; tar -cJf "$out.part" -C "$data" "$name" && mv "$out.part" "$out"
}
prepare_store busi256 --recipe busi --source "$DATASETS/busi" --size 256 --channels 3
prepare_store chula32 --recipe chula_rbc12 --source "$DATASETS/chula_rbc12" --patch 64 --size 32 --channels 3
if todo bccd "$GPUDATA/src/bccd"; then
  mkdir -p "$GPUDATA/src"; rm -rf "$GPUDATA/src/bccd.part" "$GPUDATA/src/bccd"
  cp -r "$DATASETS/bccd" "$GPUDATA/src/bccd.part" && mv "$GPUDATA/src/bccd.part" "$GPUDATA/src/bccd"
fi
if todo oldc "$GPUDATA/oldc"; then
  rm -rf "$GPUDATA/oldc.part" "$GPUDATA/oldc"; mkdir -p "$GPUDATA/oldc.part"
  git archive '5259925^' hashbench benchmarks ':(exclude)hashbench/data/builtin' | tar -x -C "$GPUDATA/oldc.part"
  mv "$GPUDATA/oldc.part" "$GPUDATA/oldc"
fi

# ---------------------------------------------------------------- what each call sends
# the tree that travels: tracked and untracked-not-ignored files
tree=$(git ls-files -z -co --exclude-standard | "$PY" -c 'import os, sys
print(sum(os.path.getsize(p) for p in sys.stdin.buffer.read().decode().split("\0") if p and os.path.isfile(p)))')
over=0
transfer() {  # transfer CALLS PATH...: tree + carried paths against LIMIT
  local carried total; carried=$(bytes "${@:2}"); total=$((tree + carried))
  printf '%-4s tree %s + carry %s = %s bytes (%s) of %s: %s   [%s]\n' "$1" "$(mib "$tree")" "$(mib "$carried")" \
      "$total" "$(mib "$total")" "$LIMIT" "$( [ "$total" -le "$LIMIT" ] && echo "fits, $(mib $((LIMIT - total))) spare" || echo OVER)" "${*:2}"
  [ "$total" -le "$LIMIT" ] || over=1
}
echo "transfers (64 MiB = $LIMIT bytes):"
transfer "A, P" .gpu
transfer "B" "$GPUDATA/src" "$GPUDATA/busi256.tar.xz"
transfer "C" "$GPUDATA/chula32.tar.xz" "$GPUDATA/oldc" "$PML"
[ "$over" = 0 ] || { echo "gpu_prepare.sh: a call's transfer is over 64 MiB ($LIMIT bytes): carry less or shrink it" >&2; exit 1; }
