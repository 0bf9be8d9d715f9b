#!/usr/bin/env bash
# Send a sample image to a running `serve` and print the answer.
#   local/invoke.sh [IMAGE] [URL]
#   local/invoke.sh --explain[=METHOD] [IMAGE] [URL]   also writes the heatmap overlay to ./<image name>.explained.png
#                                                      (METHOD: auto (default), gradcam, integrated_gradients, saliency)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
explain=""
case "${1:-}" in
  --explain) explain="auto"; shift ;;
  --explain=*) explain="${1#--explain=}"; shift ;;
esac
image="${1:-}"
url="${2:-http://127.0.0.1:8080}"
if [[ -z "$image" ]]; then
  # the first in sorted order; sed reads every line (head would stop early, and under pipefail the
  # writer's SIGPIPE would end the script with status 141 once the list outgrows a pipe buffer)
  image="$(find "$here/opt_ml/input/data/test" -type f \( -name '*.png' -o -name '*.jpg' \) 2>/dev/null | sort | sed -n 1p)"
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
attributes="top_k=5"
if [[ -n "$explain" ]]; then
  attributes="$attributes,explain=$explain"
fi
curl -fsS "$url/ping" >/dev/null || { echo "no healthy server at $url" >&2; exit 1; }
echo "POST $url/invocations  ($image)" >&2
if [[ -z "$explain" ]]; then
  curl -sS -X POST -H "Content-Type: $type" -H "X-Amzn-SageMaker-Custom-Attributes: $attributes" --data-binary "@$image" "$url/invocations"
  echo
  exit 0
fi
out="$(basename "${image%.*}").explained.png"
curl -sS -X POST -H "Content-Type: $type" -H "X-Amzn-SageMaker-Custom-Attributes: $attributes" --data-binary "@$image" "$url/invocations" \
  | python3 -c '
import base64, json, sys
answer = json.load(sys.stdin)
if "predictions" not in answer:
    sys.exit(json.dumps(answer))
explanation = answer["predictions"][0]["explanation"]
overlay = explanation.pop("overlay_png")
if overlay:
    with open(sys.argv[1], "wb") as f:
        f.write(base64.b64decode(overlay))
    explanation["overlay_png"] = sys.argv[1]
print(json.dumps(answer))
' "$out"
echo "heatmap overlay: $out" >&2
