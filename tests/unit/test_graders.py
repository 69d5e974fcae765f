"""Every grader kind scored on fixed completions, spec parsing errors, and the reward and gate uses."""

from __future__ import annotations

import pytest

from tunery.errors import TuneryError
from tunery.graders import gate, parse_grader, parse_graders, reward, score_all, split_spec_list

REF = '{"name": "Ana Costa", "city": "Lima", "nights": 3}'


def scores(spec, cases):
    grader = parse_grader(spec)
    return [grader.score(prediction, reference) for prediction, reference in cases]


def test_exact_forgives_only_outer_whitespace():
    assert scores("exact", [(REF + "\n", REF), (" " + REF, REF), (REF.replace(", ", ","), REF),
                            ("```json\n" + REF + "\n```", REF), ("a\r\nb", "a\nb"), ("x", None)]) == [1, 1, 0, 0, 1, 0]


def test_numeric_takes_the_last_number_with_a_tolerance():
    cases = [("6 times 7 is 42.", "42"), ("42.0", "42"), ("The answer: 1,234", "1234"), ("-3", "-3"),
             ("41", "42"), ("no number", "42"), ("0.30000000000000004", "0.3"), ("1,2", "2")]
    assert scores("numeric", cases) == [1, 1, 1, 1, 0, 0, 1, 1]
    assert scores("numeric:1.5", [("41", "42"), ("40", "42")]) == [1, 0]


def test_regex_searches_and_anchors_make_it_strict():
    assert scores("regex:^yes\\.?$", [("yes", None), ("Yes", None), ("yes.", None), ("yes indeed", None)]) == [1, 0, 1, 0]
    assert scores("regex:(?i)\\bice\\b", [("It is ICE.", None), ("iceberg", None)]) == [1, 0]


def test_json_validity_and_json_match():
    assert scores("json", [(REF, None), ('{"a": 1', None), ("[1, 2]", None), ('Sure: {"a": 1}', None)]) == [1, 0, 1, 0]
    reordered = '{"city":"Lima","nights":3.0,"name":"Ana Costa"}'
    assert scores("json_match", [(reordered, REF), (REF.replace("3", '"3"'), REF), ("true", "1"), ("1", "1.0")]) == [1, 0, 0, 1]


def test_json_schema_inline_and_from_a_file(tmp_path):
    schema = '{"type": "object", "required": ["name", "nights"], "additionalProperties": false, ' \
             '"properties": {"name": {"type": "string", "minLength": 1}, "nights": {"type": "integer", "minimum": 1}}}'
    cases = [('{"name": "A", "nights": 2}', None), ('{"name": "A"}', None), ('{"name": "A", "nights": 0}', None),
             ('{"name": "A", "nights": 2, "x": 1}', None), ('{"name": "", "nights": 2}', None), ("nope", None),
             ('{"name": "A", "nights": 2.5}', None), ('{"name": "A", "nights": true}', None)]
    assert scores("json_schema:" + schema, cases) == [1, 0, 0, 0, 0, 0, 0, 0]
    path = tmp_path / "s.json"
    path.write_text('{"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}')
    assert scores(f"json_schema:{path}", [('["a", "b"]', None), ('["a", "c"]', None), ('["a", "a", "a"]', None)]) == [1, 0, 0]
    as_dict = parse_grader({"type": "json_schema", "value": {"anyOf": [{"type": "string"}, {"type": "null"}]}})
    assert [as_dict.score(x) for x in ('"s"', "null", "3")] == [1, 1, 0]


def test_json_schema_errors_name_the_json_path_and_a_broken_schema_is_refused():
    from tunery.graders.schema import compile_schema

    check = compile_schema({"type": "object", "properties": {"rooms": {"type": "array", "items": {
        "type": "object", "properties": {"nights": {"type": "integer", "minimum": 1}}}}},
        "oneOf": [{"required": ["rooms"]}, {"required": ["none"]}]})
    assert check({"rooms": [{"nights": 2}, {"nights": 0}]}) == ["$.rooms[1].nights: 0 is less than the minimum of 1"]
    assert check({"rooms": []}) == []
    assert scores('json_schema:{"oneOf": [{"type": "string"}, {"type": "integer"}]}', [('"a"', None), ("1.5", None)]) == [1, 0]
    with pytest.raises(TuneryError, match="the JSON schema is not valid") as err:
        parse_grader('json_schema:{"type": "strin"}')
    assert "$.type" in err.value.render()


def test_contains_and_max_words():
    assert scores("contains:Paris", [("It is paris.", None), ("Lyon", None)]) == [1, 0]
    assert scores("contains", [("The answer is Tokyo!", "tokyo"), ("Kyoto", "Tokyo"), ("x", None)]) == [1, 0, 0]
    assert scores("max_words:3", [("a cat", None), ("it is a cat", None), ("   ", None)]) == [1, 0, 0]


def test_spec_errors_say_what_to_write():
    with pytest.raises(TuneryError, match="unknown grader 'exat': did you mean exact"):
        parse_grader("exat")
    with pytest.raises(TuneryError, match="takes no argument"):
        parse_grader("json:x")
    with pytest.raises(TuneryError, match="invalid pattern"):
        parse_grader("regex:(")
    with pytest.raises(TuneryError, match="tolerance must be a number"):
        parse_grader("numeric:abc")
    with pytest.raises(TuneryError, match="positive whole number"):
        parse_grader("max_words:0")
    with pytest.raises(TuneryError, match="schema file not found"):
        parse_grader("json_schema:missing.json")
    with pytest.raises(TuneryError, match="'type' and optionally 'value'"):
        parse_grader({"kind": "exact"})


def test_labels_are_unique_and_comma_lists_split():
    labels = [g.label for g in parse_graders(["exact", "contains:a", "contains:a", "regex:" + "x" * 30])]
    assert labels == ["exact", "contains:a", "contains:a#2", "regex"]
    assert split_spec_list("exact, json,json_match") == ["exact", "json", "json_match"]
    assert split_spec_list("regex:^a,b$") == ["regex:^a,b$"]


def test_one_spec_three_uses_metric_reward_gate():
    graders = parse_graders(["json", "json_match", "exact"])
    answer = '{"city": "Lima", "name": "Ana Costa", "nights": 3}'
    assert score_all(graders, answer, REF) == {"json": 1.0, "json_match": 1.0, "exact": 0.0}
    assert reward(graders, answer, REF) == pytest.approx(2 / 3)
    assert reward(graders, answer, REF, {"json_match": 3, "exact": 1}) == pytest.approx(0.75)
    with pytest.raises(TuneryError, match="unknown graders: nope"):
        reward(graders, answer, REF, {"nope": 1})
    assert gate({"json": 0.97, "exact": 0.5}, {"json": 0.95}) == (True, [])
    assert gate({"json": 0.9}, {"json": 0.95, "exact": 0.5}) == (False, ["json: 0.900 < 0.950", "exact: not scored"])
