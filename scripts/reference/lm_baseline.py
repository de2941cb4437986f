"""transformers on the same model as `asymre bench --lm`: `generate` with sampling at batch B
(every row writing N tokens) and a full fine-tuning step (forward, backward, Adam) over the B
prompt + N sequences; with --bfcl-prompts, also `generate` on those prompts (a JSON list of
token-id lists of different lengths, left-padded as transformers needs, each row writing
--bfcl-new tokens): episodes/s. Prints one JSON line. f32, one thread per core."""
import argparse
import json
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("prompt")
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--new", type=int, default=48)
ap.add_argument("--seconds", type=float, default=15.0)
ap.add_argument("--bfcl-prompts")
ap.add_argument("--bfcl-new", type=int, default=64)
a = ap.parse_args()
torch.set_num_threads(os.cpu_count() or 1)
torch.manual_seed(0)
if a.model.endswith(".gguf"):
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(a.model), gguf_file=os.path.basename(a.model),
                                                 dtype=torch.float32)
else:
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
model.eval()
ids = torch.tensor([json.loads(a.prompt)] * a.batch)
attn = torch.ones_like(ids)


def gen():
    with torch.no_grad():
        return model.generate(ids, attention_mask=attn, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              max_new_tokens=a.new, min_new_tokens=a.new, pad_token_id=0)


out = gen()
tokens, spent, runs = 0, 0.0, 0
while runs < 1 or spent < a.seconds:
    t0 = time.perf_counter()
    out = gen()
    spent += time.perf_counter() - t0
    tokens += a.batch * a.new
    runs += 1
gen_tps = tokens / spent

bfcl_eps = None
if a.bfcl_prompts:
    with open(a.bfcl_prompts) as f:
        prompts = json.load(f)
    width = max(len(p) for p in prompts)
    pad = 0
    bids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    battn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def bgen():
        with torch.no_grad():
            return model.generate(bids, attention_mask=battn, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                  max_new_tokens=a.bfcl_new, min_new_tokens=a.bfcl_new, pad_token_id=pad)

    bgen()
    spent, runs = 0.0, 0
    while runs < 1 or spent < a.seconds:
        t0 = time.perf_counter()
        bgen()
        spent += time.perf_counter() - t0
        runs += 1
    bfcl_eps = len(prompts) * runs / spent

model.train()
opt = torch.optim.Adam(model.parameters(), lr=1e-6)
seq = out
p = ids.shape[1]


def step():
    t0 = time.perf_counter()
    logits = model(seq).logits[:, p - 1:-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, seq[:, p:].unsqueeze(-1)).squeeze(-1)
    loss = -logp.sum() / a.batch
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


step()
steps, spent = 0, 0.0
while steps < 1 or spent < a.seconds:
    spent += step()
    steps += 1
print(json.dumps({
    "generate_tokens_per_s": gen_tps,
    "train_step_s": spent / steps,
    "train_tokens_per_s": a.batch * a.new * steps / spent,
    "bfcl_episodes_per_s": bfcl_eps,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
}))
