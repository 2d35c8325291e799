"""A Chromium for the browser tests (test_app.py), found or installed by the tests themselves: the README's two
commands (`pip install ... -e ".[test]"`, `python -m pytest tests`) need no browser installed by hand.

`launch(playwright, args)` takes the first of these that starts:

1. `$BEIT_FLAX_CHROMIUM`, an executable (nothing else is tried: a browser named on purpose that fails is the answer);
2. Playwright's own Chromium, where `playwright install` has put one in its cache;
3. a Chromium or Chrome on PATH (Debian's `chromium`, `chromium-browser`, `google-chrome`, ...);
4. the one a previous run installed in `~/.cache/beit-flax/browser` (`$BEIT_FLAX_BROWSER_DIR`; `$XDG_CACHE_HOME`);
then it installs one and takes it:
5. `python -m playwright install chromium-headless-shell`: Playwright's usual download (~110 MB, from its CDN);
6. `npm install @sparticuz/chromium@NPM_VERSION` into that cache (x86-64 Linux, with Node.js and npm): a Chromium
   headless shell shipped inside the npm package itself (~70 MB, brotli-compressed, with the NSS libraries it links),
   unpacked by the package's own code; for machines that reach the npm registry but not Playwright's CDN. It needs
   only glibc and fontconfig from the system (checked on a bare Debian 12 with fontconfig and fonts-dejavu-core).

If none starts, the test fails with one line: what was tried and how to get a browser. Each install step is bounded
(`INSTALL_TIMEOUT_S`) and leaves nothing half-made under its final name (a temp folder renamed when complete).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ENV = "BEIT_FLAX_CHROMIUM"
DIR_ENV = "BEIT_FLAX_BROWSER_DIR"
NPM_PACKAGE = "@sparticuz/chromium"
NPM_VERSION = "153.0.0"  # Chromium 153; pinned: npm checks the tarball against the registry's sha512
ON_PATH = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "chrome-headless-shell")
INSTALL_TIMEOUT_S = 600  # one download and unpack; a hung network must not hang the suite

# Run with the package's folder as the working directory: the package unpacks its Chromium (and the SwiftShader
# libraries beside it) into os.tmpdir(), which TMPDIR points at our folder; its NSS libraries (al2023.tar.br) it
# unpacks only on Amazon Linux, so that is asked for here: they go to TMPDIR/al2023/lib.
UNPACK_JS = """
import chromium, { inflate } from "@sparticuz/chromium";
import { fileURLToPath } from "node:url";
const executable = await chromium.executablePath();
await inflate(fileURLToPath(new URL("./node_modules/@sparticuz/chromium/bin/al2023.tar.br", import.meta.url)));
console.log(executable);
"""


def cache_dir() -> Path:
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "beit-flax" / "browser"


def npm_folder() -> Path:
    return cache_dir() / f"sparticuz-chromium-{NPM_VERSION}"


def npm_browser(folder: Path) -> tuple[Path, dict[str, str]] | None:
    """(executable, extra environment) of an unpacked npm Chromium in `folder`, or None."""
    executable = folder / "unpacked" / "chromium"
    if not os.access(executable, os.X_OK):
        return None
    libraries = str(folder / "unpacked" / "al2023" / "lib")
    previous = os.environ.get("LD_LIBRARY_PATH")
    return executable, {"LD_LIBRARY_PATH": f"{libraries}:{previous}" if previous else libraries}


def _run(command: list[str], **kwargs) -> str | None:
    """None if `command` succeeded, else its last line of output (or why it could not run)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{command[0]}: {err}"
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return next((line.strip() for line in reversed(lines) if line.strip()), f"exit status {done.returncode}")


def install_playwright() -> str | None:
    """Playwright's own headless Chromium, its usual way; None if installed, else why not."""
    return _run([sys.executable, "-m", "playwright", "install", "chromium-headless-shell"])


def install_npm() -> str | None:
    """`NPM_PACKAGE` installed and unpacked into `npm_folder()`; None if done, else why not."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"{NPM_PACKAGE} ships an x86-64 Linux build only"
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        return "no npm / node on PATH"
    final = npm_folder()
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".install-", dir=final.parent))
    try:
        error = _run([npm, "install", "--prefix", str(work), "--no-audit", "--no-fund", f"{NPM_PACKAGE}@{NPM_VERSION}"])
        if error is None:
            (work / "unpacked").mkdir()
            (work / "unpack.mjs").write_text(UNPACK_JS)
            env = {**os.environ, "TMPDIR": str(work / "unpacked")}
            error = _run([node, str(work / "unpack.mjs")], cwd=work, env=env)
        if error is None and npm_browser(work) is None:
            error = "the package unpacked no chromium executable"
        if error is None:  # what runs is unpacked; the compressed copy is 70 MB more
            shutil.rmtree(work / "node_modules")
        if error is not None:
            return f"npm install {NPM_PACKAGE}@{NPM_VERSION}: {error}"
        if final.exists():  # another run finished first: keep its copy
            return None
        work.rename(final)
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def launch(playwright, args: list[str]):
    """A headless Chromium Browser (see the module doc), or pytest.fail with one line."""
    from playwright.sync_api import Error

    chromium = playwright.chromium
    named = os.environ.get(ENV)
    if named:
        if not os.access(named, os.X_OK):
            pytest.fail(f"${ENV}={named} is not an executable file")
        return chromium.launch(executable_path=named, headless=True, args=args)

    tried: list[str] = []

    def attempt(executable: Path | str | None = None, env: dict[str, str] | None = None):
        try:
            options = {"executable_path": str(executable)} if executable else {}
            if env:
                options["env"] = {**os.environ, **env}
            return chromium.launch(headless=True, args=args, **options)
        except Error as err:
            tried.append(f"{executable or 'Playwright own'}: {str(err).strip().splitlines()[0]}")
            return None

    # Playwright's own first (None: its default; a missing one fails at once), then PATH's
    for executable in [None, *(found for name in ON_PATH if (found := shutil.which(name)))]:
        if (browser := attempt(executable)) is not None:
            return browser
    if (unpacked := npm_browser(npm_folder())) is not None and (browser := attempt(*unpacked)) is not None:
        return browser
    if (error := install_playwright()) is None:
        if (browser := attempt()) is not None:
            return browser
    else:
        tried.append(f"playwright install chromium-headless-shell: {error}")
    if (error := install_npm()) is None:
        if (unpacked := npm_browser(npm_folder())) is not None and (browser := attempt(*unpacked)) is not None:
            return browser
    else:
        tried.append(error)
    pytest.fail(
        "no Chromium for the browser tests (tried: " + "; ".join(tried) + "). Get one with `python -m playwright "
        "install chromium`, `apt-get install chromium`, or Node.js + npm (the tests then install "
        f"{NPM_PACKAGE}), or set ${ENV}"
    )
