"""magicgui forms from the method catalogue: each parameters dataclass becomes a form with its
defaults, where they come from as tooltips, and the defaults that follow another parameter kept in
step. Widgets built here hold no maths; the catalogue states every fact they show."""

from __future__ import annotations

import enum

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox

from .. import catalogue

AUTOMATIC = "automatic"  # what a form shows for a value decided at run time


def parameter_form(params: type, only: tuple[str, ...] | None = None, label: str = "") -> Container:
    """A form for a parameters dataclass of the catalogue: its defaults, where they come from as tooltips,
    and defaults that follow another parameter kept in step with it; ``label`` names the group."""
    widgets = []
    for item in catalogue.fields(params):
        if only is not None and item.name not in only:
            continue
        kind, follows = catalogue.value_type(params, item.name), item.metadata.get("follows")
        tooltip = item.metadata["source"]
        value = item.default
        if follows is not None:
            value = follows.rule(getattr(params(), follows.other))
            tooltip += f" (follows {follows.other}: {follows.says})"
        least = item.metadata.get("minimum") or 0
        if issubclass(kind, enum.Enum):
            automatic = [(AUTOMATIC, None)] if value is None else []  # the tooltip says what it decides
            widget = ComboBox(choices=[*automatic, *((m.value, m) for m in kind)], value=value)
        elif kind is bool:
            widget = CheckBox(value=value)
        elif kind is str:
            widget = LineEdit(value=value or "")
        elif kind is int:
            widget = SpinBox(value=0 if value is None else value, min=least, max=2**31 - 1)
        elif kind is float:
            widget = FloatSpinBox(value=value, min=float(least), max=1000.0, step=0.05)
        else:
            raise TypeError(f"no form widget for {params.__name__}.{item.name}: {kind}")
        name = item.name.replace("_", " ")
        shown = name
        if value is None:  # decided at run time: 0, empty text or 'automatic' stands for it
            empty = AUTOMATIC if issubclass(kind, enum.Enum) else "empty" if kind is str else "0"
            tooltip += f" ({empty}: {item.metadata['automatic']})"
            if kind is int:  # a spin box cannot show a word: its label says what its 0 means
                shown = f"{name} (0: {AUTOMATIC})"
        widget.name, widget.label, widget.tooltip = item.name, shown, tooltip
        if isinstance(widget, CheckBox):
            widget.text = name  # a check box shows its text, not a form label
        widgets.append(widget)
    form = Container(widgets=widgets, labels=True, name=params.__name__, label=label)
    for item in catalogue.fields(params):
        follows = item.metadata.get("follows")
        if follows is not None and item.name in form.asdict():
            target, rule = getattr(form, item.name), follows.rule
            getattr(form, follows.other).changed.connect(
                lambda value, target=target, rule=rule: setattr(target, "value", rule(value))
            )
    form.automatic = [
        f.name for f in catalogue.fields(params) if f.default is None and not f.metadata["follows"]
    ]
    return form


def method_form(spec) -> Container:
    """A method's parameter form, led by a preset picker when the catalogue names presets for it:
    choosing one sets the fields to its values (the method's own paper defaults: back to those)."""
    form = parameter_form(spec.params)
    if not spec.presets:
        return form
    # "" for the paper defaults: magicgui does not emit a change to None
    picker = ComboBox(
        choices=[("paper defaults", ""), *((name, name) for name in spec.presets)],
        value="",
        tooltip="; ".join(f"{name}: {preset.says}" for name, preset in spec.presets.items()),
    )
    picker.name, picker.label = "preset", "preset"
    defaults = {item.name: item.default for item in catalogue.fields(spec.params)}

    def apply(name):
        for field_name, value in {**defaults, **spec.preset(name).values}.items():
            widget = getattr(form, field_name)
            if value is not None:
                widget.value = value
            elif field_name in form.automatic:  # as parameter_form shows a run-time default
                widget.value = (
                    None if isinstance(widget, ComboBox) else "" if isinstance(widget, LineEdit) else 0
                )

    picker.changed.connect(apply)
    form.insert(0, picker)
    return form


def form_values(form: Container) -> dict:
    """The form's values as the parameters dataclass takes them (0 or empty text for an automatic one:
    None)."""
    return {w.name: (None if w.name in form.automatic and w.value in (0, "") else w.value) for w in form}
