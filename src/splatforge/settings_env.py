"""One way every process reads its settings from the environment: :class:`EnvSettings`.

The service (:class:`splatforge.service.settings.ServiceSettings`, which also holds the
viewer's settings) and the AWS worker (:class:`splatforge.aws.task.TaskSettings`) are
``pydantic-settings`` models, validated once at start-up. :meth:`EnvSettings.from_env` reads
a given mapping (default ``os.environ``) and reports every invalid variable by its name; a
model constructed directly (``ServiceSettings(data_dir=...)``, as tests do) reads no
environment at all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, ClassVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource

from .errors import ConfigError

#: The environment :meth:`EnvSettings.from_env` is reading (None: construct from init only).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("splatforge_environ",
                                                            default=None)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``
    (its ``_load_env_vars`` hook), so a test or a launcher can pass an environment."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        out: dict[str, str | None] = {}
        for k, v in self._environ.items():
            if self.env_ignore_empty and (v is None or v.strip() == ""):
                continue
            out[k if self.case_sensitive else k.lower()] = v.strip() if v else v
        return out


class EnvSettings(BaseSettings):
    """Base of the settings models (see the module docstring). Subclasses set their own
    ``model_config`` (``env_prefix``) and, where a variable's name is not the prefix plus
    the field name, a ``validation_alias``."""

    #: First line of the ConfigError of an invalid environment.
    error_title: ClassVar[str] = "invalid environment"

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _ENVIRON.get()
        if environ is None:
            return (init_settings,)
        return (init_settings, _MappingEnvSource(settings_cls, environ))

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of ``field``."""
        info = cls.model_fields[field]
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        if choices:
            return str(choices[-1])
        if isinstance(alias, str):
            return alias
        return (cls.model_config.get("env_prefix") or "") .upper() + field.upper()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Any:
        """Settings from ``env`` (default ``os.environ``); keyword ``overrides`` win.

        Raises:
            ConfigError: one line per missing or invalid variable, naming it, its value and
                what is allowed.
        """
        token = _ENVIRON.set(os.environ if env is None else env)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as err:
            lines = []
            for e in err.errors():
                name = str(e["loc"][0]) if e.get("loc") else "?"
                var = cls.env_name(name) if name in cls.model_fields else name
                if e.get("type") == "missing":
                    lines.append(f"{var}: required, not set")
                else:
                    msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
                    lines.append(f"{var}: {msg} (got {e.get('input')!r})")
            raise ConfigError(f"{cls.error_title}:\n  " + "\n  ".join(lines)) from None
        finally:
            _ENVIRON.reset(token)
