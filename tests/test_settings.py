"""Each setting is declared once, in its class's ``Settings`` schema (``vaelab.settings``): the YAML
files that give it a value agree with the schema, the constructors take their defaults from it,
and the wording of a bad value's message comes from the field."""

import inspect
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vaelab.config import compose_config, model_class
from vaelab.distributions import LIKELIHOODS
from vaelab.errors import UserError
from vaelab.models.base import GenerativeModel, every_model
from vaelab.nets import NETS
from vaelab.quantizer import QUANTIZERS, quantizer_class
from vaelab.schedules import KL_SCHEDULES
from vaelab.settings import REFERENCE, Settings, describe, setting, validate

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Options that are presets of a class another option gives with the schema's defaults: the
# settings each changes on purpose (a stale entry fails the test too).
PRESETS = {
    "likelihood/gaussian_learned": {"learn_sigma"},
    "net/betavae_conv": {"kernel", "dense"},
    "data/dsprites": {"binarize"},
    "data/dsprites_small": {"binarize", "draw", "num_orientations", "num_positions", "val_size", "test_size"},
    "data/binarized_mnist": {"binarize"},
}


def schema_of(group: str, node) -> type[Settings]:
    if group == "model":
        return model_class(node._target_).Settings
    if group == "data":
        module, _, name = str(node._target_).rpartition(".")
        return getattr(__import__(module, fromlist=[name]), name).Settings
    if group == "likelihood":
        return LIKELIHOODS[node.name].Settings
    if group == "net":
        return NETS[node.kind]
    if group == "callbacks":
        module, _, name = str(node._target_).rpartition(".")
        return getattr(__import__(module, fromlist=[name]), name).Settings
    return KL_SCHEDULES[node.name].Settings


def options() -> list[tuple[str, str]]:
    import vaelab.callbacks

    def declares_settings(text: str) -> bool:
        found = re.search(r"_target_: vaelab\.callbacks\.(\w+)", text)
        return bool(found) and hasattr(getattr(vaelab.callbacks, found.group(1)), "Settings")

    own_callbacks = [  # vaelab's callbacks declare their settings; Lightning's (and their subclasses) are Lightning's
        ("callbacks", path.stem)
        for path in sorted((CONF / "callbacks").glob("*.yaml"))
        if declares_settings(path.read_text())
    ]
    return [
        (group, path.stem)
        for group in ("model", "data", "likelihood", "net", "kl_schedule")
        for path in sorted((CONF / group).glob("*.yaml"))
        if not path.stem.startswith("_")
    ] + own_callbacks


def nodes_of(group: str, option: str, tmp_path) -> list[tuple[str, object, type[Settings]]]:
    """(name, config node, its schema) of an option, and of the quantizer inside a VQ-VAE."""
    overrides = [f"{group}={option}"] + (["net=conv"] if group == "data" and option == "celeba" else [])
    cfg = compose_config(overrides, tmp_path)
    node = cfg[group] if group != "callbacks" else cfg.callbacks[option]
    found = [(f"{group}/{option}", node, schema_of(group, node))]
    if group == "model" and "quantizer" in node:
        for path in sorted((CONF / "model" / "quantizer").glob("*.yaml")):  # each option of model/quantizer
            quantizer = compose_config([*overrides, f"model/quantizer={path.stem}"], tmp_path).model.quantizer
            found.append((f"{group}/{option}:quantizer={path.stem}", quantizer, quantizer_class(quantizer).Settings))
    return found


def differences(node, schema: type[Settings]) -> set[str]:
    """The settings ``node`` writes itself (not interpolated) with a value other than the default."""
    written = OmegaConf.to_container(node, resolve=False)
    found = set()
    for key, value in written.items():
        if str(key).startswith("_"):
            continue
        field = schema.model_fields[key]
        follows = isinstance(value, str) and REFERENCE.match(value)
        if not field.is_required() and not follows and not isinstance(value, dict) and value != field.get_default():
            found.add(key)
    return found


@pytest.mark.parametrize("group,option", options(), ids=[f"{g}={o}" for g, o in options()])
def test_every_option_file_agrees_with_its_schema(group, option, tmp_path):
    for name, node, schema in nodes_of(group, option, tmp_path):
        unknown = [k for k in node if not str(k).startswith("_") and k not in schema.model_fields]
        assert not unknown, f"{name} writes keys its schema lacks: {unknown}"
        missing = [k for k, f in schema.model_fields.items() if f.is_required() and k not in node]
        assert not missing, f"{name} lacks {missing}, which have no default"
        # Every setting has a value in the file, so that key=value needs no "+" (docs/configuration.md).
        absent = [k for k in schema.model_fields if k not in node]
        assert not absent, f"{name} gives no value to {absent}"
        changed = differences(node, schema)
        expected = PRESETS.get(name.split(":")[0], set()) if ":" not in name else set()
        assert changed == expected, f"{name} restates defaults differently: {sorted(changed ^ expected)}"


