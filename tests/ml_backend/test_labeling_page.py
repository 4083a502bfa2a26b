"""The annotator's path in a real browser: log in to Label Studio, press "Label All Tasks", and meet a
query point with its placeholder label and the instructions. Debian's chromium and chromium-driver
drive it headless (.ci/run installs them); the test writes the screenshot that docs/ keeps."""

from __future__ import annotations

import os
import shutil

import pytest

from ml_backend.label_config import SHIPPED_CONFIG
from tests.conftest import REPO, missing
from tests.ml_backend.servers import start_backend, stop, wait_until
from tests.ml_backend.test_label_studio_loop import import_camvid, wait_for_open_round

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        missing("no headless Chromium: apt-get install chromium chromium-driver (Debian)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1440,900",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def test_label_all_tasks_shows_the_query_point_with_its_placeholder(ls, camvid_root, tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    backend = start_backend(tmp_path / "model", {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token,
                                                 "BUDGET": "3", "EXPANDER": "none"})
    try:
        project = ls.api("POST", "/api/projects", json={"title": "browser", "label_config": SHIPPED_CONFIG.read_text()}
                         ).json()["id"]
        import_camvid(ls, project, camvid_root, 2)
        ls.api("POST", "/api/ml", json={"project": project, "url": backend.url, "title": "two-stage eDALD"})
        wait_for_open_round(ls, backend, project, 0, f"p{project}-round-0")

        browser.get(f"{ls.url}/user/login/")
        browser.find_element(By.NAME, "email").send_keys(ls.email)
        browser.find_element(By.NAME, "password").send_keys(ls.password)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_until(lambda: "/user/login" not in browser.current_url, 60, "the login")
        browser.get(f"{ls.url}/projects/{project}/data")
        button = wait_until(lambda: next((b for b in browser.find_elements(By.TAG_NAME, "button")
                                          if "Label All Tasks" in b.text), None), 120, 'the "Label All Tasks" button')
        button.click()
        # the labeling page: the instructions come first (show_instruction), then the task
        page = wait_until(lambda: (text := browser.find_element(By.TAG_NAME, "body").text) and "Label me" in text
                          and "Give each magenta" in text and text, 120, "the query point in the labeling page")
        assert "Label me" in page and "Sky" in page  # the placeholder among the region labels and the classes
        browser.save_screenshot(str(tmp_path / "labeling-instructions.png"))
        ActionChains(browser).send_keys(Keys.ESCAPE).perform()  # close the instructions
        wait_until(lambda: "Labeling Instructions" not in browser.find_element(By.TAG_NAME, "body").text, 30,
                   "the instructions to close")
        assert browser.find_elements(By.TAG_NAME, "canvas")  # the image and its points are drawn
        browser.save_screenshot(str(tmp_path / "labeling-page.png"))
        for name in ("labeling-instructions.png", "labeling-page.png"):
            assert (tmp_path / name).stat().st_size > 20_000
            if os.environ.get("UPDATE_DOCS"):
                shutil.copy(tmp_path / name, REPO / "docs" / name)
    finally:
        stop(backend.process)
