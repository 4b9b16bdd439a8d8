import pytest
from pydantic import Field

from embedforge.config import ConfigError, ConfigSection, JobConfig, build_parser, parse_config


class Inner(ConfigSection):
    base_url: str | None = Field(None, description="endpoint")
    max_concurrency: int = Field(8, description="requests in flight")


class DemoConfig(JobConfig):
    """Demo job."""

    output: str = Field(description="where to write")
    lr: float = Field(3e-5, description="learning rate")
    use_gpu: bool = Field(False, description="GPU")
    tags: list[str] = Field(default_factory=list, description="tags")
    prices: dict[str, float] = Field(default_factory=dict, description="model -> price")
    llm: Inner = Field(default_factory=Inner)


def test_defaults_yaml_and_cli_precedence(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("output: from-yaml\nlr: 0.1\nllm:\n  max_concurrency: 4\n")
    cfg = parse_config(DemoConfig, ["--config", str(cfg_file), "--lr", "0.5", "--use-gpu",
                                    "--tags", "a,b", "--tags", "c", "--prices", "gpt=0.2",
                                    "--llm.base-url", "http://127.0.0.1:9/v1"])
    assert cfg.output == "from-yaml"
    assert cfg.lr == 0.5
    assert cfg.use_gpu is True
    assert cfg.tags == ["a", "b", "c"]
    assert cfg.prices == {"gpt": 0.2}
    assert cfg.llm.base_url == "http://127.0.0.1:9/v1"
    assert cfg.llm.max_concurrency == 4  # from YAML, untouched by CLI


def test_unknown_yaml_key_is_an_error_naming_it(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("output: x\nlearning_rate: 0.1\nllm:\n  base_ulr: y\n")
    with pytest.raises(ConfigError) as exc:
        parse_config(DemoConfig, ["--config", str(cfg_file)])
    assert "unknown key 'learning_rate'" in str(exc.value)
    assert "unknown key 'llm.base_ulr'" in str(exc.value)


def test_bad_value_and_missing_required():
    with pytest.raises(ConfigError, match="lr"):
        parse_config(DemoConfig, ["--output", "x", "--lr", "fast"])
    with pytest.raises(ConfigError, match="output"):
        parse_config(DemoConfig, [])


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        parse_config(DemoConfig, ["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("output: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config(DemoConfig, ["--config", str(bad)])
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        parse_config(DemoConfig, ["--config", str(listy)])


def test_help_lists_every_field_with_default():
    text = build_parser(DemoConfig).format_help()
    for flag in ("--output", "--lr", "--use-gpu", "--tags", "--prices", "--llm.base-url",
                 "--llm.max-concurrency", "--config", "--print-config"):
        assert flag in text
    assert "default: 3e-05" in text and "default: 8" in text and "required" in text


def test_print_config(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(DemoConfig, ["--output", "o", "--print-config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "output: o" in out and "max_concurrency: 8" in out


@pytest.mark.parametrize(("args", "expected"), [
    ([], False), (["--use-gpu"], True), (["--use-gpu", "true"], True),
    (["--use-gpu", "FALSE"], False), (["--use-gpu", "no"], False), (["--no-use-gpu"], False),
    (["--use-gpu", "--lr", "0.1"], True),  # a following flag is not taken as the value
])
def test_bool_flags_take_an_optional_value(args, expected):
    assert parse_config(DemoConfig, ["--output", "o", *args]).use_gpu is expected


def test_bool_flag_rejects_other_words(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(DemoConfig, ["--output", "o", "--use-gpu", "maybe"])
    assert exc.value.code == 2 and "expects true or false" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(DemoConfig, ["--output", "o", "--no-use-gpu", "true"])
