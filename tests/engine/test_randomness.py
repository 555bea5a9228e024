import copy
import pickle

import pytest
import torch

from dp_gym.engine.randomness import SECRET_KEY_ENV, EpisodeRandomness, SecretKey, resolve_secret_key

KEY = SecretKey("a-test-key-of-enough-length")


def draws(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(8, generator=generator)


def test_a_secret_key_never_shows_and_a_short_one_is_refused(monkeypatch):
    assert "enough" not in repr(KEY) and repr(KEY) == "SecretKey(<hidden>)"
    with pytest.raises(ValueError, match="at least 16 bytes"):
        SecretKey("short")
    monkeypatch.delenv(SECRET_KEY_ENV, raising=False)
    assert resolve_secret_key() is None
    monkeypatch.setenv(SECRET_KEY_ENV, "a-test-key-of-enough-length")
    assert resolve_secret_key() == KEY


def test_without_a_key_the_same_public_seed_gives_different_streams():
    a, b = EpisodeRandomness(None, public_seed=0), EpisodeRandomness(None, public_seed=0)
    assert not torch.equal(draws(a.generator("noise", 0)), draws(b.generator("noise", 0)))
    assert not a.reproducible


def test_with_a_key_the_streams_are_reproducible_and_never_overlap():
    a, b = EpisodeRandomness(KEY, public_seed=5), EpisodeRandomness(KEY, public_seed=5)
    assert a.reproducible and torch.equal(draws(a.generator("noise", 3)), draws(b.generator("noise", 3)))
    seen = [draws(a.generator(use, t)) for use in ("noise", "sampling") for t in range(4)]
    seen += [draws(EpisodeRandomness(KEY, public_seed=6).generator("noise", 0)),
             draws(EpisodeRandomness(KEY, public_seed=5, stream="vanilla").generator("noise", 0)),
             draws(EpisodeRandomness(SecretKey("another-key-of-enough-length"), 5).generator("noise", 0))]
    for i, x in enumerate(seen):
        for y in seen[i + 1:]:
            assert not torch.equal(x, y)


def test_secure_mode_is_fresh_every_time_and_refuses_a_key():
    secure = EpisodeRandomness(None, public_seed=0, secure_mode=True)
    assert not torch.equal(draws(secure.generator("noise", 0)), draws(secure.generator("noise", 0)))
    with pytest.raises(ValueError, match="secure_mode"):
        EpisodeRandomness(KEY, public_seed=0, secure_mode=True)


def test_the_episode_secret_is_never_pickled_or_copied_into_a_checkpoint():
    randomness = EpisodeRandomness(None, public_seed=0)
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(randomness)
    with pytest.raises(TypeError, match="never pickled"):
        copy.deepcopy(randomness)


def test_large_noise_is_drawn_in_parallel_chunks_from_the_generator_given(monkeypatch):
    import torch

    from dp_gym.engine import randomness

    monkeypatch.setattr(randomness, "PARALLEL_NOISE_MIN", 1000)
    monkeypatch.setattr(randomness, "NOISE_CHUNK", 256)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        draws = []
        for seed in (7, 7, 8):
            total = torch.full((40_000,), 3.0)
            randomness.add_gaussian_noise_(total, 2.0, torch.Generator().manual_seed(seed))
            draws.append(total - 3.0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])  # the generator decides
    assert abs(float(draws[0].mean())) < 0.05 and abs(float(draws[0].std()) - 2.0) < 0.05
    chunks = draws[0][: 256 * 4].view(4, 256)
    assert not any(torch.equal(chunks[0], chunks[k]) for k in (1, 2, 3))  # independent streams
    assert abs(float(torch.corrcoef(chunks[:2])[0, 1])) < 0.25
