"""Reference numbers from Hugging Face transformers, tokenizers and gguf-py for the LM tests.

Usage (each prints one JSON object on stdout):
  lm_reference.py tiny ARCH OUT_DIR        writes a tiny random ARCH (llama, qwen2, qwen3) model as a
                                           Hugging Face directory and as GGUF files (F32, F16, Q8_0,
                                           Q4_1), with a small byte-level BPE tokenizer and a chat
                                           template with tools
  lm_reference.py logits MODEL IDS_JSON    transformers' logits for the ids (MODEL: HF dir or .gguf)
  lm_reference.py greedy MODEL IDS_JSON N  transformers' greedy continuation and the logits of the
                                           prompt's last position
  lm_reference.py tokenize TOKENIZER STRS  Python tokenizers' ids (TOKENIZER: tokenizer.json, or a
                                           .gguf rebuilt as Digits + ByteLevel BPE for smollm)
  lm_reference.py chat MODEL_DIR           transformers' apply_chat_template of a conversation
  lm_reference.py dequant GGUF NAME        gguf-py's dequantisation of one tensor (first values, sum)
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch

torch.set_num_threads(os.cpu_count() or 1)

CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- 'Tools:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\nCall one as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "  {%- if message.role == 'system' %}{% continue %}{% endif %}"
    "  {%- if message.role == 'assistant' and message.tool_calls %}"
    "{{- '<|im_start|>assistant' }}{% if message.content %}{{ '\\n' + message.content | trim }}{% endif %}"
    "    {%- for call in message.tool_calls %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call.function.name + '\", \"arguments\": ' }}"
    "{{- call.function.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "    {%- endfor %}{{- '<|im_end|>\\n' }}"
    "  {%- elif message.role == 'tool' %}"
    "    {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "    {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "  {%- elif message.role in ['user', 'assistant'] %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "  {%- else %}{{- raise_exception('unknown role ' + message.role) }}"
    "  {%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TOOLS = [
    {"type": "function", "function": {"name": "multiply", "description": "Multiply two integers; é ✓",
     "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "number", "minimum": 0.5}},
                    "required": ["a", "b"]}}},
    {"type": "function", "function": {"name": "lookup", "description": "Age of a person <id>",
     "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}},
]

CONVERSATION = [
    {"role": "system", "content": "You are precise."},
    {"role": "user", "content": "What is 12 * 34, and how old is e17?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "multiply", "arguments": {"a": 12, "b": 34}}},
        {"type": "function", "function": {"name": "lookup", "arguments": {"id": "e17"}}}]},
    {"role": "tool", "content": "408"},
    {"role": "tool", "content": "{\"age\": 41}"},
    {"role": "assistant", "content": "12 * 34 = 408; e17 is 41."},
    {"role": "user", "content": "Thanks!\tBye  now."},
]

CORPUS = [
    "What is 123 * 45? The answer is 5535.", "How old is e17? e17 is 41 years old.",
    "café naïve résumé — déjà vu", "tabs\tand  double  spaces", "emoji 😀 🚀 ok",
    "<tool_call>{\"name\": \"multiply\", \"arguments\": {\"a\": 12}}</tool_call>",
    "The quick brown fox jumps over the lazy dog. 0123456789",
]


def tiny_tokenizer(out_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    return tok


def tiny(arch, out_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
    os.makedirs(out_dir, exist_ok=True)
    tok = tiny_tokenizer(out_dir)
    vocab = tok.get_vocab_size()
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, tie_word_embeddings=(arch != "llama"))
    if arch == "llama":
        cfg = AutoConfig.for_model("llama", rope_parameters={
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}, **common)
    elif arch == "qwen2":
        cfg = AutoConfig.for_model("qwen2", rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **common)
    else:
        cfg = AutoConfig.for_model("qwen3", rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                   head_dim=24, **common)
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Norm weights and biases away from their initial 1 and 0, so a mix-up shows.
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name else 0.0))
            else:
                p.normal_(0, 0.08)
    model.save_pretrained(out_dir, safe_serialization=True)
    fast = PreTrainedTokenizerFast(tokenizer_file=os.path.join(out_dir, "tokenizer.json"),
                                   bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    ggufs = {}
    for qtype in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]:
        path = os.path.join(out_dir, f"tiny-{qtype}.gguf")
        write_gguf(model, cfg, arch, tok, path, qtype)
        ggufs[qtype] = path
    print(json.dumps({"dir": out_dir, "gguf": ggufs, "vocab": vocab}))


def permute(w, n_head):
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def write_gguf(model, cfg, arch, tok, path, qtype):
    import gguf
    garch = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}[arch]
    w = gguf.GGUFWriter(path, garch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    theta = cfg.rope_parameters["rope_theta"]
    w.add_rope_freq_base(theta)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(0)
    w.add_eos_token_id(2)
    w.add_chat_template(CHAT_TEMPLATE)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    sub = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
           "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
           "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down"}
    sd = model.state_dict()
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    if arch == "llama":
        # llama.cpp stores Llama 3's scaling as per-frequency divisors.
        inv_scaled = model.model.rotary_emb.inv_freq.float()
        base = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        w.add_tensor("rope_freqs.weight", (base / inv_scaled).numpy().astype(np.float32))
    for name, t in sd.items():
        if name in names:
            g = names[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            module, suffix = rest.rsplit(".", 1)
            g = f"blk.{layer}.{sub[module]}.{suffix}"
        a = t.detach().float().numpy()
        if arch == "llama" and name.endswith("q_proj.weight"):
            a = permute(a, cfg.num_attention_heads)
        if arch == "llama" and name.endswith("k_proj.weight"):
            a = permute(a, cfg.num_key_value_heads)
        if a.ndim == 1 or qtype == "F32":
            w.add_tensor(g, a.astype(np.float32))
        elif qtype == "F16":
            w.add_tensor(g, a.astype(np.float16))
        else:
            q = getattr(gguf.GGMLQuantizationType, qtype)
            w.add_tensor(g, gguf.quants.quantize(a, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def load_model(spec):
    from transformers import AutoModelForCausalLM
    if spec.endswith(".gguf"):
        return AutoModelForCausalLM.from_pretrained(os.path.dirname(spec), gguf_file=os.path.basename(spec),
                                                    dtype=torch.float32).eval()
    return AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32).eval()


def logits(spec, ids_json):
    model = load_model(spec)
    ids = torch.tensor([json.loads(ids_json)])
    with torch.no_grad():
        out = model(ids).logits[0]
    print(json.dumps({"logits": out.tolist()}))


def greedy(spec, ids_json, n):
    model = load_model(spec)
    ids = torch.tensor([json.loads(ids_json)])
    with torch.no_grad():
        last = model(ids).logits[0, -1]
        out = model.generate(ids, max_new_tokens=int(n), do_sample=False, eos_token_id=None, pad_token_id=0)
    print(json.dumps({"tokens": out[0, ids.shape[1]:].tolist(), "last_logits": last.tolist()}))


def tokenize(spec, strs_json):
    from tokenizers import Tokenizer
    if spec.endswith(".gguf"):
        # The real SmolLM2 tokenizer.json: byte-level BPE after splitting digits one by one.
        import gguf
        from tokenizers import models, pre_tokenizers, decoders
        r = gguf.GGUFReader(spec)
        f = r.fields
        toks = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode() for i in f["tokenizer.ggml.tokens"].data]
        merges = [tuple(bytes(f["tokenizer.ggml.merges"].parts[i]).decode().split(" ", 1))
                  for i in f["tokenizer.ggml.merges"].data]
        types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
        tok = Tokenizer(models.BPE({t: i for i, t in enumerate(toks)}, merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.decoder = decoders.ByteLevel()
        from tokenizers import AddedToken
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(toks, types) if ty == 3])
    else:
        tok = Tokenizer.from_file(spec)
    strs = json.loads(strs_json)
    print(json.dumps({"ids": [tok.encode(s, add_special_tokens=False).ids for s in strs]}))


def chat(model_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    text = tok.apply_chat_template(CONVERSATION, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    plain = tok.apply_chat_template(CONVERSATION[1:2], tokenize=False, add_generation_prompt=False)
    print(json.dumps({"messages": CONVERSATION, "tools": TOOLS, "text": text,
                      "plain_messages": CONVERSATION[1:2], "plain": plain}))


def dequant(path, name):
    import gguf
    r = gguf.GGUFReader(path)
    t = next(t for t in r.tensors if t.name == name)
    a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)
    print(json.dumps({"type": t.tensor_type.name, "n": int(a.size), "head": a[:64].tolist(),
                      "sum": float(a.sum()), "abs_sum": float(np.abs(a).sum())}))


STRINGS = ["x  1", "What is 123 * 45?", "tabs\tand   spaces\n\n  end", "café naïve — déjà",
           "emoji 😀🚀 ok", "<|im_start|>user\nhi<|im_end|>\n", "e17 is 41 years old.", "  leading"]
IDS = [1, 40, 41, 42, 50, 60, 70, 80, 90, 100, 3, 4, 5, 200, 250, 300, 2, 17]


def fixture(arch, out_dir):
    """Everything the Rust tests compare against for one tiny ARCH, in OUT_DIR/reference.json."""
    import contextlib, io
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    with contextlib.redirect_stdout(io.StringIO()):
        tiny(arch, out_dir)
    model = load_model(out_dir)
    ids = torch.tensor([IDS])
    with torch.no_grad():
        full = model(ids).logits[0]
        gen = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    import gguf
    deq = {}
    for q in ["Q8_0", "Q4_0", "Q4_1", "F16", "BF16"]:
        r = gguf.GGUFReader(os.path.join(out_dir, f"tiny-{q}.gguf"))
        t = next(t for t in r.tensors if t.name == "blk.1.ffn_down.weight")
        deq[q] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1).tolist()
    # The same weights as shards with an index, and config.json in the older form (rope_theta and
    # rope_scaling at the top level, as transformers 4 wrote it).
    sharded = os.path.join(out_dir, "sharded")
    with contextlib.redirect_stdout(io.StringIO()):
        model.save_pretrained(sharded, max_shard_size="40KB")
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        if os.path.exists(os.path.join(out_dir, f)):
            with open(os.path.join(out_dir, f), "rb") as src, open(os.path.join(sharded, f), "wb") as dst:
                dst.write(src.read())
    with open(os.path.join(sharded, "config.json")) as fh:
        old = json.load(fh)
    rope = old.pop("rope_parameters")
    old["rope_theta"] = rope.pop("rope_theta")
    if rope.get("rope_type", "default") != "default":
        old["rope_scaling"] = rope
    with open(os.path.join(sharded, "config.json"), "w") as fh:
        json.dump(old, fh)
    tok = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    hf_tok = AutoTokenizer.from_pretrained(out_dir)
    ref = {
        "ids": IDS,
        "logits": full.tolist(),
        "greedy": gen[0, len(IDS):].tolist(),
        "dequant": deq,
        "strings": STRINGS,
        "string_ids": [tok.encode(x, add_special_tokens=False).ids for x in STRINGS],
        "messages": CONVERSATION,
        "tools": TOOLS,
        "chat": hf_tok.apply_chat_template(CONVERSATION, tools=TOOLS, tokenize=False, add_generation_prompt=True),
        "chat_plain": hf_tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=False),
    }
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(json.dumps({"dir": out_dir}))


def smollm2(path, out_file):
    """The real SmolLM2 GGUF: transformers' greedy continuation of a chat prompt and its logits,
    the tokenizer's ids, and the chat template's text."""
    import contextlib, io
    from transformers import AutoTokenizer
    d, f = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        tokenize(path, json.dumps(STRINGS + [text]))
    ids_all = json.loads(out.getvalue())["ids"]
    prompt = ids_all[-1]
    model = load_model(path)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        last = model(ids).logits[0, -1]
        gen = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=2)
    ref = {"messages": messages, "chat": text, "prompt": prompt, "last_logits": last.tolist(),
           "greedy": gen[0, len(prompt):].tolist(), "strings": STRINGS, "string_ids": ids_all[:-1]}
    with open(out_file, "w") as fh:
        json.dump(ref, fh)
    print(json.dumps({"file": out_file}))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"tiny": tiny, "logits": logits, "greedy": greedy, "tokenize": tokenize, "chat": chat,
     "dequant": dequant, "fixture": fixture, "smollm2": smollm2}[cmd](*args)
