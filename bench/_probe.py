"""GPU probe (not committed): where easel's DreamBooth step synchronises, and its speed
with Lightning logging off."""
import argparse, collections, json, os, sys, time, traceback, warnings
import torch
sys.path.insert(0, os.path.dirname(__file__))
import bench_dreambooth as bd
import pytorch_lightning as pl

mode = sys.argv[1]
args = argparse.Namespace(model=sys.argv[2], resolution=int(os.environ.get("RES", 512)), batch_size=2, steps=30,
    precision="bf16-mixed", learning_rate=1e-5, method="full", lora_rank=4, device=os.environ.get("DEV", "cuda"),
    variant="easel", profile=0)
work = os.environ.get("WORK", "/tmp/easel-bench/db")
bd._prepare(args, work)
stacks = collections.Counter()

if mode == "sync":
    from easel.models.dreambooth.module import DreamBoothModule

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, i):
            if trainer.global_step == 6:
                torch.cuda.set_sync_debug_mode("warn")
            if trainer.global_step == 8:
                torch.cuda.set_sync_debug_mode(0)

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            stack = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}"
                     for f in traceback.extract_stack()[:-1]][-14:]
            stacks["\n   ".join(stack)] += 1
    warnings.showwarning = show
    warnings.simplefilter("always")
    orig = bd.run_easel
    import easel.models.dreambooth.training as tr
    real_train = tr.train
    def train(*a, callbacks=(), **k):
        return real_train(*a, callbacks=[*callbacks, Probe()], **k)
    tr.train = train
    bd.train = train
    r = bd.run_easel(args, work)
    for s, n in stacks.most_common(12):
        print(f"--- {n}x\n   {s}")
else:
    if mode == "nolog":
        from easel.models.dreambooth.module import DreamBoothModule
        DreamBoothModule.log = lambda self, *a, **k: None
    if args.device == "cuda": torch.cuda.reset_peak_memory_stats()
    r = (bd.run_baseline if mode == "baseline" else bd.run_easel)(args, work)
    r["peak_memory_mb"] = bd._peak_memory_mb(args.device)
    print(mode, json.dumps(bd._summary(mode, r, args)))
