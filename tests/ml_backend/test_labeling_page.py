"""A team's first hour through Label Studio's own pages, in a Label Studio started with its defaults
(legacy tokens off), in a real browser (Debian's chromium and chromium-driver, headless; .ci/run
installs them). What a person does, as they do it: the admin makes a personal access token on the
Account & Settings page, connects the backend in the Connect Model dialog with Extra params left
empty (first without that token: the dialog says what to do), sets {"BUDGET": 3} under Edit > Extra
params; two annotators sign up and work "Label All Tasks" for two rounds (select a point, pick a
class, submit; delete a point; skip a task); the admin reviews an answered query task and sees the
regions its clicks became, and the saved view lists the round's open query tasks only. Every page
is a screenshot in the test's folder (UPDATE_DOCS=1 copies those docs/ shows)."""

from __future__ import annotations

import os
import re
import shutil
import time

import numpy as np
import pytest
import requests
from PIL import Image

from ml_backend.label_studio.answered_regions import ANSWERED_VERSION
from ml_backend.label_studio.label_config import SHIPPED_CONFIG
from ml_backend.label_studio.client import QUERY_VIEW_TITLE
from model.datasets import CAMVID_CLASSES
from tests.conftest import REPO, missing
from tests.ml_backend.servers import label_studio_server, start_backend, stop, wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DOCS = ("connect-refused.png", "labeling-instructions.png", "labeling-page.png", "review-expanded-clicks.png",
        "saved-view.png")
ANNOTATORS = {"ann": "ann@example.com", "bob": "bob@example.com"}


@pytest.fixture(scope="module")
def default_ls(tmp_path_factory):
    with label_studio_server(tmp_path_factory.mktemp("label-studio-defaults"), defaults=True) as server:
        yield server


def new_browser():
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
    return driver


