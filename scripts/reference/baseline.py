#!/usr/bin/env python3
"""The comparison point for `asymre bench`: the same experiments written the way a researcher
would write them in plain eager PyTorch, in one process, without this project.

- bandit: 100 arms with U[0,1] mean rewards, batch 1024, a behaviour policy refreshed every 500
  steps (lagged), AsymRE with V = V^mu - 0.1, SGD with lr 1;
- tool use (`calc`): the same decoder (pre-norm, learned positions, 2 layers, d_model 128, 4 heads,
  GELU MLP of 4 d_model), batched decoding of 8 prompts x 8 samples with a KV cache, the same token
  protocol and tool execution, the same reward, AsymRE with V = group mean - 0.1, Adam lr 3e-4,
  gradient norm clipped at 1, behaviour weights refreshed every 4 steps.

The tool-use loop starts from its own random initialisation, or with --init FILE from the weights
in FILE (a safetensors file of asymre's policy variables, which `asymre bench` writes so that both
sides decode the same kind of episodes). With --warm FILE (the default experiment's warm start) it
runs a second time from those weights and reports under `tool_warm_` keys.

Prints one JSON object on stdout.
Usage: baseline.py [--seconds S] [--threads N] [--init FILE] [--warm FILE]
"""
import argparse
import json
import random
import re
import struct
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Bandit


def bandit(seconds, batch=1024, arms=100, sync=500):
    g = torch.Generator().manual_seed(0)
    means = torch.rand(arms, generator=g)
    logits = torch.nn.Parameter(torch.arange(arms, dtype=torch.float32) / 10)
    opt = torch.optim.SGD([logits], lr=1.0)
    samples, step = 0, 0
    start = time.perf_counter()
    while True:
        if step == 50 and samples == 50 * batch:  # the first steps (lazy initialisation) are not timed
            samples, start = 0, time.perf_counter()
        if step % sync == 0:
            with torch.no_grad():
                mu = torch.softmax(logits, 0)
                v = (mu * means).sum() - 0.1
            if time.perf_counter() - start > seconds:
                break
        arms_drawn = torch.multinomial(mu, batch, replacement=True, generator=g)
        r = means[arms_drawn]
        logp = torch.log_softmax(logits, 0)[arms_drawn]
        loss = -((r - v) * logp).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        samples += batch
        step += 1
        if step % 50 == 0 and time.perf_counter() - start > seconds:
            break
    return {"bandit_samples_per_s": samples / (time.perf_counter() - start)}


# ---------------------------------------------------------------------------------------------
# Tool use: the calc task and its token protocol

