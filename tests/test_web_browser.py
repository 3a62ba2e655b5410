"""The inbox page in headless Chromium: live updates, the message view, hostile mail, and
the outbound queue.

Driven with Selenium and Debian's ``chromium`` and ``chromium-driver``.
Mail goes in over SMTP, as an application under test would send it.
"""

from __future__ import annotations

import os
import smtplib
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from loopback import HttpSite
from mailgate.config import Outbound
from mailgate.model import MessageId
from mailgate.web import WebSettings
from server_helpers import require_tool
from web_helpers import LiveInbox, deliver, email, require_module

pytestmark = [pytest.mark.interop, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)
WAIT_SECONDS = 15
PHONE = (390, 844)
DESKTOP = (1280, 900)
SCREENSHOTS = "MAILGATE_SCREENSHOTS"
"""A directory to save screenshots of the page in, for a person to look at; none: none."""


@pytest.fixture
def browser() -> Iterator[Any]:
    require_tool(CHROMIUM)
    require_tool(CHROMEDRIVER)
    webdriver = require_module("selenium.webdriver")
    service_module = require_module("selenium.webdriver.chrome.service")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        service=service_module.Service(executable_path=CHROMEDRIVER), options=options
    )
    try:
        yield driver
    finally:
        driver.quit()


def snapshot(driver: Any, name: str) -> None:
    """Save what the page looks like now as ``NAME-WIDTH.png``, when asked to."""
    directory = os.environ.get(SCREENSHOTS)
    if directory:
        width = driver.execute_script("return window.innerWidth")
        Path(directory).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(directory) / f"{name}-{width}.png"))


def refused_by_the_page_policy(driver: Any) -> list[str]:
    """What the console said the page's Content-Security-Policy refused, since last asked."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]


def wait_until(driver: Any, condition: Any, message: str) -> Any:
    ui = require_module("selenium.webdriver.support.ui")
    return ui.WebDriverWait(driver, WAIT_SECONDS).until(condition, message)


def by_css(selector: str) -> tuple[str, str]:
    return ("css selector", selector)


def open_live(driver: Any, inbox: LiveInbox) -> None:
    """Open the inbox page and wait until its live events are connected."""
    driver.get(inbox.url + "/")
    wait_until(
        driver,
        lambda d: "on" in d.find_element(*by_css("#live")).get_attribute("class"),
        "live",
    )


def rows(driver: Any) -> list[str]:
    """Subjects listed, read in one step (the list re-renders as events arrive)."""
    subjects: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#messages .message .subject')]"
        ".map((node) => node.textContent)"
    )
    return subjects


def row(driver: Any, subject: str) -> dict[str, Any]:
    """The listed row of ``subject``: its classes, size classes and snippet."""
    found: dict[str, Any] = driver.execute_script(
        """
        const row = [...document.querySelectorAll('#messages .message')]
            .find((node) => node.querySelector('.subject').textContent === arguments[0]);
        return row && {
            classes: row.className,
            size: row.querySelector('.size').className,
            snippet: row.querySelector('.snippet').textContent,
        };
        """,
        subject,
    )
    return found


def open_row(driver: Any, subject: str) -> None:
    driver.execute_script(
        """
        [...document.querySelectorAll('#messages .message')]
            .find((node) => node.querySelector('.subject').textContent === arguments[0])
            .click();
        """,
        subject,
    )


def address(driver: Any) -> str:
    """The page's address past the host: path, query and fragment."""
    shown: str = driver.execute_script("return location.pathname + location.search + location.hash")
    return shown


def opened(driver: Any, subject: str) -> None:
    wait_until(
        driver,
        lambda d: (
            d.find_element(*by_css("#view")).is_displayed()
            and d.find_element(*by_css("#view-subject")).text == subject
        ),
        f"{subject} opened",
    )


def listing(driver: Any, subjects: list[str]) -> None:
    """Wait until the list shows ``subjects`` (and no message, where the list hides then)."""
    wait_until(driver, lambda d: rows(d) == subjects, f"listed: {subjects}")
    wait_until(driver, lambda d: d.find_element(*by_css(".list-pane")).is_displayed(), "shown")


def ids_by_subject(inbox: LiveInbox) -> dict[str, str]:
    return {s.subject: s.id for s in inbox.call(inbox.store.list()).messages}


