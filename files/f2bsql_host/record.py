"""Record: the frozen value classes the host code passes around, without dataclasses' cost.

fail2ban's command action starts a `ban` process for every ban. Importing dataclasses (it
brings inspect, ast, dis and tokenize) and generating each class's methods from source cost
that process more than its database work. A Record names its fields as annotations, defaults
as class attributes, and gets, as a frozen dataclass would, __init__ (positional or keyword),
__eq__, __hash__, __repr__ and no changes after; as_dict() is dataclasses.asdict() for the
flat records here. Type checkers read a Record as a frozen dataclass (dataclass_transform).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing stays unimported at run time (see __init__)
if TYPE_CHECKING:
    from typing import Any, ClassVar

    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_options: object) -> object:
        return lambda cls: cls


@dataclass_transform(frozen_default=True)
class Record:
    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **options: Any) -> None:
        super().__init_subclass__(**options)
        # The class's own annotations: strings (every module here has `from __future__ import
        # annotations`), in the class's __dict__ up to Python 3.13; 3.14 makes them on demand.
        annotations = cls.__dict__.get("__annotations__")  # noqa: RUF063 (inspect costs what this saves)
        if annotations is None:
            annotations = cls.__annotations__
        own = [name for name, kind in annotations.items() if "ClassVar" not in str(kind)]
        cls._fields = cls._fields + tuple(name for name in own if name not in cls._fields)
        cls._defaults = {**cls._defaults, **{name: cls.__dict__[name] for name in own if name in cls.__dict__}}
        missing = False
        for name in cls._fields:  # as in a dataclass: no field without a default after one with
            if name in cls._defaults:
                missing = True
            elif missing:
                raise TypeError(f"{cls.__name__}: field {name} without a default follows one with a default")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes {len(fields)} arguments, {len(args)} given")
        values = dict(zip(fields, args))
        for name, value in kwargs.items():
            if name not in fields or name in values:
                raise TypeError(f"{type(self).__name__}() got an unexpected or repeated argument {name!r}")
            values[name] = value
        for name in fields:
            if name not in values:
                if name not in self._defaults:
                    raise TypeError(f"{type(self).__name__}() is missing argument {name!r}")
                values[name] = self._defaults[name]
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a {type(self).__name__}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({shown})"

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._fields}