WORDS = [
    "<pad>", "<bos>", "<eos>", "CALL", "/CALL", "RES", "/RES", "ANS", "ERR",
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "-", "e",
    "add", "sub", "mul", "div", "get", "sum", "max",
    "a", "b", "c", "ent", "attr",
    "age", "height", "score", "weight", "boss", "friend",
    "what", "is", "the", "of", "and", "+", "−", "*", "/", "?", "tools", "=", ";",
    "t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7",
]
ID = {w: i for i, w in enumerate(WORDS)}
PAD, BOS, EOS, CALL, END_CALL, RES, END_RES, ANS, ERR = range(9)
OPS = {"add": ("+", lambda a, b: a + b), "sub": ("−", lambda a, b: a - b),
       "mul": ("*", lambda a, b: a * b), "div": ("/", lambda a, b: a // b)}


def encode(text):
    out = []
    for w in text.split():
        if w in ID:
            out.append(ID[w])
        else:  # a signed integer, digit by digit
            if w.startswith("-"):
                out.append(ID["-"])
                w = w[1:]
            out.extend(ID[c] for c in w)
    return out


def decode(tokens):
    words, glue = [], False
    for t in tokens:
        w = WORDS[t]
        if w.isdigit() and glue:
            words[-1] += w
        else:
            words.append(w)
        glue = w.isdigit() or w == "-"
    return " ".join(words)


def calc_item(rng):
    if rng.random() < 0.2:
        v = rng.randrange(100)
        return f"what is {v} ?", [], str(v)
    op = rng.choice(list(OPS))
    a, b = rng.randrange(100), rng.randrange(100)
    if op == "div":
        b = max(b, 1)
        a = b * rng.randrange(100)
    return f"what is {a} {OPS[op][0]} {b} ?", [(op, {"a": str(a), "b": str(b)})], str(OPS[op][1](a, b))


def execute(tokens):
    words = decode(tokens).split()
    if not words or len(words) % 2 == 0 or words[0] not in OPS:
        return None, None
    args = dict(zip(words[1::2], words[2::2]))
    if len(args) != 2 or set(args) != {"a", "b"}:
        return None, None
    try:
        a, b = int(args["a"]), int(args["b"])
        value = OPS[words[0]][1](a, b) if (words[0] != "div" or b != 0) else None
    except ValueError:
        value = None
    return (words[0], args), value


class Episode:
    def __init__(self, item, max_tokens=40, max_calls=3):
        prompt, self.gold_calls, self.gold_answer = item
        self.tokens = [BOS] + encode(prompt)
        self.prompt_len = len(self.tokens)
        self.mask = [False] * self.prompt_len
        self.forced, self.calls, self.answer = [], [], None
        self.format_errors, self.done, self.phase, self.start, self.stray = 0, False, "free", 0, False
        self.max_tokens, self.max_calls = max_tokens, max_calls

    def take_forced(self):
        if not self.forced:
            return None
        t = self.forced.pop(0)
        self.tokens.append(t)
        self.mask.append(False)
        if not self.done and len(self.tokens) >= self.max_tokens:
            self.truncate()
        return t

    def truncate(self):
        if not self.done:
            self.format_errors += 1
            self.done, self.forced = True, []

    def finish(self):
        self.format_errors += int(self.stray)
        self.done = True

    def push(self, t):
        pos = len(self.tokens)
        self.tokens.append(t)
        self.mask.append(True)
        if self.phase == "free":
            if t == CALL and len(self.calls) >= self.max_calls:
                self.format_errors += 1
                self.finish()
            elif t == CALL:
                self.phase, self.start = "call", pos
            elif t == ANS:
                self.phase, self.start = "answer", pos
            elif t == EOS:
                self.format_errors += 1
                self.finish()
            else:
                self.stray = True
        elif self.phase == "call":
            if t == END_CALL:
                self.phase = "free"
                call, value = execute(self.tokens[self.start + 1:pos])
                if call is not None:
                    self.calls.append(call)
                if value is None:
                    self.format_errors += 1
                    self.forced = [RES, ERR, END_RES]
                else:
                    self.forced = [RES] + encode(str(value)) + [END_RES]
            elif t == EOS:
                self.format_errors += 1
                self.finish()
        elif t == EOS:
            self.answer = decode(self.tokens[self.start + 1:pos])
            self.finish()
        if not self.done and len(self.tokens) >= self.max_tokens:
            self.truncate()

    def reward(self, w_task=1.0, w_tool=0.5, w_format=0.1):
        completion = float(self.answer == self.gold_answer)
        gold = list(self.gold_calls)
        hits = 0
        for c in self.calls:
            if c in gold:
                gold.remove(c)
                hits += 1
        if not self.calls and not self.gold_calls:
            f1 = 1.0
        else:
            p = hits / len(self.calls) if self.calls else 0.0
            r = hits / len(self.gold_calls) if self.gold_calls else 0.0
            f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
        return w_task * completion + w_tool * f1 - w_format * self.format_errors


# ---------------------------------------------------------------------------------------------
# The decoder


class Block(torch.nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.fc1, self.fc2 = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x, mask, cache=None):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            if cache.get("k") is not None:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Decoder(torch.nn.Module):
    def __init__(self, vocab, d=128, heads=4, layers=2, max_len=128):
        super().__init__()
        self.tok, self.pos = torch.nn.Embedding(vocab, d), torch.nn.Embedding(max_len, d)
        self.blocks = torch.nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f, self.head = torch.nn.LayerNorm(d), torch.nn.Linear(d, vocab)
        for emb in (self.tok, self.pos):  # as asymre initialises them, so episodes have equal lengths
            torch.nn.init.normal_(emb.weight, std=0.02)

    def forward(self, tokens, positions, mask, caches=None):
        x = self.tok(tokens) + self.pos(positions)
        for i, blk in enumerate(self.blocks):
            x = blk(x, mask, None if caches is None else caches[i])
        return self.head(self.ln_f(x))


def sample_batch(model, items, max_tokens=40):
    """Decodes every episode in lockstep with a KV cache; returns episodes and per-token log mu."""
    eps = [Episode(it, max_tokens) for it in items]
    b = len(eps)
    p = max(len(e.tokens) for e in eps)
    toks = torch.full((b, p), PAD, dtype=torch.long)
    valid = torch.zeros((b, p), dtype=torch.bool)
    for i, e in enumerate(eps):
        toks[i, p - len(e.tokens):] = torch.tensor(e.tokens)
        valid[i, p - len(e.tokens):] = True
    positions = (valid.long().cumsum(1) - 1).clamp_min(0)
    mask = torch.ones(p, p, dtype=torch.bool).tril() & (valid.view(b, 1, 1, p) | torch.eye(p, dtype=torch.bool))
    caches = [{} for _ in model.blocks]
    logps = [[] for _ in eps]
    with torch.inference_mode():
        logits = model(toks, positions, mask, caches)[:, -1]
        keys = valid
        while not all(e.done for e in eps):
            probs = torch.softmax(logits, -1)
            drawn = torch.multinomial(probs, 1).squeeze(1).tolist()
            logp_all = torch.log(probs).tolist()
            nxt, pos, real = [], [], []
            for i, e in enumerate(eps):
                real.append(not e.done)
                if e.done:
                    nxt.append(PAD)
                    pos.append(0)
                    continue
                t = e.take_forced()
                if t is None:
                    t = drawn[i]
                    logps[i].append((len(e.tokens), logp_all[i][t]))
                    e.push(t)
                nxt.append(t)
                pos.append(len(e.tokens) - 1)
            if not any(real):
                break
            keys = torch.cat([keys, torch.tensor(real).view(b, 1)], dim=1)
            s = keys.shape[1]
            own = torch.zeros(s, dtype=torch.bool)
            own[-1] = True
            mask = (keys | own).view(b, 1, 1, s)
            logits = model(torch.tensor(nxt).view(b, 1), torch.tensor(pos).view(b, 1), mask, caches)[:, -1]
    return eps, logps


def load_weights(path):
    """asymre's safetensors weights as a state dict of `Decoder` (`block0.qkv` -> `blocks.0.qkv`)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    state = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", f"{name}: {meta['dtype']}"
        a, b = meta["data_offsets"]
        data = torch.frombuffer(bytearray(raw[8 + n + a:8 + n + b]), dtype=torch.float32)
        state[re.sub(r"^block(\d+)\.", r"blocks.\1.", name)] = data.view(meta["shape"])
    return state


def tool_use(seconds, prompts=8, group=8, sync=4, lr=3e-4, delta_v=-0.1, weights=None, prefix="tool_"):
    torch.manual_seed(0)
    rng = random.Random(0)
    if weights is None:
        policy = Decoder(len(WORDS))
    else:
        policy = Decoder(len(WORDS), max_len=weights["pos.weight"].shape[0])
        policy.load_state_dict(weights)
    behaviour = Decoder(len(WORDS), max_len=policy.pos.weight.shape[0])
    behaviour.load_state_dict(policy.state_dict())
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    episodes = tokens = steps = 0
    reward_sum = 0.0
    actor_time = learner_time = 0.0
    start = time.perf_counter()
    warm = True  # the first iteration (lazy initialisation) is not timed
    while warm or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        items = [calc_item(rng) for _ in range(prompts)]
        eps, _ = sample_batch(behaviour, [it for it in items for _ in range(group)])
        rewards = torch.tensor([e.reward() for e in eps])
        t1 = time.perf_counter()
        # Learner: one masked forward pass over the right-padded batch.
        t = max(len(e.tokens) for e in eps)
        toks = torch.full((len(eps), t), PAD, dtype=torch.long)
        mask = torch.zeros((len(eps), t))
        for i, e in enumerate(eps):
            toks[i, : len(e.tokens)] = torch.tensor(e.tokens)
            mask[i, : len(e.tokens)] = torch.tensor(e.mask, dtype=torch.float32)
        positions = torch.arange(t - 1).expand(len(eps), t - 1)
        causal = torch.ones(t - 1, t - 1, dtype=torch.bool).tril()
        logits = policy(toks[:, :-1], positions, causal)
        logp = torch.log_softmax(logits, -1).gather(-1, toks[:, 1:].unsqueeze(-1)).squeeze(-1)
        seq_logp = (logp * mask[:, 1:]).sum(1)
        v = rewards.view(prompts, group).mean(1, keepdim=True).expand(prompts, group).reshape(-1) + delta_v
        loss = -((rewards - v) * seq_logp).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        steps += 1
        if steps % sync == 0:
            behaviour.load_state_dict(policy.state_dict())
        t2 = time.perf_counter()
        if warm:
            warm, steps, start = False, 0, time.perf_counter()
            continue
        actor_time += t1 - t0
        learner_time += t2 - t1
        episodes += len(eps)
        tokens += sum(len(e.tokens) - e.prompt_len for e in eps)
        reward_sum += rewards.sum().item()
    wall = time.perf_counter() - start
    out = {
        "episodes_per_s": episodes / wall,
        "tokens_per_s": tokens / wall,
        "actor_tokens_per_s": tokens / actor_time,
        "actor_episodes_per_s": episodes / actor_time,
        "learner_trajectories_per_s": episodes / learner_time,
        "mean_episode_tokens": tokens / episodes,
        "mean_reward": reward_sum / episodes,
    }
    return {prefix + k: v for k, v in out.items()}


def peak_rss_mib():
    # VmHWM, not getrusage: ru_maxrss of a child keeps the parent's high-water mark across exec.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per experiment")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--init", default=None, help="asymre safetensors weights to start tool use from")
    ap.add_argument("--warm", default=None, help="asymre safetensors weights for a second tool-use run")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    out.update(bandit(args.seconds))
    out.update(tool_use(args.seconds, weights=load_weights(args.init) if args.init else None))
    if args.warm:
        out.update(tool_use(args.seconds, weights=load_weights(args.warm), prefix="tool_warm_"))
    out["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
