"""Bridges to other tools' ecosystems; each sub-package needs that tool's optional extra."""
