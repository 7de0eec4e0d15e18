"""Reading shopper logs: each format parsed exactly, bad rows reported by line, sorting."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import Settings
from connectors.logs import MAX_REPORTED, TAOBAO, CsvMapping, read_log

FIXTURES = Path(__file__).parents[1] / "fixtures" / "logs"
SETTINGS = Settings()


def _bad(report) -> list[tuple[int, str]]:
    return [(b.line, b.reason) for b in report.examples]


def test_taobao_parses_exactly_with_header_and_disorder():
    events, report = read_log(FIXTURES / "taobao_small.csv", "taobao", settings=SETTINGS)
    got = [(e.event_id, e.event_type, e.user_id, e.item_id, e.category_id, e.event_time)
           for e in events]
    assert got == [
        ("taobao-3", "click", "2", "200", "20", 1511658000000),
        ("taobao-10", "click", "2", "201", "20", 1511658000000),  # tie keeps file order
        ("taobao-5", "favourite", "3", "300", "30", 1511658001000),
        ("taobao-2", "click", "1", "100", "10", 1511658002000),
        ("taobao-4", "add_to_cart", "1", "100", "10", 1511658003000),
        ("taobao-6", "purchase", "1", "100", "10", 1511658005000),
    ]
    assert (report.lines, report.events, report.bad, report.header_lines) == (10, 6, 3, 1)
    assert _bad(report) == [(7, "absurd_time"), (8, "unknown_event_type"), (9, "bad_row")]
    assert report.out_of_order == 3 and report.sorted_runs == 0
    assert "'share' is not mapped" in report.examples[1].detail
    assert report.examples[2].text == "6,600,60,pv"


def test_taobao_without_header_has_no_header_line(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("1,100,10,pv,1511658002\n")
    events, report = read_log(log, "taobao", settings=SETTINGS)
    assert [e.event_id for e in events] == ["taobao-1"]
    assert report.header_lines == 0


def test_csv_with_yaml_mapping_in_milliseconds():
    mapping = CsvMapping.from_yaml(FIXTURES / "shop_ms.yaml")
    assert mapping.time_unit == "ms" and mapping.header is True and mapping.delimiter == ";"
    events, report = read_log(FIXTURES / "shop_ms.csv", "csv", mapping, settings=SETTINGS)
    got = [(e.event_id, e.event_type, e.user_id, e.item_id, e.category_id, e.price, e.event_time)
           for e in events]
    assert got == [
        ("csv-3", "click", "u2", "sku-2", None, None, 1511658000250),
        ("csv-2", "click", "u1", "sku-1", "c1", 19.9, 1511658000500),
        ("csv-4", "purchase", "u1", "sku-1", "c1", 19.9, 1511658001000),
        ("csv-9", "add_to_cart", "u4", "sku-4", "c4", 3.5, 1511658004000),
    ]
    assert _bad(report) == [(5, "unknown_event_type"), (7, "invalid_field"), (8, "bad_time")]
    assert (report.events, report.bad, report.blank_lines, report.header_lines) == (4, 3, 1, 1)
    assert "price" in report.examples[1].detail


def test_csv_from_options_in_seconds_without_header():
    mapping = CsvMapping(user=0, item=1, time=2, event_type=3, time_unit="s", header=False,
                         delimiter="\t", event_names="view=click")
    events, report = read_log(FIXTURES / "shop_s.tsv", "csv", mapping, settings=SETTINGS)
    assert [(e.event_id, e.event_time) for e in events] == [
        ("csv-3", 1511658000000), ("csv-1", 1511658000250), ("csv-2", 1511658001000)]
    assert (report.events, report.bad, report.header_lines) == (3, 0, 0)


def test_csv_event_id_column_is_used(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("id,u,i,e,t\nabc,u1,i1,click,1511658000000\n")
    mapping = CsvMapping(event_id="id", user="u", item="i", event_type="e", time="t")
    events, _ = read_log(log, "csv", mapping, settings=SETTINGS)
    assert [e.event_id for e in events] == ["abc"]


def test_jsonl_parses_contract_events_and_reports_bad_lines():
    events, report = read_log(FIXTURES / "events.jsonl", "jsonl", settings=SETTINGS)
    got = [(e.event_id, e.event_type, e.request_id, e.position, e.price, e.event_time)
           for e in events]
    assert got == [
        ("i1", "impression", "r1", 0, None, 1511658000000),
        ("i2", "impression", "r1", 1, 3.5, 1511658000000),
        ("p1", "purchase", None, None, None, 1511658001000),
        ("c1", "click", "r1", 1, None, 1511658002000),
    ]
    assert _bad(report) == [(6, "bad_json"), (7, "invalid_field"), (8, "absurd_time")]
    assert (report.lines, report.events, report.blank_lines) == (8, 4, 1)


def test_external_sort_matches_in_memory_sort(tmp_path):
    rows = [f"{u},{u % 7},1,pv,{1511658000 + (u * 7919) % 50}" for u in range(40)]
    log = tmp_path / "log.csv"
    log.write_text("\n".join(rows) + "\n")
    in_memory, report_a = read_log(log, "taobao", settings=SETTINGS)
    expected = [e.event_id for e in in_memory]
    sort_dir = tmp_path / "sort"
    sort_dir.mkdir()
    merged, report_b = read_log(log, "taobao", settings=SETTINGS, max_rows_in_memory=3,
                                tmp_dir=str(sort_dir))
    assert report_b.sorted_runs == 14 and report_a.sorted_runs == 0
    assert any(sort_dir.iterdir())  # runs are on disk until the merge is consumed
    got = list(merged)
    assert [e.event_id for e in got] == expected
    assert [e.event_time for e in got] == sorted(e.event_time for e in got)
    assert expected != [f"taobao-{i}" for i in range(1, 41)]  # the input really was unsorted
    assert not any(sort_dir.iterdir())  # temporary runs removed


def test_every_bad_row_is_counted_but_only_the_first_are_kept(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("1,1,1,pv,1511658000\n"
                   + "".join(f"{i},1,1,pv,oops\n" for i in range(MAX_REPORTED + 5)))
    events, report = read_log(log, "taobao", settings=SETTINGS)
    assert [e.event_id for e in events] == ["taobao-1"]
    assert report.bad == MAX_REPORTED + 5 and report.reasons == {"bad_time": MAX_REPORTED + 5}
    assert [b.line for b in report.examples] == list(range(2, MAX_REPORTED + 2))


def test_mapping_mistakes_are_log_wide_errors(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no column"):
        read_log(log, "csv", CsvMapping(user="a", item="b", event_type="c", time="d"),
                 settings=SETTINGS)
    with pytest.raises(ValueError, match="required"):
        read_log(log, "csv", settings=SETTINGS)
    with pytest.raises(ValueError, match="unknown log format"):
        read_log(log, "parquet", settings=SETTINGS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="event_names"):
        CsvMapping(user=0, item=1, event_type=2, time=3, header=False, event_names="view")


def test_taobao_mapping_names():
    assert TAOBAO.event_names == {"pv": "click", "cart": "add_to_cart", "fav": "favourite",
                                  "buy": "purchase"}
    assert TAOBAO.time_unit == "s"


def test_rows_that_are_not_utf8_are_reported(tmp_path):
    log = tmp_path / "log.csv"
    log.write_bytes(b"1,100,10,pv,1511658000\n2,\xff\xfe,10,pv,1511658001\n")
    events, report = read_log(log, "taobao", settings=SETTINGS)
    assert [e.event_id for e in events] == ["taobao-1"]
    assert _bad(report) == [(2, "not_utf8")]
