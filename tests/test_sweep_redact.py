"""``sentex sweep --storage URL``: a password in the URL never reaches what sentex prints or writes.

:func:`~sentex.sweep.redact.redact_url` is checked on the URL forms users write (a password with escaped and
unescaped special characters, a user name only, no user, secrets in the query, SQLite paths, which stay as they
are); then ``results.md`` of a study on PostgreSQL and the one-line error of a storage that cannot be opened
(no PostgreSQL server nor driver is needed: opening it fails, which is the error to check).
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from sentex.sweep.recipe import check_recipe
from sentex.sweep.redact import redact_text, redact_url
from sentex.sweep.space import read_space
from sentex.sweep.study import Sweep, open_storage, write_sweep_reports
from tests.test_sweep import GRID, QUICKSTART, run_main, sweep_args

# url -> (what sentex shows, the secrets that must not appear in it)
URLS = {
    "password": (
        "postgresql://sweeper:hunter2@db.example.com/optuna",
        "postgresql://sweeper:***@db.example.com/optuna",
        ["hunter2"],
    ),
    "port and driver": (
        "mysql+pymysql://root:Tr0ub4dor@10.0.0.7:3306/optuna",
        "mysql+pymysql://root:***@10.0.0.7:3306/optuna",
        ["Tr0ub4dor"],
    ),
    "escaped special characters": (
        "postgresql://me:p%40ss%2Fw%3Ard!@host/db",
        "postgresql://me:***@host/db",
        ["p%40ss%2Fw%3Ard!", "p@ss/w:rd!"],
    ),
    "unescaped @ and / in the password": (
        "postgresql://me:p@ss/w@rd@host:5432/db",
        "postgresql://me:***@host:5432/db",
        ["p@ss/w@rd", "ss/w"],
    ),
    "empty password": ("postgresql://me:@host/db", "postgresql://me:***@host/db", []),
    "ipv6 host": ("postgresql://me:s3cret@[::1]:5432/db", "postgresql://me:***@[::1]:5432/db", ["s3cret"]),
    "password in the query": (
        "postgresql://host/db?user=me&password=s3cret&sslmode=require",
        "postgresql://host/db?user=me&password=***&sslmode=require",
        ["s3cret"],
    ),
    "user name only": ("postgresql://sweeper@db.example.com/optuna", "postgresql://sweeper@db.example.com/optuna", []),
    "no user": ("postgresql://db.example.com:5432/optuna", "postgresql://db.example.com:5432/optuna", []),
    "an @ in the query only": (
        "postgresql://host/db?application_name=me@laptop",
        "postgresql://host/db?application_name=me@laptop",
        [],
    ),
    "sqlite, absolute": ("sqlite:////home/me/sweeps/grid/study.db", "sqlite:////home/me/sweeps/grid/study.db", []),
    "sqlite, relative": ("sqlite:///sweeps/grid/study.db", "sqlite:///sweeps/grid/study.db", []),
    "sqlite, @ and : in the path": ("sqlite:////data/run@2:00/study.db", "sqlite:////data/run@2:00/study.db", []),
    "sqlite in memory": ("sqlite://", "sqlite://", []),
    "not a URL": ("study.db", "study.db", []),
}
PASSWORD = "n0t-f0r-l0gs!"
POSTGRES = f"postgresql://sweeper:{PASSWORD.replace('!', '%21')}@127.0.0.1:1/optuna"
SHOWN = "postgresql://sweeper:***@127.0.0.1:1/optuna"


@pytest.mark.parametrize("case", URLS, ids=list(URLS))
def test_redact_url_hides_passwords_and_nothing_else(case: str) -> None:
    url, shown, secrets = URLS[case]
    assert redact_url(url) == shown
    assert not [secret for secret in secrets if secret in redact_url(url)]
    assert redact_url(shown) == shown  # what is shown stays shown


def test_redact_text_hides_the_password_however_a_driver_quotes_it() -> None:
    url = "postgresql://me:p%40ss%20word@host/db"
    message = f"could not parse {url!r}; authentication failed for 'me' with 'p@ss word' (p%40ss%20word)"
    assert redact_text(message, url) == (
        "could not parse 'postgresql://me:***@host/db'; authentication failed for 'me' with '***' (***)"
    )


def test_results_md_shows_the_storage_without_its_password(tmp_path: Path) -> None:
    space = read_space(GRID, strict=False)
    sweep = Sweep(
        space=space,
        recipe=check_recipe(space, ["--config", str(QUICKSTART)]),
        out=tmp_path,
        study_name="quickstart_grid",
        storage=POSTGRES,
        n_trials=4,
        pruner=optuna.pruners.NopPruner(),
    )
    write_sweep_reports(sweep, [])
    written = {path.name: path.read_text(encoding="utf-8") for path in tmp_path.iterdir()}
    assert f"- storage: `{SHOWN}`" in written["results.md"]
    assert not [name for name, text in written.items() if PASSWORD in text or PASSWORD[:-1] in text]


def test_a_storage_that_cannot_be_opened_is_one_line_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Nothing listens on port 1 (and no PostgreSQL driver may be installed): either way the error names
    the storage as :func:`redact_url` shows it, and no sweep folder is made."""
    out = tmp_path / "sweep"
    code, stdout, err = run_main(sweep_args(out, "--storage", POSTGRES), capsys)
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith(f"sentex: error: --storage {SHOWN}: cannot open it (")
    assert PASSWORD[:-1] not in stdout + err and not out.exists()


def test_a_driver_message_that_quotes_the_url_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLAlchemy 1.4 (which Optuna 4.0 allows) quotes a URL it cannot parse, password included."""

    def refuse(url: str, **kwargs: object) -> None:
        raise ValueError(f"Could not parse rfc1738 URL from string '{url}' (password {PASSWORD})")

    monkeypatch.setattr(optuna.storages, "RDBStorage", refuse)
    with pytest.raises(Exception, match="cannot open it") as error:
        open_storage(POSTGRES)
    assert PASSWORD[:-1] not in str(error.value)
    assert f"'{SHOWN}' (password ***)" in str(error.value)
