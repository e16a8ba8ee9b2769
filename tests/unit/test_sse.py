"""The one SSE reader: events from lines, as EventSource reads them."""

from llamactl.judge.sse import Event, events


def test_named_events_multiline_data_comments_and_done():
    lines = [": keep-alive", "event: message_start", 'data: {"a": 1}', "", "data: one", "data: two", "",
             "event: no-data", "", "data: [DONE]", ""]
    got = list(events(lines))
    assert got == [Event("message_start", '{"a": 1}'), Event(None, "one\ntwo"), Event(None, "[DONE]")]
    assert got[-1].done and not got[0].done


def test_an_event_open_at_the_end_of_the_stream_is_delivered():
    assert list(events(["data:x"])) == [Event(None, "x")]
