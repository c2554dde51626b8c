"""Render the built book in headless Chromium and check what a reader sees.

Run by ``make test`` (target ``html-check``). Steps:

1. Build the book into ``_build/check`` with ``-W -n``. Only the introduction is executed here: nbval has just
   executed every chapter, so executing them all again would double the test time. Every page is still built,
   so the navigation is complete.
2. Make Chromium and a local MathJax available: Debian's ``chromium`` and ``libjs-mathjax`` are installed with
   apt-get when we are root (or have password-less sudo, as on a hosted CI runner); the published book loads MathJax from its CDN, which this offline check cannot reach,
   so the check build points ``mathjax_path`` at the local copy (a ``file://`` address, nothing is copied).
3. Render ``index.html``, the introduction and one more chapter with ``chromium --headless --dump-dom`` and check
   that equations were typeset (MathJax output, no raw TeX delimiters, no processing errors), that the
   introduction's figures are present, and that every page of ``_toc.yml`` is in the navigation.

Where Chromium cannot be installed the check is skipped with a visible message, except under ``CI=true``,
where a skip is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "_build" / "check"
MATHJAX_DIR = Path("/usr/share/javascript/mathjax")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--allow-file-access-from-files",
]


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [chapter["file"] for chapter in part.get("chapters", [])]
    return files


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def install_browser() -> None:
    """apt-get install chromium and libjs-mathjax when we can (root with apt-get); quiet otherwise."""
    missing = [pkg for pkg, ok in (("chromium", find_chromium()), ("libjs-mathjax", MATHJAX_DIR.is_dir())) if not ok]
    if not missing or not shutil.which("apt-get"):
        return
    if os.geteuid() == 0:
        prefix = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        prefix = ["sudo", "-n", "DEBIAN_FRONTEND=noninteractive"]  # e.g. a hosted CI runner
    else:
        return
    print(f"browser check: installing {' '.join(missing)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*prefix, "apt-get", "update", "-qq"], env=env, check=False, stdout=subprocess.DEVNULL)
    subprocess.run([*prefix, "apt-get", "install", "-y", "-qq", *missing], env=env, check=False,
                   stdout=subprocess.DEVNULL)


def build() -> None:
    """Build every page, executing only the introduction, with the local MathJax."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    intro = toc_files()[0]
    others = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "chapters").glob("*.md") if p.stem != Path(intro).name)
    config["execute"]["exclude_patterns"] = others
    sphinx_config = config.setdefault("sphinx", {}).setdefault("config", {})
    # Chapters are not executed here, so their glued numbers are absent: that is expected in this build (which checks
    # rendering and navigation); the executed builds (`make book`, `make book-full`) keep the glue warnings fatal.
    sphinx_config["suppress_warnings"] = [*sphinx_config.get("suppress_warnings", []), "mystnb.glue"]
    sphinx_config["mathjax_path"] = f"{(MATHJAX_DIR / 'MathJax.js').as_uri()}?config=TeX-AMS-MML_HTMLorMML"
    # Debian ships MathJax 2: give it the version-2 form of the settings the book uses with MathJax 3
    # (pages are marked tex2jax_ignore; only the math elements are processed).
    sphinx_config["mathjax3_config"] = None
    sphinx_config["mathjax2_config"] = {
        "tex2jax": {"processClass": "tex2jax_process|mathjax_process|math|output_area", "ignoreClass": "tex2jax_ignore"}
    }
    OUT.mkdir(parents=True, exist_ok=True)
    config_path = OUT / "_config.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--path-output", str(OUT),
           "--config", str(config_path), "-W", "-n", "--keep-going"]
    print("browser check: building the book for the check (introduction executed)", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def render(chromium: str, page: Path, shot: Path | None = None) -> str:
    """The DOM of ``page`` after its scripts ran (and a screenshot when ``shot`` is given)."""
    profile = OUT / "chromium-profile"
    base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180, check=True)
    if shot is not None:
        subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                       capture_output=True, timeout=180, check=False)
    return dom.stdout


def check_page(name: str, dom: str, want_figure: bool, pages: list[str]) -> list[str]:
    problems = []
    typeset = len(re.findall(r'class="MathJax(_CHTML|_SVG)?"', dom)) + dom.count("<mjx-container")
    if typeset == 0:
        problems.append(f"{name}: no typeset equation (MathJax produced no output)")
    if "Math Processing Error" in dom or re.search(r'class="[^"]*MathJax_Error', dom):
        problems.append(f"{name}: MathJax reported an error")
    if want_figure and not re.search(r'<img[^>]+src="[^"]*_images/[^"]+\.(png|svg)"', dom):
        problems.append(f"{name}: no figure (no image from an executed cell)")
    for page in pages:
        if f"{Path(page).name}.html" not in dom:
            problems.append(f"{name}: navigation has no link to {page}")
    print(f"  {name}: {typeset} typeset equations, figure {'found' if want_figure and not problems else 'n/a'}")
    return problems


def main() -> int:
    in_ci = os.environ.get("CI", "").lower() == "true"
    install_browser()
    chromium = find_chromium()
    if chromium is None or not MATHJAX_DIR.is_dir():
        message = "browser check SKIPPED: Chromium or a local MathJax (Debian chromium, libjs-mathjax) is missing"
        print(("FAILED: " if in_ci else "") + message + (" and CI=true forbids a skip" if in_ci else ""))
        return 1 if in_ci else 0
    build()
    html = OUT / "_build" / "html"
    pages = toc_files()
    index = (html / "index.html").read_text()
    problems = [] if f"{pages[0]}.html" in index else [f"index.html does not lead to {pages[0]}.html"]
    # The intro (executed: figures) and the first other chapter (math only: not executed in this build).
    targets = [(pages[0], True)] + [(p, False) for p in pages[1:2]]
    for page, want_figure in targets:
        dom = render(chromium, html / f"{page}.html", shot=OUT / f"{Path(page).name}.png")
        problems += check_page(page, dom, want_figure, pages)
    if problems:
        print("browser check FAILED:\n  " + "\n  ".join(problems))
        return 1
    print(f"browser check passed: {len(targets)} pages rendered, {len(pages)} pages in the navigation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
