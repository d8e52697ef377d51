"""maskrcnn_plugin (under construction: registration imports are added once the modules land)."""
from .config import add_maskrcnn_plugin_config, check_maskrcnn_plugin_config

__all__ = ["add_maskrcnn_plugin_config", "check_maskrcnn_plugin_config"]
