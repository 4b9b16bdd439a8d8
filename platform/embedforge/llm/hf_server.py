"""A small OpenAI-compatible chat server over a transformers causal LM, with request batching.

The embedded default LLM when llama.cpp is not installed: it needs nothing beyond the
project's own dependencies (``gguf`` for GGUF files). Requests that arrive together are
generated as one left-padded batch. For ``response_format`` with a JSON schema the answer is
pre-filled with ``{"<first key>": "`` and cut where the JSON object closes: a cheap steer that
makes a tiny model answer in the requested shape far more often.

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
    depth, in_str, esc = 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[: i + 1]
    return text


class JsonCloser:
    """Incremental brace/string tracker: knows when a streamed JSON object has closed."""

    def __init__(self, prefill: str):
        self.depth, self.in_str, self.esc, self.done = 0, False, False, False
        self.feed(prefill)

    def feed(self, text: str) -> bool:
        for ch in text:
            if self.done:
                break
            if self.in_str:
                if self.esc:
                    self.esc = False
                elif ch == "\\":
                    self.esc = True
                elif ch == '"':
                    self.in_str = False
            elif ch == '"':
                self.in_str = True
            elif ch == "{":
                self.depth += 1
            elif ch == "}":
                self.depth -= 1
                self.done = self.depth == 0
        return self.done


def _stop_on_json(tok: Any, prefills: list[str], n_in: int):
    """Per-sequence stopping once its JSON answer closes: without it a batch decodes until
    its longest member hits max_tokens, which on a CPU is most of the time spent."""
    import torch
    from transformers import StoppingCriteria

    class _Stop(StoppingCriteria):
        def __init__(self) -> None:
            self.closers = [JsonCloser(p) if p else None for p in prefills]
            self.seen = n_in

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            new = input_ids[:, self.seen:]
            self.seen = input_ids.shape[1]
            done = []
            for i, closer in enumerate(self.closers):
                if closer is None:
                    done.append(False)
                    continue
                if not closer.done:
                    closer.feed(tok.decode(new[i], skip_special_tokens=True))
                done.append(closer.done)
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return _Stop()


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

    def generate(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import torch

        first = bodies[0]
        prefills = [json_prefill(b) for b in bodies]
        prompts = [
            self.tok.apply_chat_template(b["messages"], tokenize=False, add_generation_prompt=True) + pre
            for b, pre in zip(bodies, prefills, strict=True)
        ]
        enc = self.tok(prompts, return_tensors="pt", padding=True)
        temperature = float(first.get("temperature", 0.7) or 0.0)
        sample = temperature > 0
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": max(int(b.get("max_tokens") or 256) for b in bodies),
            "do_sample": sample, "pad_token_id": self.tok.pad_token_id,
        }
        if sample:
            gen_kwargs.update(temperature=temperature, top_p=float(first.get("top_p", 1.0)))
        n_in = enc.input_ids.shape[1]
        if any(prefills):
            from transformers import StoppingCriteriaList

            gen_kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_stop_on_json(self.tok, prefills, n_in)])
        with torch.inference_mode():
            out = self.model.generate(**enc, **gen_kwargs)
        results = []
        for i, b in enumerate(bodies):
            new = out[i, n_in:]
            text = prefills[i] + self.tok.decode(new, skip_special_tokens=True)
            if prefills[i]:
                text = cut_json(text)
            n_completion = int((new != self.tok.pad_token_id).sum())
            n_prompt = int(enc.attention_mask[i].sum())
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
    return (body.get("temperature"), body.get("top_p"))


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