class Person:
    """One person in their own browser, doing what they do on Label Studio's pages."""

    def __init__(self, ls_url: str, email: str, password: str, shots):
        from selenium.webdriver.common.by import By

        self.By, self.url, self.email, self.password, self.shots = By, ls_url, email, password, shots
        self.driver = new_browser()

    # finding things ------------------------------------------------------------------------------
    def text(self) -> str:
        return self.driver.find_element(self.By.TAG_NAME, "body").text

    def button(self, label: str, timeout: float = 60):
        return wait_until(lambda: next((b for b in self.driver.find_elements(self.By.TAG_NAME, "button")
                                        if b.text.strip() == label and b.is_displayed()), None),
                          timeout, f"the {label!r} button")

    def by_text(self, text: str, timeout: float = 60):
        return wait_until(lambda: next(iter(self.driver.find_elements(
            self.By.XPATH, f"//*[normalize-space(text())={text!r}]")), None), timeout, f"{text!r} on the page")

    def field(self, name: str):
        return wait_until(lambda: next(iter(self.driver.find_elements(self.By.NAME, name)), None), 60,
                          f"the field {name!r}")

    def shot(self, name: str) -> None:
        path = self.shots / name
        self.driver.save_screenshot(str(path))
        assert path.stat().st_size > 10_000, name

    def escape(self) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        ActionChains(self.driver).send_keys(Keys.ESCAPE).perform()

    # pages -----------------------------------------------------------------------------------------
    def sign_up(self) -> None:
        self._enter("signup")

    def log_in(self) -> None:
        self._enter("login")

    def _enter(self, page: str) -> None:
        """Label Studio's sign-up or login page: e-mail, password, submit."""
        self.driver.get(f"{self.url}/user/{page}/")
        self.field("email").send_keys(self.email)
        self.field("password").send_keys(self.password)
        self.driver.find_element(self.By.CSS_SELECTOR, "button[type=submit]").click()
        wait_until(lambda: f"/user/{page}" not in self.driver.current_url, 60, f"the {page}")

    def personal_access_token(self) -> str:
        """Account & Settings > Personal Access Token > Create New Token, copied from the dialog."""
        self.driver.get(f"{self.url}/user/account")
        self.by_text("Personal Access Token").click()

        def token() -> str | None:
            return next((i.get_attribute("value") for i in self.driver.find_elements(self.By.TAG_NAME, "input")
                         if (i.get_attribute("value") or "").startswith("eyJ")), None)
        for attempt in range(3):  # a click before the page has read whether a token exists does nothing
            self.button("Create New Token").click()
            try:
                return wait_until(token, 20, "the new token in its dialog")
            except AssertionError:
                if attempt == 2 or not any(b.text.strip() == "Create New Token" and b.is_displayed()
                                           for b in self.driver.find_elements(self.By.TAG_NAME, "button")):
                    raise
        raise AssertionError("unreachable")

    def connect_model(self, project: int, url: str) -> str:
        """Settings > Model > Connect Model: a name, the URL, Extra params left empty, interactive
        preannotations on, Validate and Save. Returns the page's text afterwards."""
        self.driver.get(f"{self.url}/projects/{project}/settings/ml")
        self.button("Connect Model").click()
        self.field("title").send_keys("two-stage eDALD")
        self.field("url").send_keys(url)
        assert self.field("extra_params").get_attribute("value") == ""
        self.field("is_interactive").find_element(self.By.XPATH, "..").click()
        self.shot("connect-dialog.png")
        self.button("Validate and Save").click()
        return wait_until(lambda: (t := self.text()) and ("Validation error" in t or "Connected" in t) and t, 60,
                          "the dialog's verdict")

    def edit_extra_params(self, project: int, extra: str) -> str:
        """The model card's menu > Edit > Extra params > Validate and Save."""
        self.driver.get(f"{self.url}/projects/{project}/settings/ml")
        wait_until(lambda: "Connected" in self.text(), 60, "the connected model's card")
        menu = [b for b in self.driver.find_elements(self.By.TAG_NAME, "button")
                if "!p-0" in (b.get_attribute("class") or "")][0]  # the card's "..." button
        menu.click()
        self.by_text("Edit").click()
        field = self.field("extra_params")
        field.clear()
        field.send_keys(extra)
        self.button("Validate and Save").click()
        time.sleep(3)
        return self.text()

    def label_all_tasks(self, project: int) -> int | None:
        self.driver.get(f"{self.url}/projects/{project}/data")
        self.button("Label All Tasks", 120).click()
        return self.served(None)

    def served(self, previous: int | None) -> int | None:
        """The task the labeling page shows once it moved on from `previous` (None: the queue is empty)."""
        def current():
            if "No More Tasks Left in Queue" in self.text():
                return "none"
            ids = self.driver.find_elements(self.By.CSS_SELECTOR, ".lsf-current-task__task-id")
            task = int(ids[0].text.split()[0]) if ids and ids[0].text.strip() else None
            return task if task is not None and task != previous and self.regions() is not None else None
        task = wait_until(current, 120, "the next task or the empty queue")
        if task == "none":
            return None
        if "Labeling Instructions" in self.text():
            self.escape()
            wait_until(lambda: "Labeling Instructions" not in self.text(), 30, "the instructions to close")
        return task

    def regions(self) -> list:
        return self.driver.find_elements(self.By.CSS_SELECTOR, ".lsf-outliner-item")

    def select(self, k: int) -> str:
        """Select the k-th point in the Regions list; returns its id (the Info panel shows it)."""
        self.regions()[k].find_element(self.By.CSS_SELECTOR, ".lsf-outliner-item__title").click()
        return wait_until(lambda: (m := re.search(r"\b(q\d+-\d+-\d+)\b", self.text())) and m.group(1), 30,
                          "the selected point's id")

    def give_class(self, name: str) -> None:
        label = next(s for s in self.driver.find_elements(
            self.By.XPATH, f"//span[contains(@class,'lsf-label__text') and normalize-space(text())={name!r}]"))
        label.click()

    def delete_selected(self) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        before = len(self.regions())
        ActionChains(self.driver).send_keys(Keys.BACKSPACE).perform()
        wait_until(lambda: len(self.regions()) == before - 1, 30, "the point to go")

    def answer(self, task: int, classes: dict[str, int], delete: int = 0) -> dict[str, str]:
        """Give each point its true class (`classes`: region id -> CamVid class), deleting void
        points and the first `delete` others; Submit. Returns region id -> what was done."""
        done: dict[str, str] = {}
        k = 0
        while k < len(self.regions()):
            region = self.select(k)
            cls = classes[region]
            if cls == 11 or delete > 0:
                delete -= cls != 11
                self.delete_selected()
                done[region] = "deleted"
                continue
            self.give_class(CAMVID_CLASSES[cls])
            wait_until(lambda: CAMVID_CLASSES[cls] in self.regions()[k].text, 30, "the point's new class")
            done[region] = CAMVID_CLASSES[cls]
            k += 1
        if task == getattr(self, "shoot_labeled", None):
            self.shot("labeling-page-answered.png")
        self.button("Submit").click()
        return done

    def close(self) -> None:
        self.driver.quit()


