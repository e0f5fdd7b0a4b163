"""Random-weight Kandinsky 2.0 for tests (test support): the real classes at tiny sizes,
written as easel converts them (`build_random_kandinsky20`, a `Kandinsky2Pipeline` folder)
or in the hub's original layout (`build_random_kandinsky20_hub`: `Kandinsky-2-0.pt`,
`Kandinsky-2-0-inpainting.pt`, `vae.ckpt`, `text_encoder1/`, `text_encoder2/`, pickles as
the hub has them), which `easel convert kandinsky-2.0` reads.

Sizes: the UNet has 4 levels of 32, 32, 64 and 64 channels, one res block each, attention
at levels 1-3 with 16 channels a head; XLM-RoBERTa is 32 wide (pooled: 24), mT5's encoder
keeps the real 512 width (the stem's attention pooling has 8 heads over it); the VAE has 4
levels (8 pixels a latent), as Stable Diffusion's. Both tokenizers are SentencePiece
unigrams over a few English and Russian words and single letters, built in code.
"""

from __future__ import annotations

import json
import os

import torch

from easel.models.kandinsky20 import unet_keys
from easel.models.testing.ldm_keys import vae_state_dict
from easel.models.testing.random_pipelines import (
    _LETTERS,
    _MULTILINGUAL_WORDS,
    build_multilingual_tokenizer,
)

HEAD_CHANNELS = 16
ARCHITECTURE = unet_keys.Architecture(
    in_channels=4, out_channels=8, channels=(32, 32, 64, 64),
    attention=(False, True, True, True), res_blocks=1, model_width=32,
)  # fmt: skip
CLIP_WIDTH, CLIP_POOLED_WIDTH, T5_WIDTH = 32, 24, 512


def t5_tokenizer_files(folder: str) -> None:
    """mT5's tokenizer as the hub ships it: `spiece.model` (SentencePiece unigram: `<pad>`
    0, `</s>` 1, `<unk>` 2, then whole words and letters) and its configs, no
    tokenizer.json."""
    from sentencepiece import sentencepiece_model_pb2 as model

    proto = model.ModelProto()
    kinds = model.ModelProto.SentencePiece

    def add(piece: str, score: float, kind=kinds.NORMAL):
        entry = proto.pieces.add()
        entry.piece, entry.score, entry.type = piece, score, kind

    for piece, kind in (
        ("<pad>", kinds.CONTROL),
        ("</s>", kinds.CONTROL),
        ("<unk>", kinds.UNKNOWN),
    ):
        add(piece, 0.0, kind)
    for word in _MULTILINGUAL_WORDS:
        add(f"▁{word}", -1.0)
    for letter in _LETTERS:
        if letter not in _MULTILINGUAL_WORDS:
            add(f"▁{letter}", -5.0)
        add(letter, -5.0)
    proto.trainer_spec.model_type = model.TrainerSpec.UNIGRAM
    spec = proto.trainer_spec
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 2, -1, 1, 0
    normalizer = proto.normalizer_spec
    normalizer.name, normalizer.add_dummy_prefix = "identity", True
    normalizer.remove_extra_whitespaces = normalizer.escape_whitespaces = True
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "spiece.model"), "wb") as f:
        f.write(proto.SerializeToString())
    specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump(specials, f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512,
                   **specials}, f)  # fmt: skip


def _t5_tokenizer():
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        t5_tokenizer_files(folder)
        return AutoTokenizer.from_pretrained(folder)


def _unet_and_stem(inpaint: bool):
    from diffusers import UNet2DConditionModel

    from easel.models.kandinsky20.conditioning import Kandinsky2TextConditioning

    config = ARCHITECTURE.diffusers_config(HEAD_CHANNELS)
    config["in_channels"] = 9 if inpaint else 4
    stem = Kandinsky2TextConditioning(
        clip_width=CLIP_WIDTH, clip_pooled_width=CLIP_POOLED_WIDTH, t5_width=T5_WIDTH,
        model_width=ARCHITECTURE.model_width, time_embed_width=4 * ARCHITECTURE.channels[0],
    )  # fmt: skip
    return UNet2DConditionModel(**config), stem


