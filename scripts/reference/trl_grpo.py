"""Hugging Face TRL's GRPOTrainer on a workload of `asymre bench --lm --trl`: the same starting
weights (asymre's export), the same chat prompts (the rendered text, checked token for token against
asymre's ids), G completions per prompt, a batch of episodes per step, at most N new tokens, the
same threads, and the same reward rule: every completion is scored by `asymre score` (its reading
of a raw Hermes-form completion). CPU, f32, no vLLM, no KL term (beta = 0, as asymre has none);
gradient checkpointing on (TRL's default) or off. Prints one JSON line with the steady steps'
seconds (the first step, which warms up, left out), the seconds of each spent generating and
scoring, and the peak memory."""
import argparse
import json
import os
import resource
import subprocess
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch
from datasets import Dataset
from transformers import AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

ap = argparse.ArgumentParser()
ap.add_argument("model", help="a Hugging Face directory (asymre export)")
ap.add_argument("prompts", help="JSON lines: prompt (rendered text), prompt_ids, question")
ap.add_argument("--asymre", required=True, help="the asymre binary, for `asymre score`")
ap.add_argument("--config", required=True, help="the run config (task, seed, reward weights)")
ap.add_argument("--task", default=None, help="`asymre score --task` (a built-in task)")
ap.add_argument("--steps", type=int, default=4)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--group", type=int, default=8)
ap.add_argument("--new", type=int, default=48)
ap.add_argument("--lr", type=float, default=1e-6)
ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
ap.add_argument("--checkpointing", choices=["on", "off"], default="on")
a = ap.parse_args()
torch.set_num_threads(a.threads)

rows = [json.loads(line) for line in open(a.prompts)]
tok = AutoTokenizer.from_pretrained(a.model)
mismatched = sum(tok(r["prompt"])["input_ids"] != r["prompt_ids"] for r in rows)
data = Dataset.from_list([{"prompt": r["prompt"], "question": r["question"], "task_id": r.get("id") or ""}
                          for r in rows])

generated = []  # tokens written per step
rewards = []


def reward(prompts, completions, completion_ids, question, task_id, **_):
    """asymre's reward of each completion, read from `asymre score`'s table."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for q, i, c in zip(question, task_id, completions):
            line = {"prompt": q, "completion": c}
            if i:
                line["id"] = i
            f.write(json.dumps(line) + "\n")
        path = f.name
    task = ["--task", a.task] if a.task else []
    try:
        out = subprocess.run([a.asymre, "score", *task, "--config", a.config, path],
                             check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    table = {}
    for line in out.splitlines()[1:]:
        cells = line.split("\t")
        if len(cells) > 2 and cells[0].isdigit():
            table[int(cells[0])] = float(cells[1])
    r = [table.get(i + 1, 0.0) for i in range(len(completions))]
    generated.append(sum(len(ids) for ids in completion_ids))
    rewards.extend(r)
    return r


class Clock(TrainerCallback):
    def __init__(self):
        self.marks = []

    def on_step_begin(self, args, state, control, **kw):
        if not self.marks:
            self.marks.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kw):
        self.marks.append(time.perf_counter())


clock = Clock()
gen_secs = []  # per step: generating and scoring the batch
out_dir = tempfile.mkdtemp(prefix="trl-grpo-")
args = GRPOConfig(
    output_dir=out_dir,
    use_cpu=True,
    bf16=False,
    fp16=False,
    use_vllm=False,
    per_device_train_batch_size=a.batch,
    gradient_accumulation_steps=1,
    num_generations=a.group,
    max_completion_length=a.new,
    temperature=1.0,
    top_p=1.0,
    top_k=0,
    beta=0.0,
    num_iterations=1,
    learning_rate=a.lr,
    max_steps=a.steps,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    seed=0,
    dataloader_num_workers=0,
    disable_tqdm=True,
    gradient_checkpointing=a.checkpointing == "on",
)
trainer = GRPOTrainer(model=a.model, reward_funcs=reward, args=args, train_dataset=data,
                      processing_class=tok, callbacks=[clock])
generate = trainer._generate_and_score_completions


def timed_generate(*args, **kwargs):
    t0 = time.perf_counter()
    out = generate(*args, **kwargs)
    gen_secs.append(time.perf_counter() - t0)
    return out


trainer._generate_and_score_completions = timed_generate
trainer.train()
steps = [t1 - t0 for t0, t1 in zip(clock.marks, clock.marks[1:])]
steady = steps[1:] or steps
tokens = generated[len(generated) - len(steady):]
secs = sum(steady)
default = GRPOConfig.__dataclass_fields__["gradient_checkpointing"].default
print(json.dumps({
    "steps": len(steps),
    "step_secs": steady,
    "gen_secs": gen_secs[len(gen_secs) - len(steady):],
    "checkpointing": a.checkpointing == "on",
    "checkpointing_default": default,
    "threads": a.threads,
    "step_s": secs / len(steady),
    "episodes_per_s": a.batch * len(steady) / secs,
    "generated_tokens_per_s": sum(tokens) / secs,
    "tokens_per_episode": sum(tokens) / (a.batch * len(steady)),
    "mean_reward": sum(rewards) / max(len(rewards), 1),
    "first_step_s": steps[0] if steps else None,
    "prompt_token_mismatches": mismatched,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    "trl": __import__("trl").__version__,
}))
