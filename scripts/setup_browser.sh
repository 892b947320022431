#!/usr/bin/env bash
# Headless browser for the dashboard tests (tests/test_browser.py): Debian's chromium and its matching
# chromium-driver, driven by Selenium. Playwright's own browser download is not reachable here, and the
# Debian driver always matches the Debian browser's version, so Selenium needs no network at test time.
# Idempotent and fast when everything is present (no apt-get update, no pip call).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then APT=apt-get
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then APT="sudo apt-get"
  else
    # Without root the rest of saekit still installs; tests/test_browser.py then skips with this hint.
    echo "setup_browser.sh: cannot install chromium without root or sudo; browser tests will skip" >&2
    exit 0
  fi
  # setup.sh may have just updated the package lists (python3.11-doc): update only when they lack chromium.
  if ! apt-cache policy chromium-driver 2>/dev/null | grep -q "Candidate: [0-9]"; then
    $APT update -qq >/dev/null
  fi
  DEBIAN_FRONTEND=noninteractive $APT install -y -qq --no-install-recommends \
    chromium chromium-driver fonts-dejavu-core >/dev/null
fi
if ! .venv/bin/python -c "import selenium" 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "selenium>=4.10"
fi
