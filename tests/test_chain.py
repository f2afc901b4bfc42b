"""Steering a pipeline by class word or prompt, abstention, and step-by-step restoration."""
from __future__ import annotations

import pytest
import torch

from vlir.core import Pipeline
from vlir.core.chain import SteerError, nearest_class, prompt_words, restore_steps, steer, words_from_prompt
from vlir.core.inference import restore, run_backbone

WORDS = ["noisy", "jpeg-compressed", "blurry", "motion-blurry", "low-light", "hazy", "rainy"]
TINY = {"width": 8, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]}


@pytest.mark.parametrize("text, words", [
    ("remove the rain", ["rainy"]), ("Remove the rain, then the noise.", ["rainy", "noisy"]),
    ("denoise", ["noisy"]), ("deblur", ["blurry"]), ("fix the motion blur", ["motion-blurry"]),
    ("brighten this dark photo", ["low-light"]), ("dehaze and remove jpeg artifacts", ["hazy", "jpeg-compressed"]),
    ("it was shot in low light", ["low-light"]), ("too much fog", ["hazy"]),
])
def test_words_from_prompt(text, words):
    assert words_from_prompt(text, WORDS) == words


def test_prompt_naming_nothing_lists_the_classes():
    with pytest.raises(SteerError, match="names no degradation.*noisy, jpeg-compressed"):
        words_from_prompt("make it pretty", WORDS)


def table_encoder(table):
    """A text encoder from a table of fixed embeddings (texts it does not know embed to zeros)."""
    return lambda texts: torch.stack([torch.tensor(table.get(t, [0.0, 0.0, 0.0])) for t in texts])


def test_a_prompt_naming_no_class_word_goes_to_the_text_encoders_nearest_class():
    enc = table_encoder({"the air is thick and grey": [0.1, 0.9, 0.2], "noisy": [1.0, 0.0, 0.0],
                         "hazy": [0.0, 1.0, 0.0], "rainy": [0.0, 0.0, 1.0], "clean": [0.0, 1.0, 0.0],
                         "half one half the other": [1.0, 1.0, 0.0]})
    words = ["noisy", "hazy", "rainy", "clean"]
    assert words_from_prompt("the air is thick and grey", words, enc) == ["hazy"]  # clean is never a target
    assert words_from_prompt("remove the rain", words, enc) == ["rainy"]  # words first
    with pytest.raises(SteerError, match="as near to 'noisy'.*as to 'hazy'|as near to 'hazy'.*as to 'noisy'"):
        words_from_prompt("half one half the other", words, enc)  # a tie: nothing done on a guess
    with pytest.raises(SteerError, match="names no degradation"):
        words_from_prompt("the air is thick and grey", words)  # no encoder: words only


def test_prompt_words_uses_the_feeding_perceivers_text_encoder():
    pipe = pipeline()
    daclip = pipe.perceivers["daclip"]
    names = list(daclip.class_names)
    with torch.no_grad():
        emb = daclip.encode_text(["make it pretty", *names])
    sims = emb[1:] @ emb[0]
    assert nearest_class("make it pretty", names, daclip.encode_text, margin=0.0) == names[int(sims.argmax())]
    assert prompt_words(pipe, "remove the rain") == ["rainy"]


def pipeline(vector="probs", words=("noisy", "hazy", "rainy")):
    torch.manual_seed(0)
    spec = {"perceivers": [{"type": "daclip", "preset": "tiny", "params": {"degradations": list(words)}}],
            "backbone": {"type": "experts", "params": {"expert_params": TINY}},
            "condition": {"vector": vector, "tokens": False}}
    pipe = Pipeline.from_spec(spec, build_losses=False).eval()
    with torch.no_grad():  # make the experts differ (NAFNet's output scales start at zero)
        for p in pipe.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return pipe


def images(b=2, size=24):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(1))


def expert(pipe, x, word):
    cond = pipe.condition(steer(pipe, pipe.perceive(x), word))
    return run_backbone(pipe, x, cond).clamp(0, 1)


def test_a_given_path_runs_those_experts_in_order():
    pipe = pipeline()
    x = images(1)
    with torch.no_grad():
        out, _, paths = restore_steps(pipe, x, path=["hazy", "rainy"])
        want = expert(pipe, expert(pipe, x, "hazy"), "rainy")
    torch.testing.assert_close(out, want)
    assert [s.word for s in paths[0].steps] == ["hazy", "rainy"] and paths[0].stop == "asked"
    assert not torch.allclose(want, expert(pipe, expert(pipe, x, "rainy"), "hazy"))


