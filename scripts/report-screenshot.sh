#!/usr/bin/env bash
# Renders the simulator's HTML report in a real headless browser (Debian's chromium): writes
# `devheal sim --out DIR` for a scenario, takes a screenshot of report.html at a laptop's
# 1366 px and at 1024 px, and checks the layout in the browser: the page itself never scrolls
# sideways (wide tables scroll inside their own box, charts shrink to the window).
#
#   scripts/report-screenshot.sh [DIR]     # default DIR: target/report-screenshot
#
# Environment: SCENARIO (default llama3-16k), SEED (default 1), CHROMIUM (the browser command).
# When no browser is found it is installed with apt-get, but only under CI=true or with
# INSTALL_BROWSER=1; otherwise the script says how and exits 1.
# Outputs in DIR: report.json, report.html, table.txt, report-1366.png, report-1024.png.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${1:-target/report-screenshot}"
scenario="${SCENARIO:-llama3-16k}"
seed="${SEED:-1}"

find_browser() {
    if [[ -n "${CHROMIUM:-}" ]]; then echo "$CHROMIUM"; return; fi
    for b in chromium chromium-browser google-chrome; do
        if command -v "$b" >/dev/null 2>&1; then echo "$b"; return; fi
    done
}

browser="$(find_browser)"
if [[ -z "$browser" ]]; then
    if [[ "${CI:-}" == "true" || "${INSTALL_BROWSER:-}" == "1" ]]; then
        echo "report-screenshot: installing chromium (Debian package)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
        browser=chromium
    else
        echo "report-screenshot: no chromium found; install it (apt-get install chromium) or rerun with INSTALL_BROWSER=1" >&2
        exit 1
    fi
fi
"$browser" --version

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
rm -f "$dir"/report-*.png "$dir"/probe.html
cargo run --locked -q -p devheal -- sim --scenario "$scenario" --seed "$seed" --out "$dir" > "$dir/table.txt"

# Root in a container needs --no-sandbox; the browser's D-Bus complaints are noise.
run_browser() {
    "$browser" --headless --no-sandbox --disable-gpu "$@" 2>/dev/null
}

# The same page with a probe that writes the layout's widths into the DOM after rendering.
sed 's#</body>#<script>document.body.setAttribute("data-probe", "page=" + document.documentElement.scrollWidth + " window=" + window.innerWidth)</script></body>#' \
    "$dir/report.html" > "$dir/probe.html"

failed=0
for width in 1366 1024; do
    png="$dir/report-$width.png"
    run_browser --window-size="$width,2400" --screenshot="$png" "file://$dir/report.html" >/dev/null || true
    # A PNG starts with \x89PNG; an empty or missing file means the browser rendered nothing.
    if [[ ! -s "$png" ]] || [[ "$(head -c 4 "$png" | tail -c 3)" != "PNG" ]]; then
        echo "report-screenshot: FAIL: no screenshot at $width px ($png)" >&2
        failed=1
        continue
    fi
    probe="$(run_browser --window-size="$width,900" --dump-dom "file://$dir/probe.html" | grep -o 'data-probe="[^"]*"' || true)"
    page="$(sed -n 's/.*page=\([0-9]*\).*/\1/p' <<< "$probe")"
    window="$(sed -n 's/.*window=\([0-9]*\).*/\1/p' <<< "$probe")"
    if [[ -z "$page" || -z "$window" ]]; then
        echo "report-screenshot: FAIL: the layout probe did not run at $width px" >&2
        failed=1
    elif (( page > window )); then
        echo "report-screenshot: FAIL: at $width px the page is $page px wide: it scrolls sideways" >&2
        failed=1
    else
        echo "report-screenshot: $width px: $png ($(wc -c < "$png") bytes), page $page px in a $window px window"
    fi
done
rm -f "$dir/probe.html"
exit "$failed"
