"""LoRA adapters on a transformers generation model (TransformersBackend): several PEFT adapters on one base model
(``peft.PeftModel``: ``from_pretrained``, ``load_adapter``, ``delete_adapter``), one chosen per generation by
PEFT's ``adapter_names`` (``"__base__"``: the base model), so no state is switched between requests.

transformers' own PEFT integration (``model.load_adapter`` and friends) is not used: transformers 5.24 needs
peft >= 0.22 for it, which is not released. Every change to the model runs in the model thread, where generation
runs one request at a time: a change never meets a generation half-way, an adapter being deleted finishes the
generation using it first, and a request queued behind the deletion is a 404.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..adapters import entry, misfit, unknown
from ..errors import BadRequest, first_line

BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


class PeftAdapters:
    def __init__(self, name: str, model, base: Path):
        self.name, self.base_model, self.base = name, model, base
        self.peft: Any = None  # the PeftModel around base_model once an adapter is loaded
        self.entries: Dict[str, Dict[str, str]] = {}  # name -> adapters.entry, in loading order

    @property
    def names(self) -> List[str]:
        return list(self.entries)

    def load(self, adapter: str, path: Path, url: str, source: str) -> None:
        """In the model thread (or at load time, before the thread serves). BadRequest naming why it cannot."""
        if not (path / "adapter_config.json").is_file():
            raise BadRequest(f"adapter '{adapter}': no adapter_config.json in {path} (expected a PEFT LoRA folder)")
        why = misfit(self.base, path)
        if why:
            raise BadRequest(f"adapter '{adapter}' does not fit model '{self.name}': {why}")
        if importlib.util.find_spec("peft") is None:
            raise BadRequest("LoRA adapters on backend HUGGINGFACE need the peft package (pip install "
                             "'modelserve[huggingface]')")
        from peft import PeftModel

        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base_model, str(path), adapter_name=adapter).eval()
            else:
                self.peft.load_adapter(str(path), adapter_name=adapter)
        except Exception as exc:  # noqa: BLE001 - any failure is the adapter's: a one-line reason
            raise BadRequest(f"adapter '{adapter}' cannot be loaded on model '{self.name}': {first_line(exc)}") \
                from None
        self.entries[adapter] = entry(adapter, url, source)

    def delete(self, adapter: str) -> None:
        """In the model thread: after any generation already running, before any queued behind it."""
        if adapter not in self.entries:
            raise unknown(self.name, adapter, self.names)
        del self.entries[adapter]
        if self.entries:
            if adapter in self.peft.active_adapters:
                self.peft.set_adapter(next(iter(self.entries)))
            self.peft.delete_adapter(adapter)
        else:  # the last one: the base model as it was, without LoRA layers
            self.base_model = self.peft.unload()
            self.peft = None

    def model_for(self, adapter: Optional[str]) -> Tuple[Any, Dict[str, Any]]:
        """In the model thread, for a generation: the model to call and the generate() keywords that pick
        ``adapter`` (None: the base model)."""
        if adapter is not None and adapter not in self.entries:
            raise unknown(self.name, adapter, self.names)
        if self.peft is None:
            return self.base_model, {}
        return self.peft, {"adapter_names": [adapter or BASE]}
