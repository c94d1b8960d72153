"""``unitune export gguf``: a run (its adapter merged first) or a model folder as a GGUF file for
llama.cpp, written with the maintained ``gguf`` package, and an Ollama ``Modelfile`` beside it.

The architectures of ``ARCHITECTURES`` (Llama and Mistral as llama.cpp's ``llama``; Qwen2
with its attention biases; Qwen3 with its query and key norms): llama.cpp's own converter
knows dozens more, and a model we cannot map exactly is refused rather than written wrong. The
mapping follows llama.cpp's ``convert_hf_to_gguf.py``: tensor names from ``gguf``'s own name
map, the query and key projections of ``llama`` permuted into GGML's interleaved rotary layout
(Qwen's rotary layout is llama.cpp's NEOX one, HF's own), 1-D tensors (norms, biases) in f32,
the rest in f16 or quantized to Q8_0 by ``gguf.quants``; the metadata has the shapes, RoPE
(theta and any scaling the run recorded), the tokenizer (a SentencePiece model, or its
tokenizer.json conversion, as ``llama``; a byte-level BPE as ``gpt2`` with its merges and
the name of its pre-tokenizer), the special ids and the chat template. The file is written
under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unitune.errors import UserError

TYPES = ("f16", "q8_0", "f32")
# HF model_type -> (llama.cpp architecture, query/key rows permuted into GGML's rotary layout)
ARCHITECTURES = {"llama": ("LLAMA", True), "mistral": ("LLAMA", True),
                 "qwen2": ("QWEN2", False), "qwen3": ("QWEN3", False)}


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotary halves -> GGML's interleaved pairs (llama.cpp's converter does the same)."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


# the split patterns llama.cpp knows by name: Llama 3's numbers in runs of up to three digits,
# Qwen2's one digit at a time
_SPLITS = {
    "llama-bpe": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s"
                 "\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    "qwen2": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}"
             "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
}


def _split_patterns(node) -> list[str]:
    """Every ``Split`` regex in a pre-tokenizer spec (nested in ``Sequence``s)."""
    if isinstance(node, dict):
        own = [node["pattern"]["Regex"]] if node.get("type") == "Split" and \
            isinstance(node.get("pattern"), dict) and "Regex" in node["pattern"] else []
        return own + [p for value in node.values() for p in _split_patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in _split_patterns(value)]
    return []


def _pre_tokenizer(spec: dict, log) -> str:
    """llama.cpp's name for a byte-level BPE's pre-tokenizer (how text is split before the
    merges): Llama 3's or Qwen2's split pattern exactly, GPT-2's, or its default with a
    warning."""
    patterns = _split_patterns(spec.get("pre_tokenizer"))
    for name, pattern in _SPLITS.items():
        if patterns == [pattern]:
            return name
    if (spec.get("pre_tokenizer") or {}).get("type") == "ByteLevel":
        return "gpt-2"
    log("warning: llama.cpp does not know this tokenizer's pre-tokenizer and splits text with "
        "its default pattern: token ids given to it are unaffected, its own tokenisation of "
        "text may differ")
    return "default"


def _tokenizer_metadata(writer, tokenizer, folder: Path, rows: int, log) -> None:
    """The vocabulary (padded with unused tokens up to the embedding's ``rows``, as llama.cpp
    needs one token per row), special ids, BOS and chat template."""
    import gguf

    sp_file = folder / "tokenizer.model"
    scores: list[float] | None = None
    if sp_file.exists():  # SentencePiece: tokens, scores and types from the model itself
        from unitune.models.vocab import read_model

        proto = read_model(sp_file)
        tokens = [p.piece for p in proto.pieces]
        scores = [p.score for p in proto.pieces]
        types = [p.type for p in proto.pieces]
        extra = sorted((i, t) for t, i in tokenizer.get_vocab().items() if i >= len(tokens))
        if [i for i, _ in extra] != list(range(len(tokens), len(tokens) + len(extra))):
            raise UserError(f"{folder}: the ids added after the SentencePiece pieces have "
                            "gaps; GGUF needs one token per id")
        for _, token in extra:  # tokens added after the SentencePiece pieces
            tokens.append(token)
            scores.append(-1000.0)
            types.append(gguf.TokenType.USER_DEFINED)
        writer.add_tokenizer_model("llama")
    else:
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        model = spec.get("model", {})
        if model.get("type") != "BPE":
            raise UserError(f"{folder}: a {model.get('type')} tokenizer without "
                            "tokenizer.model; GGUF export takes SentencePiece or BPE "
                            "tokenizers")
        vocab = tokenizer.get_vocab()
        tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        if [vocab[t] for t in tokens] != list(range(len(tokens))):
            raise UserError(f"{folder}: the tokenizer's ids have gaps; GGUF needs 0..n-1")
        special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
        added = {t.content for t in tokenizer.added_tokens_decoder.values()}

        def kind(token: str) -> int:
            if token in special:
                return gguf.TokenType.CONTROL
            if token in added:
                return gguf.TokenType.USER_DEFINED
            if model.get("byte_fallback") and len(token) == 6 and token.startswith("<0x"):
                return gguf.TokenType.BYTE
            return gguf.TokenType.NORMAL

        types = [kind(t) for t in tokens]
        if model.get("byte_fallback"):  # a SentencePiece BPE converted to tokenizer.json:
            writer.add_tokenizer_model("llama")  # ranked by id as its scores ranked them
            scores = [-float(i) for i in range(len(tokens))]
        else:  # a byte-level BPE
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre(_pre_tokenizer(spec, log))
            writer.add_token_merges([m if isinstance(m, str) else " ".join(m)
                                     for m in model.get("merges", [])])
    if len(tokens) > rows:
        raise UserError(f"{folder}: {len(tokens)} tokens but {rows} embedding rows; the "
                        "model was not resized for its tokenizer")
    for i in range(len(tokens), rows):  # (a padded embedding, as llama.cpp's converter does)
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
        if scores is not None:
            scores.append(-1000.0)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if scores is not None:
        writer.add_token_scores(scores)
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{name}_token_id")(token_id)
    probe = tokenizer("a").input_ids
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _rope_metadata(writer, config) -> None:
    import gguf

    params = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(params.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", "default")
    if kind == "default":
        return
    if kind not in ("linear", "yarn"):
        raise UserError(f"RoPE scaling '{kind}' has no GGUF equivalent; export without it "
                        "(llama.cpp scales at load time with --rope-scaling)")
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if kind == "linear"
                                 else gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(float(params["factor"]))
    if "original_max_position_embeddings" in params:
        writer.add_rope_scaling_orig_ctx_len(int(params["original_max_position_embeddings"]))


def write_gguf(model, tokenizer, folder: Path, out: Path, kind: str, name: str,
               log=print) -> None:
    """Writes ``model`` (a merged model of one of the ``ARCHITECTURES``) to ``out`` as
    ``kind``."""
    import gguf
    import torch

    config = model.config
    if config.model_type not in ARCHITECTURES:
        raise UserError(f"GGUF export supports {', '.join(ARCHITECTURES)} models; this is "
                        f"'{config.model_type}' (llama.cpp's convert_hf_to_gguf.py knows more)")
    if getattr(config, "use_sliding_window", False):
        raise UserError("GGUF export: this model attends through a sliding window, which the "
                        "exported file would not hold; llama.cpp's convert_hf_to_gguf.py "
                        "knows it")
    arch, permuted = ARCHITECTURES[config.model_type]
    arch = gguf.MODEL_ARCH[arch]
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "f32": gguf.LlamaFileType.ALL_F32}[kind]
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    try:
        writer.add_name(name)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(head_dim)
        if head_dim != config.hidden_size // heads:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(model.get_input_embeddings().weight.shape[0])
        writer.add_file_type(file_type)
        _rope_metadata(writer, config)
        _tokenizer_metadata(writer, tokenizer, folder,
                            model.get_input_embeddings().weight.shape[0], log)
        names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
        tied = getattr(config, "tie_word_embeddings", False)
        for hf_name, tensor in model.state_dict().items():
            if tied and hf_name == "lm_head.weight":
                continue  # llama.cpp reads the embeddings for a missing output tensor
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise UserError(f"GGUF export: no GGUF name for tensor {hf_name}")
            data = tensor.detach().to(torch.float32).cpu().numpy()
            if permuted and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                data = _permute(data, heads)
            elif permuted and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                data = _permute(data, kv_heads)
            if data.ndim == 1 or kind == "f32":
                writer.add_tensor(target, data.astype(np.float32))
            elif kind == "q8_0" and data.shape[-1] % 32 == 0:
                quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
                writer.add_tensor(target, quantized, raw_shape=quantized.shape,
                                  raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                writer.add_tensor(target, data.astype(np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()


def modelfile(gguf_name: str, stops: list[str]) -> str:
    """An Ollama Modelfile: the GGUF (its embedded chat template renders prompts) and the
    template's stop strings."""
    lines = [f"FROM ./{gguf_name}"]
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops if s]
    return "\n".join(lines) + "\n"


