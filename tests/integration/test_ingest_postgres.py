"""The same store code on PostgreSQL (psycopg 3): ingest, idempotent re-ingest, quarantine, concurrent appends.

Needs the PostgreSQL from infra/ (`infra/services.sh up && eval "$(infra/services.sh env)"` sets
MIXLLM_TEST_PG_URL). Each test works in its own schema, dropped afterwards.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from mixllm.schemas import LogRecord
from mixllm.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.servers]

DEFECTS = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "log_with_defects.csv"


@pytest.fixture
def pg_store_url() -> Iterator[str]:
    url = os.environ.get("MIXLLM_TEST_PG_URL")
    if not url:
        if os.environ.get("MIXLLM_SKIP_SERVERS") == "1":
            pytest.skip("MIXLLM_SKIP_SERVERS=1: servers tier skipped on purpose (MIXLLM_TEST_PG_URL not set)")
        pytest.fail("MIXLLM_TEST_PG_URL is not set: start the real servers first: "
                    "`infra/services.sh up && eval \"$(infra/services.sh env)\"`", pytrace=False)
    schema = f"mixllm_it_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_postgres_store(pg_store_url: str, routerbench_dir: Path) -> None:
    store = Store(pg_store_url)
    first = store.ingest([DEFECTS, routerbench_dir / "mbpp_test.csv.gz"])
    assert [(r.accepted, r.quarantined, r.duplicate) for r in first] == [(4, 10, 1), (first[1].rows_read, 0, 0)]
    again = Store(pg_store_url).ingest([DEFECTS, routerbench_dir / "mbpp_test.csv.gz"])
    assert [r.accepted + r.quarantined for r in again] == [0, 0]
    assert len(store.quarantine()) == 10 and len(store.logs()) == 4 + first[1].rows_read

    def work(t: int) -> None:
        for i in range(10):
            store.append_logs([LogRecord(query_id=f"pg{t}-{i}", prompt="p", model="m", quality=1.0)])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    logs, digest = store.snapshot()
    assert len(logs) == 4 + first[1].rows_read + 60 and len(digest) == 64
    assert str(logs.ts.dt.tz) == "UTC"
    store.dispose()


def test_postgres_store_created_before_the_policy_columns_gains_them(pg_store_url: str) -> None:
    """An interactions table without router_version/propensity (mixllm before contract v2) gets both at open."""
    from datetime import datetime, timezone

    from mixllm.store import INTERACTIONS

    old_meta = sa.MetaData()
    old = sa.Table("interactions", old_meta, *[sa.Column(c.name, c.type, primary_key=c.primary_key,
                                                         nullable=c.nullable, unique=c.unique)
                                               for c in INTERACTIONS.columns
                                               if c.name not in ("router_version", "propensity", "extra")])
    engine = sa.create_engine(pg_store_url)
    old_meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(old), [{"row_digest": "0" * 64, "batch_id": "b", "query_id": "old", "prompt": "p",
                                       "model": "m", "ts": datetime(2026, 11, 1)}])
    engine.dispose()
    store, again = Store(pg_store_url), Store(pg_store_url)
    cols = {c["name"] for c in sa.inspect(store.engine).get_columns("interactions")}
    assert {"router_version", "propensity", "extra"} <= cols
    assert again.append_logs([LogRecord(query_id="new", prompt="p", model="m", router_version="2",
                                        propensity=0.5, ts=datetime(2026, 11, 2, tzinfo=timezone.utc))]) == 1
    logs = store.logs()
    assert list(logs.query_id) == ["old", "new"] and logs.propensity.isna().tolist() == [True, False]
    store.dispose()
    again.dispose()
