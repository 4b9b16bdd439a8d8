import json

from embedforge.llm.hf_server import JsonCloser, cut_json, json_prefill


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
