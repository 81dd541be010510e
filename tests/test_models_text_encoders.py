"""Text encoders: the embedded word-level encoder, a frozen transformers encoder, CFG dropout."""

import pytest
import torch

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.text_encoders import (
    EmbeddedTextEncoder,
    PretrainedTextEncoder,
    WordTokenizer,
    drop_embeddings,
    drop_prompts,
    load_text_encoder,
)

CAPTIONS = ["A red ball rolls.", "a blue ball bounces", "The red cube spins, slowly."]


def test_word_tokenizer_vocabulary_unknowns_and_round_trip(tmp_path):
    tok = WordTokenizer.build(CAPTIONS)
    assert tok.vocab[:5] == ["<pad>", "<unk>", "<null>", ".", "a"]  # by count, then alphabetical
    ids, mask = tok(["red ball", "purple ball", ""], max_length=4)
    assert ids[0, :2].tolist() == [tok.index["red"], tok.index["ball"]]
    assert ids[1, 0] == tok.index["<unk>"] and ids[2, 0] == tok.index["<null>"]
    assert mask.sum(1).tolist() == [2, 2, 1]
    assert tok(["a b c d e f"], max_length=3)[1].sum() == 3  # cut at max_length
    tok.save(tmp_path / "vocab.json")
    assert WordTokenizer.load(tmp_path / "vocab.json").vocab == tok.vocab
    assert len(WordTokenizer.build(CAPTIONS, max_vocab=5)) == 5
    with pytest.raises(PyramidflowError):
        WordTokenizer(["a", "b", "c"])


def test_embedded_encoder_contract_training_and_save_load(tmp_path):
    torch.manual_seed(0)
    enc = EmbeddedTextEncoder.from_captions(CAPTIONS, dim=16, num_layers=1, num_heads=2, max_length=8)
    emb, mask = enc.encode(["a red ball", ""])
    assert emb.shape == (2, 8, 16) and mask.tolist()[1] == [True] + [False] * 7
    assert emb[0, 3:].abs().max() == 0 and emb[1, 1:].abs().max() == 0  # zero-padded
    emb.sum().backward()  # trainable jointly with the DiT
    assert enc.token_embedding.weight.grad is not None
    enc.save_pretrained(tmp_path / "enc")
    back = load_text_encoder(tmp_path / "enc")
    assert isinstance(back, EmbeddedTextEncoder) and back.tokenizer.vocab == enc.tokenizer.vocab
    enc.eval()
    with torch.no_grad():
        assert torch.allclose(back.encode(["a red ball", "zebra"])[0], enc.encode(["a red ball", "zebra"])[0],
                              atol=1e-6)
    assert torch.allclose(back.null_embedding()[0], enc.encode([""])[0], atol=1e-6)


