"""config.yaml: load, validate, and turn into the settings each stage takes.

`sections.py` holds one model per section, `model.py` the whole `Config`
(checks across sections, and the settings values each stage takes),
`loading.py` reading a file into it with errors that name file, line and key.
"""

from hl7_alerts.config.loading import ConfigError, load_config, parse_config
from hl7_alerts.config.model import Config
from hl7_alerts.config.sections import parse_duration

__all__ = ["Config", "ConfigError", "load_config", "parse_config", "parse_duration"]
