"""Draft heads in the layouts other projects publish, read into (and written from) `FSPADDraftModel`.

The layouts (research/heads.md section 2, restated):
    eagle            EAGLE-1 / EAGLE-2: `fc` [H, 2H] (+ bias unless `"bias": false`), one decoder layer under
                     `layers.0.` without input norm (q/k/v biases for Qwen2 targets), `embed_tokens` a copy of
                     the target's; the output goes to the target's lm_head unnormed and is fed back.
    fspad-reference  the FSPAD paper's code: as eagle, with `fc.fc.*`, the feature-sampling block under
                     `fc.mlp.*` / `fc.post_attention_layernorm`, and a [2H, I] `layers.0.mlp.down_proj`.
    eagle3           EAGLE-3 (`midlayer.*` or `layers.0.*`, a [H, 3H] fc, its own norm and lm_head, d2t / t2d),
                     read into Eagle3DraftModel; vllm-project/speculators' `eagle3` (`layers.0.*`, optional extra
                     plain layers, `norm_before_residual`, the fused layer ids in its config) likewise.
    hf_specdec       ours: config.json with model_type "fspad" + model.safetensors.

Weights are read from safetensors, or from `pytorch_model.bin` with `torch.load(weights_only=True)` only:
a pickle that needs more than tensors is refused, never run. No `trust_remote_code`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from transformers import GenerationConfig

from .base import embedding_fingerprint, same_fingerprint
from .configuration_eagle3 import Eagle3Config
from .configuration_fspad import FSPADConfig
from .modeling_eagle3 import Eagle3DraftModel
from .modeling_fspad import FSPADDraftModel

# Tree defaults of the EAGLE code (total_token 60, depth 6, top_k 10), written with converted heads.
EAGLE_TREE = {"tree_top_k": 10, "tree_depth": 6, "tree_total_tokens": 60}

_LAYER = {  # the decoder layer, EAGLE / FSPAD-reference name -> ours
    **{f"layers.0.self_attn.{p}_proj.{w}": f"self_attn.{p}_proj.{w}" for p in "qkvo" for w in ("weight", "bias")},
    **{f"layers.0.mlp.{p}_proj.weight": f"{p}_proj.weight" for p in ("gate", "up", "down")},
    "layers.0.post_attention_layernorm.weight": "post_attention_layernorm.weight",
}
KEY_MAPS = {
    "eagle": {"fc.weight": "fc.weight", "fc.bias": "fc.bias", **_LAYER},
    "fspad-reference": {
        "fc.fc.weight": "fc.weight", "fc.fc.bias": "fc.bias",
        "fc.mlp.gate_proj.weight": "fs_gate_proj.weight", "fc.mlp.up_proj.weight": "fs_up_proj.weight",
        "fc.mlp.down_proj.weight": "fs_down_proj.weight", "fc.post_attention_layernorm.weight": "fs_norm.weight",
        **_LAYER,
    },
}
OPTIONAL = {"fc.bias", "fc.fc.bias", *(f"layers.0.self_attn.{p}_proj.bias" for p in "qkvo")}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # a buffer older checkpoints saved; recomputed from the config
EMBEDDING = "embed_tokens.weight"
OUR_CLASSES = {"fspad": FSPADDraftModel, "hf_specdec_eagle3": Eagle3DraftModel}  # config model_type -> class


# ------------------------------------------------------------------------------------------- reading
def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (single file or sharded, safetensors preferred)."""
    from safetensors.torch import load_file

    for index_name, loader in (("model.safetensors.index.json", load_file), ("pytorch_model.bin.index.json", _load_bin)):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in loader(folder / shard).items()}
    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        return _load_bin(folder / "pytorch_model.bin")
    raise FileNotFoundError(f"{folder} holds no model.safetensors or pytorch_model.bin (sharded or not).")


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, read with torch.load(weights_only=True): tensors and plain containers only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as error:
        raise ValueError(
            f"Refused to load {path}: it needs more than tensors to unpickle ({type(error).__name__}: "
            f"{str(error)[:200]}). hf_specdec reads pytorch_model.bin only with torch.load(weights_only=True) and "
            "never runs code from a checkpoint; convert it to safetensors where you trust it."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors.")
    return state


def detect_layout(config: dict, keys) -> str:
    keys = set(keys)
    if config.get("model_type") in OUR_CLASSES:
        return "hf_specdec"
    if config.get("speculators_model_type") == "eagle3":
        return "speculators-eagle3"
    if any(k.startswith("midlayer.") for k in keys) or "d2t" in keys or "layers.0.hidden_norm.weight" in keys:
        return "eagle3"
    if "fc.fc.weight" in keys:
        return "fspad-reference"
    if "fc.weight" in keys and any(k.startswith("layers.0.") for k in keys):
        return "eagle"
    raise ValueError(
        "Unrecognised draft head layout: expected an hf_specdec head (config model_type 'fspad'), an EAGLE-1/2 "
        "head (fc.weight + layers.0.*), an FSPAD reference head (fc.fc.weight) or an EAGLE-3 head; the "
        f"checkpoint has keys {sorted(keys)[:8]}{' ...' if len(keys) > 8 else ''}."
    )


def _rope(config: dict) -> tuple[float, dict | None]:
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or None
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    if params and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling and "rope_type" not in scaling:  # older configs say "type"
        scaling = {"rope_type": scaling.get("type", "default"), **{k: v for k, v in scaling.items() if k != "type"}}
    return float(theta), scaling


def _check_keys(layout: str, source: str, missing: list[str], unexpected: list[str]) -> None:
    if missing or unexpected:
        parts = ([f"missing: {', '.join(missing)}"] if missing else []) + (
            [f"unexpected: {', '.join(sorted(unexpected))}"] if unexpected else [])
        raise ValueError(f"The {layout} head at {source} does not match its layout ({'; '.join(parts)}).")


def _layer_shape(shape: dict, hidden: int, intermediate: int, embedding, layout: str, source: str) -> dict:
    """DraftHeadConfig's arguments from a LlamaConfig-style dict (missing sizes from the tensors)."""
    heads = int(shape["num_attention_heads"])
    theta, scaling = _rope(shape)
    return dict(
        hidden_size=hidden,
        intermediate_size=int(shape.get("intermediate_size") or intermediate),
        num_attention_heads=heads,
        num_key_value_heads=int(shape.get("num_key_value_heads") or heads),
        head_dim=int(shape.get("head_dim") or hidden // heads),
        rms_norm_eps=float(shape.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rotary_scaling=scaling,
        max_position_embeddings=int(shape.get("max_position_embeddings", 8192)),
        vocab_size=int(shape.get("vocab_size") or (embedding.shape[0] if embedding is not None else 0)),
        target_fingerprint=embedding_fingerprint(embedding) if embedding is not None else None,
        source_layout=layout,
        source=source,
    )


def convert_state(layout: str, config: dict, weights: dict[str, torch.Tensor], source: str):
    """(FSPADConfig, our state dict, the stored embedding or None) for an EAGLE-1/2 or FSPAD-reference head.
    Missing required tensors and tensors the layout does not have are errors naming them."""
    mapping = KEY_MAPS[layout]
    required = sorted(k for k in mapping if k not in OPTIONAL)
    missing = [k for k in required if k not in weights]
    unexpected = [k for k in weights if k not in mapping and k != EMBEDDING and not k.endswith(IGNORED_SUFFIXES)]
    _check_keys(layout, source, missing, unexpected)
    state = {ours: weights[theirs] for theirs, ours in mapping.items() if theirs in weights}
    H = int(config.get("hidden_size") or state["fc.weight"].shape[0])
    qkv_bias = any(f"self_attn.{p}_proj.bias" in state for p in "qkv")
    if qkv_bias:  # LlamaAttention biases all four projections; Qwen2-style heads store q/k/v only (o's is zero)
        for p in "qkvo":
            weight = state[f"self_attn.{p}_proj.weight"]
            state.setdefault(f"self_attn.{p}_proj.bias", weight.new_zeros(weight.shape[0]))
    embedding = weights.get(EMBEDDING)
    ours = FSPADConfig(
        **_layer_shape(config, H, state["gate_proj.weight"].shape[0], embedding, layout, source),
        attention_bias=qkv_bias,
        fc_bias="fc.bias" in state,
        use_feature_sampling=layout == "fspad-reference",
        use_partial_alignment=state["down_proj.weight"].shape[0] == 2 * H,
    )
    return ours, state, embedding


_EAGLE3_LAYER = ("input_layernorm.weight", "hidden_norm.weight", "post_attention_layernorm.weight",
                 *(f"self_attn.{p}_proj.weight" for p in "qkvo"), *(f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")))


def convert_eagle3_state(layout: str, config: dict, weights: dict[str, torch.Tensor], source: str):
    """(Eagle3Config, our state dict, the stored embedding or None) for an EAGLE-3 head: the EAGLE repository's
    layout (`midlayer.*` or `layers.0.*`) or speculators' (`layers.0.*`, extra plain `layers.1..`, a nested
    `transformer_layer_config`)."""
    shape = config.get("transformer_layer_config") or config
    first = "midlayer." if any(k.startswith("midlayer.") for k in weights) else "layers.0."
    state, unexpected = {}, []
    for key, tensor in weights.items():
        if key in ("fc.weight", "norm.weight", "lm_head.weight", "d2t"):
            state[key] = tensor
        elif key.startswith(first):
            state["midlayer." + key[len(first):]] = tensor
        elif key.startswith("layers.") and first == "layers.0.":
            index, _, rest = key[len("layers."):].partition(".")
            state[f"extra_layers.{int(index) - 1}.{rest}"] = tensor
        elif key not in (EMBEDDING, "t2d") and not key.endswith(IGNORED_SUFFIXES):
            unexpected.append(key)
    required = ["fc.weight", "norm.weight", "lm_head.weight", *(f"midlayer.{k}" for k in _EAGLE3_LAYER)]
    _check_keys(layout, source, [k for k in required if k not in state], unexpected)
    H = int(shape.get("hidden_size") or state["norm.weight"].shape[0])
    draft_vocab = int(config.get("draft_vocab_size") or state["lm_head.weight"].shape[0])
    state.setdefault("d2t", torch.zeros(draft_vocab, dtype=torch.long))  # a full-vocabulary head maps id to id
    extra = {k.split(".")[1] for k in state if k.startswith("extra_layers.")}
    embedding = weights.get(EMBEDDING)
    fused = state["fc.weight"].shape[1]
    target_hidden = int(config.get("target_hidden_size") or fused // 3)
    ours = Eagle3Config(
        **_layer_shape(shape, H, state["midlayer.mlp.gate_proj.weight"].shape[0], embedding, layout, source),
        draft_vocab_size=draft_vocab,
        target_hidden_size=target_hidden,
        num_fused_layers=fused // target_hidden,
        feature_layers=config.get("eagle_aux_hidden_state_layer_ids"),
        norm_before_residual=bool(config.get("norm_before_residual", False)),
        num_extra_layers=len(extra),
    )
    return ours, state, embedding


# ------------------------------------------------------------------------------------------- loading
def resolve_folder(path_or_repo_id: str, revision: str | None = None, **hub_kwargs) -> Path:
    """A local folder as is; anything else is a Hub repo id, downloaded (or found in the offline cache)."""
    local = Path(path_or_repo_id).expanduser()
    if local.is_dir():
        return local
    if local.is_absolute() or path_or_repo_id.startswith((".", "~")) or local.exists():
        raise FileNotFoundError(f"No draft head folder at {path_or_repo_id}: pass a folder holding config.json and "
                                "the weights, or a Hub repo id.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path_or_repo_id, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.bin", "*.md"], **hub_kwargs))
    except Exception as error:  # offline without a cached copy, an unknown repo, a malformed id
        raise OSError(f"Could not get the draft head {path_or_repo_id!r} from the Hub or its local cache "
                      f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). Pass a local folder, or a repo "
                      "id that is reachable or already cached.") from error


def load_draft(path_or_repo_id, target=None, revision: str | None = None, tokenizer=None, **hub_kwargs):
    """A draft head from a folder or Hub repo in any layout above, as a model our engine runs. With `target`
    it is paired and checked (hidden size, vocabulary, the embedding a checkpoint carries)."""
    folder = resolve_folder(str(path_or_repo_id), revision, **hub_kwargs)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if config.get("model_type") in OUR_CLASSES:  # saved by our save_pretrained: the class's own (strict) loader
        head = OUR_CLASSES[config["model_type"]].from_pretrained(folder)
    else:
        weights = read_weights(folder)
        layout = detect_layout(config, weights)
        if not config:
            raise ValueError(f"{folder} has no config.json: the {layout} layout needs one for the head's shape.")
        if layout in ("eagle3", "speculators-eagle3"):
            head_config, state, embedding = convert_eagle3_state(layout, config, weights, str(path_or_repo_id))
            head = Eagle3DraftModel(head_config)
        else:
            head_config, state, embedding = convert_state(layout, config, weights, str(path_or_repo_id))
            head = FSPADDraftModel(head_config)
        head.load_state_dict(state, strict=True)
        head = head.to(state["fc.weight"].dtype)
        head.generation_config = GenerationConfig(**EAGLE_TREE)
        if target is not None and embedding is not None:
            check_stored_embedding(embedding, target, path_or_repo_id)
    head.eval()
    if target is not None:
        head.attach_target(target, tokenizer=tokenizer)
    return head


def check_stored_embedding(embedding: torch.Tensor, target, source) -> None:
    """A checkpoint's copy of the embedding must be the target's: another one means another target."""
    theirs = target.get_input_embeddings().weight
    if embedding.shape != theirs.shape or not same_fingerprint(embedding_fingerprint(embedding),
                                                               embedding_fingerprint(theirs)):
        raise ValueError(
            f"The head {source} was trained for another target: its stored embed_tokens "
            f"{list(embedding.shape)} does not match {type(target).__name__}'s {list(theirs.shape)} embedding. "
            "Load the head trained for this target."
        )


# ------------------------------------------------------------------------------------------- writing
def export_state(head: FSPADDraftModel, layout: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json dict, tensors) of `head` in another project's layout, full vocabulary: EAGLE-1/2 for
    EAGLE-2-variant heads, fspad-reference for FSPAD heads. The target's embedding is included (both layouts
    carry it). A reduced draft vocabulary is dropped (these layouts score the target's whole vocabulary)."""
    variant = head.config.variant
    allowed = {"eagle": "eagle2", "fspad-reference": "fspad"}
    if layout not in allowed:
        raise ValueError(f"Unknown export layout {layout!r}; choose one of {sorted(allowed)}.")
    if variant != allowed[layout]:
        raise ValueError(
            f"A {variant!r} head cannot be written in the {layout} layout (it holds {allowed[layout]!r} heads only)"
            + (": EAGLE-1/2 has no feature-sampling block or split (PAD) output; use layout 'fspad-reference'."
               if layout == "eagle" else ".")
        )
    if head.config.num_extra_layers:
        raise ValueError(f"A head with extra decoder layers ({head.config.num_extra_layers}) cannot be written in the "
                         f"{layout} layout, which holds one layer; save it in ours (save_pretrained).")
    inverse = {ours: theirs for theirs, ours in KEY_MAPS[layout].items()}
    own = {k: v for k, v in head.state_dict().items() if k != "draft_to_target"}
    tensors = {inverse[k]: v.detach().contiguous().clone() for k, v in own.items()}
    tensors[EMBEDDING] = head._parts().embed_tokens.weight.detach().to(head.fc.weight.dtype).contiguous().clone()
    c = head.config
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim, "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta, "max_position_embeddings": c.max_position_embeddings,
        "vocab_size": c.vocab_size, "num_hidden_layers": 1, "bias": bool(c.fc_bias),
        "torch_dtype": str(head.fc.weight.dtype).removeprefix("torch."),
    }
    if c.rotary_scaling:
        config["rope_scaling"] = c.rotary_scaling
    return config, tensors


def save_layout(head: FSPADDraftModel, out_dir, layout: str) -> Path:
    from safetensors.torch import save_file

    config, tensors = export_state(head, layout)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out
