"""`Kandinsky2Pipeline`: Kandinsky 2.0 text-to-image, image-to-image and inpainting over
diffusers and transformers modules, in the diffusers folder layout (`save_pretrained`).

Modules: `tokenizer` + `text_encoder` (XLM-RoBERTa tokenizer, diffusers'
`MultilingualCLIP`), `tokenizer_2` + `text_encoder_2` (mT5's tokenizer and
`MT5EncoderModel`), `text_conditioning` (`Kandinsky2TextConditioning`), `unet`
(`UNet2DConditionModel` with Kandinsky 2.1's torso: added-KV attention blocks,
`class_embed_type="identity"`; 4 channels in, or 9 for inpainting, and 8 out: noise and a
learned variance, which only the original's ancestral sampler used), `scheduler` and `vae`
(an LDM `AutoencoderKL`, `scaling_factor` 0.0512).

Sampling follows the original `Kandinsky2.generate_img` (ai-forever/Kandinsky-2):
classifier-free guidance on [prompt, negative prompt] (the original's negative is always
""), both texts cut or padded to 77 tokens by each tokenizer. DDIM steps on the original's
own spacing, `range(0, 1000, 1000 // N)` + 1 (75 steps asked, 77 run: see
`denoising_timesteps`); other schedulers on their own. Where this pipeline departs from the
original (its eta, strength, fixed 512² edits, mask erosion) is documented in
docs/kandinsky.md.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

# imported so that `from_pretrained` finds the stem's class, which model_index.json names
from easel.models.kandinsky20.conditioning import Kandinsky2TextConditioning

TOKENS = 77  # each tokenizer's length, padded or cut (the original's max_length)
LATENT_CHANNELS = 4
INPAINT_UNET_CHANNELS = 2 * LATENT_CHANNELS + 1  # latents, masked image latents, mask


class Kandinsky2PipelineOutput(BaseOutput):
    images: list | np.ndarray


def denoising_timesteps(scheduler, steps: int, device) -> torch.Tensor:
    """The timesteps a run of `steps` steps visits, first to last. DDIM: the original's
    spacing, every (T // steps)-th of the T training steps from 0, plus `steps_offset`
    (steps=75, T=1000: 989, 976, ..., 14, 1; 77 of them, not 75); `step` then moves T //
    steps back each time, to `alphas_cumprod[0]` after the last (`set_alpha_to_one` off).
    Any other scheduler: its own `set_timesteps`."""
    scheduler.set_timesteps(steps, device=device)
    if isinstance(scheduler, DDIMScheduler):
        total = scheduler.config.num_train_timesteps
        spaced = np.arange(0, total, total // steps)[::-1] + scheduler.config.steps_offset
        spaced = spaced[spaced < total]  # over 500 steps the offset would pass the last one
        scheduler.timesteps = torch.from_numpy(spaced.copy()).to(device)
    return scheduler.timesteps


def keep_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) repaint masks in [0, 1] (any value > 0 repaints) -> (N, 1, h, w) keep
    masks at latent `size`: 1 keeps, 0 repaints, the repainted region grown by one latent
    pixel on every side (the original erodes the kept region so, in `prepare_mask`)."""
    repaint = torch.nn.functional.interpolate((mask > 0).float(), size=size, mode="nearest")
    grown = torch.nn.functional.max_pool2d(repaint, kernel_size=3, stride=1, padding=1)
    return 1.0 - grown


class Kandinsky2Pipeline(DiffusionPipeline):
    text_conditioning: Kandinsky2TextConditioning
    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_conditioning->unet->vae"

    def __init__(
        self, tokenizer, text_encoder, tokenizer_2, text_encoder_2, text_conditioning, unet,
        scheduler, vae,
    ):  # fmt: skip
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, tokenizer_2=tokenizer_2,
            text_encoder_2=text_encoder_2, text_conditioning=text_conditioning, unet=unet,
            scheduler=scheduler, vae=vae,
        )  # fmt: skip
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True
        )
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_normalize=False,
            do_convert_grayscale=True,
        )  # fmt: skip

    @property
    def inpainting(self) -> bool:
        return self.unet.config.in_channels == INPAINT_UNET_CHANNELS

    def encode_prompt(self, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """`texts` through both encoders and the stem: tokens (N, 154, D), vector (N, E)."""

        def tokens(tokenizer):
            encoded = tokenizer(
                texts, max_length=TOKENS, padding="max_length", truncation=True,
                return_attention_mask=True, return_tensors="pt",
            )  # fmt: skip
            return encoded.input_ids.to(device), encoded.attention_mask.to(device)

        ids, mask = tokens(self.tokenizer)
        clip_pooled, clip_tokens = self.text_encoder(input_ids=ids, attention_mask=mask)
        ids, mask = tokens(self.tokenizer_2)
        t5_tokens = self.text_encoder_2(input_ids=ids, attention_mask=mask).last_hidden_state
        dtype = self.text_conditioning.dtype
        return self.text_conditioning(
            clip_tokens.to(dtype), clip_pooled.to(dtype), t5_tokens.to(dtype)
        )

    def encode_image(self, image, generators: list | None, size: tuple[int, int]) -> torch.Tensor:
        """Images (PIL or (N, 3, H, W) in [-1, 1]) -> latents sampled from the VAE's
        posterior, row i from generator i, scaled by `scaling_factor`."""
        pixels = self.image_processor.preprocess(image, height=size[0], width=size[1])
        pixels = pixels.to(self._execution_device, self.vae.dtype)
        posterior = self.vae.encode(pixels).latent_dist  # one encoder pass for the batch
        noise = randn_tensor(posterior.mean.shape, generator=generators,
                             device=pixels.device, dtype=posterior.mean.dtype)  # fmt: skip
        return (posterior.mean + posterior.std * noise) * self.vae.config.scaling_factor

    @torch.no_grad()
    def __call__(
        self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
        image=None, mask_image=None, strength: float = 0.75, height: int = 512,
        width: int = 512, num_inference_steps: int = 100, guidance_scale: float = 7.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None, eta: float = 0.0, output_type: str = "pil",
        return_dict: bool = True,
    ):  # fmt: skip
        """Images for `prompt`: text-to-image; image-to-image with `image` (denoising the
        last `strength` of the schedule, diffusers' convention); inpainting with `image` and
        `mask_image` (white repaints) on an inpainting UNet, from pure noise at `strength` 1
        (as the original), else from the image noised as for image-to-image. `height`,
        `width`: pixels, multiples of 64. `generator`: one, or one per prompt (row i draws
        only from its own). `latents`: (N, 4, height/8, width/8) initial noise.
        `output_type`: "pil", "np" ((N, H, W, 3) in [0, 1]) or "pt"."""
        prompts, negatives, generators = self.check_inputs(
            prompt, negative_prompt, generator, image, mask_image, height, width,
            num_inference_steps, strength, guidance_scale,
        )  # fmt: skip
        device = self._execution_device
        guided = guidance_scale > 1.0
        tokens, vector = self.encode_prompt(prompts + (negatives if guided else []), device)
        size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        timesteps = denoising_timesteps(self.scheduler, num_inference_steps, device)
        init = self.encode_image(image, generators, (height, width)) if image is not None else None
        # img2img always, inpainting below strength 1, start from the init image noised
        edit = init is not None and (not self.inpainting or strength < 1.0)
        if edit:
            timesteps = self.strength_timesteps(timesteps, strength)
        if latents is None:
            shape = (len(prompts), LATENT_CHANNELS, *size)
            latents = randn_tensor(shape, generator=generators, device=device, dtype=tokens.dtype)
        latents = latents.to(device, tokens.dtype)
        if edit:
            latents = self.scheduler.add_noise(init, latents, timesteps[:1])
        else:
            latents = latents * self.scheduler.init_noise_sigma
        masked = None
        if self.inpainting:  # the masked image's latents and the keep mask, beside the noise
            mask = self.mask_processor.preprocess(mask_image, height=height, width=width)
            keep = keep_mask(mask, size).to(device, tokens.dtype)
            masked = torch.cat([init * keep, keep], dim=1)
        step_options = self.step_options(generators, eta)
        for t in timesteps:
            noise = self.predict_noise(latents, t, tokens, vector, masked, guidance_scale)
            latents = self.scheduler.step(noise, t, latents, **step_options).prev_sample
        return self.decode(latents, output_type, return_dict)

    def check_inputs(
        self, prompt, negative_prompt, generator, image, mask_image, height: int, width: int,
        steps: int, strength: float, guidance_scale: float,
    ) -> tuple[list[str], list[str], list | None]:  # fmt: skip
        """(prompts, negative prompts, a generator per prompt or None); `ValueError` naming
        the argument and its value for one the pipeline cannot run."""
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(
            isinstance(p, str) for p in prompts
        ):  # fmt: skip
            raise ValueError(f"`prompt` must be a string or a non-empty list of them: {prompt!r}")
        negatives = negative_prompt
        if negative_prompt is None or isinstance(negative_prompt, str):
            negatives = [negative_prompt or ""] * len(prompts)
        generators = generator if isinstance(generator, list) else [generator] * len(prompts)
        if all(g is None for g in generators):
            generators = None  # the global generator draws
        for name, values in (("negative_prompt", negatives), ("generator", generators),
                             ("image", image), ("mask_image", mask_image)):  # fmt: skip
            if isinstance(values, list) and len(values) != len(prompts):
                raise ValueError(f"`{name}` has {len(values)} entries for {len(prompts)} prompts")
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        for name, side in (("height", height), ("width", width)):
            if side < multiple or side % multiple:
                raise ValueError(f"`{name}` must be a multiple of {multiple} but is {side}")
        if steps < 1:
            raise ValueError(f"`num_inference_steps` must be 1 or more but is {steps}")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"`strength` must be in (0, 1] but is {strength}")
        if not math.isfinite(guidance_scale):
            raise ValueError(f"`guidance_scale` must be a finite number but is {guidance_scale}")
        if self.inpainting and (image is None or mask_image is None):
            raise ValueError("an inpainting UNet (9 input channels) needs `image` and `mask_image`")
        if not self.inpainting and mask_image is not None:
            raise ValueError("`mask_image` needs an inpainting UNet (9 input channels)")
        return prompts, negatives, generators

    def step_options(self, generators: list | None, eta: float) -> dict:
        """The scheduler's `step` arguments it takes: the rows' generators, DDIM's `eta`."""
        accepted = inspect.signature(self.scheduler.step).parameters
        options = {}
        if "generator" in accepted and generators:
            options["generator"] = generators[0] if len(generators) == 1 else generators
        if "eta" in accepted:
            options["eta"] = eta
        return options

    def predict_noise(self, latents, t, tokens, vector, masked, guidance_scale: float):
        """The UNet's noise prediction for `latents` at `t` (its variance half dropped),
        guided by the second half of `tokens` and `vector` where they are doubled."""
        model_input = self.scheduler.scale_model_input(latents, t)
        if masked is not None:
            model_input = torch.cat([model_input, masked], dim=1)
        guided = len(tokens) == 2 * len(latents)
        if guided:
            model_input = torch.cat([model_input, model_input])
        output = self.unet(model_input, t, encoder_hidden_states=tokens, class_labels=vector)
        noise = output.sample[:, :LATENT_CHANNELS]
        if not guided:
            return noise
        cond, uncond = noise.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def strength_timesteps(self, timesteps: torch.Tensor, strength: float) -> torch.Tensor:
        """The last `strength` of the schedule (whole steps of a multi-stage scheduler),
        where image-to-image starts: diffusers' convention, the original's inverted."""
        order = self.scheduler.order
        steps = len(timesteps) // order
        start = (steps - int(steps * strength)) * order
        if start >= len(timesteps):
            raise ValueError(f"`strength` {strength} leaves none of the {steps} steps to run")
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        return timesteps[start:]

    def decode(self, latents: torch.Tensor, output_type: str, return_dict: bool):
        """Latents -> images in `output_type`."""
        pixels = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        images = self.image_processor.postprocess(pixels, output_type=output_type)
        self.maybe_free_model_hooks()
        return Kandinsky2PipelineOutput(images=images) if return_dict else (images,)
