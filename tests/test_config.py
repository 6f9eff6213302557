"""Config loading: defaults, YAML with a base, overrides, and early clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from enclap.config import load_config, save_config
from enclap.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    schedule: str = "inverse_sqrt"


@dataclass
class Job:
    name: str = "job"
    steps: int = 10
    optim: Optim = field(default_factory=Optim)
    files: list[str] = field(default_factory=list)
    checkpoint: str | None = None

    def validate(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")


def test_defaults_yaml_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 5\noptim:\n  lr: 0.1\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: child\noptim:\n  schedule: linear\n")
    cfg = load_config(Job, tmp_path / "child.yaml", ["optim.lr=0.5", "files=[a.csv,b.csv]"])
    assert cfg == Job(name="child", steps=5, optim=Optim(lr=0.5, schedule="linear"), files=["a.csv", "b.csv"])
    assert load_config(Job) == Job()


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(Job, None, ["steps=3", "checkpoint=/x"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(Job, tmp_path / "run" / "config.yaml") == cfg


@pytest.mark.parametrize(
    "yaml_text,overrides,message",
    [
        ("stepz: 3\n", [], "Key 'stepz' not in 'Job'"),
        ("", ["optim.momentum=0.9"], "momentum"),
        ("steps: many\n", [], "steps"),
        ("", ["steps=-1"], "steps must be positive"),
        ("", ["steps"], "key=value"),
        ("steps: [1, 2\n", [], "not valid YAML"),
        ("- a\n- b\n", [], "mapping"),
    ],
)
def test_bad_configs_fail_early_naming_file_and_key(tmp_path, yaml_text, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text or "name: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(Job, path, overrides)
    assert message in str(info.value)
    if not overrides:
        assert str(path) in str(info.value)


def test_missing_file_and_base_cycle(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Job, tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Job, tmp_path / "a.yaml")
