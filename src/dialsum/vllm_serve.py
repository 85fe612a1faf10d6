"""`dialsum serve --backend vllm`: vLLM's OpenAI server in a child process, with dialsum's endpoints in front.

The merged weights of a run or export, or the base with `--enable-lora` and `max_lora_rank` from the adapter (vLLM's
default of 16 refuses larger adapters). dialsum's `/v1/summarize` sends vLLM the training prompt's token ids with the
run's stop tokens and cleans up what comes back, as `dialsum predict` does.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from dialsum.config import Config, token_budget
from dialsum.errors import DialsumError

__all__ = ["VllmHttpPredictor", "require_vllm", "vllm_server", "vllm_server_command"]


def vllm_server_command(source, host: str, port: int, name: str) -> list[str]:
    """The command line of vLLM's OpenAI server for a run or an export: the merged weights, or the base with
    `--enable-lora` and `max_lora_rank` from the adapter (vLLM refuses ranks above its default of 16)."""
    import json

    from dialsum.generate import vllm_lora_rank
    from dialsum.models import ADAPTER_CONFIG, resolve_model_path

    config = source.config
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", host, "--port", str(port)]
    if source.adapter:
        rank = int(json.loads((Path(source.model_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("r", 16))
        command += ["--model", resolve_model_path(config.model.name_or_path), "--tokenizer", str(source.model_dir)]
        command += ["--enable-lora", "--max-lora-rank", str(vllm_lora_rank(rank))]
        command += ["--lora-modules", f"{name}={source.model_dir}"]
    else:
        command += ["--model", str(source.model_dir), "--served-model-name", name]
    command += ["--dtype", config.model.dtype, "--max-model-len", str(config.training.max_length)]
    command += ["--generation-config", "auto", "--seed", str(config.training.seed)]
    if config.model.trust_remote_code:
        command.append("--trust-remote-code")
    return command


def require_vllm() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise DialsumError(
            "--backend vllm needs vLLM, which is not installed: pip install 'dialsum[vllm]' (or --backend hf)"
        )


class VllmHttpPredictor:
    """Predictor-like front of a vLLM OpenAI server: dialsum's prompt ids in (`/v1/completions` takes token ids),
    the run's stop tokens, greedy or the run's sampling, dialsum's clean-up on the text that comes back."""

    def __init__(self, source, url: str, name: str):
        from types import SimpleNamespace

        from dialsum.encode import end_of_turn_token
        from dialsum.generate import _checkpoint_generation_config, stop_token_ids
        from dialsum.models import load_tokenizer, resolve_model_path

        self.source, self.url, self.name = source, url, name
        self.tokenizer = load_tokenizer(source.model_dir, source.config)
        weights = resolve_model_path(source.config.model.name_or_path) if source.adapter else source.model_dir
        self.stops = stop_token_ids(
            SimpleNamespace(generation_config=_checkpoint_generation_config(weights)), self.tokenizer
        )
        self.closer = end_of_turn_token(self.tokenizer)

    @property
    def config(self) -> Config:
        return self.source.config

    def summarise(self, dialogues, config=None, *, progress=False, info=None, max_new_tokens=None, **_):
        import httpx

        from dialsum.cleanup import clean_summary
        from dialsum.encode import encode_prompt_with_info
        from dialsum.generate import apply_cleanup

        config = config or self.config
        g = config.generation
        encoded = [encode_prompt_with_info(self.tokenizer, d, config) for d in dialogues]
        limits = list(max_new_tokens) if max_new_tokens is not None else [token_budget(g)] * len(dialogues)
        texts = []
        with httpx.Client(timeout=600) as client:
            for (ids, _cut), limit in zip(encoded, limits):
                response = client.post(
                    f"{self.url}/v1/completions",
                    json={
                        "model": self.name,
                        "prompt": ids,
                        "max_tokens": limit,
                        "temperature": g.temperature if g.do_sample else 0.0,
                        "top_p": g.top_p if g.do_sample else 1.0,
                        "repetition_penalty": g.repetition_penalty,
                        "stop_token_ids": self.stops,
                        "skip_special_tokens": True,
                    },
                )
                response.raise_for_status()
                texts.append(clean_summary(response.json()["choices"][0]["text"], self.tokenizer, self.closer))
        if info is not None:
            info["cuts"] = [cut for _ids, cut in encoded]
        return apply_cleanup(texts, config, None)


def vllm_server(model_path, port: int):
    """vLLM's OpenAI server in a child process on 127.0.0.1:`port`, and a Predictor-like front of it for
    dialsum's Server. Returns (front, process)."""
    import subprocess

    import httpx

    from dialsum.generate import VllmEngine
    from dialsum.models import resolve_inference_source

    require_vllm()
    source = resolve_inference_source(model_path)
    VllmEngine.check(source.config)
    name = Path(model_path).resolve().name
    command = vllm_server_command(source, "127.0.0.1", port, name)
    print("vLLM: " + " ".join(command), file=sys.stderr)
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise DialsumError(
                f"--backend vllm: vLLM's server exited with code {process.returncode} (its log is above)"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)
    return VllmHttpPredictor(source, url, name), process
