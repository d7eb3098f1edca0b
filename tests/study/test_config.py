"""study.config: presets load, every fault names its key and value, overrides, round trips."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from sigmatune.study.config import Config, ConfigError, load_config, preset_names


def test_presets_are_the_five_named_in_the_design():
    assert preset_names() == ["cifar10", "digits", "gmm32", "mnist", "toy"]


@pytest.mark.parametrize("name", ["toy", "gmm32", "digits", "mnist", "cifar10"])
def test_every_preset_loads_and_round_trips_through_json(name):
    config = load_config(name)
    assert config.name == name
    assert config.sigma_min < config.sigma_max
    stored = json.loads(json.dumps(config.to_dict()))  # as in a study's user attrs
    assert Config.from_dict(stored) == config


def test_toy_preset_is_sized_for_two_cpu_cores():
    toy = load_config("toy")
    assert (toy.dataset, toy.network.name, toy.inner.fid_extractor) == ("gmm2d", "mlp", "rff")
    assert 100_000 <= toy.train.train_nimg <= 300_000
    # the loop working: the enqueued configurations, then CMA-ES from the best of them (a
    # proposed trial completes in its own run: the README's example), within its budget
    assert toy.outer.outer_trials >= 8 and toy.inner.inner_trials == 12
    assert toy.outer.pruner == "hyperband" and toy.train.checkpoint_nimg < toy.train.train_nimg
    assert toy.outer.sampler == "cmaes"
    assert toy.inner.tune_sigma_range  # at NFE 5 the range is most of what can be gained
    assert toy.inner.nfe_budgets == (5, 9) and toy.inner.samplers == ("heun",)
    assert toy.inner.fid_num_images == 1000


def test_image_presets_use_image_features():
    digits, mnist, cifar = load_config("digits"), load_config("mnist"), load_config("cifar10")
    assert digits.dataset == "digits" and digits.inner.fid_extractor == "classifier-whitened"
    assert digits.network.params["channels"] == 32
    assert digits.network.params["channel_mult"] == [1, 2]
    assert digits.inner.nfe_budgets == (5, 9)
    assert mnist.dataset == "mnist5k"
    assert cifar.inner.fid_extractor == "inception" and cifar.device == "cuda"
    assert cifar.train.train_nimg >= 20_000_000 and cifar.inner.fid_num_images >= 10_000


def test_to_dict_is_complete():
    d = load_config("toy").to_dict()
    top = {f.name for f in dataclasses.fields(Config)}
    assert set(d) == top
    for section in ("network", "train", "outer", "inner"):
        cls = type(getattr(load_config("toy"), section))
        assert set(d[section]) == {f.name for f in dataclasses.fields(cls)}
    assert isinstance(d["inner"]["nfe_budgets"], list)  # JSON lists, not tuples


BAD = [
    ({"train.train_nimg": -5}, r"train\.train_nimg must be a positive integer, but got -5"),
    ({"train.batch_size": 0}, r"train\.batch_size must be a positive integer, but got 0"),
    ({"train.lr": "fast"}, r"train\.lr must be a number > 0, but got 'fast'"),
    ({"train.grad_clip": -1.0}, r"train\.grad_clip must be a number >= 0, but got -1\.0"),
    ({"seed": 1.5}, r"seed must be an integer >= 0, but got 1\.5"),
    ({"seed": True}, r"seed must be an integer >= 0, but got True"),
    ({"sigma_min": 100.0}, r"sigma_min must be < sigma_max=80\.0, but got 100\.0"),
    ({"sigma_max": -1}, r"sigma_max must be a number > 0, but got -1"),
    ({"name": "a/b"}, r"name must be a non-empty study name without '/'.*but got 'a/b'"),
    (
        {"dataset": "imagenet"},
        r"dataset must be one of gmm2d, .*, folder:PATH .* or stats:PATH .*, but got 'imagenet'",
    ),
    ({"device": "gpu"}, r"device must be auto, cpu, cuda or cuda:N, but got 'gpu'"),
    (
        {"storage": "redis://localhost"},
        r"storage must be a valid storage URL .*'redis://localhost'",
    ),
    ({"network.name": "resnet"}, r"network\.name must be one of mlp, unet, but got 'resnet'"),
    (
        {"network.params.widht": 3},
        r"unknown key 'network\.params\.widht'; valid keys for network "
        r"'mlp': hidden, depth, emb_dim",
    ),
    ({"network.params.dim": 3}, r"network\.params\.dim is set from the data set's shape"),
    (
        {"network.name": "unet", "network.params": {}},
        r"network\.name must be 'mlp' for the 2-D data set 'gmm2d'",
    ),
    ({"outer.outer_trials": 0}, r"outer\.outer_trials must be a positive integer, but got 0"),
    (
        {"outer.sampler": "annealing"},
        r"outer\.sampler must be one of tpe, cmaes, random, but got 'annealing'",
    ),
    (
        {"outer.pruner": "asha"},
        r"outer\.pruner must be one of hyperband, successive_halving, median, none",
    ),
    (
        {"outer.literature": ["edm"]},
        r"outer\.literature must be a list of distinct names from: edm2, .*EDM's defaults",
    ),
    (
        {"outer.densities": ["lognormal", "cosine", "uniform"]},
        r"outer\.densities must include 'laplace' for the literature configuration 'laplace'",
    ),
    ({"outer.objectives": [5, 7]}, r"outer\.objectives must be NFE budgets of inner"),
    (
        {"outer.densities": ["lognormal", "foo"]},
        r"outer\.densities must be a non-empty list of distinct names from: lognormal, .*"
        r"but got \['lognormal', 'foo'\]",
    ),
    ({"outer.weightings": []}, r"outer\.weightings must be a non-empty list .*but got \[\]"),
    (
        {"outer.adaptive": ["none", "none"]},
        r"outer\.adaptive must be a non-empty list of "
        r"distinct names",
    ),
    ({"outer.parameterisations": "edm"}, r"outer\.parameterisations must be a non-empty list"),
    (
        {"outer.piecewise_bins": 1},
        r"outer\.piecewise_bins must be an integer in \[2, 64\], "
        r"but got 1",
    ),
    (
        {"outer.parameterisations": ["v"], "outer.literature": []},
        r"outer\.parameterisations must include 'edm' when "
        r"outer\.enqueue_baseline = true",
    ),
    (
        {"inner.nfe_budgets": []},
        r"inner\.nfe_budgets must be a non-empty list of distinct "
        r"positive integers, but got \[\]",
    ),
    ({"inner.nfe_budgets": [5, 5]}, r"inner\.nfe_budgets must be .*distinct.*but got \[5, 5\]"),
    (
        {"inner.nfe_budgets": [2, 5]},
        r"inner\.nfe_budgets must allow at least 2 steps of every "
        r"sampler in inner\.samplers \(heun: NFE >= 3\), "
        r"but got \[2, 5\]",
    ),
    (
        {"inner.samplers": ["heun", "ddim"]},
        r"inner\.samplers must be a non-empty list of "
        r"distinct names from: euler, heun, dpmpp_2m",
    ),
    ({"inner.sampler": "bobyqa"}, r"inner\.sampler must be one of gp, tpe, cmaes, random"),
    ({"inner.objective": "l2"}, r"inner\.objective must be one of fid, paired, but got 'l2'"),
    ({"inner.kid": "yes"}, r"inner\.kid must be true or false, but got 'yes'"),
    (
        {"inner.fid_extractor": "clip"},
        r"inner\.fid_extractor must be one of rff, raw, "
        r"classifier, classifier-whitened, inception, but got 'clip'",
    ),
    (
        {"inner.fid_extractor": "inception"},
        r"inner\.fid_extractor must not be 'inception' .*"
        r"for the 2-D data set 'gmm2d'",
    ),
    ({"inner.fid_num_images": 1}, r"inner\.fid_num_images must be an integer >= 2, but got 1"),
    (
        {"inner.tune_churn": True, "inner.samplers": ["euler"]},
        r"inner\.tune_churn = true tunes S_churn of 'heun' only",
    ),
    ({"foo": 1}, r"unknown key 'foo'; valid keys at the top level: name, dataset, .*, inner"),
    (
        {"outer.foo": 1},
        r"unknown key 'outer\.foo'; valid keys in \[outer\]: outer_trials, "
        r"sampler, pruner",
    ),
    ({"inner.nfe": [5]}, r"unknown key 'inner\.nfe'; valid keys in \[inner\]: inner_trials"),
]


@pytest.mark.parametrize("overrides, match", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_value_names_key_value_and_what_is_allowed(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config("toy", overrides)
    assert isinstance(info.value, ValueError)
    assert len(info.value.errors) == 1


def test_unknown_keys_in_a_file_top_level_and_nested(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\ncolour = "red"\n[train]\ntrain_nimg = 1000\nbach_size = 3\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert "unknown key 'colour'" in message
    assert "unknown key 'train.bach_size'; valid keys in [train]: train_nimg, batch_size" in message
    assert str(path) in message


def test_all_errors_reported_together_one_line_each(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        "seed = -1\n[train]\ntrain_nimg = -5\n[outer]\nfoo = 1\n[inner]\nnfe_budgets = []\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = info.value.errors
    assert len(errors) == 4
    lines = str(info.value).splitlines()
    assert lines[0].startswith("invalid config") and "4 errors" in lines[0]
    assert [line.strip() for line in lines[1:]] == errors
    assert any(re.match(r"train\.train_nimg .* but got -5", e) for e in errors)


def test_a_section_that_is_not_a_table(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("network = 3\n")
    with pytest.raises(ConfigError, match=r"network must be a table \(\[network\]\), but got 3"):
        load_config(path)


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        load_config(path)


def test_missing_file_or_unknown_preset_lists_presets(tmp_path):
    presets = "cifar10, digits, gmm32, mnist, toy"
    with pytest.raises(ConfigError, match=rf"'nope' does not exist; .*{presets}"):
        load_config("nope")
    with pytest.raises(ConfigError, match=r"is a directory"):
        load_config(tmp_path)


def test_a_partial_file_takes_defaults_for_the_rest(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text('name = "small"\n[outer]\nouter_trials = 2\n')
    config = load_config(path)
    assert config.name == "small" and config.outer.outer_trials == 2
    assert config.train == type(config.train)()
    from sigmatune.objectives.densities import DENSITIES
    from sigmatune.study.config import WEIGHTING_SPACE_ONLY

    # by default the whole registry but the density that only the "weighting" space makes
    assert config.outer.densities == tuple(n for n in DENSITIES if n not in WEIGHTING_SPACE_ONLY)
    assert config.outer.space == "components" and config.outer.weighting_shape == "bump"


def test_overrides_apply_before_validation():
    config = load_config(
        "toy",
        {
            "outer.outer_trials": 7,
            "storage": "sqlite:///other.db",
            "network.params.hidden": 32,
            "inner.nfe_budgets": (3, 7),
        },
    )
    assert config.outer.outer_trials == 7
    assert config.storage == "sqlite:///other.db"
    assert config.network.params == {"hidden": 32, "depth": 3, "emb_dim": 64}
    assert config.inner.nfe_budgets == (3, 7)


def test_replace_returns_a_checked_copy():
    config = load_config("toy")
    other = config.replace(**{"inner.inner_trials": 4}, seed=3)
    assert (other.inner.inner_trials, other.seed) == (4, 3)
    assert (config.inner.inner_trials, config.seed) == (12, 0)  # unchanged
    with pytest.raises(ConfigError, match=r"inner\.inner_trials must be a positive integer"):
        config.replace(**{"inner.inner_trials": -1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 5


def test_from_dict_checks_too():
    d = load_config("toy").to_dict()
    d["outer"]["sampler"] = "grid"
    with pytest.raises(
        ConfigError,
        match=r"outer\.sampler must be one of tpe, cmaes, random, but got "
        r"'grid'",
    ):
        Config.from_dict(d)


def test_folder_dataset_and_cuda_device_are_accepted():
    config = load_config("digits", {"dataset": "folder:/data/faces", "device": "cuda:1"})
    assert config.dataset == "folder:/data/faces" and config.device == "cuda:1"