def export_gguf(target: str, out_dir: Path, kinds: list[str], overwrite: bool = False,
                trust_remote_code: bool = False, log=print) -> list[Path]:
    """The run or model ``target`` as ``<out_dir>/<name>-<kind>.gguf`` for every kind, and a
    ``Modelfile`` for the first."""
    from unitune import methods
    from unitune.run import is_run, open_model, read_run

    for kind in kinds:
        if kind not in TYPES:
            raise UserError(f"unknown GGUF type '{kind}'; types: {', '.join(TYPES)}")
    folder = Path(target)
    name = folder.name if folder.exists() else target.replace("/", "-")
    paths = [out_dir / f"{name}-{kind}.gguf" for kind in kinds]
    for path in paths:  # (before the slow part, and before any file is written)
        if path.exists() and not overwrite:
            raise UserError(f"{path} exists; pass --overwrite to replace it")
    if is_run(folder):
        methods.get(read_run(folder).method).check_foldable(
            str(folder), "GGUF holds plain weights only; export a LoRA, (IA)3 or full run")
    model, tokenizer, template = open_model(target, device="cpu", dtype="fp32",
                                            quantization="none",
                                            trust_remote_code=trust_remote_code, log=log)
    if hasattr(model, "merge_and_unload"):  # an adapter: folded into the weights first
        model = model.merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, path in zip(kinds, paths, strict=True):
        write_gguf(model, tokenizer, Path(tokenizer.name_or_path), path, kind, name, log)
        log(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        written.append(path)
    (out_dir / "Modelfile").write_text(modelfile(written[0].name,
                                                 template.stop_strings(tokenizer)),
                                       encoding="utf-8")
    return written
