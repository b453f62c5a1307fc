"""tests/video_graphs.py, which the native video host tests (Wan, native CogVideoX, HunyuanVideo 1.5) guide with:
its guesses are every guess type the pack's TitanGradientGuess node offers, so "every guess lowers the objective" in
those tests follows a new guess type without an edit there."""

import graphs
import video_graphs
from guidance_core.guesses import GUESS_KINDS


def test_guesses_are_every_guess_kind_the_node_offers():
    assert list(video_graphs.GUESSES) == list(GUESS_KINDS)
    assert [guess["kind"] for guess in video_graphs.GUESSES.values()] == list(GUESS_KINDS)
    assert all(set(guess) <= set(graphs.GUESS_DEFAULTS) for guess in video_graphs.GUESSES.values())


def test_guesses_for_a_short_video_fix_mixed_on_its_first_and_last_frames():
    short = video_graphs.guesses_for(5)
    assert short["mixed"]["frame_indices"] == "0, 4" and video_graphs.GUESSES["mixed"]["frame_indices"] == "0, 8"
    assert {name: guess for name, guess in short.items() if name != "mixed"} == {
        name: guess for name, guess in video_graphs.GUESSES.items() if name != "mixed"}


def test_guided_variants_share_the_sources_and_add_the_unguided_run():
    prompt = graphs.Prompt()
    sources = {key: graphs.link(key) for key in ("model", "positive", "negative", "latent", "vae")}
    names = video_graphs.add_guided_variants(prompt, sources, graphs.link("objective"), methods=("freedom",))
    assert names == [*GUESS_KINDS, "freedom"]
    built = prompt.build()
    samplers = {node_id: node["inputs"] for node_id, node in built.items() if node["class_type"] == "TitanGuideSampler"}
    assert set(samplers) == {*names, "plain"}
    assert all(inputs["model"] == sources["model"] and inputs["seed"] == 5 for inputs in samplers.values())
    assert samplers["plain"]["guidance_end"] == 0.0 and "guess" not in samplers["plain"]
    for name in GUESS_KINDS:
        assert built[samplers[name]["guess"][0]]["inputs"]["kind"] == name
    assert built[samplers["freedom"]["method"][0]]["inputs"]["method"] == "freedom"
