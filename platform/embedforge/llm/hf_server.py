"""A small OpenAI-compatible chat server over a transformers causal LM, with request batching.

The embedded default LLM: it needs nothing beyond the project's own dependencies (``gguf``
for GGUF files). Requests that arrive together are generated as one left-padded batch. A
``response_format`` schema that is a flat object of strings (every schema the synthesis
techniques use) is decoded under the schema: the engine writes the keys and punctuation, the
model only each value up to its closing quote, so the answer is always the requested JSON.
Other JSON requests are steered by a pre-filled first key and cut where the object closes.

    python -m embedforge.llm.hf_server --model PATH_OR_GGUF --port 8011
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Pending:
    body: dict[str, Any]
    future: asyncio.Future[dict[str, Any]]
    arrived: float = field(default_factory=time.monotonic)


_LENIENT = json.JSONDecoder(strict=False)  # a raw newline inside a value is still the value


def string_fields(body: dict[str, Any]) -> list[str] | None:
    """The fields of a requested flat object of strings (every schema the techniques use),
    in order; None when the request asks for something else."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") not in ("json_schema", "json_object"):
        return None
    schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema") or {}
    props = schema.get("properties") or {}
    fields = list(schema.get("required") or props)
    if not fields or any((props.get(f) or {}).get("type") != "string" for f in fields):
        return None
    return fields


def string_value(raw: str) -> tuple[str, bool]:
    """The JSON string value at the start of ``raw`` (the text after an opening quote):
    (decoded value, whether its closing quote was reached)."""
    closer = StringCloser()
    closer.feed(raw)
    if closer.done:
        return _unescape(raw[:closer.end]), True
    return _unescape(raw), False


def _unescape(text: str) -> str:
    try:
        return _LENIENT.decode(f'"{text}"')
    except json.JSONDecodeError:  # a stray backslash or control character: keep the text
        return text.replace("\\n", "\n").replace('\\"', '"')


def json_prefill(body: dict[str, Any]) -> str:
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema") or {}
    required = schema.get("required") or list((schema.get("properties") or {}).keys())
    if fmt.get("type") in ("json_schema", "json_object") and required:
        return '{"' + required[0] + '": "'
    if fmt.get("type") == "json_object":
        return "{"
    return ""


def cut_json(text: str) -> str:
    """The shortest prefix of ``text`` that is a complete JSON object, else ``text``."""
    closer = JsonCloser("")
    for i, ch in enumerate(text):
        if closer.feed(ch):
            return text[: i + 1]
    return text


class StringCloser:
    """Knows when a streamed JSON string value (the text after its opening quote) has closed;
    ``end`` is then the value's length in the text fed."""

    def __init__(self) -> None:
        self.esc, self.done, self.seen, self.end = False, False, 0, 0

    def feed(self, text: str) -> bool:
        for ch in text:
            if self.done:
                break
            if self.esc:
                self.esc = False
            elif ch == "\\":
                self.esc = True
            elif ch == '"':
                self.done, self.end = True, self.seen
            self.seen += 1
        return self.done


class JsonCloser:
    """Incremental brace/string tracker: knows when a streamed JSON object has closed."""

    def __init__(self, prefill: str):
        self.depth, self.done = 0, False
        self.string: StringCloser | None = None  # inside a string: its closer
        self.feed(prefill)

    def feed(self, text: str) -> bool:
        for ch in text:
            if self.done:
                break
            if self.string is not None:
                if self.string.feed(ch):
                    self.string = None
            elif ch == '"':
                self.string = StringCloser()
            elif ch == "{":
                self.depth += 1
            elif ch == "}":
                self.depth -= 1
                self.done = self.depth == 0
        return self.done


