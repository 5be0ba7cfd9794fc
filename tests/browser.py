"""Headless Chromium for the tests: Debian's binary (the test command installs it), with the flags a machine
without internet needs (no background fetches, no component updates)."""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
)
