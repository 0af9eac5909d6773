"""The generic config loader: YAML + ``--set KEY=VALUE`` into typed dataclasses, one-line errors with the key's path."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cmaam.core.config import (
    ConfigError,
    InvalidValue,
    apply_overrides,
    at_least,
    between,
    each,
    from_dict,
    load_config,
    one_of,
    setting,
)


@dataclass
class Model:
    name: str
    path: str
    build: dict[str, int] | None = None


@dataclass
class Merge:
    strategies: list[str] = setting(default_factory=lambda: ["basic"], check=one_of(("basic", "full")))
    base_alpha: float = setting(0.5, check=between(0, 1))
    alphas: list[float] = setting(default_factory=lambda: [0.3], check=each(between(0, 1)))
    bounds: tuple[float, float] = (0.0, 1.0)
    target: float | list[float] | None = None
    lambda_: float = setting(1.0, alias="lambda")

    def validate(self) -> None:
        if self.bounds[0] >= self.bounds[1]:
            raise InvalidValue("bounds", f"low must be below high, got {list(self.bounds)}")


@dataclass
class Experiment:
    name: str = "demo"
    seed: int = setting(0, check=at_least(0))
    deterministic: bool = True
    threads: int | None = None
    merge: Merge = field(default_factory=Merge)
    models: list[Model] = field(default_factory=list)


def error_of(values, cls=Experiment) -> str:
    with pytest.raises(ConfigError) as raised:
        from_dict(cls, values, "demo.yaml")
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_values_are_typed_and_defaults_fill_the_rest():
    config = from_dict(Experiment, {"seed": 3, "merge": {"base_alpha": 1, "alphas": [0, 0.5], "bounds": [0.1, 0.9],
                                                         "target": [1, 2], "lambda": 2}, "models": [
        {"name": "a", "path": "/a"}, {"name": "b", "path": "/b", "build": {"seed": 1}}]}, "demo.yaml")
    assert config.merge == Merge(strategies=["basic"], base_alpha=1.0, alphas=[0.0, 0.5], bounds=(0.1, 0.9),
                                 target=[1.0, 2.0], lambda_=2.0)
    assert isinstance(config.merge.base_alpha, float) and isinstance(config.merge.bounds, tuple)
    assert config.models[1] == Model("b", "/b", {"seed": 1}) and config.threads is None and config.name == "demo"
    assert from_dict(Experiment, {"merge": None}, "x").merge == Merge()  # a null section takes its defaults
    assert from_dict(Merge, {"base_alpha": "2e-1"}, "x").base_alpha == 0.2  # YAML 1.1 reads 2e-1 as a string
    assert from_dict(Merge, {"target": 0.4}, "x").target == 0.4


@pytest.mark.parametrize("values, message", [
    ({"merge": {"alpha": 0.3}}, "demo.yaml: merge.alpha: unknown key (known: strategies, base_alpha, alphas, bounds, "
                                "target, lambda)"),
    ({"seeds": 1}, "demo.yaml: seeds: unknown key (known: name, seed, deterministic, threads, merge, models)"),
    ({"merge": {"base_alpha": 1.5}}, "demo.yaml: merge.base_alpha: must be in [0, 1], got 1.5"),
    ({"merge": {"base_alpha": "half"}}, "demo.yaml: merge.base_alpha: expected a number, got 'half'"),
    ({"seed": -1}, "demo.yaml: seed: must be at least 0, got -1"),
    ({"seed": 1.5}, "demo.yaml: seed: expected a whole number, got 1.5"),
    ({"seed": True}, "demo.yaml: seed: expected a whole number, got True"),
    ({"deterministic": "yes"}, "demo.yaml: deterministic: expected true or false, got 'yes'"),
    ({"threads": "two"}, "demo.yaml: threads: expected a whole number or null, got 'two'"),
    ({"merge": {"strategies": ["basic", "magic"]}},
     "demo.yaml: merge.strategies: unknown 'magic' (choose basic, full)"),
    ({"merge": {"strategies": "basic"}}, "demo.yaml: merge.strategies: expected a list, got 'basic'"),
    ({"merge": {"alphas": [0.3, 1.2]}}, "demo.yaml: merge.alphas: [1] must be in [0, 1], got [0.3, 1.2]"),
    ({"merge": {"alphas": [0.3, "x"]}}, "demo.yaml: merge.alphas[1]: expected a number, got 'x'"),
    ({"merge": {"bounds": [0.5]}}, "demo.yaml: merge.bounds: expected a list of 2 values, got [0.5]"),
    ({"merge": {"bounds": [0.9, 0.1]}}, "demo.yaml: merge.bounds: low must be below high, got [0.9, 0.1]"),
    ({"merge": {"target": "x"}}, "demo.yaml: merge.target: expected a number or a list or null, got 'x'"),
    ({"merge": {"target": [0.1, "x"]}}, "demo.yaml: merge.target[1]: expected a number, got 'x'"),
    ({"merge": 3}, "demo.yaml: merge: expected a mapping (a section of keys), got 3"),
    ({"models": [{"name": "a"}]}, "demo.yaml: models[0].path: required key is missing"),
    ({"models": [{"name": "a", "path": "p", "build": {"seed": "x"}}]},
     "demo.yaml: models[0].build.seed: expected a whole number, got 'x'"),
])
def test_mistakes_name_the_key_path(values, message):
    assert error_of(values).startswith(message), error_of(values)


def test_overrides_reach_nested_keys_lists_and_list_items():
    values = {"merge": {"base_alpha": 0.5}, "models": [{"name": "a", "path": "/a"}, {"name": "b", "path": "/b"}]}
    apply_overrides(values, ["merge.base_alpha=0.7", "merge.strategies=[basic, full]", "models.1.path=/c",
                             "threads=null", "merge.lambda=2", "name=a=b"])
    config = from_dict(Experiment, values, "x")
    assert config.merge.base_alpha == 0.7 and config.merge.strategies == ["basic", "full"]
    assert config.models[1].path == "/c" and config.merge.lambda_ == 2.0 and config.threads is None
    assert config.name == "a=b"  # only the first '=' separates the key
    assert apply_overrides({}, ["data.english=/en"]) == {"data": {"english": "/en"}}  # sections are created


@pytest.mark.parametrize("assignment, message", [
    ("seed", "--set 'seed': expected KEY=VALUE"),
    ("merge..alpha=1", "--set 'merge..alpha=1': empty key"),
    ("models.5.path=/x", "--set models.5.path: models is a list of 1; '5' is not an index of it"),
    ("name.first=x", "--set name.first: name is not a section"),
    ("merge.alphas=[0.3", "--set merge.alphas: '[0.3' is not a valid YAML value"),
])
def test_bad_overrides_are_one_line_errors(assignment, message):
    with pytest.raises(ConfigError) as raised:
        apply_overrides({"name": "demo", "models": [{"name": "a", "path": "/a"}]}, [assignment])
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_load_config_reads_the_file_and_names_it(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text("seed: 2\nmerge:\n  base_alpha: 0.4  # a comment\n")
    config = load_config(Experiment, path, ["merge.base_alpha=0.6"])
    assert config.seed == 2 and config.merge.base_alpha == 0.6
    with pytest.raises(ConfigError, match=r"^demo.yaml: merge.base_alpha: must be in \[0, 1\], got 2$"):
        load_config(Experiment, path, ["merge.base_alpha=2"])
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="demo.yaml: expected a mapping of keys at the top, got list"):
        load_config(Experiment, path)
    path.write_text("seed: [1\n")
    with pytest.raises(Exception, match="invalid YAML"):
        load_config(Experiment, path)
    with pytest.raises(Exception, match="missing.yaml: config not found"):
        load_config(Experiment, tmp_path / "missing.yaml")
    path.write_text("")
    assert load_config(Experiment, path) == Experiment()  # an empty file: every default