def test_the_chain_only_keeps_steps_that_help_and_stops():
    pipe = pipeline()
    x = images(3)
    with torch.no_grad():
        out, perceptions, paths = restore_steps(pipe, x, steps=3)
        for i, path in enumerate(paths):
            assert len(path.steps) <= 3 and path.stop in {"no better", "steps"}
            y = x[i:i + 1]
            for s in path.steps:  # each kept step lowered the probability of the class it treated
                assert s.after < s.before
                y = expert(pipe, y, s.word)
            torch.testing.assert_close(out[i:i + 1], y)  # an undone step left no trace
            if path.stop == "no better":
                assert path.undone.after >= path.undone.before
    assert perceptions["daclip"].class_probs.shape == (3, 3)


def test_abstention_leaves_the_image_bit_for_bit_and_one_step_is_a_plain_restore():
    pipe = pipeline()
    x = images(2)
    with torch.no_grad():
        out, _, paths = restore_steps(pipe, x, abstain=1.0)
        assert torch.equal(out, x) and [p.stop for p in paths] == ["unsure", "unsure"]
        assert "left as is" in str(paths[0])
        plain, _ = restore(pipe, x)
        same, _, paths = restore_steps(pipe, x, abstain=0.0)
    assert torch.equal(same, plain) and all(len(p.steps) == 1 for p in paths)


def test_pipelines_that_cannot_be_steered_say_why():
    pipe = pipeline(vector="degradation")
    with pytest.raises(SteerError, match="condition.vector: probs"):
        restore_steps(pipe, images(1), path=["hazy"])
    with pytest.raises(SteerError, match="unknown degradation 'foggy'.*noisy, hazy, rainy"):
        restore_steps(pipeline(), images(1), path=["foggy"])
    with pytest.raises(SteerError, match="at least 1"):
        restore_steps(pipeline(), images(1), steps=0)


# -- the command line ---------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    from vlir.core.data.images import write_image

    pipe = pipeline()
    folder = pipe.save(tmp_path / "pipe")
    src = tmp_path / "in.png"
    write_image(src, images(1)[0])
    return folder, src


def _restore(args, capsys):
    from vlir.core.cli import main

    rc = main(["restore", "--no-progress", *map(str, args)])
    return rc, capsys.readouterr()


def _read(path):
    from vlir.core.data.images import read_image

    return read_image(path)[0]


def test_cli_prompt_and_degradation_route_as_asked(saved, tmp_path, capsys):
    folder, src = saved
    rc, out = _restore([src, "-o", tmp_path / "a", "--pipeline", folder, "--prompt", "remove the rain"], capsys)
    assert rc == 0 and "path: rainy" in out.out
    rc, out = _restore([src, "-o", tmp_path / "b", "--pipeline", folder, "--degradation", "rainy"], capsys)
    assert rc == 0
    pipe = Pipeline.load(folder).eval()
    with torch.no_grad():
        want = expert(pipe, _read(src)[None], "rainy")
    assert torch.equal(_read(tmp_path / "a" / "in.png"), _read(tmp_path / "b" / "in.png"))
    assert (_read(tmp_path / "b" / "in.png") - want[0]).abs().max() <= 1 / 255 + 1e-6
    rc, out = _restore([src, "-o", tmp_path / "c", "--pipeline", folder, "--degradation", "rainy,foggy"], capsys)
    assert rc == 2 and "unknown degradation 'foggy'" in out.err and not list((tmp_path / "c").glob("*.png"))


def test_cli_abstain_leaves_the_photo_and_chain_prints_the_path(saved, tmp_path, capsys):
    folder, src = saved
    rc, out = _restore([src, "-o", tmp_path / "a", "--pipeline", folder, "--abstain", "1"], capsys)
    assert rc == 0 and "left as is" in out.out
    assert torch.equal(_read(tmp_path / "a" / "in.png"), _read(src))
    rc, out = _restore([src, "-o", tmp_path / "b", "--pipeline", folder, "--chain", "3"], capsys)
    assert rc == 0 and "path: " in out.out
