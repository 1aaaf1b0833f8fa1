"""The words for people come from the catalogue (netprobe/locale/): every marked string is in
the template, the Spanish catalogue translates each one with the same placeholders, the
language follows --lang or the locale, and the JSON is the same in every language."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import CHILD_ENV, NETPROBE

from netprobe import i18n
from netprobe.core.classify import Reason, Thresholds, classify
from netprobe.core.connect import udp_blocked_reason
from netprobe.core.metrics import DirectionMetrics, LinkMetrics
from netprobe.core.words import N_, Phrase

ROOT = Path(__file__).resolve().parent.parent
ES_PO = ROOT / "netprobe" / "locale" / "es" / "LC_MESSAGES" / "netprobe.po"


def _update_script():  # scripts/ is not a package: load the script as a module
    spec = importlib.util.spec_from_file_location("i18n_update", ROOT / "scripts" /
                                                  "i18n_update.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def spanish() -> Iterator[None]:
    assert i18n.set_language("es") == "es"
    try:
        yield
    finally:
        i18n.set_language("en")


def _read(path: Path):
    from babel.messages.pofile import read_po

    with path.open("rb") as f:
        return read_po(f, locale=None if path.suffix == ".pot" else "es")


def _forms(value: object) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (str(value),)


# ------------------------------------------------------------------------ the catalogues


def test_every_marked_string_is_in_the_template() -> None:
    found = {m.id for m in _update_script().extract() if m.id}
    assert len(found) > 50  # the extraction does find the strings
    pot = {m.id for m in _read(ROOT / "netprobe" / "locale" / "netprobe.pot") if m.id}
    missing = sorted(map(str, found - pot))
    assert not missing, "run `python scripts/i18n_update.py`; missing: " + "; ".join(missing)


def test_the_spanish_catalogue_translates_every_string_and_nothing_is_fuzzy() -> None:
    pot = {m.id for m in _read(ROOT / "netprobe" / "locale" / "netprobe.pot") if m.id}
    es = _read(ES_PO)
    assert not es.fuzzy, "the catalogue's header is marked fuzzy"
    entries = {m.id: m for m in es if m.id}
    assert not sorted(map(str, pot - set(entries))), "strings missing from the es catalogue"
    untranslated = [str(m.id) for m in entries.values() if not all(_forms(m.string))]
    fuzzy = [str(m.id) for m in entries.values() if m.fuzzy]
    assert untranslated == [] and fuzzy == []


def test_every_translation_keeps_the_placeholders_of_its_msgid() -> None:
    wrong = []
    for m in _read(ES_PO):
        if not m.id:
            continue
        wanted = i18n.placeholders(_forms(m.id)[-1])
        for form in _forms(m.string):
            if form and i18n.placeholders(form) != wanted:  # untranslated: the test above
                wrong.append(f"{m.id!r}: {form!r}")
    assert wrong == []


def test_the_placeholder_check_can_fail() -> None:
    assert i18n.placeholders("{loss:.1f} % lost") != i18n.placeholders("{loss} % perdido")
    assert i18n.placeholders("a {x} b {y}") == i18n.placeholders("{y} c {x}")


def test_the_catalogues_are_inside_the_package() -> None:
    assert i18n.LOCALE_DIR.parent == Path(i18n.__file__).resolve().parent
    assert i18n.available() == ("en", "es")


# ------------------------------------------------------------------------ choosing

@pytest.mark.parametrize(("env", "expected"), [
    ({"LANG": "es_ES.UTF-8"}, "es"),
    ({"LC_ALL": "es_MX.utf8", "LANG": "en_GB.UTF-8"}, "es"),
    ({"LC_MESSAGES": "en_US.UTF-8", "LANG": "es_ES.UTF-8"}, "en"),
    ({"LANG": "C.UTF-8"}, None),
    ({"LANG": "POSIX"}, None),
    ({}, None),
])
def test_the_language_comes_from_the_locale(env: dict[str, str], expected: str | None) -> None:
    assert i18n.language_from_env(env) == expected


def test_a_language_without_a_catalogue_is_english() -> None:
    try:
        assert i18n.set_language("fr_FR.UTF-8") == "en"
        assert i18n._("Why:") == "Why:"
        assert i18n.set_language("ES") == "es" and i18n._("Why:") == "Por qué:"
    finally:
        i18n.set_language("en")
    assert i18n._("Why:") == "Why:"


# ------------------------------------------------------------------------ reasons

def _link(kbps: float, rtt: float, loss: float, jitter: float) -> LinkMetrics:
    d = DirectionMetrics(kbps=kbps, loss_pct=loss, jitter_ms=jitter)
    return LinkMetrics(up=d, down=d, rtt_ms=rtt, mos_audio=4.0, connected=True)


def test_a_reason_keeps_english_in_its_message_and_json(spanish: None) -> None:
    v = classify(_link(300, 400, 7.5, 40), Thresholds())
    assert v.reasons and all(r.template for r in v.reasons)
    for r in v.reasons:
        assert r.message == Phrase(r.template, r.args).english()
        assert r.to_json() == {"code": r.code, "message": r.message}
        shown = i18n.text_of(r)
        assert shown != r.message, r.code  # translated for the person
    loss = next(r for r in v.reasons if r.code == "loss_too_high_for_video")
    assert "7.5 % lost" in loss.message and "7,5 % perdido" in i18n.text_of(loss)


def test_the_delay_reason_no_longer_says_picture_and_voice_drift_apart() -> None:
    v = classify(_link(5000, 450, 0.0, 2), Thresholds())
    rtt = next(r for r in v.reasons if r.code == "rtt_too_high_for_video")
    assert "Picture and voice" not in rtt.message and "talk over each other" in rtt.message


def test_phrases_inside_a_reason_are_translated_too(spanish: None) -> None:
    r = udp_blocked_reason({"down_kbps": 12000, "up_kbps": 3100, "mode": "quick"})
    assert "12 Mbit/s down and at least 3.1 Mbit/s up" in r.message
    shown = i18n.text_of(r)
    assert shown.startswith("Tu internet funciona: unos 12 Mbit/s de bajada y al menos 3,1")
    assert "Pero la red" in shown and "But" not in shown


def test_a_reason_without_a_template_shows_its_message(spanish: None) -> None:
    assert i18n.text_of(Reason("custom", "As it was written.")) == "As it was written."


def test_a_broken_translation_falls_back_to_english(monkeypatch: pytest.MonkeyPatch) -> None:
    import gettext

    class Broken(gettext.NullTranslations):
        def gettext(self, message: str) -> str:
            return "Retraso {nombre_mal_escrito} ms"

    monkeypatch.setattr(i18n, "_translations", Broken())
    shown = i18n.text_of(Phrase.of(N_("delay {ms:.0f} ms"), ms=42.4))
    assert shown == "delay 42 ms"


def _unknown_reasons() -> list[Reason]:
    from netprobe.core.failover import Attempt, unreachable_verdict
    from netprobe.errors import AccessDenied
    from netprobe.webrtc import client

    return [
        classify(LinkMetrics(), Thresholds()).reasons[0],
        client.CONNECT_TIMEOUT,
        client._unreachable("connection refused"),
        client._busy_reason(Attempt("", "rate_limited", 30.0)),
        client._busy_reason(Attempt("", "rate_limited")),
        client._busy_reason(Attempt("", "busy")),
        client._access_reason(AccessDenied("token expired")),
        client._access_reason(AccessDenied("wrong scope", "forbidden")),
        udp_blocked_reason(None),
        udp_blocked_reason({"down_kbps": 12000}),
        unreachable_verdict().reasons[0],
    ]


@pytest.mark.parametrize("lang", ["en", "es"])
def test_every_unknown_reason_says_what_to_do_next(lang: str) -> None:
    next_steps = {"en": ("again", "phone", "another network", "switch to audio"),
                  "es": ("repite", "vuelve a intentarlo", "teléfono", "otra red",
                         "solo audio")}[lang]
    try:
        i18n.set_language(lang)
        for r in _unknown_reasons():
            shown = i18n.text_of(r).lower()
            assert any(step in shown for step in next_steps), (r.code, shown)
    finally:
        i18n.set_language("en")


def test_the_figures_are_in_plain_words(spanish: None) -> None:
    from datetime import UTC, datetime

    from netprobe.cli.report import render_text
    from netprobe.core.result import CheckResult

    m = _link(2500, 45, 0.4, 7)
    result = CheckResult(classify(m, Thresholds()), m, datetime(2026, 12, 1, tzinfo=UTC), 4.2)
    i18n.set_language("en")
    text = render_text(result)
    figures = text[text.index("What was measured:"):]
    assert "45 milliseconds there and back" in figures
    assert "speed 2.5 Mbit/s, 0.4 % lost, delay varies by 7 milliseconds" in figures
    assert not any(word in figures.lower() for word in ("jitter", "rtt", " ms"))
    i18n.set_language("es")
    assert "velocidad de 2,5 Mbit/s, 0,4 % perdido" in render_text(result)


# ------------------------------------------------------------------------ the command line

def _env(**lang: str) -> dict[str, str]:
    env = {k: v for k, v in CHILD_ENV.items()
           if k not in ("LC_ALL", "LC_MESSAGES", "LANG", "LANGUAGE")}
    return {**env, **lang}


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NETPROBE, *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_a_local_check_in_spanish_and_its_json_is_the_same_as_in_english() -> None:
    text = _run("--lang", "es", "check", "--local", env=_env())
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "Autoprueba superada: netprobe funciona en este ordenador."
    assert "Lo que se ha medido:" in text.stdout and "Subida" in text.stdout
    assert "no ha probado tu conexión a internet" in text.stdout
    assert "What was measured" not in text.stdout and "Traceback" not in text.stderr
    docs = []
    for lang in ("es", "en"):
        proc = _run("--lang", lang, "check", "--local", "--json", env=_env())
        assert proc.returncode == 0, proc.stderr
        docs.append(json.loads(proc.stdout))
    es, en = docs
    assert [(r["code"], r["message"]) for r in es["reasons"]] == \
        [(r["code"], r["message"]) for r in en["reasons"]]
    assert es["verdict"] == en["verdict"] and es["reasons"][0]["message"].startswith("Your")


def test_the_locale_chooses_spanish_and_lang_overrides_it() -> None:
    proc = _run("check", "--local", "--no-progress", env=_env(LANG="es_ES.UTF-8"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Autoprueba superada")
    proc = _run("--lang", "en", "check", "--local", env=_env(LANG="es_ES.UTF-8"))
    assert proc.stdout.startswith("Self-test passed")


def test_an_unknown_language_falls_back_to_english_with_a_note() -> None:
    proc = _run("--lang", "xx", "check", "--local", env=_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Self-test passed")
    assert "no words in 'xx' yet, using English" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_update_script_finds_nothing_to_do() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "i18n_update.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
