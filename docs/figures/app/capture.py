"""Screenshots of each view of the live explorer (docs/visualization.md shows them).

    .venv/bin/python docs/figures/app/capture.py [OUT_DIR]

Starts the app on 127.0.0.1 with the installed models, drives Debian's Chromium with Playwright (network blocked
outside the app), types a sentence, picks a head and a query, composes a what-if mask, and saves one PNG per panel; then the
decoder's next-token panel (SmolLM2) and the speech panel (Whisper tiny.en reading an espeak-ng sentence).
"""

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from attnlab.app import App

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
TEXT = "The cat sat on the mat because it was tired."
PANELS = {"heatmap": "#heatmap", "head-view": "#lines", "model-view": "#grid", "steps": "#steps",
          "neurons": "#neurons", "diagnostics": "#diagnostics", "masks": "#mask-info", "cost": "#cost"}


def main() -> None:
    app = App()
    server = app.serve()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                        args=["--headless", "--no-sandbox", "--disable-gpu",
                                              "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith((server.url, "data:", "blob:"))
                       else r.abort())
            page.goto(server.url)
            page.wait_for_selector("#tokens button")
            page.fill("#text", TEXT)
            with page.expect_response(lambda r: r.url.endswith("/api/attention")):
                page.click("#run")
            page.select_option("#head", "2")
            page.click("#tokens button[data-i='4']")
            with page.expect_response(lambda r: r.url.endswith("/api/mask")):
                page.click("#mask-draw")
            page.wait_for_timeout(500)
            for name, selector in PANELS.items():
                page.locator(selector).locator("xpath=ancestor-or-self::section[1]").screenshot(
                    path=str(OUT / f"{name}.png"))
                print(OUT / f"{name}.png")
            if "smollm2-135m" in app.choices:
                page.select_option("#model", "smollm2-135m")
                page.wait_for_selector("#decoder-panel:not([hidden])")
                page.fill("#text", "The capital of France is")
                with page.expect_response(lambda r: r.url.endswith("/api/next")):
                    page.click("#run")
                with page.expect_response(lambda r: r.url.endswith("/api/attention")):
                    page.click("#generate")
                page.wait_for_timeout(500)
                page.locator("#decoder-panel").screenshot(path=str(OUT / "next-token.png"))
                print(OUT / "next-token.png")
            if "whisper-tiny.en" in app.choices:
                page.select_option("#model", "whisper-tiny.en")
                page.wait_for_selector("#speech-panel:not([hidden])")
                page.fill("#text", "The quick brown fox jumps over the lazy dog.")
                with page.expect_response(lambda r: r.url.endswith("/api/speech"), timeout=120000):
                    page.click("#run")
                page.locator("#transcript", has_text="fox").wait_for()
                page.wait_for_timeout(500)
                page.locator("#speech-panel").screenshot(path=str(OUT / "speech.png"))
                print(OUT / "speech.png")
            page.screenshot(path=str(OUT / "page.png"), full_page=True)
            print(OUT / "page.png")
            browser.close()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