def send(port: int, message: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.send_message(message)


def newsletter() -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Shop <news@shop.example>"
    message["To"] = "you@example.org"
    message["Subject"] = "Spring sale"
    message.set_content("Everything is 20% off.")
    message.add_alternative(
        "<h1 id='headline'>Spring <i>sale</i></h1><p>Everything is 20% off.</p>", subtype="html"
    )
    message.add_attachment(
        b"%PDF-1.4", maintype="application", subtype="pdf", filename="prices.pdf"
    )
    return message


def test_mail_appears_live_opens_is_found_and_is_deleted(tmp_path: Path, browser: Any) -> None:
    with LiveInbox(tmp_path) as inbox:
        open_live(browser, inbox)
        browser.execute_script("window.notReloaded = true")

        sale_message = newsletter()
        sale_message["Bcc"] = "archive@shop.example"  # smtplib sends it in the envelope only
        send(inbox.smtp_port, sale_message)
        other = EmailMessage()
        other["From"] = "bob@example.org"
        other["To"] = "you@example.org"
        other["Subject"] = "Lunch tomorrow?"
        other.set_content("Pizza?")
        send(inbox.smtp_port, other)

        wait_until(browser, lambda d: rows(d) == ["Lunch tomorrow?", "Spring sale"], "both listed")
        assert browser.execute_script("return window.notReloaded") is True
        assert "unread" in row(browser, "Lunch tomorrow?")["classes"]
        sale = row(browser, "Spring sale")
        assert "clip" in sale["size"]
        assert "20% off" in sale["snippet"]

        # Open it: the HTML renders in the sandboxed frame.
        open_row(browser, "Spring sale")
        wait_until(
            browser,
            lambda d: d.find_element(*by_css("#view-subject")).text == "Spring sale",
            "opened",
        )
        frame = browser.find_element(*by_css("#html-frame"))
        assert frame.get_attribute("sandbox") == ""
        browser.switch_to.frame(frame)
        wait_until(browser, lambda d: d.find_elements(*by_css("#headline")), "HTML rendered")
        assert browser.find_element(*by_css("#headline")).text == "Spring sale"
        browser.switch_to.default_content()
        assert browser.find_element(*by_css("#view-bcc")).text == "archive@shop.example"
        wait_until(browser, lambda d: "unread" not in row(d, "Spring sale")["classes"], "read")

        for tab, panel, expected in (
            ("text", "#text-body", "Everything is 20% off."),
            ("headers", "#headers-body", "Spring sale"),
            ("raw", "#raw-body", "Subject: Spring sale"),
            ("attachments", "#attachments", "prices.pdf"),
        ):
            browser.find_element(*by_css(f".tabs button[data-tab='{tab}']")).click()
            wait_until(
                browser, lambda d, p=panel, e=expected: e in d.find_element(*by_css(p)).text, tab
            )
        link = browser.find_element(*by_css("#attachments a"))
        assert "/part/" in link.get_attribute("href")

        # Search filters the list.
        box = browser.find_element(*by_css("#search"))
        box.send_keys("from:bob")
        wait_until(browser, lambda d: rows(d) == ["Lunch tomorrow?"], "search")
        box.clear()
        box.send_keys("has:attachment")
        wait_until(browser, lambda d: rows(d) == ["Spring sale"], "search again")
        box.clear()
        box.send_keys(" ")
        wait_until(browser, lambda d: len(rows(d)) == 2, "search cleared")

        # Delete the open one.
        browser.find_element(*by_css("#delete-one")).click()
        wait_until(browser, lambda d: rows(d) == ["Lunch tomorrow?"], "deleted")
        assert not browser.find_element(*by_css("#view")).is_displayed()
        assert inbox.call(inbox.store.list()).total == 1
        assert browser.execute_script("return window.notReloaded") is True


def test_a_listing_fetched_before_live_mail_does_not_hide_it(tmp_path: Path, browser: Any) -> None:
    with LiveInbox(tmp_path) as inbox:
        open_live(browser, inbox)
        send(inbox.smtp_port, simple("First"))
        wait_until(browser, lambda d: rows(d) == ["First"], "first listed")
        # Hold back every response the page gets, so the listing it fetches next (after
        # the read event) is applied only after the next message has arrived live.
        browser.execute_script(
            """
            const fetchNow = window.fetch;
            window.fetch = (...args) => fetchNow(...args).then(
                (response) => new Promise((done) => setTimeout(() => done(response), 1500)));
            """
        )
        httpx.put(f"{inbox.url}/api/v1/messages", json={"IDs": [], "Read": True}).raise_for_status()
        time.sleep(0.3)  # the page has asked for the listing, and waits for it
        send(inbox.smtp_port, simple("Second"))
        wait_until(browser, lambda d: rows(d) == ["Second", "First"], "second listed")
        time.sleep(2.5)  # the held-back listing, which predates "Second", has been applied
        assert rows(browser) == ["Second", "First"]


def simple(subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "bob@example.org"
    message["To"] = "you@example.org"
    message["Subject"] = subject
    message.set_content("Hello.")
    return message


def test_phone_width_shows_list_then_message(tmp_path: Path, browser: Any) -> None:
    browser.set_window_size(390, 844)
    with LiveInbox(tmp_path) as inbox:
        send(inbox.smtp_port, newsletter())
        browser.get(inbox.url + "/")
        wait_until(browser, lambda d: rows(d) == ["Spring sale"], "listed")
        assert browser.execute_script("return document.documentElement.scrollWidth <= 390")
        open_row(browser, "Spring sale")
        wait_until(browser, lambda d: d.find_element(*by_css("#back")).is_displayed(), "opened")
        assert not browser.find_element(*by_css(".list-pane")).is_displayed()
        assert browser.execute_script("return document.documentElement.scrollWidth <= 390")
        browser.find_element(*by_css("#back")).click()
        wait_until(browser, lambda d: d.find_element(*by_css(".list-pane")).is_displayed(), "back")


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_the_address_keeps_search_and_message_for_back_forward_and_links(
    tmp_path: Path, browser: Any, size: tuple[int, int]
) -> None:
    browser.set_window_size(*size)
    with LiveInbox(tmp_path) as inbox:
        send(inbox.smtp_port, newsletter())
        send(inbox.smtp_port, simple("Lunch tomorrow?"))
        ids = ids_by_subject(inbox)
        lunch, sale = ids["Lunch tomorrow?"], ids["Spring sale"]
        open_live(browser, inbox)
        listing(browser, ["Lunch tomorrow?", "Spring sale"])
        browser.execute_script("window.notReloaded = true")

        # A search typed in two goes is one step in the history, not one per pause.
        box = browser.find_element(*by_css("#search"))
        box.send_keys("subject:")
        wait_until(browser, lambda d: address(d) == "/?q=subject%3A", "first part in address")
        box.send_keys("lunch")
        wait_until(browser, lambda d: address(d) == "/?q=subject%3Alunch", "search in address")
        listing(browser, ["Lunch tomorrow?"])
        open_row(browser, "Lunch tomorrow?")
        opened(browser, "Lunch tomorrow?")
        assert address(browser) == f"/view/{lunch}?q=subject%3Alunch"
        snapshot(browser, "address-message")

        browser.back()
        listing(browser, ["Lunch tomorrow?"])
        assert address(browser) == "/?q=subject%3Alunch"
        assert not browser.find_element(*by_css("#view")).is_displayed()
        browser.back()
        listing(browser, ["Lunch tomorrow?", "Spring sale"])
        assert (address(browser), box.get_attribute("value")) == ("/", "")
        browser.forward()
        listing(browser, ["Lunch tomorrow?"])
        assert box.get_attribute("value") == "subject:lunch"
        browser.forward()
        opened(browser, "Lunch tomorrow?")
        assert address(browser) == f"/view/{lunch}?q=subject%3Alunch"

        # Back to the list by the page's own button is a step back too, when it can be.
        if size == PHONE:
            browser.find_element(*by_css("#back")).click()
        else:
            keys = require_module("selenium.webdriver.common.keys").Keys
            browser.find_element(*by_css("body")).send_keys(keys.ESCAPE)
        listing(browser, ["Lunch tomorrow?"])
        assert address(browser) == "/?q=subject%3Alunch"
        browser.back()
        listing(browser, ["Lunch tomorrow?", "Spring sale"])
        assert address(browser) == "/"
        assert browser.execute_script("return window.notReloaded") is True

        # Links: /view/ID, the older /#ID, and /view/latest open their message.
        browser.get(f"{inbox.url}/view/{sale}")
        opened(browser, "Spring sale")
        browser.get(f"{inbox.url}/#{sale}")
        opened(browser, "Spring sale")
        assert address(browser) == f"/view/{sale}"
        browser.get(f"{inbox.url}/view/latest?q=bob")
        opened(browser, "Lunch tomorrow?")
        assert address(browser) == f"/view/{lunch}?q=bob"
        browser.get(f"{inbox.url}/view/no-such-message")
        wait_until(
            browser, lambda d: "not here" in d.find_element(*by_css("#error")).text, "said so"
        )
        assert address(browser) == "/"
        listing(browser, ["Lunch tomorrow?", "Spring sale"])
        assert browser.execute_script("return document.documentElement.scrollWidth") <= size[0]


def count(driver: Any, where: str = "#count") -> str:
    """The list's count, its range with a plain hyphen (1-50 of 1,938)."""
    shown: str = driver.find_element(*by_css(where)).text
    return shown.replace("\N{EN DASH}", "-")


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_the_list_goes_by_pages_with_a_count_and_shows_recipients(
    tmp_path: Path, browser: Any, size: tuple[int, int]
) -> None:
    browser.set_window_size(*size)
    with LiveInbox(tmp_path) as inbox:
        spool = inbox.settings.data_dir / "test-spool"

        async def fill() -> None:
            for number in range(1, 121):
                content = email(f"Message {number:03}", to="Carol <carol@example.org>, d@x.test")
                await deliver(inbox.store, content, spool_dir=spool)

        inbox.call(fill(), timeout=120)
        open_live(browser, inbox)
        wait_until(browser, lambda d: count(d) == "1-50 of 120, 120 unread", "counted")
        assert len(rows(browser)) == 50
        assert rows(browser)[0] == "Message 120"
        to = browser.execute_script(
            "const to = document.querySelector('#messages .message .to');"
            "return [to.textContent, to.title];"
        )
        assert to == ["To: Carol, d@x.test", "Carol <carol@example.org>, d@x.test"]
        assert browser.find_element(*by_css("#prev")).get_attribute("disabled")
        browser.execute_script("window.notReloaded = true")

        click(browser, "#next")
        wait_until(browser, lambda d: count(d).startswith("51-100 of 120"), "page 2")
        assert (rows(browser)[0], address(browser)) == ("Message 070", "/?page=2")
        click(browser, "#next")
        wait_until(browser, lambda d: count(d).startswith("101-120 of 120"), "page 3")
        assert rows(browser)[-1] == "Message 001"
        assert browser.find_element(*by_css("#next")).get_attribute("disabled")
        snapshot(browser, "pages-last")
        browser.back()
        wait_until(browser, lambda d: count(d).startswith("51-100 of 120"), "back to page 2")

        # Mail arriving moves every later page along by one.
        send(inbox.smtp_port, simple("Newest"))
        wait_until(browser, lambda d: count(d).startswith("51-100 of 121"), "one more")
        wait_until(browser, lambda d: rows(d)[0] == "Message 071", "moved along")
        bottom = browser.find_element(*by_css("#pager-bottom"))
        assert bottom.is_displayed()
        assert count(browser, "#count-bottom") == "51-100 of 121"
        assert bottom.find_element(*by_css("#next-bottom")).text.startswith("Next")

        # A search starts at its first page.
        box = browser.find_element(*by_css("#search"))
        box.send_keys('subject:"message 1"')
        wait_until(browser, lambda d: count(d) == "1-21 of 21 matching", "searched")
        assert address(browser) == "/?q=subject%3A%22message+1%22"
        assert not browser.find_element(*by_css("#pager-bottom")).is_displayed()
        assert browser.execute_script("return window.notReloaded") is True
        assert browser.execute_script("return document.documentElement.scrollWidth") <= size[0]

        # A page past the end is the last page.
        browser.get(f"{inbox.url}/?page=9")
        wait_until(browser, lambda d: count(d).startswith("101-121 of 121"), "last page")
        assert address(browser) == "/?page=3"
        snapshot(browser, "pages-list")


def details(driver: Any) -> dict[str, str]:
    """The open message's details shown, by name (From, To, ...)."""
    shown: dict[str, str] = driver.execute_script(
        """
        const shown = {};
        for (const name of document.querySelectorAll('#view .meta dt')) {
            if (!name.checkVisibility()) continue;
            shown[name.textContent] = name.nextElementSibling.textContent;
        }
        return shown;
        """
    )
    return shown


def tabs(driver: Any) -> dict[str, Any]:
    """The tabs shown, the one selected, and whether each lies wholly inside the window."""
    found: dict[str, Any] = driver.execute_script(
        """
        const shown = [...document.querySelectorAll('.tabs button')].filter(
            (tab) => tab.checkVisibility());
        const width = document.documentElement.clientWidth;
        return {
            shown: shown.map((tab) => tab.dataset.tab),
            selected: shown.filter((tab) => tab.ariaSelected === 'true')
                .map((tab) => tab.dataset.tab),
            inside: shown.every((tab) => {
                const box = tab.getBoundingClientRect();
                return box.left >= 0 && box.right <= width && box.width > 0;
            }),
        };
        """
    )
    return found


def view_tags(driver: Any) -> list[str]:
    shown: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#view-tags .tag')].map((tag) => tag.textContent)"
    )
    return shown


def filter_tags(driver: Any) -> list[str]:
    """The tags the list can be narrowed to, the chosen one marked with a star."""
    shown: list[str] = driver.execute_script(
        "const filter = document.getElementById('tag-filter');"
        "return filter.hidden ? [] : [...filter.querySelectorAll('.tag')].map("
        "  (tag) => tag.textContent + (tag.getAttribute('aria-current') ? '*' : ''));"
    )
    return shown


def row_tags(driver: Any, subject: str) -> list[str]:
    shown: list[str] = driver.execute_script(
        """
        const row = [...document.querySelectorAll('#messages .message')]
            .find((node) => node.querySelector('.subject').textContent === arguments[0]);
        return [...row.querySelectorAll('.tag')].map((tag) => tag.textContent);
        """,
        subject,
    )
    return shown


def stored_tags(inbox: LiveInbox, message_id: str) -> list[str]:
    tags: list[str] = httpx.get(f"{inbox.url}/api/v1/message/{message_id}").json()["Tags"]
    return tags


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_tags_are_added_removed_filtered_renamed_and_dropped(
    tmp_path: Path, browser: Any, size: tuple[int, int]
) -> None:
    browser.set_window_size(*size)
    with LiveInbox(tmp_path) as inbox:
        send(inbox.smtp_port, newsletter())
        send(inbox.smtp_port, simple("Lunch tomorrow?"))
        sale = ids_by_subject(inbox)["Spring sale"]
        open_live(browser, inbox)
        listing(browser, ["Lunch tomorrow?", "Spring sale"])
        assert filter_tags(browser) == []
        click(browser, f"#messages .message[data-id='{sale}']")
        opened(browser, "Spring sale")

        field = browser.find_element(*by_css("#tag-input"))
        field.send_keys("to do, invoice\n")
        wait_until(browser, lambda d: view_tags(d) == ["invoice", "to do"], "tags added")
        assert stored_tags(inbox, sale) == ["invoice", "to do"]
        wait_until(browser, lambda d: filter_tags(d) == ["invoice", "to do"], "tags to filter by")
        assert row_tags(browser, "Spring sale") == ["invoice", "to do"]
        snapshot(browser, "tags-message")
        click(browser, "#view-tags .tag-chip:first-child .untag")
        wait_until(browser, lambda d: view_tags(d) == ["to do"], "tag removed")
        assert stored_tags(inbox, sale) == ["to do"]
        wait_until(browser, lambda d: filter_tags(d) == ["to do"], "no one's tag is gone")

        # The list narrowed to a tag; the tag renamed, then taken off every message.
        if size == PHONE:
            click(browser, "#back")
        click(browser, "#tag-list .tag")
        wait_until(browser, lambda d: filter_tags(d) == ["to do*"], "chosen")
        listing(browser, ["Spring sale"])
        assert address(browser) == "/?q=tag%3A%22to+do%22"
        snapshot(browser, "tags-filter")
        click(browser, "#rename-tag")
        conditions = require_module("selenium.webdriver.support.expected_conditions")
        asked = wait_until(browser, conditions.alert_is_present(), "asked for the name")
        asked.send_keys("later")
        asked.accept()
        wait_until(browser, lambda d: filter_tags(d) == ["later*"], "renamed")
        listing(browser, ["Spring sale"])
        assert address(browser) == "/?q=tag%3Alater"
        assert stored_tags(inbox, sale) == ["later"]
        click(browser, "#delete-tag")
        confirm(browser)
        wait_until(browser, lambda d: filter_tags(d) == [], "no tags left")
        listing(browser, ["Lunch tomorrow?", "Spring sale"])
        assert address(browser) == "/"
        assert stored_tags(inbox, sale) == []
        assert browser.execute_script("return document.documentElement.scrollWidth") <= size[0]
        assert refused_by_the_page_policy(browser) == []


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_the_message_view_shows_the_envelope_tags_and_each_body(
    tmp_path: Path, browser: Any, size: tuple[int, int]
) -> None:
    browser.set_window_size(*size)
    with LiveInbox(tmp_path) as inbox:
        sale = newsletter()
        sale["Cc"] = "Boss <boss@example.org>"
        sale["Reply-To"] = "Help desk <help@shop.example>"
        with smtplib.SMTP("127.0.0.1", inbox.smtp_port, timeout=30) as smtp:
            everyone = ["you@example.org", "boss@example.org", "archive@shop.example"]
            smtp.send_message(sale, from_addr="bounces+42@shop.example", to_addrs=everyone)
        send(inbox.smtp_port, simple("Plain"))
        ids = ids_by_subject(inbox)
        tagged = {"IDs": [ids["Spring sale"]], "Tags": ["invoice", "to do"]}
        httpx.put(f"{inbox.url}/api/v1/tags", json=tagged).raise_for_status()

        browser.get(f"{inbox.url}/view/{ids['Spring sale']}")
        opened(browser, "Spring sale")
        shown = details(browser)
        assert shown.pop("Date")
        assert view_tags(browser) == ["invoice", "to do"]
        assert "invoice" in shown.pop("Tags")
        assert shown == {
            "From": "Shop <news@shop.example>",
            "To": "you@example.org",
            "Cc": "Boss <boss@example.org>",
            "Bcc": "archive@shop.example",
            "Reply-To": "Help desk <help@shop.example>",
            "Return-Path": "bounces+42@shop.example",
        }
        assert tabs(browser) == {
            "shown": ["html", "source", "text", "headers", "raw", "attachments"],
            "selected": ["html"],
            "inside": True,
        }
        click(browser, ".tabs button[data-tab='source']")
        wait_until(
            browser,
            lambda d: (
                "<h1 id='headline'>Spring <i>sale</i></h1>"
                in d.find_element(*by_css("#html-source")).text
            ),
            "HTML source shown",
        )
        click(browser, ".tabs button[data-tab='attachments']")
        wait_until(
            browser, lambda d: "prices.pdf" in d.find_element(*by_css("#attachments")).text, "parts"
        )
        assert browser.execute_script("return document.documentElement.scrollWidth") <= size[0]
        snapshot(browser, "message-view")

        # Without HTML there is neither an HTML tab nor its source; what is empty is left out.
        browser.get(f"{inbox.url}/view/{ids['Plain']}")
        opened(browser, "Plain")
        assert details(browser).keys() == {"From", "To", "Return-Path", "Date", "Tags"}
        assert view_tags(browser) == []
        assert tabs(browser) == {
            "shown": ["text", "headers", "raw", "attachments"],
            "selected": ["text"],
            "inside": True,
        }

        # A tag lists the messages that carry it.
        browser.back()
        opened(browser, "Spring sale")
        click(browser, "#view-tags .tag-chip:last-child .tag")
        listing(browser, ["Spring sale"])
        assert address(browser) == "/?q=tag%3A%22to+do%22"
        assert refused_by_the_page_policy(browser) == []


READABLE = 4.5
"""WCAG 2.2 AA's least contrast for text (1.4.3)."""
TEXTS = (
    "body, .brand, .views a, #count, .empty, .error, #theme, .search input",
    ".message .from, .message .to, .message .subject, .message .time, .message .snippet",
    ".message .size, .tag, #view-subject, .meta dt, .meta dd, .view-actions button",
    ".view-actions .button, .tabs button, #text-body, .pager-bottom, #back",
)


def contrasts(driver: Any) -> dict[str, float]:
    """The least contrast of each kind of text shown (WCAG's ratio, 1 to 21) on what is
    behind it, and of the search box's placeholder."""
    found: dict[str, float] = driver.execute_script(
        """
        const rgb = (text) => text.match(/[\\d.]+/g).map(Number);
        const luminance = ([r, g, b]) => {
            const linear = (c) => (c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
            return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
        };
        const ratio = (a, b) => {
            const [high, low] = [luminance(a), luminance(b)].sort((x, y) => y - x);
            return (high + 0.05) / (low + 0.05);
        };
        const behind = (node) => {
            for (; node; node = node.parentElement) {
                const colour = rgb(getComputedStyle(node).backgroundColor);
                if (colour.length < 4 || colour[3] > 0) return colour;
            }
            return [255, 255, 255];
        };
        const found = {};
        for (const node of document.querySelectorAll(arguments[0])) {
            if (!node.checkVisibility() || node.disabled || !node.textContent.trim()) continue;
            const name = node.id ? '#' + node.id : node.tagName.toLowerCase() + '.' +
                [...node.classList].join('.');
            const value = ratio(rgb(getComputedStyle(node).color), behind(node));
            found[name] = Math.min(found[name] || 21, value);
        }
        const box = document.getElementById('search');
        found.placeholder = ratio(
            rgb(getComputedStyle(box, '::placeholder').color), behind(box));
        return found;
        """,
        ", ".join(TEXTS),
    )
    return found


def dark(driver: Any) -> bool:
    """Whether the page is drawn dark: its background darker than its text."""
    found: bool = driver.execute_script(
        "const style = getComputedStyle(document.body);"
        "const grey = (c) => c.match(/\\d+/g).slice(0, 3).reduce((a, b) => a + Number(b), 0);"
        "return grey(style.backgroundColor) < grey(style.color);"
    )
    return found


def system_prefers(driver: Any, scheme: str) -> None:
    feature = {"name": "prefers-color-scheme", "value": scheme}
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [feature]})


