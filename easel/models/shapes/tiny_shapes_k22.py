"""`tiny-shapes-k22`: the shapes world as a Kandinsky 2.2 model, grown from `tiny-shapes`.

Kandinsky 2.2 turns a prompt into a CLIP image embedding with a diffusion prior, then the
embedding into latents with a decoder UNet, and latents into pixels with MOVQ. Here:
- MOVQ is tiny-shapes' VAE, converted exactly (posterior mean, scaling folded in);
- the prior's text encoder is tiny-shapes' CLIP text encoder, with a projection;
- the shared image/text embedding space is CLIP's ideal by construction: an image's
  embedding is the text encoding of its full caption at the colour, shape and background
  words, projected to 64 dimensions (the pooled end-of-text state carries the shape but
  little of the colours: decoders conditioned on it drew the wrong colours);
- the image encoder is a small CLIP vision model trained to map pixels into that space
  (used for image fusion and for the zero-image embedding); a from-scratch ViT this size
  reads colours and backgrounds reliably, shapes much less so;
- the decoder is tiny-shapes' UNet given Kandinsky's image conditioning (image-embedding
  tokens for cross-attention, an image term in the time embedding), fine-tuned on
  (latent, embedding) pairs, the embedding dropped to the zero-image one 10% of the time
  for classifier-free guidance;
- the prior is a PriorTransformer trained to predict the (normalised) embedding of an
  image from any of its caption variants, or from the empty prompt 10% of the time, in
  English, Russian or German (`easel.data.shape_languages`): the tokenizer gains one token
  per Russian and German word, whose embedding starts as its English translation's (the
  text encoder stays frozen, so "красный" reads as "red" does, in its own word order),
  and the prior learns each language's grammar. The embedding space, image encoder and
  decoder are the English ones: languages differ only before the prior.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from easel.data import shape_languages, shapes
from easel.models.shapes import tiny_shapes
from easel.models.shapes.recipe import (
    TrainingSchedule,
    adamw_warmup_cosine,
    fit,
    images_to_tensor,
    shuffled_loader,
)
from easel.models.shapes.training import caption_variants

EMBEDDING = 64  # CLIP projection = prior embedding = tiny-shapes' text width
IMAGE_MEAN, IMAGE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # the processor maps [0, 255] to [-1, 1]
PRIOR_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}
# "<bos> a COLOUR SHAPE on a BACKGROUND background <eos>": the attribute words' positions
ATTRIBUTE_POSITIONS = (2, 3, 6)


@dataclass(frozen=True)
class TinyShapesK22Training:
    image_encoder: TrainingSchedule = TrainingSchedule(
        steps=1200, batch_size=64, learning_rate=1e-3, warmup_steps=50
    )
    prior: TrainingSchedule = TrainingSchedule(
        steps=2000, batch_size=128, learning_rate=1e-3, warmup_steps=100
    )
    decoder: TrainingSchedule = TrainingSchedule(
        steps=3000, batch_size=64, learning_rate=5e-4, warmup_steps=100
    )
    images: int = 20000
    unconditional_probability: float = 0.1
    # full caption, no background, no colour, no shape, empty (the prior's caption variants)
    caption_probabilities: tuple[float, ...] = (0.75, 0.05, 0.05, 0.05, 0.10)
    languages: tuple[str, ...] = ("en", "ru", "de")
    language_probabilities: tuple[float, ...] = (0.5, 0.25, 0.25)
    seed: int = 0

    def prompt_probabilities(self) -> list[float]:
        """Of each (language, caption variant) pair, languages outermost."""
        return [p * q for p in self.language_probabilities for q in self.caption_probabilities]


# -- MOVQ from the VAE ---------------------------------------------------------------------


@torch.no_grad()
def movq_from_vae(vae):
    """A VQModel computing exactly `vae`'s scaled posterior mean and its decoding.

    Kandinsky never quantizes (`force_not_quantize`), so the codebook is unused. The VQ
    encoder keeps the VAE's 2L output channels (mean, log-variance); `quant_conv` keeps the
    mean rows, times the scaling factor; `post_quant_conv` and the decoder's first
    convolution take the scaled L channels back to what the VAE's decoder saw."""
    from diffusers import VQModel

    config, latent = vae.config, vae.config.latent_channels
    scale = config.scaling_factor
    movq = VQModel(
        in_channels=3, out_channels=3, down_block_types=config.down_block_types,
        up_block_types=config.up_block_types, block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block, latent_channels=2 * latent,
        num_vq_embeddings=16, vq_embed_dim=latent, norm_num_groups=config.norm_num_groups,
        sample_size=config.sample_size, norm_type="group",
        mid_block_add_attention=config.mid_block_add_attention,
    )  # fmt: skip
    movq.encoder.load_state_dict(vae.encoder.state_dict())
    movq.quant_conv.weight.copy_(vae.quant_conv.weight[:latent] * scale)
    movq.quant_conv.bias.copy_(vae.quant_conv.bias[:latent] * scale)
    movq.post_quant_conv.weight.zero_()
    movq.post_quant_conv.bias.zero_()
    movq.post_quant_conv.weight[:latent] = vae.post_quant_conv.weight / scale
    movq.post_quant_conv.bias[:latent] = vae.post_quant_conv.bias
    decoder_state = vae.decoder.state_dict()
    conv_in = decoder_state["conv_in.weight"]  # (C, L, 3, 3) -> (C, 2L, 3, 3)
    decoder_state["conv_in.weight"] = torch.cat([conv_in, torch.zeros_like(conv_in)], dim=1)
    movq.decoder.load_state_dict(decoder_state)
    codebook = movq.quantize.embedding.weight  # unused; seeded so that the file is reproducible
    codebook.uniform_(-1 / 16, 1 / 16, generator=torch.Generator().manual_seed(0))
    return movq.eval()