class Api:
    """Label Studio's API with the admin's personal access token, as a script of theirs would use it."""

    def __init__(self, url: str, token: str):
        from label_studio_sdk import LabelStudio

        self.url, self.sdk = url, LabelStudio(base_url=url, api_key=token)

    def request(self, method: str, path: str, **kw) -> requests.Response:
        headers = self.sdk._client_wrapper.get_headers()
        r = requests.request(method, self.url + path, headers={"Authorization": headers["Authorization"]},
                             timeout=60, **kw)
        assert r.status_code < 400, f"{method} {path}: {r.status_code} {r.text[:300]}"
        return r


def truth(root, name: str, value: dict) -> int:
    labels = np.asarray(Image.open(root / "valannot" / name))
    h, w = labels.shape
    return int(labels[min(h - 1, int(value["y"] / 100 * h)), min(w - 1, int(value["x"] / 100 * w))])


def health(backend) -> dict:
    return requests.get(backend.url + "/health", timeout=10).json()


def round_state(backend, project: int) -> dict:
    return health(backend)["projects"].get(str(project), {}).get("round") or {}


def wait_for_round(backend, project: int, round_index: int) -> dict:
    return wait_until(lambda: (r := round_state(backend, project)).get("round") == round_index
                      and r.get("status") == "open" and r, 300, f"round {round_index} open")