def _tiny_umt5(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    words = ["<pad>", "</s>", "<unk>", "a", "red", "ball", "blue", "cube"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.save_pretrained(path)
    torch.manual_seed(0)
    config = UMT5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                        decoder_start_token_id=0)
    UMT5EncoderModel(config).save_pretrained(path)


def test_pretrained_encoder_follows_wans_contract_and_caches(tmp_path):
    _tiny_umt5(tmp_path / "umt5")
    enc = load_text_encoder(tmp_path / "umt5", max_length=6, cache_dir=tmp_path / "cache")
    assert isinstance(enc, PretrainedTextEncoder)
    assert not any(p.requires_grad for p in enc.parameters())
    emb, mask = enc.encode(["a red ball", ""])
    assert emb.shape == (2, 6, 16)
    assert mask.sum(1).tolist() == [4, 1]  # three words + </s>; "" is </s> alone
    assert emb[0, 4:].abs().max() == 0 and emb[1, 1:].abs().max() == 0 and emb[1, 0].abs().max() > 0
    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 2
    # the cached path gives the same result, and does not run the model again
    enc.model.forward = None
    again, mask2 = enc.encode(["", "a red ball"])
    assert torch.equal(again[0], emb[1]) and torch.equal(again[1], emb[0])
    assert torch.equal(mask2, mask.flip(0))
    # a different max_length is a different key
    other = PretrainedTextEncoder(tmp_path / "umt5", max_length=5, cache_dir=tmp_path / "cache")
    assert other.cache.key("a") != enc.cache.key("a")
    with pytest.raises(FileNotFoundError):
        load_text_encoder(tmp_path / "nothing")


def test_classifier_free_dropout_is_reproducible_and_explicit():
    prompts = [f"p{i}" for i in range(2000)]
    a = drop_prompts(prompts, 0.1, torch.Generator().manual_seed(3))
    b = drop_prompts(prompts, 0.1, torch.Generator().manual_seed(3))
    assert a == b
    dropped = sum(s == "" for s in a)
    assert abs(dropped - 200) < 4 * (2000 * 0.1 * 0.9) ** 0.5  # binomial, 4 sigma
    assert all(s == p for s, p in zip(a, prompts, strict=True) if s)
    assert drop_prompts(prompts[:5], 0.0) == prompts[:5] and drop_prompts(prompts[:5], 1.0) == [""] * 5
    emb, mask = torch.ones(4, 3, 2), torch.ones(4, 3, dtype=torch.bool)
    null, null_mask = torch.zeros(1, 3, 2), torch.tensor([[True, False, False]])
    out, out_mask, drop = drop_embeddings(emb, mask, null, null_mask, 1.0)
    assert drop.all() and out.abs().max() == 0 and out_mask.sum() == 4
    with pytest.raises(PyramidflowError):
        drop_prompts(prompts, 1.5)


def _tiny_encoder(path, kind):
    """A tiny T5 or CLIP text encoder with a word-level tokenizer, saved as transformers would."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = ["<pad>", "</s>", "<unk>", "<s>", "a", "red", "ball", "blue", "cube"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    template = "$A </s>" if kind == "t5" else "<s> $A </s>"  # CLIP adds a start token too
    raw.post_processor = processors.TemplateProcessing(single=template,
                                                       special_tokens=[("</s>", 1), ("<s>", 3)])
    PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", bos_token="<s>",
                            unk_token="<unk>").save_pretrained(path)
    torch.manual_seed(0)
    if kind == "t5":
        model = T5EncoderModel(T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                        num_heads=2, relative_attention_num_buckets=8, pad_token_id=0,
                                        eos_token_id=1, decoder_start_token_id=0))
    else:
        model = CLIPTextModel(CLIPTextConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2,
                                             max_position_embeddings=8, pad_token_id=0, bos_token_id=3,
                                             eos_token_id=1))
    model.save_pretrained(path)


@pytest.mark.parametrize("kind, lengths", [("t5", [4, 1]), ("clip", [5, 2])])
def test_t5_and_clip_encoders_follow_the_same_contract(tmp_path, kind, lengths):
    _tiny_encoder(tmp_path / kind, kind)
    enc = load_text_encoder(tmp_path / kind, max_length=7, cache_dir=tmp_path / "cache")
    assert isinstance(enc, PretrainedTextEncoder) and not any(p.requires_grad for p in enc.parameters())
    emb, mask = enc.encode(["a red ball", ""])
    assert emb.shape == (2, 7, 16) and mask.sum(1).tolist() == lengths
    assert emb[0, lengths[0]:].abs().max() == 0 and emb[1, lengths[1]:].abs().max() == 0
    assert emb[1, : lengths[1]].abs().max() > 0  # "" is a real (unconditional) embedding, not zeros
    enc.model.forward = None  # second call: read from the on-disk cache only
    assert torch.equal(enc.encode(["a red ball"])[0], emb[:1])
    if kind == "clip":
        with pytest.raises(PyramidflowError, match="positions"):
            PretrainedTextEncoder(tmp_path / kind, max_length=9)
    # by default Wan's 512, or fewer where the encoder has fewer positions
    assert load_text_encoder(tmp_path / kind).max_length == (8 if kind == "clip" else 512)
