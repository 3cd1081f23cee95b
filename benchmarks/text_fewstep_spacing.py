"""Issue 22: the text model's few-step caption match with the timestep spacing matched across samplers.

    PYTHONPATH=src python benchmarks/text_fewstep_spacing.py     # ~1 min on 2 cores

300 test captions, seeds 0-299, 8 steps, guidance 3; prints caption match (all / one / two objects) per
(sampler, spacing).
"""
import sys, torch
from ldmkit.pipeline import Pipeline
from ldmkit.data import build_dataset
from ldmkit.evaluation.generation import model_data_config
from ldmkit.evaluation.tasks import caption_accuracy
path = "runs/ldm/shapes-text-eps/pipeline.safetensors"
pipe = Pipeline.load(path)
test = build_dataset(model_data_config(path), "test")
caps = [test[k]["caption"] for k in range(300)]
for sampler, spacing in (("ddim", "linspace"), ("dpmpp_2m", "uniform"), ("unipc", "uniform"), ("ddim", "uniform"), ("dpmpp_2m", "linspace")):
    imgs = []
    with torch.no_grad():
        for s in range(0, 300, 100):
            imgs.append(pipe(prompt=caps[s:s+100], seeds=list(range(s, s+100)), num_inference_steps=8, guidance_scale=3.0,
                             sampler=sampler, spacing=spacing, output_type="pt"))
    r = caption_accuracy(torch.cat(imgs), caps)
    print(sampler, spacing, "8 steps: %.1f / %.1f / %.1f" % (100*r["accuracy"], 100*r["one_object"], 100*r["two_object"]), flush=True)