def _stop_when_closed(tok: Any, closers: list[Any], n_in: int):
    """Per-sequence stopping once its closer says done: without it a batch decodes until its
    longest member hits max_tokens, which on a CPU is most of the time spent."""
    import torch
    from transformers import StoppingCriteria

    class _Stop(StoppingCriteria):
        def __init__(self) -> None:
            self.seen = n_in

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            new = input_ids[:, self.seen:]
            self.seen = input_ids.shape[1]
            done = []
            for i, closer in enumerate(closers):
                if closer is not None and not closer.done:
                    closer.feed(tok.decode(new[i], skip_special_tokens=True))
                done.append(closer is not None and closer.done)
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return _Stop()


def answer_prefix(values: dict[str, str], field: str) -> str:
    """The JSON answer so far, opened at ``field``'s string value: keys and punctuation come
    from the schema, only the values from the model."""
    done = "".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}, " for k, v in values.items())
    return "{" + done + json.dumps(field) + ': "'


class Engine:
    def __init__(self, model_path: str, threads: int | None, max_batch: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads or os.cpu_count() or 1)
        kwargs: dict[str, Any] = {}
        folder, gguf = model_path, None
        if model_path.endswith(".gguf"):
            folder, gguf = os.path.dirname(model_path), os.path.basename(model_path)
            kwargs["gguf_file"] = gguf
        self.tok = AutoTokenizer.from_pretrained(folder, **kwargs)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
        self.model.eval()
        self.max_batch = max_batch
        self.name = os.path.basename(model_path)

    def _run(self, prompts: list[str], max_new: int, params: dict[str, Any],
             closers: list[Any]) -> tuple[list[str], list[int], list[int]]:
        """One batched generate: (new texts, completion tokens, prompt tokens) per prompt."""
        import torch
        from transformers import StoppingCriteriaList

        enc = self.tok(prompts, return_tensors="pt", padding=True)
        temperature = float(params.get("temperature", 0.7) or 0.0)
        gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": temperature > 0,
                                      "pad_token_id": self.tok.pad_token_id}
        if temperature > 0:
            gen_kwargs.update(temperature=temperature, top_p=float(params.get("top_p", 1.0)))
        if params.get("repetition_penalty"):  # vLLM's extension: >1 discourages copying the prompt
            gen_kwargs["repetition_penalty"] = float(params["repetition_penalty"])
        n_in = enc.input_ids.shape[1]
        if any(c is not None for c in closers):
            gen_kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_stop_when_closed(self.tok, closers, n_in)])
        with torch.inference_mode():
            out = self.model.generate(**enc, **gen_kwargs)
        new = out[:, n_in:]
        texts = [self.tok.decode(row, skip_special_tokens=True) for row in new]
        return (texts, [int((row != self.tok.pad_token_id).sum()) for row in new],
                [int(m.sum()) for m in enc.attention_mask])

    def _chat(self, body: dict[str, Any]) -> str:
        return self.tok.apply_chat_template(body["messages"], tokenize=False,
                                            add_generation_prompt=True)

    def _fields(self, bodies: list[dict[str, Any]], fields: list[list[str]]) -> list[tuple[str, int, int]]:
        """Schema-constrained decoding of flat string objects, one field per round: the
        engine writes ``{"key": "``, the model writes the value up to its closing quote,
        and the answer is re-serialised, so it is always the requested JSON whatever a small
        model would have done with keys, braces and escapes."""
        prompts = [self._chat(b) for b in bodies]
        values: list[dict[str, str]] = [{} for _ in bodies]
        budget = [int(b.get("max_tokens") or 256) for b in bodies]
        used, n_prompt = [0] * len(bodies), [0] * len(bodies)
        for k in range(max(len(f) for f in fields)):
            active = [i for i in range(len(bodies)) if k < len(fields[i]) and budget[i] > 0]
            if not active:
                break
            texts, n_comp, n_pr = self._run(
                [prompts[i] + answer_prefix(values[i], fields[i][k]) for i in active],
                max(budget[i] for i in active), bodies[active[0]], [StringCloser() for _ in active])
            for j, i in enumerate(active):
                value, closed = string_value(texts[j])
                values[i][fields[i][k]] = value
                used[i] += n_comp[j]
                budget[i] = budget[i] - n_comp[j] if closed else 0  # out of tokens: stop here
                n_prompt[i] = n_prompt[i] or n_pr[j]
        return [(json.dumps({f: v.get(f, "") for f in fs}, ensure_ascii=False), used[i], n_prompt[i])
                for i, (v, fs) in enumerate(zip(values, fields, strict=True))]

    def _free(self, bodies: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
        """Other requests: plain text, or JSON steered by a pre-filled first key and cut
        where the object closes."""
        prefills = [json_prefill(b) for b in bodies]
        texts, n_comp, n_pr = self._run(
            [self._chat(b) + pre for b, pre in zip(bodies, prefills, strict=True)],
            max(int(b.get("max_tokens") or 256) for b in bodies), bodies[0],
            [JsonCloser(p) if p else None for p in prefills])
        out = []
        for pre, text, c, p in zip(prefills, texts, n_comp, n_pr, strict=True):
            out.append((cut_json(pre + text) if pre else text, c, p))
        return out

    def generate(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        fields = [string_fields(b) for b in bodies]
        answers: list[tuple[str, int, int] | None] = [None] * len(bodies)
        structured = [i for i, f in enumerate(fields) if f]
        free = [i for i, f in enumerate(fields) if not f]
        if structured:
            got = self._fields([bodies[i] for i in structured], [fields[i] or [] for i in structured])
            for i, a in zip(structured, got, strict=True):
                answers[i] = a
        if free:
            for i, a in zip(free, self._free([bodies[i] for i in free]), strict=True):
                answers[i] = a
        results = []
        for b, ans in zip(bodies, answers, strict=True):
            assert ans is not None
            text, n_completion, n_prompt = ans
            results.append({
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                "created": int(time.time()), "model": b.get("model", self.name),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                          "total_tokens": n_prompt + n_completion},
            })
        return results


def _key(body: dict[str, Any]) -> tuple[Any, ...]:
    """Requests batched together share their sampling parameters."""
    return (body.get("temperature"), body.get("top_p"), body.get("repetition_penalty"))


async def _batcher(engine: Engine, queue: asyncio.Queue[_Pending], window_s: float) -> None:
    while True:
        first = await queue.get()
        batch = [first]
        deadline = time.monotonic() + window_s
        while len(batch) < engine.max_batch:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                nxt = await asyncio.wait_for(queue.get(), timeout)
            except asyncio.TimeoutError:
                break
            if _key(nxt.body) != _key(first.body):
                await queue.put(nxt)  # different sampling params: next batch
                break
            batch.append(nxt)
        try:
            results = await asyncio.to_thread(engine.generate, [p.body for p in batch])
            for p, r in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(r)
        except Exception as exc:  # a bad request must not kill the server
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)