def test_a_team_connects_labels_reviews_and_skips_through_label_studios_pages(default_ls, camvid_root, tmp_path):
    ls, shots = default_ls, tmp_path
    admin = Person(ls.url, ls.email, ls.password, shots)
    people = {name: Person(ls.url, email, "pass-" + name + "-123", shots) for name, email in ANNOTATORS.items()}
    backend = None
    try:
        admin.log_in()
        token = admin.personal_access_token()
        assert token.count(".") >= 1  # a JWT refresh token, not a legacy one
        api = Api(ls.url, token)
        project = api.request("POST", "/api/projects", json={"title": "street scenes",
                                                             "label_config": SHIPPED_CONFIG.read_text()}).json()["id"]
        names = sorted(p.name for p in (camvid_root / "val").glob("*.png"))[:6]
        api.request("POST", f"/api/projects/{project}/import",
                    files=[(f"f{i}", (n, open(camvid_root / "val" / n, "rb"), "image/png")) for i, n in enumerate(names)])
        image_names = {t["id"]: t["data"]["image"].rsplit("/", 1)[1].split("-", 1)[1] for t in
                       api.request("GET", f"/api/tasks?project={project}&page_size=100").json()["tasks"]}
        settings = {"BUDGET": "4", "EXPANDER": "superpixel", "CANDIDATES": "400"}

        # 1. connecting without a token of its own: the backend only has the legacy token /setup carries
        backend = start_backend(tmp_path / "model", {**settings, "LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": ""})
        verdict = admin.connect_model(project, backend.url)
        admin.shot("connect-refused.png")
        assert "Validation error" in verdict and "legacy token authentication has been disabled" in verdict
        assert "Personal Access Token" in verdict and "LABEL_STUDIO_API_KEY" in verdict
        refusal = health(backend)["refused_by_label_studio"][str(project)]
        assert "Legacy Tokens" in refusal
        stop(backend.process)
        logged = backend.log.read_text().lower()
        assert "set-cookie" not in logged and "sessionid" not in logged and "csrftoken" not in logged

        # 2. as the README says: the backend with the personal access token; Extra params left empty
        backend = start_backend(tmp_path / "model", {**settings, "LABEL_STUDIO_URL": ls.url,
                                                     "LABEL_STUDIO_API_KEY": token})
        verdict = admin.connect_model(project, backend.url)
        assert "Connected" in verdict and "Validation error" not in verdict, verdict[-800:]
        admin.shot("model-connected.png")
        round0 = wait_for_round(backend, project, 0)
        assert round0["open"] == 4  # BUDGET from the environment

        # 3. Edit > Extra params: a typo is refused with where it is, then {"BUDGET": 3} is taken
        page = admin.edit_extra_params(project, '{"BUDGET": 3,}')
        admin.shot("extra-params-refused.png")
        assert "Extra params are not JSON" in page and "line 1 column 14" in page
        admin.escape()
        page = admin.edit_extra_params(project, '{"BUDGET": 3}')
        assert "Validation error" not in page
        view = health(backend)["projects"][str(project)]
        assert view["overrides"] == {"BUDGET": 3} and view["settings"]["BUDGET"] == 3

        # 4. round 0: two annotators; each selects points, gives classes, one point is deleted
        for person in people.values():
            person.sign_up()
        ann, bob = people["ann"], people["bob"]
        answers: dict[int, dict[str, str]] = {}

        def classes_of(task: int) -> dict[str, int]:
            data = api.request("GET", f"/api/tasks/{task}").json()
            (prediction,) = [p for p in data["predictions"] if p["result"] and p["result"][0]["type"] == "keypointlabels"
                             and p["model_version"] == api.request("GET", f"/api/projects/{project}").json()
                             ["model_version"]]
            name = image_names[int(data["data"]["query_for_task"])]
            return {r["id"]: truth(camvid_root, name, r["value"]) for r in prediction["result"]}

        first = ann.label_all_tasks(project)
        assert first is not None
        page = ann.text()
        assert "Label me" in page and "Give each magenta 'Label me' point its class" in page  # the query header
        ann.shot("labeling-page.png")
        ann.by_text("Instructions").click()
        wait_until(lambda: "round 0 is open: 4 points" in ann.text(), 30, "the instructions saying the round is open")
        ann.shot("labeling-instructions.png")
        ann.escape()
        second = bob.label_all_tasks(project)  # a second task, if round 0 has one, is locked to bob
        answered_by = {name: [] for name in ANNOTATORS}

        def work(name: str, task: int | None, delete: int = 0) -> None:
            """`name` answers `task` and whatever the queue serves them next, until it is empty."""
            while task is not None:
                answers[task] = people[name].answer(task, classes_of(task), delete=delete)
                answered_by[name].append(task)
                task, delete = people[name].served(task), 0

        work("bob", second, delete=1)
        work("ann", first, delete=0 if second is not None else 1)
        assert sum(v == "deleted" for a in answers.values() for v in a.values()) >= 1

        # 5. between rounds the instructions and the description say the next round is coming, and when
        def said() -> str:
            return api.request("GET", f"/api/projects/{project}").json()["description"]
        now = wait_until(lambda: (d := said()) and ("round 1 is being computed" in d or "round 1 is open" in d) and d,
                         300, "the description to say where round 1 stands", interval=0.2)
        if "round 1 is being computed" in now:  # the annotator's page, while it is
            ann.driver.refresh()  # the instructions open by themselves (show_instruction)
            wait_until(lambda: "round 1 is being computed" in ann.text(), 30, "the instructions saying so")
            ann.shot("between-rounds.png")
            ann.escape()
        round1 = wait_for_round(backend, project, 1)
        assert round1["open"] == 3  # the BUDGET set in Edit > Extra params
        assert "Active learning now: round 1 is open: 3 points" in said()
        assert "told annotators: round 1 is being computed since" in backend.log.read_text()

        # 6. the saved view lists exactly round 1's open query tasks
        admin.driver.get(f"{ls.url}/projects/{project}/data")
        tab = wait_until(lambda: next((t for t in admin.driver.find_elements(admin.By.XPATH, "//*[contains(text(),"
                                       f"{QUERY_VIEW_TITLE[:15]!r})]") if t.is_displayed()), None), 60,
                         "the saved view's tab")
        tab.click()
        listed = wait_until(lambda: (ids := {int(e.get_attribute("aria-label").rsplit(" ", 1)[1]) for e in
                                             admin.driver.find_elements(admin.By.CSS_SELECTOR,
                                                                        "[aria-label^='Select Task ']")}) and ids,
                            60, "the view's rows")
        admin.shot("saved-view.png")
        open_holders = {t["id"] for t in api.request(
            "GET", f"/api/tasks?project={project}&page_size=100&fields=all").json()["tasks"]
            if str(t["data"].get("query_key", "")).startswith(f"p{project}-r1-t")}
        assert listed == open_holders and not listed & set(image_names)
        assert re.search(rf"Tasks: {len(open_holders)} / \d+", admin.text())

        # 7. round 1: a task is skipped; nobody is ever served it again (bob asks first, so that with two
        # tasks or more each holds one, and ann skips hers; with one, bob skips it and ann never gets it)
        held = {"bob": bob.label_all_tasks(project), "ann": ann.label_all_tasks(project)}
        skipper = "ann" if held["ann"] is not None else "bob"
        other = "bob" if skipper == "ann" else "ann"
        skipped = held[skipper]
        assert skipped is not None
        people[skipper].button("Skip").click()
        before = {name: len(done) for name, done in answered_by.items()}
        work(skipper, people[skipper].served(skipped))
        work(other, held[other] if held[other] is not None else people[other].label_all_tasks(project))
        served_after_skip = [t for name in ANNOTATORS for t in answered_by[name][before[name]:]]
        assert skipped not in served_after_skip and skipped not in answers
        assert all(answered_by.values()), answered_by  # both annotators labeled
        round2 = wait_for_round(backend, project, 2)
        history = requests.get(backend.url + "/metrics", timeout=10).json()["projects"][str(project)]["rounds"]
        assert history[1]["dismissed"] >= 1 and history[1]["unanswered"] == 0 and round2["open"] == 3

        # 8. the reviewer opens an answered query task and sees what its clicks became
        answered = next(t for t, done in answers.items() if any(v != "deleted" for v in done.values()))
        wait_until(lambda: any(p["model_version"] == ANSWERED_VERSION for p in
                               api.request("GET", f"/api/tasks/{answered}").json()["predictions"]), 120,
                   "the expanded regions on the answered task")
        admin.driver.get(f"{ls.url}/projects/{project}/data?task={answered}")
        wait_until(lambda: ANSWERED_VERSION in admin.text(), 60, "the expanded-clicks tab")
        admin.escape()
        admin.driver.find_element(admin.By.XPATH, f"//span[contains(@class,'annotation-button__name') and "
                                                  f"contains(text(),{ANSWERED_VERSION!r})]").click()
        kept = [v for v in answers[answered].values() if v != "deleted"]
        wait_until(lambda: all(name in admin.text() for name in kept), 30, "the regions' classes")
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(admin.driver).move_to_element(admin.by_text("Regions")).perform()  # no tooltip on the picture
        admin.shot("review-expanded-clicks.png")
        regions = [r for p in api.request("GET", f"/api/tasks/{answered}").json()["predictions"]
                   if p["model_version"] == ANSWERED_VERSION for r in p["result"]]
        assert sorted(r["value"]["brushlabels"][0] for r in regions) == sorted(kept)
        assert all("training pixels" in r["meta"]["text"][0] for r in regions)

        for name in DOCS + ("between-rounds.png",):
            assert (shots / name).exists() or name == "between-rounds.png"  # taken when caught computing
            if os.environ.get("UPDATE_DOCS") and (shots / name).exists():
                shutil.copy(shots / name, REPO / "docs" / name)
    except Exception:
        for name, person in (("admin", admin), *people.items()):
            person.shot(f"failed-{name}.png")
        raise
    finally:
        for person in (admin, *people.values()):
            person.close()
        if backend is not None:
            stop(backend.process)
