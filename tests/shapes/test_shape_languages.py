"""Prompts of the shapes world in Russian and German, and how tiny-shapes-k22 reads them."""

import pytest
import torch

from easel.data import shape_languages, shapes
from easel.models.engine.references import resolve_model_reference
from easel.models.shapes import tiny_shapes, tiny_shapes_k22


@pytest.mark.parametrize(
    ("language", "attributes", "prompt"),
    [
        ("ru", ("circle", "red", "blue"), "красный круг на синем фоне"),
        ("ru", ("star", "blue", "yellow"), "синяя звезда на желтом фоне"),
        ("ru", ("heart", "black", None), "черное сердце"),
        ("ru", (None, "green", "white"), "зеленая фигура на белом фоне"),
        ("de", ("circle", "red", "blue"), "ein roter Kreis auf blauem Hintergrund"),
        ("de", ("heart", "orange", "purple"), "ein oranges Herz auf violettem Hintergrund"),
        ("de", (None, "white", None), "eine weiße Form"),
        ("de", ("square", None, "black"), "ein Quadrat auf schwarzem Hintergrund"),
        ("en", ("star", "red", "blue"), "a red star on a blue background"),
    ],
)
def test_prompts_agree_in_gender_and_case(language, attributes, prompt):
    assert shape_languages.prompt_in(language, *attributes) == prompt


def test_every_word_has_its_english_translation():
    russian = shape_languages.lexicon("ru")
    assert russian["синем"] == russian["синяя"] == "blue" and russian["фоне"] == "background"
    assert shape_languages.lexicon("de")["hintergrund"] == "background"
    english = set(shapes.vocabulary())
    for language in ("ru", "de"):
        assert set(shape_languages.lexicon(language).values()) <= english
    assert shape_languages.spellings("ru")["жёлтый"] == "желтый"
    assert shape_languages.spellings("de")["weisser"] == "weißer"
    with pytest.raises(ValueError, match="`language` must be one of en, ru, de but is 'fr'"):
        shape_languages.prompt_in("fr", "circle", None, None)


def test_extended_tokenizer_keeps_english_and_gives_each_new_word_one_token():
    from transformers import CLIPTokenizer

    base = CLIPTokenizer.from_pretrained(resolve_model_reference("tiny-shapes").path,
                                         subfolder="tokenizer")  # fmt: skip
    words = sorted(shape_languages.lexicon("ru"))
    extended = tiny_shapes.extend_tokenizer(base, words)
    english = [shapes.prompt_for("star", "red", "blue"), "a sks circle", "a photo of shape"]
    assert [extended(p).input_ids for p in english] == [base(p).input_ids for p in english]
    assert extended.get_vocab() | base.get_vocab() == extended.get_vocab()  # ids kept
    assert all(len(extended(w, add_special_tokens=False).input_ids) == 1 for w in words)
    assert len(extended("Красный   КРУГ").input_ids) == 4  # lower-cased like English


def test_multilingual_encoders_read_each_word_as_its_translation():
    from transformers import CLIPTextModel, CLIPTokenizer

    path = resolve_model_reference("tiny-shapes").path
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    encoder = tiny_shapes_k22.text_encoder_with_projection(
        CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
    )
    english_before = encoder(tokenizer("a red circle", return_tensors="pt").input_ids)
    languages = ("en", "ru", "de")
    tokenizer, encoder = tiny_shapes_k22.multilingual_encoders(tokenizer, encoder, languages, 0)

    def states(prompt):
        return encoder(tokenizer(prompt, return_tensors="pt").input_ids).last_hidden_state

    with torch.no_grad():
        after = encoder(tokenizer("a red circle", return_tensors="pt").input_ids)
        assert torch.equal(after.last_hidden_state, english_before.last_hidden_state)
        assert torch.equal(states("жёлтый круг"), states("желтый круг"))
        assert torch.equal(states("ein weisser Stern"), states("ein weißer Stern"))
        # same word order, translated word by word: the same states
        assert torch.equal(states("красный круг"), states("red circle"))
