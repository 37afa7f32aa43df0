#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the test that renders a run's report page.
# Installs them when missing and this is a root shell with apt-get; otherwise says how.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get > /dev/null; then
    echo "setup-browser: no /usr/bin/chromium; install Debian's chromium and chromium-driver" \
         "to run the report page's browser test (it is skipped without them)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq chromium chromium-driver > /dev/null \
    || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver > /dev/null; }
