from llamactl.judge.metrics import parse, spec_counters

FORK = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 57
# HELP llamacpp:speculative_drafts_generated_total Number of speculative drafts generated.
# TYPE llamacpp:speculative_drafts_generated_total counter
llamacpp:speculative_drafts_generated_total{spec_type="mtp"} 10
# HELP llamacpp:speculative_drafts_accepted_total Drafts with at least one accepted token.
# TYPE llamacpp:speculative_drafts_accepted_total counter
llamacpp:speculative_drafts_accepted_total{spec_type="mtp"} 9
# HELP llamacpp:speculative_draft_tokens_generated_total Draft tokens generated.
# TYPE llamacpp:speculative_draft_tokens_generated_total counter
llamacpp:speculative_draft_tokens_generated_total{spec_type="mtp"} 24
# HELP llamacpp:speculative_draft_tokens_accepted_total Draft tokens accepted.
# TYPE llamacpp:speculative_draft_tokens_accepted_total counter
llamacpp:speculative_draft_tokens_accepted_total{spec_type="mtp"} 23
"""

UPSTREAM = """# HELP llamacpp:spec_decode_num_drafts_total drafts
# TYPE llamacpp:spec_decode_num_drafts_total counter
llamacpp:spec_decode_num_drafts_total 254
# HELP llamacpp:spec_decode_num_draft_tokens_total draft tokens
# TYPE llamacpp:spec_decode_num_draft_tokens_total counter
llamacpp:spec_decode_num_draft_tokens_total 747
# HELP llamacpp:spec_decode_num_accepted_tokens_total accepted
# TYPE llamacpp:spec_decode_num_accepted_tokens_total counter
llamacpp:spec_decode_num_accepted_tokens_total 0
# HELP llamacpp:spec_decode_num_accepted_tokens_per_pos_total per position
# TYPE llamacpp:spec_decode_num_accepted_tokens_per_pos_total counter
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 0
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="1"} 0
"""


def test_fork_labelled_scheme():
    c = spec_counters(parse(FORK))
    assert c.scheme == "labelled" and c.spec_type == "mtp"
    assert (c.drafts, c.drafts_accepted, c.draft_tokens, c.accepted_tokens) == (10, 9, 24, 23)
    assert abs(c.acceptance - 23 / 24) < 1e-9


def test_upstream_scheme():
    c = spec_counters(parse(UPSTREAM))
    assert c.scheme == "upstream" and c.spec_type is None
    assert (c.drafts, c.draft_tokens, c.accepted_tokens) == (254, 747, 0)
    assert c.acceptance == 0.0
    assert c.accepted_per_pos == {"0": 0, "1": 0}


def test_labelled_preferred_when_both_present():
    assert spec_counters(parse(UPSTREAM + FORK)).scheme == "labelled"


def test_delta_and_absent():
    before = spec_counters(parse(FORK))
    after = spec_counters(parse(FORK.replace("} 24", "} 40").replace("} 23", "} 31")))
    d = after.minus(before)
    assert d.draft_tokens == 16 and d.accepted_tokens == 8 and d.acceptance == 0.5
    none = spec_counters(parse("# TYPE llamacpp:prompt_tokens_total counter\nllamacpp:prompt_tokens_total 1\n"))
    assert not none.present and none.acceptance is None