# -- the prior's encoders -----------------------------------------------------------------


def multilingual_encoders(tokenizer, text_encoder, languages: tuple[str, ...], seed: int):
    """`tokenizer` extended by one token per word of `languages` (and per other spelling),
    and `text_encoder` with rows for them: a word's row is its English translation's, any
    other new token (a BPE piece) gets a small seeded random row. English is unchanged."""
    words = {}
    for language in (lang for lang in languages if lang != "en"):
        lexicon = shape_languages.lexicon(language)
        words |= lexicon | {other: lexicon[word] for other, word in
                            shape_languages.spellings(language).items()}  # fmt: skip
    extended = tiny_shapes.extend_tokenizer(tokenizer, sorted(words))
    old = text_encoder.get_input_embeddings().weight.detach()
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(len(extended) - len(old), old.shape[1], generator=generator) * 0.02
    table = torch.cat([old, rows])
    for word, english in words.items():
        table[_token_id(extended, word)] = old[_token_id(tokenizer, english)]
    # a new table, not `resize_token_embeddings`, which would draw rows from the global RNG
    text_encoder.set_input_embeddings(torch.nn.Embedding.from_pretrained(table, freeze=False))
    text_encoder.config.vocab_size = len(extended)
    return extended, text_encoder


def _token_id(tokenizer, word: str) -> int:
    (token,) = tokenizer(word, add_special_tokens=False).input_ids  # one token per word
    return token


