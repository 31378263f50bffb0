#!/usr/bin/env bash
# Wheels for benchmarks/gpu_throughput.sh on a GPU machine that has a CUDA build of PyTorch and
# the scientific stack but no package index: Feast, DuckDB, pydantic and what they need at run
# time, for that machine's Python. Run it where pip reaches an index, then carry the folder.
#
#   benchmarks/offline_wheels.sh DEST [PYTHON_VERSION]       # default 3.12; about 55 MB
#
# Left out: what such an image already holds (HAVE below: numpy, pyarrow, torch and the like)
# and what only type-checks (mypy, pulled in by SQLAlchemy[mypy]). pandas is carried even so:
# Feast needs pandas < 3, whatever the image has.
set -euo pipefail
dest=${1:?usage: offline_wheels.sh DEST [PYTHON_VERSION]}
py=${2:-3.12}
HAVE=" annotated-doc anyio attrs certifi charset-normalizer click cloudpickle colorama fsspec h11
 idna jinja2 markupsafe mypy-extensions numpy packaging pathspec prometheus-client protobuf
 psutil pyarrow pygments python-dateutil pyyaml requests six tabulate toolz tqdm typing-extensions
 urllib3 uvloop zipp mypy librt ast-serialize types-greenlet "

all=$(mktemp -d)
trap 'rm -rf "$all"' EXIT
python3 -m pip download -q --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$all" "feast==0.67.0" "duckdb>=1.2" "pydantic>=2.7" "pandas<3"
mkdir -p "$dest"
for wheel in "$all"/*.whl; do
  name=$(basename "$wheel" | cut -d- -f1 | tr '[:upper:]_' '[:lower:]-')
  [[ " $(echo $HAVE) " == *" $name "* ]] || cp "$wheel" "$dest/"
done
du -sh "$dest"
