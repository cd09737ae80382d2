# Recomputes tiny-llama's val.txt perplexity with Hugging Face transformers (run on the GPU
# machine from the repo root, with val.txt at .carry-gpu/shared/data/val.txt); writes $OUT/hf_ppl.json.
# Result kept in tests/fixtures/tiny-llama-ppl.json.
import json, math, os, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
out = os.environ.get("OUT", "/tmp")
tok = AutoTokenizer.from_pretrained("models/tiny-llama")
text = open(".carry-gpu/shared/data/val.txt", encoding="utf-8").read()
ids = tok(text, add_special_tokens=False)["input_ids"]
res = {"n_ids": len(ids)}
for impl in ("eager", "sdpa"):
    for dt in ("float32", "bfloat16"):
        m = AutoModelForCausalLM.from_pretrained("models/tiny-llama", dtype=getattr(torch, dt), attn_implementation=impl).cuda().eval()
        n = len(ids); nll = 0.0; cnt = 0; first = None; per_window = []
        with torch.no_grad():
            for s in range(0, n - 1, 512):
                L = min(512, n - 1 - s)
                x = torch.tensor([ids[s:s + L]], device="cuda")
                lp = torch.log_softmax(m(x).logits[0].float(), -1)
                tgt = torch.tensor(ids[s + 1:s + L + 1], device="cuda")
                v = -lp[torch.arange(L, device="cuda"), tgt].double()
                if first is None: first = v.tolist()
                per_window.append(v.sum().item() / L)
                nll += v.sum().item(); cnt += L
        key = f"{impl}-{dt}"
        res[key] = {"ppl": math.exp(nll / cnt), "first_window_nll": first, "window_mean_nll": per_window}
        print(key, "ppl", res[key]["ppl"], flush=True)
json.dump(res, open(os.path.join(out, "hf_ppl.json"), "w"))