def text_encoder_with_projection(text_encoder):
    """tiny-shapes' text encoder as a CLIPTextModelWithProjection (identity projection)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(**{**text_encoder.config.to_dict(), "projection_dim": EMBEDDING})
    projected = CLIPTextModelWithProjection(config)
    projected.text_model.load_state_dict(text_encoder.state_dict())  # same transformer
    with torch.no_grad():
        projected.text_projection.weight.copy_(torch.eye(EMBEDDING))
    return projected.eval()


def build_image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            image_size=shapes.IMAGE_SIZE, patch_size=8, num_channels=3, hidden_size=64,
            intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            projection_dim=EMBEDDING,
        )
    )  # fmt: skip


def build_image_processor():
    from transformers import CLIPImageProcessor

    side = shapes.IMAGE_SIZE
    return CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side},
        do_resize=True, do_center_crop=True, do_normalize=True, resample=3,
        image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD),
    )  # fmt: skip


class ImageEncoderModule(pl.LightningModule):
    """The CLIP vision model, regressing the embedding of each image's caption."""

    def __init__(self, schedule: dict):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = build_image_encoder()

    def training_step(self, batch, batch_idx):
        pixels, targets = batch  # (B, 3, 64, 64) in [-1, 1] (the processor's scale); (B, D)
        loss = F.mse_loss(self.encoder(pixel_values=pixels).image_embeds, targets)
        self.log("image_encoder/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, TrainingSchedule(**self.hparams.schedule))


# -- the prior ----------------------------------------------------------------------------


def build_prior(max_length: int):
    from diffusers import PriorTransformer

    return PriorTransformer(
        num_attention_heads=4, attention_head_dim=16, num_layers=4, embedding_dim=EMBEDDING,
        num_embeddings=max_length, additional_embeddings=4, dropout=0.0,
    )  # fmt: skip


def prior_scheduler():
    from diffusers import UnCLIPScheduler

    return UnCLIPScheduler(
        **PRIOR_SCHEDULE, variance_type="fixed_small_log", prediction_type="sample",
        clip_sample=True, clip_sample_range=10.0,
    )  # fmt: skip


class PriorModule(pl.LightningModule):
    """Predicts the normalised image embedding (x0) from its noised version and the text.

    The few distinct captions are encoded once (`captions`: text embeds (U, D), hidden
    states (U, L, D), attention masks (U, L)); a batch names them by index."""

    def __init__(self, schedule: dict, max_length: int, caption_probabilities: list[float],
                 captions: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):  # fmt: skip
        super().__init__()
        self.save_hyperparameters(ignore=["captions"])
        self.prior = build_prior(max_length)
        for name, tensor in zip(("text_embeds", "hidden", "masks"), captions, strict=True):
            self.register_buffer(name, tensor, persistent=False)
        alphas = prior_scheduler().alphas_cumprod.clone()
        self.register_buffer("alphas_cumprod", alphas, persistent=False)

    def training_step(self, batch, batch_idx):
        x0, caption_index = batch  # (B, D) normalised embeddings; (B, V) caption indices
        n = x0.shape[0]
        probabilities = torch.tensor(self.hparams.caption_probabilities, device=self.device)
        variant = torch.multinomial(probabilities, n, replacement=True)
        captions = caption_index[torch.arange(n, device=self.device), variant]
        timesteps = torch.randint(0, len(self.alphas_cumprod), (n,), device=self.device)
        alpha_bar = self.alphas_cumprod[timesteps].unsqueeze(1)
        noisy = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * torch.randn_like(x0)
        predicted = self.prior(
            noisy, timestep=timesteps, proj_embedding=self.text_embeds[captions],
            encoder_hidden_states=self.hidden[captions], attention_mask=self.masks[captions],
        ).predicted_image_embedding  # fmt: skip
        loss = F.mse_loss(predicted, x0)
        self.log("prior/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, TrainingSchedule(**self.hparams.schedule))


# -- the decoder --------------------------------------------------------------------------


def decoder_unet_from(unet):
    """tiny-shapes' UNet with Kandinsky's image conditioning added (new layers random).

    Kandinsky's decoder predicts noise and a variance (2x the latent channels) and splits
    them; the variance half starts at zero and is never trained (DDIM ignores it)."""
    from diffusers import UNet2DConditionModel

    latent = unet.config.out_channels
    config = {
        **unet.config, "encoder_hid_dim": EMBEDDING, "encoder_hid_dim_type": "image_proj",
        "addition_embed_type": "image", "out_channels": 2 * latent,
    }  # fmt: skip
    decoder = UNet2DConditionModel.from_config(config)
    state = unet.state_dict()
    for name in ("conv_out.weight", "conv_out.bias"):
        state[name] = torch.cat([state[name], torch.zeros_like(state[name])])
    missing, unexpected = decoder.load_state_dict(state, strict=False)
    assert not unexpected and all(
        k.startswith(("encoder_hid_proj.", "add_embedding.")) for k in missing
    ), (missing, unexpected)
    return decoder


class DecoderModule(pl.LightningModule):
    """The decoder UNet on MOVQ latents, conditioned on image embeddings (epsilon)."""

    def __init__(self, schedule: dict, unet_config: dict, unconditional_probability: float,
                 zero_embed: torch.Tensor):  # fmt: skip
        super().__init__()
        self.save_hyperparameters(ignore=["zero_embed"])
        from diffusers import UNet2DConditionModel

        self.unet = UNet2DConditionModel.from_config(unet_config)
        self.register_buffer("zero_embed", zero_embed, persistent=False)  # (1, D)
        alphas = tiny_shapes.noise_scheduler().alphas_cumprod.clone()
        self.register_buffer("alphas_cumprod", alphas, persistent=False)

    def unet_input(self, noisy: torch.Tensor, batch) -> torch.Tensor:
        """What the UNet takes besides the timestep and embeddings (the inpainting decoder
        adds the masked image and the mask)."""
        return noisy

    def training_step(self, batch, batch_idx):
        latents, embeds = batch[:2]  # (B, 4, 8, 8) MOVQ latents; (B, D) image embeddings
        n = latents.shape[0]
        drop = torch.rand(n, 1, device=self.device) < self.hparams.unconditional_probability
        embeds = torch.where(drop, self.zero_embed.expand_as(embeds), embeds)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, len(self.alphas_cumprod), (n,), device=self.device)
        alpha_bar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
        predicted = self.unet(
            self.unet_input(noisy, batch), timesteps, encoder_hidden_states=None,
            added_cond_kwargs={"image_embeds": embeds},
        ).sample[:, : latents.shape[1]]  # the noise half  # fmt: skip
        loss = F.mse_loss(predicted, noise)
        self.log("decoder/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, TrainingSchedule(**self.hparams.schedule))


# -- data and assembly ----------------------------------------------------------------------


@torch.no_grad()
def zero_image_embedding(image_encoder) -> torch.Tensor:
    """What Kandinsky's prior pipeline uses as 'no image': the embedding of zero pixels."""
    side = shapes.IMAGE_SIZE
    return image_encoder(pixel_values=torch.zeros(1, 3, side, side)).image_embeds


@torch.no_grad()
def _encode(text_encoder, tokenizer, prompts: list[str]):
    """`prompts` tokenized and encoded as the prior pipeline does: (tokens, output)."""
    tokens = tokenizer(prompts, padding="max_length", truncation=True,
                       max_length=tokenizer.model_max_length, return_tensors="pt")  # fmt: skip
    return tokens, text_encoder(tokens.input_ids)


def caption_encodings(text_encoder, tokenizer, specs: list, languages: tuple[str, ...]):
    """The distinct caption variants of `specs` in `languages`, encoded as the prior
    pipeline does (text embeds, hidden states, attention mask), and each spec's variants as
    indices (N, languages x variants)."""
    prompts = [p for spec in specs for lang in languages for p in caption_variants(spec, lang)]
    unique = sorted(set(prompts))
    tokens, output = _encode(text_encoder, tokenizer, unique)
    position = {prompt: i for i, prompt in enumerate(unique)}
    index = torch.tensor([position[p] for p in prompts]).view(len(specs), -1)
    encodings = (output.text_embeds, output.last_hidden_state, tokens.attention_mask.bool())
    return encodings, index


@torch.no_grad()
def caption_embeddings(text_encoder, tokenizer, specs: list, seed: int) -> torch.Tensor:
    """(N, D) image embeddings: each spec's full caption encoded, its attribute words'
    states concatenated and projected by a fixed (seeded) orthogonal matrix."""
    captions = [shapes.caption(spec) for spec in specs]
    unique = sorted(set(captions))
    tokens, output = _encode(text_encoder, tokenizer, unique)
    assert bool((tokens.attention_mask.sum(1) == 9).all()), "one token per caption word"
    hidden = output.last_hidden_state
    words = hidden[:, list(ATTRIBUTE_POSITIONS)].flatten(1)  # (U, 3 * width)
    width = words.shape[1]
    generator = torch.Generator().manual_seed(seed)
    projection, _ = torch.linalg.qr(torch.randn(width, width, generator=generator))
    embeddings = words @ projection[:, :EMBEDDING]
    position = {caption: i for i, caption in enumerate(unique)}
    return embeddings[torch.tensor([position[c] for c in captions])]


def assemble_pipeline(tokenizer, text_encoder, image_encoder, prior, unet, movq):
    """The complete KandinskyV22CombinedPipeline, ready for `save_pretrained`."""
    from diffusers import KandinskyV22CombinedPipeline

    return KandinskyV22CombinedPipeline(
        unet=unet.eval(), scheduler=tiny_shapes.sampling_scheduler(), movq=movq.eval(),
        prior_prior=prior.eval(), prior_image_encoder=image_encoder.eval(),
        prior_text_encoder=text_encoder.eval(), prior_tokenizer=tokenizer,
        prior_scheduler=prior_scheduler(), prior_image_processor=build_image_processor(),
    )  # fmt: skip


# Without classifier-free guidance the prior's embedding is the right caption's nearest
# for every seen and held-out prompt measured; diffusers' default, 4, extrapolates it off
# the decoder's training distribution (the nearest caption right 95% seen, 61% held-out;
# at 8, 5%): the model card recommends 1 (docs/tiny-shapes.md).
PRIOR_GUIDANCE_SCALE = 1.0


def model_card(name: str, summary: str) -> str:
    """A model card (README.md) whose metadata recommends the prior's guidance."""
    return f"---\nprior_guidance_scale: {PRIOR_GUIDANCE_SCALE}\n---\n# {name}\n\n{summary}\n"


def save(pipeline, folder: str, name: str, summary: str) -> str:
    """`pipeline` saved in diffusers' layout (safetensors), with its model card."""
    pipeline.save_pretrained(folder, safe_serialization=True)
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write(model_card(name, summary))
    return folder


# -- the whole recipe -------------------------------------------------------------------------


STAGES = ("image-encoder", "prior", "decoder")


def train(base_path: str, config: TinyShapesK22Training, work_dir: str,
          loggers: dict | None = None, progress: bool = True):  # fmt: skip
    """Image encoder, prior, decoder from the `tiny-shapes` pipeline at `base_path`; each
    stage checkpoints under `work_dir/<stage>` and resumes, and logs to `loggers[stage]`
    (one Lightning logger per stage: their hyperparameters differ). Returns the assembled
    pipeline."""
    loggers = loggers or {}
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    load = {"use_safetensors": True}
    tokenizer, text_encoder = multilingual_encoders(
        CLIPTokenizer.from_pretrained(base_path, subfolder="tokenizer"),
        text_encoder_with_projection(
            CLIPTextModel.from_pretrained(base_path, subfolder="text_encoder", **load)
        ),
        config.languages, config.seed + 4,
    )  # fmt: skip
    movq = movq_from_vae(AutoencoderKL.from_pretrained(base_path, subfolder="vae", **load))
    base_unet = UNet2DConditionModel.from_pretrained(base_path, subfolder="unet", **load)
    specs = shapes.sample_specs(config.images, config.seed + 5, "train")
    pixels = images_to_tensor(shapes.render_array(specs))  # (N, 3, 64, 64) in [-1, 1]

    encodings, caption_index = caption_encodings(text_encoder, tokenizer, specs, config.languages)
    embeds = caption_embeddings(text_encoder, tokenizer, specs, config.seed)  # (N, D)

    pl.seed_everything(config.seed + 5, workers=True, verbose=False)
    encoder_module = ImageEncoderModule(asdict(config.image_encoder))
    loader = shuffled_loader((pixels, embeds), config.image_encoder.batch_size, config.seed + 5)
    stage_dir = os.path.join(work_dir, "image-encoder")
    fit(encoder_module, loader, config.image_encoder.steps, stage_dir,
        loggers.get("image-encoder"), progress)  # fmt: skip
    image_encoder = encoder_module.encoder.eval()
    zero = zero_image_embedding(image_encoder)

    pl.seed_everything(config.seed + 6, workers=True, verbose=False)
    mean, std = embeds.mean(0, keepdim=True), embeds.std(0, keepdim=True).clamp(min=1e-4)
    prior_module = PriorModule(asdict(config.prior), tokenizer.model_max_length,
                               config.prompt_probabilities(), encodings)  # fmt: skip
    loader = shuffled_loader(((embeds - mean) / std, caption_index), config.prior.batch_size,
                             config.seed + 6)  # fmt: skip
    fit(prior_module, loader, config.prior.steps, os.path.join(work_dir, "prior"),
        loggers.get("prior"), progress)  # fmt: skip
    prior = prior_module.prior.eval()
    prior.clip_mean, prior.clip_std = torch.nn.Parameter(mean), torch.nn.Parameter(std)

    pl.seed_everything(config.seed + 7, workers=True, verbose=False)
    with torch.no_grad():
        latents = torch.cat([movq.encode(pixels[i : i + 512]).latents
                             for i in range(0, len(pixels), 512)])  # fmt: skip
    unet = decoder_unet_from(base_unet)
    decoder_module = DecoderModule(asdict(config.decoder), dict(unet.config),
                                   config.unconditional_probability, zero)  # fmt: skip
    decoder_module.unet.load_state_dict(unet.state_dict())
    loader = shuffled_loader((latents, embeds), config.decoder.batch_size, config.seed + 7)
    fit(decoder_module, loader, config.decoder.steps, os.path.join(work_dir, "decoder"),
        loggers.get("decoder"), progress)  # fmt: skip
    return assemble_pipeline(tokenizer, text_encoder, image_encoder, prior,
                             decoder_module.unet, movq)  # fmt: skip