def configurable_classes() -> list[type]:
    import vaelab.data as data

    modules = [
        getattr(data, n) for n in dir(data) if n.endswith("DataModule") and hasattr(getattr(data, n), "Settings")
    ]
    models = [m for m in every_model() if m.__module__.startswith("vaelab.")]
    return [*models, *LIKELIHOODS.values(), *QUANTIZERS.values(), *KL_SCHEDULES.values(), *modules]


def effective_defaults(cls: type) -> dict[str, object]:
    """Each keyword a class takes and the default it gets when not given (the first class in the
    MRO whose ``__init__`` names it)."""
    found: dict[str, object] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass.__module__.startswith(("torch", "lightning", "builtins")):
            continue
        for name, parameter in inspect.signature(vars(klass)["__init__"]).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                found.setdefault(name, parameter.default)
            else:
                found.setdefault(name, inspect.Parameter.empty)
    return found


@pytest.mark.parametrize("cls", configurable_classes(), ids=lambda c: c.__name__)
def test_constructors_take_their_defaults_from_the_schema(cls):
    defaults = effective_defaults(cls)
    for name, field in cls.Settings.model_fields.items():
        assert field.description, f"{cls.__name__}.Settings.{name} has no meaning written"
        if name in defaults and not field.is_required() and defaults[name] is not inspect.Parameter.empty:
            assert defaults[name] == field.get_default(), f"{cls.__name__}({name}=...) defaults differently"


def test_a_models_settings_are_the_keywords_it_takes():
    """A setting no constructor takes would be checked and then silently dropped."""
    for cls in every_model(GenerativeModel):
        if not cls.__module__.startswith("vaelab."):
            continue
        taken = set(effective_defaults(cls)) - {"self", "args", "kwargs"}
        declared = set(cls.Settings.model_fields) - {"compile", "channels_last"}  # run settings, not the model's
        assert declared <= taken, f"{cls.__name__} declares {sorted(declared - taken)} that it does not take"


def test_messages_are_worded_from_the_field():
    class Example(Settings):
        k: int = setting(5, "samples", ge=1)
        rate: float = setting(0.5, "a rate", gt=0, le=1)
        weight: float = setting(1.0, "a weight", ge=0, unit=" nats")
        mode: str | None = setting(None, "a mode")
        flag: bool = setting(False, "a switch")
        options: dict = setting({}, "a group")
        needed: int = setting(..., "a count", ge=0)

    cases = {
        "k": (0, "m.k must be a whole number ≥ 1, got 0; set m.k=<N>"),
        "rate": (0, "m.rate must be in (0, 1], got 0"),
        "weight": (-1, "m.weight must be ≥ 0 nats, got -1"),
        "flag": ("yes", "m.flag must be true or false, got 'yes'"),
        "mode": (5, "m.mode must be null or a string, got 5"),
        "options": (3, "m.options must be a group of settings (key: value), got 3"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(UserError) as err:
            validate(Example, {"needed": 1, key: value}, "m")
        assert str(err.value) == message
    with pytest.raises(UserError) as err:  # removed with ~m.needed, and no default to fall back on
        validate(Example, {}, "m")
    assert str(err.value) == "m.needed is required (a count); set m.needed=<value>"
    with pytest.raises(UserError, match=r"^m.other is not a setting here; drop it$"):
        validate(Example, {"other": 1}, "m")
    assert validate(Example, {"k": 3, "needed": 0}, "m").k == 3
    assert validate(Example, {"needed": 0}, "m").rate == 0.5  # a key not given takes the declared default
    rows = {row[0]: row for row in describe(Example)}
    assert rows["rate"][1:] == ("in (0, 1]", "0.5", "a rate")


def test_an_interpolated_setting_is_named_by_the_key_it_follows(tmp_path):
    cfg = compose_config(["size.latent_dim=0"], tmp_path)
    from vaelab.models import VAE

    with pytest.raises(
        UserError, match=r"^size.latent_dim must be a whole number ≥ 1, got 0; set size.latent_dim=<N>$"
    ):
        validate(VAE.Settings, cfg.model, "model")
    cfg = compose_config(["size.hidden_dims=[]"], tmp_path)
    with pytest.raises(UserError, match=r"^net.hidden_dims \(from size.hidden_dims\) must be a non-empty list"):
        validate(NETS["mlp"], cfg.net, "net")


def test_the_shared_checks_word_no_single_setting_of_a_schema():
    """checks.py keeps what crosses settings and the runtime checks; a setting's own type and range
    are its schema's. The optimizer and scheduler are torch's classes, checked there for every model."""
    text = (ROOT / "src" / "vaelab" / "checks.py").read_text()
    own = re.findall(r'"(?:model|likelihood|net|kl_schedule|data)\.[\w.{}]+ must be', text)
    assert all(m.startswith(('"model.optimizer', '"model.scheduler')) for m in own), own
