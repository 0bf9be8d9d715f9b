#!/usr/bin/env bash
# Send a sample image to a running `serve` and print the answer.
#   local/invoke.sh [IMAGE] [URL]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
image="${1:-}"
url="${2:-http://127.0.0.1:8080}"
if [[ -z "$image" ]]; then
  image="$(find "$here/opt_ml/input/data/test" -type f \( -name '*.png' -o -name '*.jpg' \) 2>/dev/null | sort | head -n 1)"
fi
if [[ -z "$image" || ! -f "$image" ]]; then
  echo "no image given and none found under $here/opt_ml/input/data/test (run: make local-data)" >&2
  exit 2
fi
case "$image" in
  *.png) type="image/png" ;;
  *.jpg|*.jpeg) type="image/jpeg" ;;
  *) type="application/x-image" ;;
esac
curl -fsS "$url/ping" >/dev/null || { echo "no healthy server at $url" >&2; exit 1; }
echo "POST $url/invocations  ($image)" >&2
curl -sS -X POST -H "Content-Type: $type" -H "X-Amzn-SageMaker-Custom-Attributes: top_k=5" --data-binary "@$image" "$url/invocations"
echo