def choose_theme(driver: Any, value: str) -> None:
    select = require_module("selenium.webdriver.support.select").Select
    select(driver.find_element(*by_css("#theme"))).select_by_value(value)


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_dark_mode_follows_the_system_or_the_choice_kept_and_reads_well(
    tmp_path: Path, browser: Any, size: tuple[int, int]
) -> None:
    browser.set_window_size(*size)
    with LiveInbox(tmp_path) as inbox:
        send(inbox.smtp_port, newsletter())
        send(inbox.smtp_port, simple("Lunch tomorrow?"))
        sale = ids_by_subject(inbox)["Spring sale"]
        tagged = {"IDs": [sale], "Tags": ["invoice"]}
        httpx.put(f"{inbox.url}/api/v1/tags", json=tagged).raise_for_status()
        system_prefers(browser, "light")
        browser.get(f"{inbox.url}/view/{sale}")
        opened(browser, "Spring sale")
        click(browser, ".tabs button[data-tab='text']")

        def looks(expected_dark: bool, name: str) -> None:
            wait_until(
                browser, lambda d: dark(d) == expected_dark, f"{name}: dark is {expected_dark}"
            )
            snapshot(browser, f"theme-{name}")
            shown = contrasts(browser)
            assert len(shown) > 10, shown
            assert {k: v for k, v in shown.items() if v < READABLE} == {}, name
            if size == PHONE:  # the list is a page of its own there
                browser.find_element(*by_css("#back")).click()
                listing(browser, ["Lunch tomorrow?", "Spring sale"])
                snapshot(browser, f"theme-{name}-list")
                shown = contrasts(browser)
                assert {k: v for k, v in shown.items() if v < READABLE} == {}, f"{name} list"
                browser.back()  # opened by its address, the list was a step forward
                opened(browser, "Spring sale")

        looks(False, "system-light")
        system_prefers(browser, "dark")
        looks(True, "system-dark")
        choose_theme(browser, "light")
        looks(False, "chosen-light")
        system_prefers(browser, "light")
        choose_theme(browser, "dark")
        looks(True, "chosen-dark")

        # The choice is kept: a new page of the inbox is dark from the start.
        browser.get(f"{inbox.url}/")
        listing(browser, ["Lunch tomorrow?", "Spring sale"])
        assert dark(browser)
        assert browser.find_element(*by_css("#theme")).get_attribute("value") == "dark"
        choose_theme(browser, "")
        wait_until(browser, lambda d: not dark(d), "the system's again")
        browser.refresh()
        listing(browser, ["Lunch tomorrow?", "Spring sale"])
        assert not dark(browser)
        assert browser.execute_script("return localStorage.length") == 0
        assert refused_by_the_page_policy(browser) == []


GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str]]]:
    """A site that notes every path asked of it and answers each with a tiny GIF."""
    hits: list[str] = []

    def record(handler: BaseHTTPRequestHandler) -> None:
        hits.append(handler.path)
        handler.send_response(200)
        handler.send_header("Content-Type", "image/gif")
        handler.send_header("Content-Length", str(len(GIF)))
        handler.end_headers()
        handler.wfile.write(GIF)

    site = HttpSite(record)
    try:
        yield site.url, hits
    finally:
        site.close()


def hostile(base: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Mallory <mallory@evil.example>"
    message["To"] = "you@example.org"
    message["Subject"] = "Totally harmless"
    message.set_content("Nothing to see.")
    message.add_alternative(
        f"""<html><head>
<script>fetch("{base}/script"); parent.document.title = "pwned";</script>
<link rel="stylesheet" href="{base}/stylesheet">
<meta http-equiv="refresh" content="0; url={base}/refresh">
<style>body {{ background: url("{base}/background"); }}</style>
</head><body onload="fetch('{base}/onload')">
<p id="bait">Click <a id="js" href="javascript:fetch('{base}/javascript-link')">here</a></p>
<img id="remote" src="{base}/remote-image">
<img src="x" onerror="fetch('{base}/onerror')">
<svg><script>fetch("{base}/svg")</script></svg>
<iframe src="{base}/frame"></iframe>
<object data="{base}/object"></object>
<form action="{base}/form" method="post"><button id="submit">Go</button></form>
</body></html>""",
        subtype="html",
    )
    return message


def test_hostile_html_runs_nothing_and_loads_nothing(
    tmp_path: Path, browser: Any, recorder: tuple[str, list[str]]
) -> None:
    base, hits = recorder
    with LiveInbox(tmp_path) as inbox:
        send(inbox.smtp_port, hostile(base))
        browser.get(inbox.url + "/")
        wait_until(browser, lambda d: rows(d) == ["Totally harmless"], "listed")
        open_row(browser, "Totally harmless")
        frame = wait_until(
            browser, lambda d: d.find_element(*by_css("#html-frame[src*='/view/']")), "framed"
        )
        browser.switch_to.frame(frame)
        wait_until(browser, lambda d: hits or d.find_elements(*by_css("#bait")), "rendered")
        assert hits == []
        browser.find_element(*by_css("#js")).click()
        browser.find_element(*by_css("#submit")).click()
        browser.switch_to.default_content()

        # Give anything that would run or load the time to do it, then look.
        marker = browser.execute_script("return performance.now()")
        wait_until(
            browser,
            lambda d: d.execute_script("return performance.now()") > marker + 1500,
            "settle",
        )
        assert hits == []
        assert browser.title != "pwned"
        assert browser.current_url.startswith(inbox.url)

        # Remote images load only when asked for; scripts still never run.
        browser.find_element(*by_css("#load-remote")).click()
        wait_until(browser, lambda d: "/remote-image" in hits, "remote image loaded on request")
        assert not [hit for hit in hits if hit not in ("/remote-image", "/background")]


# -- the outbound queue ----------------------------------------------------------------


@pytest.fixture
def nowhere() -> Iterator[str]:
    """A relay host refusing every connection: a port bound here that nobody listens on."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{unused.getsockname()[1]}"


def click(driver: Any, selector: str) -> None:
    """Click what ``selector`` finds once it is there (the queue is redrawn as it changes)."""
    ui = require_module("selenium.webdriver.support.ui")
    errors = require_module("selenium.common.exceptions")

    def clicked(d: Any) -> bool:
        d.find_element(*by_css(selector)).click()
        return True

    ignored = (errors.NoSuchElementException, errors.StaleElementReferenceException)
    ui.WebDriverWait(driver, WAIT_SECONDS, ignored_exceptions=ignored).until(clicked, selector)


def confirm(driver: Any) -> None:
    conditions = require_module("selenium.webdriver.support.expected_conditions")
    wait_until(driver, conditions.alert_is_present(), "asked to confirm").accept()


def queue_rows(driver: Any) -> list[list[str]]:
    """(message, recipient, state) of every row of the queue view, read in one step."""
    found: list[list[str]] = driver.execute_script(
        """
        return [...document.querySelectorAll('#queue-table tbody tr')].map((row) => [
            row.closest('tbody').querySelector('.message-cell a').textContent,
            row.querySelector('.recipient').textContent,
            row.querySelector('.state').textContent,
        ]);
        """
    )
    return found


def delivery(driver: Any) -> list[list[str]]:
    """(recipient, state, last reply) listed in the open message's Delivery section."""
    found: list[list[str]] = driver.execute_script(
        """
        const section = document.getElementById('delivery');
        return section.hidden ? [] : [...section.querySelectorAll('li')].map((item) => [
            item.querySelector('.recipient').textContent,
            item.querySelector('.state').textContent,
            (item.querySelector('.reply') || {}).textContent || '',
        ]);
        """
    )
    return found


def deferred_after(inbox: LiveInbox, message_id: MessageId, moment: datetime) -> bool:
    """Whether the runner has deferred every recipient to an attempt a while after ``moment``.

    (A release makes them due at once, and the runner then defers them to the end of the
    relay's suspension, a minute after it first refused.)
    """
    later = moment + timedelta(seconds=10)
    listed = httpx.get(f"{inbox.url}/api/v1/queue/{message_id}").json()["Recipients"]
    return all(
        r["State"] == "deferred" and datetime.fromisoformat(r["NextAttempt"]) > later
        for r in listed
    )


def queued(inbox: LiveInbox, subject: str, *recipients: str) -> MessageId:
    """Store a message for ``recipients`` elsewhere, as the accept path queues it."""
    spool = inbox.settings.data_dir / "test-spool"
    return inbox.call(
        deliver(
            inbox.store, email(subject), spool_dir=spool, rcpt_to=recipients, outbound=recipients
        )
    )


def test_the_queue_view_follows_the_queue_and_acts_on_it(
    tmp_path: Path, browser: Any, nowhere: str
) -> None:
    with LiveInbox(tmp_path, outbound=Outbound(relay_host=nowhere)) as inbox:
        onward = queued(inbox, "Onward", "a@far.test", "b@far.test")
        open_live(browser, inbox)
        browser.execute_script("window.notReloaded = true")
        click(browser, "#show-queue")
        # The relay refuses, so the runner defers both recipients; the view follows.
        tried = [["Onward", "a@far.test", "deferred"], ["Onward", "b@far.test", "deferred"]]
        wait_until(browser, lambda d: queue_rows(d) == tried, "listed, then deferred")
        reply = browser.find_element(*by_css("#queue-table .reply")).text
        assert reply, "the relay's refusal is shown"
        assert browser.find_element(*by_css("#queue-count")).text == "2 recipients waiting"

        mine = f"#queue-table tbody[data-id='{onward}']"
        click(browser, f"{mine} button[data-action='hold']")
        wait_until(browser, lambda d: {r[2] for r in queue_rows(d)} == {"held"}, "held")
        released = datetime.now(UTC)
        click(browser, f"{mine} button[data-action='release']")
        wait_until(browser, lambda d: "held" not in {r[2] for r in queue_rows(d)}, "released")
        # Released, the recipients are due at once; the runner defers them again.
        wait_until(browser, lambda _: deferred_after(inbox, onward, released), "tried again")
        # A change made elsewhere shows up too.
        httpx.post(f"{inbox.url}/api/v1/queue/{onward}/hold").raise_for_status()
        wait_until(browser, lambda d: {r[2] for r in queue_rows(d)} == {"held"}, "held elsewhere")

        # Bounce, once confirmed: the queue empties; the toggle shows the bounced.
        click(browser, f"{mine} button[data-action='bounce']")
        confirm(browser)
        wait_until(
            browser, lambda d: d.find_element(*by_css("#queue-empty")).is_displayed(), "empty"
        )
        assert browser.find_element(*by_css("#queue-empty")).text == "The queue is empty."
        click(browser, "#queue-all")
        bounced = [["Onward", "a@far.test", "bounced"], ["Onward", "b@far.test", "bounced"]]
        wait_until(browser, lambda d: queue_rows(d) == bounced, "bounced ones shown")

        # The message opens from the queue; without permission there is no Release.
        click(browser, f"{mine} .message-cell a")
        wait_until(
            browser,
            lambda d: d.find_element(*by_css("#view-subject")).text == "Onward",
            "opened",
        )
        wait_until(
            browser,
            lambda d: (
                [r[:2] for r in delivery(d)]
                == [["a@far.test", "bounced"], ["b@far.test", "bounced"]]
            ),
            "delivery shown",
        )
        assert not browser.find_element(*by_css("#release")).is_displayed()
        assert browser.execute_script("return window.notReloaded") is True

        # On a phone each queued message is a card, as wide as the screen.
        browser.set_window_size(390, 844)
        click(browser, "#show-queue")
        wait_until(browser, lambda d: queue_rows(d) == bounced, "shown again")
        assert browser.execute_script("return document.documentElement.scrollWidth <= 390")


def test_the_message_view_shows_delivery_and_releases(
    tmp_path: Path, browser: Any, nowhere: str
) -> None:
    web = WebSettings(release_allowed=True)
    with LiveInbox(tmp_path, web, outbound=Outbound(relay_host=nowhere)) as inbox:
        queued(inbox, "Onward", "a@far.test")
        send(inbox.smtp_port, simple("Caught"))
        open_live(browser, inbox)
        wait_until(browser, lambda d: rows(d) == ["Caught", "Onward"], "listed")

        open_row(browser, "Onward")
        wait_until(
            browser,
            lambda d: (
                [r[:2] for r in delivery(d)] == [["a@far.test", "deferred"]]
                and delivery(d)[0][2] != ""
            ),
            "the deferral and the relay's reply shown",
        )

        open_row(browser, "Caught")
        wait_until(
            browser,
            lambda d: d.find_element(*by_css("#view-subject")).text == "Caught",
            "opened",
        )
        caught = browser.execute_script("return location.pathname.split('/').pop()")
        assert delivery(browser) == []
        click(browser, "#release")
        field = browser.find_element(*by_css("#release-to"))
        field.send_keys("not an address")
        click(browser, "#release-send")
        wait_until(
            browser,
            lambda d: "is not an email address" in d.find_element(*by_css("#release-error")).text,
            "refusal shown",
        )
        field.clear()
        field.send_keys("x@far.test, y@far.test")
        click(browser, "#release-send")
        wait_until(
            browser,
            lambda d: sorted(r[0] for r in delivery(d)) == ["x@far.test", "y@far.test"],
            "released recipients listed",
        )
        assert not browser.find_element(*by_css("#release-form")).is_displayed()
        assert "x@far.test, y@far.test" in browser.find_element(*by_css("#release-status")).text
        listed = httpx.get(f"{inbox.url}/api/v1/queue/{caught}").json()["Recipients"]
        assert sorted(r["Recipient"] for r in listed) == ["x@far.test", "y@far.test"]


def test_below_a_webroot_the_page_lists_opens_and_downloads(tmp_path: Path, browser: Any) -> None:
    with LiveInbox(tmp_path, WebSettings(webroot="/mail/")) as inbox:
        browser.get(inbox.url + "/mail/")
        wait_until(
            browser,
            lambda d: "on" in d.find_element(*by_css("#live")).get_attribute("class"),
            "live below /mail/",
        )
        send(inbox.smtp_port, newsletter())
        wait_until(browser, lambda d: rows(d) == ["Spring sale"], "listed live")
        open_row(browser, "Spring sale")
        opened(browser, "Spring sale")
        message_id = ids_by_subject(inbox)["Spring sale"]
        assert address(browser) == f"/mail/view/{message_id}"
        frame = browser.find_element(*by_css("#html-frame"))
        assert frame.get_attribute("src").endswith(f"/mail/view/{message_id}.html")
        browser.switch_to.frame(frame)
        wait_until(browser, lambda d: d.find_elements(*by_css("#headline")), "HTML rendered")
        browser.switch_to.default_content()
        download = browser.find_element(*by_css("#download")).get_attribute("href")
        assert download == f"{inbox.url}/mail/api/v1/message/{message_id}/raw?dl=1"
        assert b"Subject: Spring sale" in httpx.get(download, timeout=30).content
        # A link to the message opens it, below the root too.
        browser.get(f"{inbox.url}/mail/view/{message_id}")
        opened(browser, "Spring sale")
        browser.find_element(*by_css("#brand")).click()
        wait_until(browser, lambda d: address(d) == "/mail/", "back to the list")
        assert refused_by_the_page_policy(browser) == []
