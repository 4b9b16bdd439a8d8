import json

from embedforge.llm.hf_server import (
    JsonCloser,
    StringCloser,
    answer_prefix,
    cut_json,
    json_prefill,
    string_fields,
    string_value,
)


def test_prefill_from_response_format():
    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    body = {"response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": schema}}}
    assert json_prefill(body) == '{"text": "'
    assert json_prefill({"response_format": {"type": "json_object"}}) == "{"
    assert json_prefill({}) == ""


def test_cut_json_and_closer_agree():
    text = '{"text": "a } inside \\" quote", "b": {"c": 1}} trailing {"x": 2}'
    cut = cut_json(text)
    assert json.loads(cut) == {"text": 'a } inside " quote', "b": {"c": 1}}
    closer = JsonCloser('{"text": "')
    for piece in ['a } in', 'side \\" quote"', ', "b": {"c": 1', "}", "}"]:
        done = closer.feed(piece)
    assert done
    assert not JsonCloser('{"text": "').feed("unfinished")


def test_string_fields_of_flat_string_schemas_only():
    schema = {"type": "object", "properties": {"query": {"type": "string"},
                                               "positive": {"type": "string"}},
              "required": ["query", "positive"]}
    assert string_fields({"response_format": {"type": "json_object", "schema": schema}}) == \
        ["query", "positive"]
    assert string_fields({"response_format": {"type": "json_schema",
                                              "json_schema": {"name": "o", "schema": schema}}}) == \
        ["query", "positive"]
    nested = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert string_fields({"response_format": {"type": "json_object", "schema": nested}}) is None
    assert string_fields({"response_format": {"type": "json_object"}}) is None
    assert string_fields({}) is None


def test_string_value_stops_at_the_closing_quote_and_decodes_escapes():
    assert string_value('a \\"quoted\\" word", "next": "x"}') == ('a "quoted" word', True)
    assert string_value("line one\nline two") == ("line one\nline two", False)  # raw newline kept
    assert string_value('ends with a stray backslash \\') == ("ends with a stray backslash \\", False)


def test_answer_prefix_is_the_json_so_far():
    prefix = answer_prefix({"query": 'say "hi"'}, "positive")
    assert prefix == '{"query": "say \\"hi\\"", "positive": "'
    assert json.loads(prefix + 'ok"}') == {"query": 'say "hi"', "positive": "ok"}
    closer = StringCloser()
    assert not closer.feed('still \\" inside')
    assert closer.feed(' done" and more')
