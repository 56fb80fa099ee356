"""hl7-alerts: HL7v2 lab feed in, azathioprine safety alerts out over MQTT."""

__version__ = "0.1.0"
