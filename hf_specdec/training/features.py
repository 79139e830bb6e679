"""Target features for head training, stored as safetensors shards with a JSON manifest.

One target forward per sample keeps f (the last hidden state, after the final norm) in bf16. A shard holds
samples back to back:
    input_ids [N] int32, features [N, H] bf16, loss_mask [N] uint8, offsets [S + 1] int64 (sample s is
    rows offsets[s]:offsets[s+1]),
and `manifest.json` lists the shards with their sample ids. A shard is written to a temporary name and
renamed, then the manifest is rewritten the same way, so a kill at any point loses at most the shard in
progress; `extract_features` skips samples already stored.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

MANIFEST = "manifest.json"


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_manifest(feature_dir) -> dict:
    path = Path(feature_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{feature_dir} holds no {MANIFEST}: run `hf-specdec features` to extract features first.")
    return json.loads(path.read_text())


def target_description(model) -> dict:
    """What the features were extracted from, so training can check it is pairing the head with that target."""
    from ..draft.base import embedding_fingerprint

    return {
        "architecture": (model.config.architectures or [type(model).__name__])[0],
        "name_or_path": str(getattr(model.config, "_name_or_path", "")),
        "hidden_size": model.config.get_text_config(decoder=True).hidden_size,
        "fingerprint": embedding_fingerprint(model.get_input_embeddings().weight),
    }


@torch.no_grad()
def last_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """f for every position: the decoder's output after its final norm (what the lm_head reads). [B, T, H]."""
    return model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def extract_features(
    model,
    samples: list[dict],
    out_dir,
    shard_samples: int = 256,
    max_length: int = 1024,
    batch_tokens: int = 4096,
    adapter: str | None = None,
) -> Path:
    """Store f for each sample ({id, input_ids, loss_mask}) under `out_dir`; resumable (see module docstring).

    Samples are truncated to `max_length` tokens; those with no response token left are dropped. Batches of
    similar length (right padding, at most `batch_tokens` padded tokens) keep padding waste low.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
    else:
        manifest = {"format": 1, "target": target_description(model), "adapter": adapter, "dtype": "bfloat16", "shards": []}
    done = {sid for shard in manifest["shards"] for sid in shard["ids"]}
    todo = []
    for s in samples:
        ids, mask = s["input_ids"][:max_length], s["loss_mask"][:max_length]
        if str(s["id"]) not in done and any(mask):
            todo.append({"id": str(s["id"]), "input_ids": ids, "loss_mask": mask})
    device = model.device
    with tqdm(total=len(todo), desc="features", unit="sample") as bar:
        for start in range(0, len(todo), shard_samples):
            chunk = sorted(todo[start : start + shard_samples], key=lambda s: len(s["input_ids"]))
            feats = []
            i = 0
            while i < len(chunk):  # batches of similar length under the token budget
                j = i + 1
                while j < len(chunk) and (j + 1 - i) * len(chunk[j]["input_ids"]) <= batch_tokens:
                    j += 1
                batch = chunk[i:j]
                width = max(len(s["input_ids"]) for s in batch)
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                attn = torch.zeros((len(batch), width), dtype=torch.long)
                for row, s in enumerate(batch):
                    ids[row, : len(s["input_ids"])] = torch.tensor(s["input_ids"])
                    attn[row, : len(s["input_ids"])] = 1
                hidden = last_hidden_states(model, ids.to(device), attn.to(device)).to("cpu", torch.bfloat16)
                feats.extend(hidden[row, : len(s["input_ids"])] for row, s in enumerate(batch))
                bar.update(len(batch))
                i = j
            lengths = torch.tensor([len(s["input_ids"]) for s in chunk])
            tensors = {
                "input_ids": torch.tensor([t for s in chunk for t in s["input_ids"]], dtype=torch.int32),
                "loss_mask": torch.tensor([m for s in chunk for m in s["loss_mask"]], dtype=torch.uint8),
                "features": torch.cat(feats).contiguous(),
                "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
            }
            name = f"features-{len(manifest['shards']):05d}.safetensors"
            tmp = out_dir / (name + ".tmp")
            save_file(tensors, tmp, metadata={"format": "pt"})
            os.replace(tmp, out_dir / name)
            manifest["shards"].append({"file": name, "ids": [s["id"] for s in chunk], "tokens": int(lengths.sum())})
            _write_json_atomic(manifest_path, manifest)
    return out_dir


def load_samples(feature_dir) -> list[dict]:
    """Every stored sample as {id, input_ids [T] long, features [T, H] bf16, loss_mask [T] bool}."""
    feature_dir = Path(feature_dir)
    samples = []
    for shard in read_manifest(feature_dir)["shards"]:
        t = load_file(feature_dir / shard["file"])
        off = t["offsets"].tolist()
        for k, sid in enumerate(shard["ids"]):
            a, b = off[k], off[k + 1]
            samples.append(
                {
                    "id": sid,
                    "input_ids": t["input_ids"][a:b].long(),
                    "features": t["features"][a:b],
                    "loss_mask": t["loss_mask"][a:b].bool(),
                }
            )
    return samples


def is_validation(sample_id: str, fraction: float) -> bool:
    """A fixed, order-independent split: a sample is held back when the CRC of its id falls below `fraction`."""
    return (zlib.crc32(str(sample_id).encode()) % 10_000) < fraction * 10_000