def build_app(engine: Engine, window_s: float = 0.02):
    from aiohttp import web

    queue: asyncio.Queue[_Pending] = asyncio.Queue()

    async def start(app: web.Application) -> None:
        app["batcher"] = asyncio.create_task(_batcher(engine, queue, window_s))

    async def chat(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                raise ValueError("messages must be a non-empty list")
        except (ValueError, json.JSONDecodeError) as exc:
            return web.json_response({"error": {"message": str(exc), "type": "invalid_request_error"}},
                                     status=400)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await queue.put(_Pending(body, fut))
        try:
            return web.json_response(await fut)
        except Exception as exc:
            return web.json_response({"error": {"message": str(exc), "type": "server_error"}},
                                     status=500)

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": engine.name, "object": "model", "owned_by": "embedforge"}]})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.on_startup.append(start)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


def main(argv: list[str] | None = None) -> None:
    from aiohttp import web

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF folder or .gguf file")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-batch", type=int, default=16)
    args = ap.parse_args(argv)
    engine = Engine(args.model, args.threads, args.max_batch)
    print(f"READY http://{args.host}:{args.port}/v1", flush=True)
    # shutdown_timeout: on SIGTERM do not wait for a running CPU generation to finish
    web.run_app(build_app(engine), host=args.host, port=args.port, access_log=None,
                print=None, shutdown_timeout=1.0)


if __name__ == "__main__":
    main()