def perturb_norms(module: torch.nn.Module) -> None:
    """Give every normalisation layer weights off their initial 1 and 0, so that a weight
    loaded into the wrong norm shows in the outputs (drawn from the global generator)."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "norm" in name.lower() or ".ln" in name or name.startswith("ln_"):
                parameter.add_(0.1 * torch.randn_like(parameter))


def random_modules(seed: int = 0, inpaint: bool = False) -> dict:
    """The modules of a tiny `Kandinsky2Pipeline`, random weights drawn from `seed`."""
    from diffusers import AutoencoderKL
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP
    from transformers import MT5Config, MT5EncoderModel

    from easel.models.kandinsky20.parts import VAE_SCALE, scheduler

    torch.manual_seed(seed)
    clip_tokenizer, t5_tokenizer = build_multilingual_tokenizer(), _t5_tokenizer()
    clip = MultilingualCLIP(
        MCLIPConfig(
            transformerDimSize=CLIP_WIDTH, imageDimSize=CLIP_POOLED_WIDTH,
            vocab_size=len(clip_tokenizer), hidden_size=CLIP_WIDTH, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, max_position_embeddings=514,
            type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        )
    )  # fmt: skip
    t5 = MT5EncoderModel(
        MT5Config(
            vocab_size=len(t5_tokenizer), d_model=T5_WIDTH, d_kv=16, d_ff=64, num_layers=1,
            num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
            tie_word_embeddings=False,
        )
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 64, 64], layers_per_block=1, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        norm_num_groups=32, sample_size=64, scaling_factor=VAE_SCALE,
    )  # fmt: skip
    unet, stem = _unet_and_stem(inpaint)
    for module in (clip, t5, vae, unet, stem):
        perturb_norms(module)
    return {"tokenizer": clip_tokenizer, "text_encoder": clip, "tokenizer_2": t5_tokenizer,
            "text_encoder_2": t5, "text_conditioning": stem, "unet": unet,
            "scheduler": scheduler(), "vae": vae}  # fmt: skip


def build_random_kandinsky20(folder: str, seed: int = 0, inpaint: bool = False) -> str:
    """Write a random-weight `Kandinsky2Pipeline` (safetensors) to `folder`; return it."""
    from easel.models.kandinsky20.pipeline import Kandinsky2Pipeline

    pipeline = Kandinsky2Pipeline(**random_modules(seed, inpaint))
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def build_random_kandinsky20_hub(folder: str, seed: int = 0) -> str:
    """Write random-weight Kandinsky 2.0 in the hub's original layout to `folder` (both UNets:
    the inpainting one from `seed` + 1; the rest shared); return it."""
    modules = random_modules(seed)
    torch.manual_seed(seed + 1)
    inpaint_unet, inpaint_stem = _unet_and_stem(inpaint=True)
    perturb_norms(inpaint_unet)
    perturb_norms(inpaint_stem)
    os.makedirs(folder, exist_ok=True)
    unets = (("Kandinsky-2-0.pt", modules["unet"], modules["text_conditioning"]),
             ("Kandinsky-2-0-inpainting.pt", inpaint_unet, inpaint_stem))  # fmt: skip
    for name, unet, stem in unets:
        weights = unet_keys.to_original(unet.state_dict(), ARCHITECTURE, HEAD_CHANNELS)
        torch.save({**weights, **stem.state_dict()}, os.path.join(folder, name))
    vae = vae_state_dict(modules["vae"])
    vae["loss.discriminator.main.0.weight"] = torch.zeros(8, 3, 4, 4)  # training-only
    torch.save({"state_dict": vae, "epoch": 0}, os.path.join(folder, "vae.ckpt"))
    clip_folder = os.path.join(folder, "text_encoder1")
    modules["tokenizer"].save_pretrained(clip_folder)
    clip = modules["text_encoder"]
    config = {**clip.config.to_dict(), "model_type": "xlm-roberta"}
    for name in ("transformerDimensions", "numDims"):
        config.pop(name)
    with open(os.path.join(clip_folder, "config.json"), "w") as f:
        json.dump(config, f)
    torch.save(clip.state_dict(), os.path.join(clip_folder, "pytorch_model.bin"))
    t5_folder = os.path.join(folder, "text_encoder2")
    t5 = modules["text_encoder_2"]
    os.makedirs(t5_folder, exist_ok=True)
    t5.config.to_json_file(os.path.join(t5_folder, "config.json"))
    torch.save(t5.state_dict(), os.path.join(t5_folder, "pytorch_model.bin"))
    t5_tokenizer_files(t5_folder)
    return folder
